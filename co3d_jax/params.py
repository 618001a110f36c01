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


def read_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a params file: ``(flat arrays, metadata)``; a clear error for bad files."""
    if not os.path.isfile(path):
        raise ParamsError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ParamsError(f"{path}: not a readable .npz params file ({type(e).__name__}: {e})") from None
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
