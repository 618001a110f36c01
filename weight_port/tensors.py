"""Tensor layouts between torch and JAX (no torch, no JAX): the re-layout rules a
:class:`~co3d_jax.models.checkpoints.CheckpointSpec` names, the torch shape behind a JAX leaf, the
exact identity BatchNorm, and the inverse port (JAX params -> torch-layout state dict) tests use.

Torch conv ``(O, I/g, kT, kH, kW)`` <-> JAX DHWIO ``(kT, kH, kW, I/g, O)``; torch Linear ``(O, I)``
or 1x1x1 conv ``(O, I, 1, 1, 1)`` <-> JAX dense ``(I, O)``; vectors unchanged.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from co3d_jax.models.checkpoints import BN_COUNTER, CheckpointSpec

Shape = tuple[int, ...]
# relayout(src, torch shape, JAX shape) -> JAX-layout array, or None if src does not fit
Relayout = Callable[[np.ndarray, Shape, Shape], "np.ndarray | None"]

# An exact identity BatchNorm for eps = 1e-5 in float32: (x - 0) / sqrt(var + eps) * 1 + 0 with
# float32(1 - 1e-5) + float32(1e-5) == 1.0 exactly, so 1/sqrt(var + eps) is exactly 1 (asserted
# below). The output is then bit-identical to skipping the BN.
BN_EPS = 1e-5
IDENTITY_BN_VAR = np.float32(1.0) - np.float32(BN_EPS)
assert IDENTITY_BN_VAR + np.float32(BN_EPS) == np.float32(1.0)


def torch_to_jax(array: np.ndarray, target_shape: Shape) -> np.ndarray | None:
    """Re-lay a torch tensor for a JAX leaf of ``target_shape``; ``None`` if the ranks don't fit.
    A 2-D target takes a Linear ``(O, I)`` or a 1x1x1 conv ``(O, I, 1, 1, 1)``."""
    a = np.asarray(array)
    if len(target_shape) == 5 and a.ndim == 5:
        return a.transpose(2, 3, 4, 1, 0)
    if len(target_shape) == 2:
        if a.ndim == 5 and a.shape[2:] == (1, 1, 1):
            a = a.reshape(a.shape[:2])
        return a.T if a.ndim == 2 else None
    if len(target_shape) == 1 and a.ndim == 1:
        return a
    return None


def jax_to_torch(array: np.ndarray, torch_ndim: int) -> np.ndarray:
    """Inverse of :func:`torch_to_jax` (``torch_ndim`` 5 for convs, 2 for Linear, 1 for vectors)."""
    a = np.asarray(array)
    if a.ndim == 5:
        return a.transpose(4, 3, 0, 1, 2)
    if a.ndim == 2:
        a = a.T
        return a.reshape(*a.shape, 1, 1, 1) if torch_ndim == 5 else a
    return a


def torch_shape(target_shape: Shape, linear: bool = True) -> Shape:
    """The torch shape that :func:`torch_to_jax` turns into ``target_shape``; a 2-D target is a
    Linear ``(O, I)`` if ``linear``, else a 1x1x1 conv."""
    if len(target_shape) == 5:
        kt, kh, kw, i, o = target_shape
        return (o, i, kt, kh, kw)
    if len(target_shape) == 2:
        i, o = target_shape
        return (o, i) if linear else (o, i, 1, 1, 1)
    return tuple(target_shape)


def spec_torch_shape(spec: CheckpointSpec) -> Callable[[str, Shape], Shape]:
    """``fn(jax path, JAX shape) -> torch shape`` for a family (its ``linear`` modules)."""
    return lambda path, shape: torch_shape(shape, spec.is_linear(path))


def fit_trailing(a: np.ndarray, want: Shape) -> np.ndarray | None:
    """``a`` reshaped to ``want`` if they differ only by trailing singleton dims, else None."""
    have = tuple(a.shape)
    if have == tuple(want):
        return a
    n = min(len(have), len(want))
    if have[:n] == tuple(want[:n]) and all(d == 1 for d in have[n:]) and all(d == 1 for d in want[n:]):
        return a.reshape(want)
    return None


# ------------------------------------------------------------------------------------ re-layout rules
def _torch(src: np.ndarray, want: Shape, shape: Shape) -> np.ndarray | None:
    """The torch rank; a Linear stored with trailing singleton dims (a Caffe2 FC as a 1x1x1 conv,
    ``(O, I, 1, 1, 1)``) is accepted."""
    a = np.asarray(src)
    while len(want) == 2 and a.ndim > 2 and a.shape[-1] == 1:
        a = a.reshape(a.shape[:-1])
    if a.ndim != len(want):
        return None
    return torch_to_jax(a, shape)


def _torch_exact(src: np.ndarray, want: Shape, shape: Shape) -> np.ndarray | None:
    """Exactly the torch shape ``want``."""
    return torch_to_jax(src, shape) if tuple(src.shape) == tuple(want) else None


def _pyslowfast(src: np.ndarray, want: Shape, shape: Shape) -> np.ndarray | None:
    """A conv, or for a dense kernel a Linear ``(O, I)`` or a 1x1x1 conv (PySlowFast's X3D has both)."""
    return torch_to_jax(src, shape)


def _caffe2(src: np.ndarray, want: Shape, shape: Shape) -> np.ndarray | None:
    """The torch shape up to trailing singleton dims (Caffe2 blobs lose or gain them)."""
    fitted = fit_trailing(src, want)
    return None if fitted is None else torch_to_jax(fitted, shape)


RELAYOUT: dict[str, Relayout] = {"torch": _torch, "torch_exact": _torch_exact, "pyslowfast": _pyslowfast,
                                 "caffe2": _caffe2}
RESHAPING = ("caffe2",)  # rules that may reshape: the porter notes how many tensors they reshaped


# ------------------------------------------------------------------------------------ identity BN
def identity_bn_params(targets: Mapping[str, Shape], modules) -> dict[str, np.ndarray]:
    """Exact identity BN leaves (scale 1, bias 0, mean 0, var 1-eps) for the JAX BN ``modules``."""
    values = {"scale": 1.0, "bias": 0.0, "mean": 0.0, "var": IDENTITY_BN_VAR}
    modules = set(modules)
    return {path: np.full(shape, values[path.rsplit("/", 1)[1]], np.float32)
            for path, shape in targets.items() if path.rsplit("/", 1)[0] in modules}


# ------------------------------------------------------------------------------------ inverse port
def params_to_torch(flat: Mapping[str, np.ndarray], key: Callable[[str], str], linear: Callable[[str], bool],
                    *, counters: bool = True) -> dict[str, np.ndarray]:
    """Torch-layout arrays named by ``key(jax path)`` from flat JAX params (the inverse port; tests
    build checkpoints with it). ``linear(path)``: a 2-D kernel is a Linear (else a 1x1x1 conv);
    ``counters`` adds BN ``num_batches_tracked`` next to each BN."""
    out: dict[str, np.ndarray] = {}
    for path, value in flat.items():
        a = np.asarray(value)
        name = key(path)
        out[name] = jax_to_torch(a, 2 if a.ndim == 2 and linear(path) else 5 if a.ndim == 2 else a.ndim)
        if counters and path.endswith("/scale"):
            out[name.rsplit(".", 1)[0] + "." + BN_COUNTER] = np.asarray(0, np.int64)
    return out
