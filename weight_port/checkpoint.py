"""Reading PyTorch checkpoint files safely (``weights_only=True``) into numpy arrays.

torch is imported lazily, only here and by the ``--verify`` references.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from .errors import PortError, one_line, summarise

# Where the weights may sit inside a checkpoint dict, in order of preference (PySlowFast and
# pytorchvideo use ``model_state``; Lightning/ride use ``state_dict``).
STATE_KEYS = ("model_state", "state_dict", "model")


def load_torch_file(path: str) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with one-line errors."""
    if not os.path.exists(path):
        raise PortError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise PortError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise PortError(f"{path}: empty file, not a PyTorch checkpoint")
    with open(path, "rb") as f:
        head = f.read(8)
    # torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (0x80 + protocol)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise PortError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle; "
                        f"it starts with {head!r})")
    if head[:1] == b"\x80" and head[1:2] not in (b"\x02", b"\x03", b"\x04", b"\x05"):
        # torch.save's legacy format is a pickle of protocol 2..5 (0x80, protocol, ...)
        raise PortError(f"{path}: not a PyTorch checkpoint (its first byte looks like a pickle's but no pickle "
                        f"protocol follows; it starts with {head!r})")
    if head.startswith(b"PK\x03\x04"):
        _check_torch_zip(path)
    import pickle

    from co3d_jax.extras import require

    torch = require("torch", "port", f"reading the PyTorch checkpoint {os.path.basename(path)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", msg)
        if detail and "global" not in detail[1].lower():  # not a refused class: a damaged or non-torch pickle
            raise PortError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt? (the pickle does "
                            f"not parse: {one_line(detail[1])[:120]})") from None
        if "weights_only" in msg or "Weights only load failed" in msg:
            raise PortError(f"{path}: the checkpoint contains objects other than tensors and plain containers; "
                            "refusing to unpickle it (torch.load weights_only=True)") from None
        first = one_line(msg.splitlines()[0]) if msg.strip() else "unpickling error"
        raise PortError(f"{path}: not a PyTorch checkpoint ({first[:160]})") from None
    except Exception as e:  # truncated zip, damaged pickle: RuntimeError/EOFError/...
        first = one_line(str(e)) or type(e).__name__
        first = first.split(". ")[0][:160]  # torch appends long advice after the first sentence
        raise PortError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt? "
                        f"({type(e).__name__}: {first})") from None


def _check_torch_zip(path: str) -> None:
    """A zip archive that is not a ``torch.save`` file (no ``<name>/data.pkl``), read with
    :mod:`zipfile` (no torch): a numpy ``.npz`` (a co3d_jax params file, i.e. already converted,
    or another numpy archive) or another zip gets a :class:`PortError` saying what it is.
    A damaged archive (a cut-off download) is reported as truncated or corrupt."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise PortError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt? (a zip archive without "
                        f"an intact table of contents, as a cut-off download leaves it: fetch or copy it again)"
                        ) from None
    except OSError:
        return
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return
    if names and all(n.endswith(".npy") for n in names):
        if any(n.startswith("__meta__/") for n in names):
            try:
                from co3d_jax.params import read_npz

                meta = read_npz(path)[1]
            except Exception:  # noqa: BLE001 - only to name the arch; the message stands without it
                meta = {}
            arch = f" for {meta['arch']}" if meta.get("arch") else ""
            raise PortError(f"{path}: this is already a converted co3d_jax params file{arch} (.npz), not a PyTorch "
                            f"checkpoint: load it with co3d_jax.load_params(path, model) or pass it as --weights; "
                            f"convert reads the original .pyth/.pth/.pkl checkpoint")
        raise PortError(f"{path}: a numpy .npz archive ({len(names)} arrays), not a PyTorch checkpoint: convert "
                        f"reads torch.save files (.pyth/.pth/.pt) and Caffe2 .pkl files")
    raise PortError(f"{path}: a zip archive but not a torch.save file (no data.pkl among its "
                    f"{len(names)} entries), so not a PyTorch checkpoint")


def extract_state_dict(obj: Any, path: str = "checkpoint") -> tuple[dict[str, np.ndarray], str]:
    """The weights of a loaded checkpoint as float/int numpy arrays and where they were found
    (``"model_state"``, ``"state_dict"``, ``"model"`` or ``"bare"``)."""
    import torch

    if not isinstance(obj, dict):
        raise PortError(f"{path}: not a checkpoint: top-level object is a {type(obj).__name__}, "
                        "expected a dict (a state dict or {'model_state': ...})")
    where = "bare"
    for key in STATE_KEYS:
        if key in obj and isinstance(obj[key], dict):
            obj, where = obj[key], key
            break
    if not obj:
        raise PortError(f"{path}: the checkpoint's {where} state dict is empty")
    non_tensor = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        if where == "bare":
            raise PortError(f"{path}: not a checkpoint: no 'model_state'/'state_dict' entry and not a bare state dict "
                            f"(top-level keys: {summarise(sorted(map(str, obj)))})")
        raise PortError(f"{path}: '{where}' holds non-tensor entries: {summarise(sorted(non_tensor))}")
    state = {}
    for k, v in obj.items():
        v = v.detach().cpu()
        if v.is_floating_point() and v.dtype != torch.float32:
            v = v.float()
        state[str(k)] = v.numpy()
    return state, where


def read_checkpoint(path: str, with_config: bool = False):
    """Load ``path`` and return ``(state dict as numpy, container)``; see :func:`extract_state_dict`.
    ``with_config``: ``(state, container, recorded config)``, the last from
    :func:`recorded_config` (``None`` if the file records none)."""
    obj = load_torch_file(path)
    state, container = extract_state_dict(obj, path)
    return (state, container, recorded_config(obj)) if with_config else (state, container)


# ------------------------------------------------------------------------------------ recorded config
CONFIG_KEYS = ("cfg",)
"""Top-level checkpoint entries holding the training config: PySlowFast saves
``{"epoch", "model_state", "optimizer_state", "cfg": cfg.dump()}`` (a YAML string)."""


def recorded_config(obj: Any) -> dict | None:
    """The training config a checkpoint records (a top-level ``cfg``: a YAML string as PySlowFast's
    ``cfg.dump()`` writes it, or a dict) as nested dicts of scalars, ``None`` if it has none."""
    if not isinstance(obj, dict):
        return None
    for key in CONFIG_KEYS:
        value = obj.get(key)
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            parsed = parse_config_text(value)
            if parsed:
                return parsed
    return None


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None, "~": None}.get(text.lower(), text)


def parse_config_text(text: str) -> dict:
    """The block mappings of a YAML config dump (``KEY:`` nested by indentation, ``KEY: scalar``)
    as nested dicts: enough to read a PySlowFast ``cfg.dump()`` without a YAML dependency. List
    items, flow collections and anything else it does not understand are skipped, never guessed."""
    root: dict = {}
    stack: list[tuple[int, dict]] = [(-1, root)]
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith(("#", "-")):
            continue
        m = re.match(r"^( *)([A-Za-z_][\w.-]*):(?:\s+(.*))?$", line)
        if not m:
            continue
        indent, key, value = len(m[1]), m[2], m[3]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if not stack:
            return root
        parent = stack[-1][1]
        if value is None or value == "":
            parent[key] = child = {}
            stack.append((indent, child))
        elif not value.startswith(("[", "{", "&", "*", "|", ">")):
            parent[key] = _scalar(value)
    return root
