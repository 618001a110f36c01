"""Key names of the X3D checkpoint layouts and the rules between them (no torch, no JAX).

Three namings are involved:

* **JAX** (``co3d_jax`` params, ``/``-joined): ``s1/conv_xy/kernel``,
  ``s2/res0/residual/skip/branch1/kernel``, ``s2/res0/residual/branch2/se/gate/fc1/bias``,
  ``head/projection/kernel``; BN leaves ``scale, bias, mean, var``.
* **slowfast** (PySlowFast ``model_state``, reference §3.2; co3d's flattened CoX3D names are
  identical): ``s1.pathway0_stem.conv_xy.weight``, ``s2.pathway0_res0.branch1_bn.running_var``,
  ``s2.pathway0_res0.branch2.se.fc1.bias``, ``head.projection.weight``.
* **pytorchvideo** (``pytorchvideo.models.x3d.create_x3d`` / torch hub ``x3d_*``):
  ``blocks.0.conv.conv_t.weight``, ``blocks.1.res_blocks.0.branch1_conv.weight``,
  ``blocks.1.res_blocks.0.branch2.norm_b.1.block.0.bias``, ``blocks.5.proj.weight``.

slowfast is the hub of the mapping: JAX <-> slowfast <-> pytorchvideo.

pytorchvideo differences (checked against pytorchvideo 0.1.5):

* Stem names are swapped: ``blocks.0.conv.conv_t`` is the **1x3x3 spatial** conv (slowfast
  ``conv_xy``) and ``blocks.0.conv.conv_xy`` the **5x1x1 depthwise temporal** conv (slowfast
  ``conv``); the stem is a ``Conv2plus1d(conv_t=<spatial>, conv_xy=<temporal>)`` that runs
  ``conv_t`` first. The converter checks this by shape (:func:`stem_names_swapped`).
* SE lives inside ``norm_b``: ``branch2.norm_b`` = ``Sequential(BatchNorm3d, SqueezeExcitation)``,
  so ``b_bn`` -> ``norm_b.0`` and ``se.fc1/fc2`` -> ``norm_b.1.block.0/.2`` (fvcore SE:
  conv, ReLU, conv, Sigmoid over the global mean). Swish (``act_b``) follows, as in slowfast.
* Block 0 of stage 2 (24 -> 24 channels, spatial stride 2) has the strided 1x1x1 shortcut conv
  but **no shortcut BN** (pytorchvideo adds ``branch1_norm`` only when ``dim_in != dim_out``);
  hence 3,794,274 parameters instead of 3,794,322. The converter fills that BN with an exact
  identity (:data:`IDENTITY_BN_VAR`).
* Head: ``blocks.5.pool`` is a ``ProjectedPool`` (``pre_conv`` = ``conv_5``, ``pre_norm`` =
  ``conv_5_bn``, ReLU, ``AvgPool3d(stride 1)``, ``post_conv`` = ``lin_5``, ReLU), then dropout,
  ``blocks.5.proj`` (= ``projection``, a Linear), ``Softmax(dim=1)`` applied in train *and* eval
  mode, and a global average over the remaining positions.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import numpy as np

LAYOUTS = ("slowfast", "pytorchvideo")

# JAX leaf -> torch parameter name.
LEAF_TO_TORCH = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
                  "var": "running_var"}
BN_LEAVES = ("scale", "bias", "mean", "var")
BN_COUNTER = "num_batches_tracked"  # BN buffer present in torch state dicts; consumed, ignored

# An exact identity BatchNorm for eps = 1e-5 in float32: (x - 0) / sqrt(var + eps) * 1 + 0 with
# float32(1 - 1e-5) + float32(1e-5) == 1.0 exactly, so 1/sqrt(var + eps) is exactly 1 (asserted
# below). The output is then bit-identical to skipping the BN.
BN_EPS = 1e-5
IDENTITY_BN_VAR = np.float32(1.0) - np.float32(BN_EPS)
assert IDENTITY_BN_VAR + np.float32(BN_EPS) == np.float32(1.0)

# stage depths of the public X3D variants (for hints on a wrong --arch).
KNOWN_DEPTHS = {(3, 5, 11, 7): "x3d_xs/x3d_s/x3d_m (cox3d_xs, cox3d_s_*, cox3d_m_*)",
                (5, 10, 25, 15): "x3d_l (cox3d_l_*)"}


# --------------------------------------------------------------------------- JAX <-> slowfast
def jax_to_slowfast(path: str) -> str:
    """``s2/res0/residual/branch2/se/gate/fc1/kernel`` -> ``s2.pathway0_res0.branch2.se.fc1.weight``."""
    *mods, leaf = path.split("/")
    if leaf not in LEAF_TO_TORCH or not mods:
        raise ValueError(f"no slowfast name for JAX parameter {path!r}")
    name = LEAF_TO_TORCH[leaf]
    if mods[0] == "s1":
        module = ["s1", "pathway0_stem", *mods[1:]]
    elif mods[0] == "head":
        module = mods
    elif re.fullmatch(r"s\d+", mods[0]) and len(mods) >= 4 and re.fullmatch(r"res\d+", mods[1]) \
            and mods[2] == "residual":
        rest = mods[3:]
        if rest[0] == "skip":             # skip/branch1, skip/branch1_bn
            rest = rest[1:]
        elif rest[:3] == ["branch2", "se", "gate"]:  # the SE's gate Sequential has no torch level
            rest = ["branch2", "se", *rest[3:]]
        module = [mods[0], f"pathway0_{mods[1]}", *rest]
    else:
        raise ValueError(f"no slowfast name for JAX parameter {path!r}")
    return ".".join([*module, name])


# --------------------------------------------------------------------------- slowfast <-> pytorchvideo
_PV_STEM = {"conv_xy": "conv.conv_t", "conv": "conv.conv_xy", "bn": "norm"}
_PV_BLOCK = {
    "branch1": "branch1_conv", "branch1_bn": "branch1_norm",
    "branch2.a": "branch2.conv_a", "branch2.a_bn": "branch2.norm_a",
    "branch2.b": "branch2.conv_b", "branch2.b_bn": "branch2.norm_b.0",
    "branch2.se.fc1": "branch2.norm_b.1.block.0", "branch2.se.fc2": "branch2.norm_b.1.block.2",
    "branch2.c": "branch2.conv_c", "branch2.c_bn": "branch2.norm_c",
}
_PV_HEAD = {"conv_5": "pool.pre_conv", "conv_5_bn": "pool.pre_norm", "lin_5": "pool.post_conv",
            "lin_5_bn": "pool.post_norm", "projection": "proj"}


def slowfast_to_pytorchvideo(key: str, num_stages: int = 4, swap_stem: bool = True) -> str | None:
    """The pytorchvideo name of a slowfast key (``None`` if it has none).

    ``swap_stem=True`` is pytorchvideo's actual naming (``conv_xy`` -> ``conv.conv_t``);
    ``False`` maps the stem convs literally (for a file whose shapes say so).
    """
    if "." not in key:
        return None
    module, param = key.rsplit(".", 1)
    if m := re.fullmatch(r"s1\.pathway0_stem\.(\w+)", module):
        stem = dict(_PV_STEM) if swap_stem else {**_PV_STEM, "conv_xy": "conv.conv_xy", "conv": "conv.conv_t"}
        sub = stem.get(m[1])
        return None if sub is None else f"blocks.0.{sub}.{param}"
    if m := re.fullmatch(r"s(\d+)\.pathway0_res(\d+)\.(.+)", module):
        sub = _PV_BLOCK.get(m[3])
        stage = int(m[1])
        return None if sub is None or stage < 2 else f"blocks.{stage - 1}.res_blocks.{m[2]}.{sub}.{param}"
    if m := re.fullmatch(r"head\.(\w+)", module):
        sub = _PV_HEAD.get(m[1])
        return None if sub is None else f"blocks.{num_stages + 1}.{sub}.{param}"
    return None


def stem_names_swapped(state: Mapping[str, np.ndarray]) -> bool:
    """Whether a pytorchvideo state dict uses pytorchvideo's swapped stem names, judged by shape.

    ``blocks.0.conv.conv_t.weight`` of shape ``(C, 3, 1, k, k)`` (kT = 1: spatial) means swapped
    (pytorchvideo 0.1.5); ``(C, 1, kT, 1, 1)`` means the names are literal. Ambiguous or absent
    tensors default to pytorchvideo's naming; the shape check reports anything wrong.
    """
    t = state.get("blocks.0.conv.conv_t.weight")
    xy = state.get("blocks.0.conv.conv_xy.weight")
    if t is None or xy is None or np.ndim(t) != 5 or np.ndim(xy) != 5:
        return True
    t_temporal = t.shape[2] > 1 and t.shape[3] == 1 and t.shape[4] == 1
    xy_spatial = xy.shape[2] == 1 and xy.shape[3] > 1
    return not (t_temporal and xy_spatial)


# --------------------------------------------------------------------------- source handling
def strip_prefixes(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Remove a ``module.`` / ``model.`` prefix shared by *every* key (repeatedly)."""
    state = dict(state)
    stripped = []
    while state:
        for prefix in ("module.", "model."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped.append(prefix)
                break
        else:
            break
    return state, stripped


def detect_layout(keys: Iterable[str]) -> str | None:
    """``'pytorchvideo'`` (``blocks.*``), ``'slowfast'`` (``s1.pathway0_stem.*`` ...) or ``None``."""
    keys = list(keys)
    pv = sum(k.startswith("blocks.") for k in keys)
    sf = sum(bool(re.match(r"(s\d+\.pathway0_|head\.)", k)) for k in keys)
    if pv and pv >= sf:
        return "pytorchvideo"
    if sf:
        return "slowfast"
    return None


def stage_depths(keys: Iterable[str], layout: str) -> list[int]:
    """Blocks per stage found in a checkpoint's keys (for a wrong-arch hint)."""
    pattern = r"s(\d+)\.pathway0_res(\d+)\." if layout == "slowfast" else r"blocks\.(\d+)\.res_blocks\.(\d+)\."
    offset = 2 if layout == "slowfast" else 1
    depth: dict[int, int] = {}
    for k in keys:
        if m := re.match(pattern, k):
            s, i = int(m[1]) - offset, int(m[2])
            depth[s] = max(depth.get(s, 0), i + 1)
    return [depth[s] for s in sorted(depth)]


# --------------------------------------------------------------------------- tensor layouts
def torch_to_jax(array: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray | None:
    """Re-lay a torch tensor for a JAX leaf of ``target_shape``; ``None`` if the ranks don't fit.

    Conv ``(O, I/g, kT, kH, kW)`` -> DHWIO ``(kT, kH, kW, I/g, O)``; 1x1x1 conv
    ``(O, I, 1, 1, 1)`` or Linear ``(O, I)`` -> dense ``(I, O)``; vectors unchanged.
    """
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


def jax_to_torch(array: np.ndarray, source_ndim: int) -> np.ndarray:
    """Inverse of :func:`torch_to_jax` (``source_ndim`` 5 for convs, 2 for Linear, 1 for vectors)."""
    a = np.asarray(array)
    if a.ndim == 5:
        return a.transpose(4, 3, 0, 1, 2)
    if a.ndim == 2:
        a = a.T
        return a.reshape(*a.shape, 1, 1, 1) if source_ndim == 5 else a
    return a


def torch_shape(target_shape: tuple[int, ...], source_ndim: int) -> tuple[int, ...]:
    """The torch shape that :func:`torch_to_jax` turns into ``target_shape``."""
    if len(target_shape) == 5:
        kt, kh, kw, i, o = target_shape
        return (o, i, kt, kh, kw)
    if len(target_shape) == 2:
        i, o = target_shape
        return (o, i, 1, 1, 1) if source_ndim == 5 else (o, i)
    return tuple(target_shape)


def source_ndim(slowfast_key: str, jax_leaf_shape: tuple[int, ...]) -> int:
    """Rank of the torch tensor behind a JAX leaf: 2 for ``head.projection.weight`` (Linear),
    5 for the other dense kernels (1x1x1 convs) and convs, 1 for vectors."""
    if len(jax_leaf_shape) == 5:
        return 5
    if len(jax_leaf_shape) == 2:
        return 2 if slowfast_key.startswith("head.projection.") else 5
    return len(jax_leaf_shape)


def slowfast_torch_shape(jax_path: str, jax_leaf_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape behind a JAX leaf whose PySlowFast name follows :func:`jax_to_slowfast`
    (X3D, Slow/I3D): :func:`torch_shape` with the rank :func:`source_ndim` gives."""
    return torch_shape(jax_leaf_shape, source_ndim(jax_to_slowfast(jax_path), jax_leaf_shape))


def jax_params_to_state_dict(flat: Mapping[str, np.ndarray], layout: str = "slowfast", *,
                             num_stages: int = 4, counters: bool = True) -> dict[str, np.ndarray]:
    """Torch-layout arrays named for ``layout`` from flat JAX params (the inverse port; used to
    build test checkpoints and references). ``counters`` adds ``num_batches_tracked`` per BN."""
    out: dict[str, np.ndarray] = {}
    for path, value in flat.items():
        sf = jax_to_slowfast(path)
        out[sf] = jax_to_torch(np.asarray(value), source_ndim(sf, np.shape(value)))
        if counters and path.endswith("/scale"):
            out[sf.rsplit(".", 1)[0] + "." + BN_COUNTER] = np.asarray(0, np.int64)
    if layout == "pytorchvideo":
        renamed = {}
        for k, v in out.items():
            pv = slowfast_to_pytorchvideo(k, num_stages)
            if pv is None:
                raise ValueError(f"no pytorchvideo name for {k}")
            renamed[pv] = v
        out = renamed
    elif layout != "slowfast":
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    return out
