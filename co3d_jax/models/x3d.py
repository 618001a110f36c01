"""X3D (clip) and CoX3D (continual): one definition, sizes XS/S/M/L as configs.

Structure and names follow PySlowFast's X3D (reference §2.1): ``s1`` stem (``conv_xy`` 1x3x3
stride 2, depthwise ``conv`` 5x1x1, ``bn``, ``relu``), stages ``s2..s5`` of bottleneck blocks
``res{i}`` (``branch2``: ``a`` 1x1x1, ``b`` depthwise 3x3x3, ``se`` on even blocks, Swish, ``c``;
skip: ``branch1`` strided 1x1x1 + BN on block 0, identity otherwise, delayed by one frame in
stream mode), and the ``head`` (``conv_5``, BN, ReLU, average pool over ``window`` frames and the
final spatial map, ``lin_5``, ReLU, ``projection``, softmax).

Params pytree paths mirror the PyTorch names, e.g.
``params["s3"]["res0"]["residual"]["branch2"]["b"]["kernel"]``.
"""

from __future__ import annotations

import dataclasses
import math

from ..layers import Activation, BatchNorm, Conv, Dense, Pool, Sequential, squeeze_excitation
from ..model import Model
from ..normalisation import KINETICS
from .blocks import res_block
from .spec import FamilySpec, Pattern, Reported


