"""Framework-free parameter files: flat ``.npz`` with ``/``-joined keys (big_vision style).

``save_params(path, params)`` writes one; ``load_params(path, name_or_model)`` reads it and checks
it against the model's parameter structure: every key present with the right shape, nothing
extra. Problems raise :class:`ParamsError` with one message listing the keys.
"""

from __future__ import annotations

import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from .fileio import atomic_write


class ParamsError(ValueError):
    """A parameter file does not match the model (missing, unexpected or mis-shaped keys)."""


def flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def unflatten(flat: dict) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def save_params(path: str, params, metadata: dict | None = None) -> None:
    """Write ``params`` (nested dict of arrays) atomically to ``path`` (``.npz``)."""
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    if metadata:
        flat.update({f"__meta__/{k}": np.asarray(str(v)) for k, v in metadata.items()})
    atomic_write(path, lambda f: np.savez(f, **flat))


WHAT_PARAMS_ARE = ("a params file is an .npz archive of named arrays written by co3d_jax.save_params "
                   "or python -m weight_port convert")


def _not_params(path: str) -> ParamsError:
    """What ``path`` is, when it is not an ``.npz`` of arrays, and what to do about it."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if size == 0:
        return ParamsError(f"{path}: empty file; {WHAT_PARAMS_ARE}")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return ParamsError(f"{path}: truncated or damaged .npz ({size:,} bytes, its zip index is missing or "
                               "unreadable): save or download it again")
        if any(n.endswith("data.pkl") for n in names):
            return ParamsError(f"{path}: a PyTorch checkpoint, not a params file: convert it first with "
                               f"python -m weight_port convert {path} --arch NAME --out WEIGHTS.npz")
        return ParamsError(f"{path}: a zip archive without readable arrays; {WHAT_PARAMS_ARE}")
    if head.startswith(b"\x93NUMPY"):
        return ParamsError(f"{path}: a single NumPy array (.npy), not a params file; {WHAT_PARAMS_ARE}")
    if head[:1] == b"\x80":
        return ParamsError(f"{path}: a pickle (e.g. a legacy PyTorch checkpoint); params files are never unpickled: "
                           "convert a PyTorch checkpoint with python -m weight_port convert")
    return ParamsError(f"{path}: not a params file (it starts with bytes {head[:4].hex(' ')}); {WHAT_PARAMS_ARE}")


def read_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a params file: ``(flat arrays, metadata)``; a clear error for bad files, which are never
    unpickled (object arrays are refused)."""
    if not os.path.isfile(path):
        raise ParamsError(f"{path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise _not_params(path) from None
    if not isinstance(z, np.lib.npyio.NpzFile) or not all(n.endswith(".npy") for n in z.zip.namelist()):
        if hasattr(z, "close"):
            z.close()
        raise _not_params(path)   # a .npy, or a zip of other things (a PyTorch checkpoint)
    try:
        with z:
            flat = {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ParamsError(f"{path}: holds object (pickled) arrays, which are never loaded; "
                              f"{WHAT_PARAMS_ARE}") from None
        raise ParamsError(f"{path}: truncated or damaged .npz ({e}): save or download it again") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ParamsError(f"{path}: truncated or damaged .npz ({type(e).__name__}: {e}): "
                          "save or download it again") from None
    meta = {k.split("/", 1)[1]: str(v) for k, v in flat.items() if k.startswith("__meta__/")}
    return {k: v for k, v in flat.items() if not k.startswith("__meta__/")}, meta


def check_against(flat: dict[str, np.ndarray], reference: dict, what: str) -> None:
    """Raise :class:`ParamsError` unless ``flat`` has exactly the keys and shapes of ``reference``."""
    ref = {k: tuple(v.shape) for k, v in flatten(reference).items()}
    missing = sorted(set(ref) - set(flat))
    unexpected = sorted(set(flat) - set(ref))
    misshaped = sorted(f"{k} {tuple(flat[k].shape)} != {ref[k]}" for k in set(ref) & set(flat)
                       if tuple(flat[k].shape) != ref[k])
    if missing or unexpected or misshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise ParamsError(f"{what}: parameters do not match the model; " + "; ".join(parts))


def load_params(path: str, model) -> dict:
    """Load ported weights for ``model`` (a :class:`~co3d_jax.Model` or a registry name; a name
    is built with the ``model_options`` recorded in the file, e.g. a converted class count)."""
    flat, meta = read_npz(path)
    if isinstance(model, str):
        import json

        from .models import create_model
        model = create_model(model, **json.loads(meta.get("model_options", "{}")))
    arch = meta.get("arch")
    reference = jax.eval_shape(model.init, jax.random.key(0))
    check_against(flat, reference, f"{path} (arch {arch or 'unknown'}) for model {model.name}")
    return jax.tree.map(jnp.asarray, unflatten(flat))
