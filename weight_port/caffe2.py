"""Reading Caffe2 ``.pkl`` checkpoints (PySlowFast / video-nonlocal-net model zoo) safely.

A Caffe2 checkpoint is a pickle (written by Python 2, usually protocol 2) of a dict with a
``"blobs"`` entry: numpy arrays keyed by Caffe2 blob name (reference co3d.md §3.4). Loading it
with ``pickle.load`` would execute any callable the file names, so :func:`load_caffe2_blobs`
uses a restricted unpickler whose ``find_class`` admits only:

* numpy array reconstruction: ``numpy.core.multiarray._reconstruct`` (also spelled
  ``numpy._core.multiarray._reconstruct``), ``numpy.ndarray``, ``numpy.dtype``,
  ``numpy.core.multiarray.scalar`` (numpy scalars) and ``numpy.core.numeric._frombuffer``
  (protocol-5 arrays);
* plain containers: ``builtins`` ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``,
  ``collections.OrderedDict``;
* ``_codecs.encode`` restricted to latin-1 text: Python 3 pickles at protocol <= 2 spell
  ``bytes`` (e.g. an array's raw data) as ``_codecs.encode(text, 'latin1')``; any other codec
  or argument is refused.

Anything else raises :class:`~weight_port.errors.PortError` naming the refused global; a
truncated or corrupt file raises :class:`PortError` too. Files are read with
``encoding='latin1'`` (Python 2 ``str`` -> ``str``; numpy accepts latin-1 text as raw array
data, as PySlowFast and co3d load these files).

``load_caffe2_blobs(path) -> dict[str, np.ndarray]`` is shared by the porters of every
Caffe2-format architecture (I3D here; SlowFast).
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
from typing import Any

import numpy as np

from .errors import PortError, one_line

__all__ = ["load_caffe2_blobs", "load_caffe2_pickle", "RestrictedUnpickler", "NON_PARAMETER_BLOBS"]


def _numpy_attr(module: str, name: str):
    """``numpy._core.<module>.<name>`` (numpy 2) or ``numpy.core.<module>.<name>`` (numpy 1),
    imported without numpy 2's deprecation shim for ``numpy.core``."""
    import importlib

    for base in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{base}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise PortError(f"numpy has no {module}.{name}")  # pragma: no cover


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: latin-1 text only."""
    codec = str(encoding).lower().replace("-", "").replace("_", "")
    if not isinstance(obj, str) or codec not in ("latin1", "iso88591") or errors != "strict":
        raise PortError(f"refusing _codecs.encode({type(obj).__name__}, {encoding!r}): only latin-1 text is allowed")
    return obj.encode("latin-1")


def _allowed() -> dict[tuple[str, str], Any]:
    builtins_ok = {name: getattr(__import__("builtins"), name)
                   for name in ("dict", "list", "tuple", "set", "frozenset")}
    table: dict[tuple[str, str], Any] = {("builtins", k): v for k, v in builtins_ok.items()}
    table[("collections", "OrderedDict")] = collections.OrderedDict
    table[("_codecs", "encode")] = _latin1_encode
    for base in ("numpy.core", "numpy._core"):
        table[(f"{base}.multiarray", "_reconstruct")] = _numpy_attr("multiarray", "_reconstruct")
        table[(f"{base}.multiarray", "scalar")] = _numpy_attr("multiarray", "scalar")
        table[(f"{base}.numeric", "_frombuffer")] = _numpy_attr("numeric", "_frombuffer")
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the globals listed in the module docstring."""

    _ALLOWED: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str):
        # Python 2 names (__builtin__.set, ...), mapped as pickle's fix_imports does for protocol
        # < 3; no Python 3 pickle uses these module names, so the mapping is applied always.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _allowed()
        try:
            return RestrictedUnpickler._ALLOWED[(module, name)]
        except KeyError:
            raise PortError(f"refusing to unpickle global '{module}.{name}' (only numpy arrays and plain containers "
                            "are allowed in a Caffe2 checkpoint)") from None

    def persistent_load(self, pid):
        raise PortError("refusing to unpickle a persistent id (not a Caffe2 checkpoint)")


def load_caffe2_pickle(path: str) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding='latin1'``); one-line
    :class:`PortError` for a missing, empty, truncated, corrupt or unsafe file."""
    if not os.path.exists(path):
        raise PortError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise PortError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise PortError(f"{path}: empty file, not a Caffe2 checkpoint")
    if data.startswith(b"PK\x03\x04"):
        raise PortError(f"{path}: a zip archive (a torch.save checkpoint?), not a Caffe2 pickle")
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except PortError as e:
        raise PortError(f"{path}: {e}") from None
    except RecursionError:
        raise PortError(f"{path}: not a readable Caffe2 pickle (nesting too deep)") from None
    except Exception as e:  # EOFError (truncated), UnpicklingError, ValueError, TypeError, ...
        detail = one_line(str(e))[:160] or "no detail"
        raise PortError(f"{path}: not a readable Caffe2 pickle, truncated or corrupt? "
                        f"({type(e).__name__}: {detail})") from None


# Blobs that are not model parameters: SGD momentum buffers, the learning rate and the
# iteration counter (co3d's loader skips names containing these; we match them exactly).
NON_PARAMETER_BLOBS = ("*_momentum", "lr", "model_iter")


def is_non_parameter_blob(name: str) -> bool:
    """Whether ``name`` is one of :data:`NON_PARAMETER_BLOBS` (consumed and ignored)."""
    return name.endswith("_momentum") or name in ("lr", "model_iter")


def load_caffe2_blobs(path: str) -> dict[str, np.ndarray]:
    """The ``"blobs"`` of a Caffe2 checkpoint as ``{name: np.ndarray}`` (every blob, including
    the non-parameter ones of :data:`NON_PARAMETER_BLOBS`, which the converters ignore).

    Accepts ``{"blobs": {...}, ...}`` (other top-level entries are metadata and ignored) or a
    bare ``{name: array}`` dict. Raises :class:`PortError` (one line) for anything else:
    unsafe globals, truncation, a non-dict, non-array blobs.
    """
    obj = load_caffe2_pickle(path)
    if not isinstance(obj, dict):
        raise PortError(f"{path}: not a Caffe2 checkpoint: top-level object is a {type(obj).__name__}, "
                        "expected a dict with 'blobs'")
    blobs = obj["blobs"] if "blobs" in obj else obj
    if not isinstance(blobs, dict):
        raise PortError(f"{path}: 'blobs' is a {type(blobs).__name__}, expected a dict of arrays")
    if not blobs:
        raise PortError(f"{path}: the checkpoint has no blobs")
    out: dict[str, np.ndarray] = {}
    bad = []
    for k, v in blobs.items():
        name = k.decode("latin-1") if isinstance(k, bytes) else k
        if not isinstance(name, str):
            bad.append(repr(k))
            continue
        if isinstance(v, np.generic):
            v = np.asarray(v)
        if not isinstance(v, np.ndarray) and not (is_non_parameter_blob(name) and isinstance(v, (int, float))):
            bad.append(f"{name} ({type(v).__name__})")
            continue
        out[name] = np.asarray(v)
    if bad:
        shown = ", ".join(bad[:6]) + (f", ... ({len(bad)} in all)" if len(bad) > 6 else "")
        raise PortError(f"{path}: not a Caffe2 checkpoint: non-array blobs {shown}")
    return out