def round_width(width: float, multiplier: float, min_depth: int = 8, divisor: int = 8) -> int:
    """PySlowFast's ``_round_width``."""
    width *= multiplier
    new = max(min_depth, int(width + divisor / 2) // divisor * divisor)
    if new < 0.9 * width:
        new += divisor
    return int(new)


@dataclasses.dataclass(frozen=True)
class X3DConfig:
    """Hyper-parameters (reference §2.1.1). ``window`` is the head's temporal pool (frames of
    one clip for X3D; the continual window ``T_w`` for CoX3D)."""

    image_size: int = 160
    window: int = 13
    frame_rate: int = 6
    depth_factor: float = 2.2
    width_factor: float = 2.0
    bottleneck_factor: float = 2.25
    conv1_dim: int = 12
    conv5_dim: int = 2048
    num_classes: int = 400
    se_scope: str = "frame"          # "frame" (CoX3D) or "clip" (window-long SE pool in stream mode)
    se_clip_pool: str = "global"     # clip-mode SE pool: "global" (X3D) or "frame" (per-frame, = stream)
    temporal_fill: str = "zeros"     # "zeros" or "replicate"
    head_activation: str = "softmax"  # "softmax" (Kinetics) or "identity" (logits)
    # Conv.impl of the depthwise convs and of the dense one-frame convs (stem conv_xy, projection
    # shortcuts). "fused": on NVIDIA GPUs the step runs the depthwise convs as one Pallas kernel each and
    # the dense ones without library convolutions (H200, CoX3D-S_64 batch 64: 19.1k -> 27.6k frames/s fp32,
    # 25.8k -> 34.6k bf16, results/README.md), and clip mode and prefill run the depthwise convs in the
    # Pallas clip kernel (X3D-L clips 168 -> 478/s fp32, results/clip_pallas_h200.json); off NVIDIA GPUs
    # "auto" (XLA only).
    depthwise_impl: str = "fused"
    clip_depthwise_impl: str = ""     # clip-mode and prefill override ("" = depthwise_impl)
    dense_impl: str = "fused"         # "auto"/"lax" (library conv), "shift" (always without), "fused"
    # the depthwise convs (``b``, the stem's ``conv``) take the neighbouring activations when BN is folded
    # (Model.fold_batchnorm -> layers.fuse_activations): a_relu as b's input activation, b_relu (blocks
    # without SE) and the stem's relu as output activations, applied inside the fused Pallas step's kernel
    fuse_activations: bool = True

    @property
    def stem_dim(self) -> int:
        return round_width(self.conv1_dim, self.width_factor)

    @property
    def stage_dims(self) -> list[int]:
        return [round_width(self.stem_dim, m) for m in (1, 2, 4, 8)]

    @property
    def stage_depths(self) -> list[int]:
        return [int(math.ceil(self.depth_factor * d)) for d in (1, 2, 5, 3)]


def _bottleneck(cfg: X3DConfig, c_in: int, c_out: int, inner: int, stride: int, use_se: bool) -> Sequential:
    fill = cfg.temporal_fill
    layers = [
        ("a", Conv(c_in, inner)),
        ("a_bn", BatchNorm(inner)),
        ("a_relu", Activation("relu")),
        ("b", Conv(inner, inner, (3, 3, 3), (1, stride, stride), (1, 1, 1), groups=inner, temporal_fill=fill,
                   impl=cfg.depthwise_impl, clip_impl=cfg.clip_depthwise_impl, takes_activations=cfg.fuse_activations)),
        ("b_bn", BatchNorm(inner)),
    ]
    if use_se:
        layers.append(("se", squeeze_excitation(inner, round_width(inner, 0.0625), scope=cfg.se_scope,
                                                window=cfg.window, clip_pool=cfg.se_clip_pool, temporal_fill=fill)))
    layers += [
        ("b_relu", Activation("swish")),
        ("c", Conv(inner, c_out)),
        ("c_bn", BatchNorm(c_out)),
    ]
    return Sequential.of(*layers)


def _block(cfg: X3DConfig, c_in: int, c_out: int, inner: int, stride: int, use_se: bool) -> Sequential:
    return res_block(_bottleneck(cfg, c_in, c_out, inner, stride, use_se), c_in, c_out, stride,
                     proj_impl=cfg.dense_impl)


def build_x3d(cfg: X3DConfig) -> Sequential:
    """The X3D/CoX3D network as a :class:`Sequential` (``s1`` .. ``s5``, ``head``)."""
    c = cfg.stem_dim
    fill = cfg.temporal_fill
    stem = Sequential.of(
        ("conv_xy", Conv(3, c, (1, 3, 3), (1, 2, 2), (0, 1, 1), impl=cfg.dense_impl)),
        ("conv", Conv(c, c, (5, 1, 1), 1, (2, 0, 0), groups=c, temporal_fill=fill, impl=cfg.depthwise_impl,
                     clip_impl=cfg.clip_depthwise_impl, takes_activations=cfg.fuse_activations)),
        ("bn", BatchNorm(c)),
        ("relu", Activation("relu")),
    )
    stages = [("s1", stem)]
    c_in = c
    for s, (c_out, depth) in enumerate(zip(cfg.stage_dims, cfg.stage_depths)):
        inner = int(cfg.bottleneck_factor * c_out)
        blocks = [(f"res{i}", _block(cfg, c_in if i == 0 else c_out, c_out, inner, 2 if i == 0 else 1, i % 2 == 0))
                  for i in range(depth)]
        stages.append((f"s{s + 2}", Sequential.of(*blocks)))
        c_in = c_out
    inner = int(cfg.bottleneck_factor * c_in)
    final = math.ceil(cfg.image_size / 32)
    head = Sequential.of(
        ("conv_5", Conv(c_in, inner)),
        ("conv_5_bn", BatchNorm(inner)),
        ("conv_5_relu", Activation("relu")),
        ("avg_pool", Pool("avg", (cfg.window, final, final), 1, 0, temporal_fill=fill)),
        ("lin_5", Dense(inner, cfg.conv5_dim, bias=False)),
        ("lin_5_relu", Activation("relu")),
        ("projection", Dense(cfg.conv5_dim, cfg.num_classes)),
        ("act", Activation(cfg.head_activation)),
    )
    stages.append(("head", head))
    return Sequential.of(*stages)


X3D_SIZES = {
    "xs": dict(image_size=160, window=4, frame_rate=12),
    "s": dict(image_size=160, window=13, frame_rate=6),
    "m": dict(image_size=224, window=16, frame_rate=5),
    "l": dict(image_size=312, window=16, frame_rate=5, depth_factor=5.0),
}


def x3d(size: str, *, continual: bool, window: int | None = None, name: str | None = None, **options) -> Model:
    """Build X3D-``size`` (``continual=False``) or CoX3D-``size`` with head window ``window``."""
    if size not in X3D_SIZES:
        raise ValueError(f"unknown X3D size {size!r}; choose from {sorted(X3D_SIZES)}")
    base = dict(X3D_SIZES[size])
    clip_length = base["window"]
    if window is not None:
        base["window"] = int(window)
    unknown = set(options) - {f.name for f in dataclasses.fields(X3DConfig)}
    if unknown:
        raise TypeError(f"unknown X3D options {sorted(unknown)}")
    cfg = X3DConfig(**{**base, **options})
    if not isinstance(cfg.fuse_activations, bool):
        raise TypeError(f"X3D option fuse_activations must be a bool, got {cfg.fuse_activations!r}")
    if not continual:
        clip_length = cfg.window
    return Model(name=name or f"{'co' if continual else ''}x3d_{size}", net=build_x3d(cfg),
                 image_size=cfg.image_size, clip_length=clip_length, frame_rate=cfg.frame_rate,
                 num_classes=cfg.num_classes, normalisation=KINETICS, config=cfg, continual=continual)


# ------------------------------------------------------------------------------------ the family
_VARIANTS = {f"x3d_{s}": dict(size=s, continual=False) for s in X3D_SIZES}
_VARIANTS["cox3d_xs"] = dict(size="xs", continual=True)
for _size, _windows in (("s", (13, 64)), ("m", (16, 64)), ("l", (16, 64))):
    for _w in _windows:
        _VARIANTS[f"cox3d_{_size}_{_w}"] = dict(size=_size, continual=True, window=_w)

# ------------------------------------------------------------------------------------ torch checkpoints
# The porter's knowledge of X3D checkpoints (weight_port reads CHECKPOINTS; see models/checkpoints.py).
# Layouts: "slowfast" (PySlowFast, co3d: s1.pathway0_stem.*, s2.pathway0_res0.*, head.*), the hub
# of the mapping and the params' own naming by jax_to_pyslowfast; "pytorchvideo" (torch hub x3d_*:
# blocks.*). pytorchvideo differences: its stem names are swapped (blocks.0.conv.conv_t is the 1x3x3
# spatial conv, conv_xy the 5x1x1 temporal one; a file whose shapes say otherwise is read literally),
# the SE is norm_b.1.block.{0,2}, the head is blocks.<stages + 1>.pool.{pre_conv,pre_norm,post_conv}
# and .proj, and a shortcut with C_in == C_out (stage 2 block 0) has no BN: filled with an identity BN.
import re  # noqa: E402

from .checkpoints import CheckpointSpec, Naming, class_hint, jax_to_pyslowfast, vote  # noqa: E402

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
# stage depths of the public X3D variants (for hints on a wrong --arch)
KNOWN_DEPTHS = {(3, 5, 11, 7): "x3d_xs/x3d_s/x3d_m (cox3d_xs, cox3d_s_*, cox3d_m_*)",
                (5, 10, 25, 15): "x3d_l (cox3d_l_*)"}


def slowfast_to_pytorchvideo(key: str, num_stages: int = 4, swap_stem: bool = True) -> str | None:
    """The pytorchvideo name of a PySlowFast X3D key (``None`` if it has none). ``swap_stem=True``
    is pytorchvideo's naming (``conv_xy`` -> ``conv.conv_t``); ``False`` maps the stem literally."""
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


def stem_names_swapped(shapes) -> bool:
    """Whether a pytorchvideo checkpoint (``{key: shape}``) uses pytorchvideo's swapped stem names:
    ``blocks.0.conv.conv_t.weight`` of shape ``(C, 1, kT, 1, 1)`` with a spatial ``conv_xy`` means
    the names are literal; anything else (absent, ambiguous) is pytorchvideo's naming."""
    t, xy = shapes.get("blocks.0.conv.conv_t.weight"), shapes.get("blocks.0.conv.conv_xy.weight")
    if t is None or xy is None or len(t) != 5 or len(xy) != 5:
        return True
    return not (t[2] > 1 and t[3] == 1 and t[4] == 1 and xy[2] == 1 and xy[3] > 1)


def checkpoint_stage_depths(keys, layout: str) -> list[int]:
    """Blocks per stage found in a checkpoint's keys (for a wrong-arch hint)."""
    pattern = r"s(\d+)\.pathway0_res(\d+)\." if layout == "slowfast" else r"blocks\.(\d+)\.res_blocks\.(\d+)\."
    offset = 2 if layout == "slowfast" else 1
    depth: dict[int, int] = {}
    for k in keys:
        if m := re.match(pattern, k):
            s, i = int(m[1]) - offset, int(m[2])
            depth[s] = max(depth.get(s, 0), i + 1)
    return [depth[s] for s in sorted(depth)]


def _naming(src) -> Naming:
    if src.layout == "slowfast":
        return Naming(jax_to_pyslowfast)
    swap = stem_names_swapped(src.shapes)
    num_stages = len(src.config.stage_depths)

    def key(path: str) -> str:
        name = slowfast_to_pytorchvideo(jax_to_pyslowfast(path), num_stages, swap)
        if name is None:  # pragma: no cover - every JAX X3D leaf has a pytorchvideo name
            raise ValueError(f"internal: no pytorchvideo name for {path}")
        return name
    note = ("pytorchvideo stem: blocks.0.conv.conv_t is the 1x3x3 spatial conv (-> conv_xy), "
            "blocks.0.conv.conv_xy the 5x1x1 temporal conv (-> conv)" if swap else
            "pytorchvideo stem names are literal in this file (conv_t temporal, conv_xy spatial)")
    return Naming(key, (note,))


def _shortcut_bns(targets) -> list[str]:
    """pytorchvideo adds a shortcut BN only when C_in != C_out: the BNs of 1x1x1 shortcuts with C_in == C_out."""
    return [path[: -len("/branch1/kernel")] + "/branch1_bn" for path, shape in targets.items()
            if path.endswith("/skip/branch1/kernel") and shape[3] == shape[4]]


def _hints(src, key) -> list[str]:
    hints = []
    have, want = checkpoint_stage_depths(src.shapes, src.layout), list(src.config.stage_depths)
    if have and have != want:
        like = KNOWN_DEPTHS.get(tuple(have))
        hints.append(f"the checkpoint has stage depths {have}" + (f" like {like}" if like else "")
                     + f", --arch {src.arch} has {want}")
    return hints + class_hint(src, key("head/projection/kernel"))


# PySlowFast's recorded config (checkpoint["cfg"], cfg.dump()): the entries that tell the sizes
# apart. XS/S/M share every tensor shape, so a file's own config is the only thing that can say
# "these are X3D-M weights" when --arch says x3d_s.
_RECORDED = {"frames": ("DATA", "NUM_FRAMES"), "frame_rate": ("DATA", "SAMPLING_RATE"),
             "image_size": ("DATA", "TRAIN_CROP_SIZE"), "depth_factor": ("X3D", "DEPTH_FACTOR")}


def _size_profile(size: str) -> dict:
    """What PySlowFast's config of X3D-``size`` records (frames, stride, train crop, depth factor)."""
    s = X3D_SIZES[size]
    return {"frames": s["window"], "frame_rate": s["frame_rate"], "image_size": s["image_size"],
            "depth_factor": s.get("depth_factor", X3DConfig.depth_factor)}


def _recorded(config, src) -> list[str]:
    """Warnings when a checkpoint's recorded config names another architecture than ``src.arch``:
    ``MODEL.ARCH`` other than x3d, or the frames, stride, crop and depth factor of another X3D size."""
    def get(*path):
        node = config
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        return node

    out = []
    arch = get("MODEL", "ARCH")
    if isinstance(arch, str) and arch.lower() != "x3d":
        out.append(f"the checkpoint's recorded config names MODEL.ARCH {arch!r}, but --arch {src.arch} is X3D; "
                   "check that these are X3D weights")
    have = {k: v for k, p in _RECORDED.items()
            if isinstance(v := get(*p), (int, float)) and not isinstance(v, bool)}
    opts = FAMILY.options(src.arch)
    size = opts.get("size") if opts else None
    if not have or size not in X3D_SIZES:
        return out
    want = {**_size_profile(size), "image_size": src.config.image_size, "depth_factor": src.config.depth_factor,
            "frame_rate": src.config.frame_rate}
    if all(float(want[k]) == float(v) for k, v in have.items()):
        return out
    sizes = [s for s in X3D_SIZES if all(float(_size_profile(s)[k]) == float(v) for k, v in have.items())]
    if not sizes:  # e.g. fine-tuned with other clips: no other size named, no claim
        return out
    recorded = ", ".join(f"{'.'.join(_RECORDED[k])} {v:g}" for k, v in have.items())
    named = "/".join(f"X3D-{s.upper()}" for s in sizes)
    prefix = "cox3d" if opts.get("continual") else "x3d"
    suggest = " or ".join(f"{prefix}_{s}" + ("_*" if prefix == "cox3d" and s != "xs" else "") for s in sizes)
    out.append(f"the checkpoint's recorded config ({recorded}) describes {named}, but --arch {src.arch} is "
               f"X3D-{size.upper()} ({want['frames']} frames at stride {want['frame_rate']}, {want['image_size']} px, "
               f"depth factor {want['depth_factor']:g}); the tensor shapes are the same, so the weights convert: "
               f"check --arch (for {named} weights: {suggest})")
    return out


CHECKPOINTS = CheckpointSpec(
    label="X3D/CoX3D",
    layouts=("slowfast", "pytorchvideo"),
    detect=lambda keys: vote(keys, {"pytorchvideo": lambda k: k.startswith("blocks."),
                                    "slowfast": lambda k: re.match(r"(s\d+\.pathway0_|head\.)", k)}),
    unrecognised="unrecognised state dict layout: neither PySlowFast X3D names (s1.pathway0_stem.*, "
                 "s2.pathway0_res0.*, head.*) nor pytorchvideo names (blocks.*)",
    naming=_naming,
    relayout={"slowfast": "pyslowfast", "pytorchvideo": "pyslowfast"},
    linear=("head/projection",),
    optional_bns={"pytorchvideo": _shortcut_bns},
    hints=_hints,
    recorded=_recorded,
)
# ------------------------------------------------------------------------------------ end of torch checkpoints

FAMILY = FamilySpec(
    name="x3d",
    description="X3D/CoX3D",
    build=x3d,
    variants=_VARIANTS,
    patterns=(Pattern(r"cox3d_(xs|s|m|l)_(\d+)", lambda m: dict(size=m[1], continual=True, window=int(m[2])),
                      "cox3d_<size>_<window>", lambda o: f"cox3d_{o['size']}_{o['window']}"),),
    reported={
        "x3d_xs": Reported(59.37, 0.64), "x3d_s": Reported(64.71, 2.06), "x3d_m": Reported(67.24, 4.97),
        "x3d_l": Reported(69.29, 19.17), "cox3d_s_13": Reported(60.18, 0.17), "cox3d_s_64": Reported(67.33, 0.17),
        "cox3d_m_16": Reported(62.80, 0.33), "cox3d_m_64": Reported(71.03, 0.33),
        "cox3d_l_16": Reported(63.03, 1.25), "cox3d_l_64": Reported(71.61, 1.25),
    },
    # co3d's profiling scripts (reference §5.5): batch 64, 32 for the L size
    paper_batch=lambda name: 32 if name.startswith(("x3d_l", "cox3d_l")) else 64,
    checkpoints=CHECKPOINTS,
)
