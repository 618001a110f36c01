"""R(2+1)D-18, the clip baseline of the paper's table (reference co3d.md §2.4), and CoR(2+1)D-18,
its continual form (issue #21; not in the paper).

co3d's ``models/r2plus1d/main.py`` is torchvision's
``VideoResNet(BasicBlock, [Conv2Plus1D] * 4, [2, 2, 2, 2], R2Plus1dStem)`` (= torchvision
``models.video.r2plus1d_18``), evaluated at 112 px on ``T = 8`` or ``16`` consecutive frames
(sampling rate 1) with ImageNet normalisation (co3d.md §5.1: the R(2+1)D test scripts pass
``--normalisation_style imagenet``, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)).

Structure (torchvision, checked against torchvision 0.29.1):

* ``stem``: ``0`` conv 3->45 (1,7,7) stride (1,2,2) pad (0,3,3), ``1`` BN, ``2`` ReLU, ``3`` conv
  45->64 (3,1,1) pad (1,0,0), ``4`` BN, ``5`` ReLU.
* ``layer1..4``: two ``BasicBlock`` s each (64, 128, 256, 512 channels). Block ``conv1`` =
  ``Sequential(Conv2Plus1D(in, out, mid, stride), BN, ReLU)``, ``conv2`` =
  ``Sequential(Conv2Plus1D(out, out, mid), BN)``; ``Conv2Plus1D`` = (1,3,3) conv stride
  (1,s,s) pad (0,1,1) -> BN -> ReLU -> (3,1,1) conv stride **(s,1,1)** pad (1,0,0). ``mid`` =
  ``(in*out*27) // (in*9 + 3*out)`` is computed once per block from the block's ``in``/``out``
  and used by **both** of its Conv2Plus1D (so block 0 of layer 2 has 230 mid channels in conv1 and
  conv2 alike, block 1 has 288). Stride 2 (temporal and spatial) in block 0 of layers 2-4, with
  the shortcut ``downsample`` = 1x1x1 conv stride (2,2,2) + BN; layer 1 has none (64 -> 64).
  Output ``ReLU(conv2(conv1(x)) + shortcut)``.
* ``avgpool`` (global average), ``fc`` 512 -> 400, then the head activation (softmax by
  default; torchvision returns logits, co3d's top-k is computed on softmax scores).

Temporal sizes: T=8 -> 8 (stem) -> 8, 4, 2, 1 (layers 1-4); T=16 -> 16, 8, 4, 2.

Params pytree paths mirror the torchvision names, which the porter
(:mod:`weight_port.r2plus1d`) uses verbatim: ``stem/0/kernel`` <-> ``stem.0.weight``,
``layer2/0/residual/main/conv1/0/3/kernel`` <-> ``layer2.0.conv1.0.3.weight``,
``layer2/0/residual/downsample/1/var`` <-> ``layer2.0.downsample.1.running_var``,
``fc/kernel`` <-> ``fc.weight`` (transposed).

Counts (co3d.md §5.5 conventions, :func:`co3d_jax.flops.paper_macs`):

* parameters 31,505,325 (the table's 31.51 M), equal to torchvision's ``p.numel()`` sum;
* GMACs per clip at 112 px: 20.384452364 (T=8) and 40.768699128 (T=16) against the table's
  20.35 / 40.71. The convolutions alone are 20.2594 / 40.5189 GMACs (fc 0.0002); the rest is
  ptflops 0.7.5's element-wise counting, as for the X3D rows: BN 2 / element, ReLU 2 / element
  (module hook + patched ``F.relu``), ``AdaptiveAvgPool3d`` 2 / element; ``out += residual`` is
  not counted. The table was made with an older ptflops that counted ReLU and pools once per
  element (hook only, no functional patching): conv + fc + BN (2) + ReLU (1) + pool (1) gives
  20.3535 / 40.7068 GMACs, i.e. the table's 20.35 / 40.71 exactly. Our count equals ptflops
  0.7.5 on torchvision's model plus 400 MACs for the softmax (``F.softmax`` counts one per
  element; the torch model returns logits), asserted to the MAC in ``tests/test_r2plus1d.py``.

Clip models (``r2plus1d_18_<T>``): :meth:`Model.init_state` / :meth:`Model.step` raise
``NotImplementedError``.

CoR(2+1)D-18 (``cor2plus1d_18_<T>``, ``T`` a multiple of 8; registered ``_8`` and ``_16``): the
same network and params tree (the same weights load), stepped frame by frame. Every (3,1,1)
conv is a continual conv with zero fill (= the clip model's zero padding at the stream start),
the stride-2 ones of layers 2-4 included; a block's shortcut is ``Delay(main.delay)`` (identity)
or ``Delay(3)`` *before* the (2,2,2)-strided projection (a Delay after it would count stride-2
steps); the head is a (T/8, ceil(S/16), ceil(S/16)) average pool over the last T/8 layer-4
outputs, i.e. the features of the last T input frames, then ``fc`` and the activation.
Metadata (frames): stem delay 1, each layer-1 block 2, layer 2 3 + 2x2, layer 3 (3 + 2x2) x 2,
layer 4 (3 + 2x2) x 4: **D = 54 + 8 (T/8 - 1)** (54 for T=8, 62 for T=16), padding 54,
receptive field D + 55 (109 / 117), **stride 8**: it emits at t = D, D + 8, D + 16, ..., and the
output at t equals the clip model's features over frames 0..t (zero padded before frame 0)
averaged over layer-4 positions (t - D)/8 .. (t - D)/8 + T/8 - 1 (``tests/test_cor2plus1d.py``
against torchvision). Layers after each temporal stride run under ``lax.cond`` only on steps
where it emits (:class:`StridedSequential` at the root, in each layer and each main branch).
Per-step GMACs at 112 px (:func:`co3d_jax.flops.paper_step_macs`, paper convention): 4.923 on an
emitting step, 1.637 on a step where no stride emits, **2.627 per frame** averaged over the
stride-8 period (an 8-frame clip costs 2.55 per frame, so a prediction every 8 frames over 16
frames costs half the clip model's).
"""

from __future__ import annotations

import dataclasses

from ..layers import (Activation, BatchNorm, ClipOnlySequential, Conv, Delay, Dense, GlobalAvgPool, Pool, Sequential,
                      StridedSequential, broadcast_reduce)
from ..model import Model
from ..normalisation import IMAGENET
from .spec import FamilySpec, Pattern, Reported

TEMPORAL_STRIDE = 8  # layers 2-4 halve time once each


@dataclasses.dataclass(frozen=True)
class R2Plus1DConfig:
    """Hyper-parameters. ``clip_length`` (8 or 16) and ``image_size`` only set the model's
    nominal input; the network itself accepts any clip the strides allow."""

    image_size: int = 112
    clip_length: int = 8
    frame_rate: int = 1
    num_classes: int = 400
    layers: tuple = (2, 2, 2, 2)
    head_activation: str = "softmax"  # "softmax" or "identity" (logits)
    continual: bool = False

    @property
    def window(self) -> int:
        """The continual head window in input frames (= ``clip_length``)."""
        return self.clip_length

    @property
    def head_kernel(self) -> tuple:
        """Continual head: average pool over the last ``clip_length // 8`` layer-4 outputs (= the
        last ``clip_length`` input frames' features) and the final ``ceil(size / 16)`` map."""
        f = -(-self.image_size // 16)
        return (self.clip_length // TEMPORAL_STRIDE, f, f)


def midplanes(inplanes: int, planes: int) -> int:
    """torchvision ``BasicBlock``'s ``(in*out*3*3*3) // (in*3*3 + 3*out)``."""
    return (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)


def conv2plus1d(c_in: int, c_out: int, mid: int, stride: int = 1) -> Sequential:
    """torchvision ``Conv2Plus1D``: spatial (1,3,3) stride (1,s,s) -> BN -> ReLU -> temporal
    (3,1,1) stride (s,1,1)."""
    return Sequential.of(
        ("0", Conv(c_in, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1))),
        ("1", BatchNorm(mid)),
        ("2", Activation("relu")),
        ("3", Conv(mid, c_out, (3, 1, 1), (stride, 1, 1), (1, 0, 0))),
    )


def basic_block(c_in: int, c_out: int, stride: int, continual: bool = False) -> Sequential:
    """torchvision ``BasicBlock``. ``continual``: the main branch skips ``conv2`` on steps where
    the strided ``conv1`` does not emit (:class:`StridedSequential`), and the shortcut starts with
    ``delay`` = ``Delay(main.delay)`` *before* its temporally strided projection, so that it emits
    on the main branch's frames (a Delay after it would count stride-2 steps); the params tree is
    the clip model's (the Delay has none)."""
    mid = midplanes(c_in, c_out)
    main = (StridedSequential if continual else Sequential).of(
        ("conv1", Sequential.of(("0", conv2plus1d(c_in, c_out, mid, stride)), ("1", BatchNorm(c_out)),
                                ("2", Activation("relu")))),
        ("conv2", Sequential.of(("0", conv2plus1d(c_out, c_out, mid)), ("1", BatchNorm(c_out)))),
    )
    delay = [("delay", Delay(main.delay))] if continual else []
    if stride != 1 or c_in != c_out:
        skip = ("downsample", Sequential.of(*delay, ("0", Conv(c_in, c_out, 1, (stride, stride, stride))),
                                            ("1", BatchNorm(c_out))))
    else:
        skip = ("skip", delay[0][1] if continual else Activation("identity"))
    # the delays are explicit (auto_delay would nest the shortcut one level down and rename its params)
    return Sequential.of(("residual", broadcast_reduce(skip, ("main", main), auto_delay=False)),
                         ("relu", Activation("relu")))


def build_r2plus1d(cfg: R2Plus1DConfig) -> Sequential:
    """The network: a :class:`ClipOnlySequential` (clip model) or, with ``cfg.continual``, a
    :class:`StridedSequential` whose layers after a temporal stride run only on steps where it
    emits, with the window-average head."""
    stem = Sequential.of(
        ("0", Conv(3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3))),
        ("1", BatchNorm(45)),
        ("2", Activation("relu")),
        ("3", Conv(45, 64, (3, 1, 1), 1, (1, 0, 0))),
        ("4", BatchNorm(64)),
        ("5", Activation("relu")),
    )
    children = [("stem", stem)]
    c_in = 64
    for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), cfg.layers)):
        stride = 1 if i == 0 else 2
        blocks = [(str(b), basic_block(c_in if b == 0 else planes, planes, stride if b == 0 else 1, cfg.continual))
                  for b in range(depth)]
        children.append((f"layer{i + 1}", (StridedSequential if cfg.continual else Sequential).of(*blocks)))
        c_in = planes
    pool = Pool("avg", cfg.head_kernel, 1, 0) if cfg.continual else GlobalAvgPool()
    children += [("avgpool", pool), ("fc", Dense(c_in, cfg.num_classes)), ("act", Activation(cfg.head_activation))]
    return (StridedSequential if cfg.continual else ClipOnlySequential).of(*children)


def r2plus1d_18(frames: int = 8, *, continual: bool = False, window: int | None = None, name: str | None = None,
                **options) -> Model:
    """R(2+1)D-18 for ``frames``-frame clips (registry ``r2plus1d_18_8``, ``r2plus1d_18_16``), or
    with ``continual=True`` CoR(2+1)D-18 whose head averages the last ``window`` (default
    ``frames``) frames' features (``cor2plus1d_18_<window>``, a multiple of 8); ``options`` are
    :class:`R2Plus1DConfig` fields (``clip_length`` overrides both)."""
    if window is not None:
        if not continual:
            raise TypeError("unknown R(2+1)D options ['window'] (a head window is a continual option; the clip "
                            "models take clip_length)")
        frames = window
    unknown = set(options) - {f.name for f in dataclasses.fields(R2Plus1DConfig)}
    if unknown:
        raise TypeError(f"unknown R(2+1)D options {sorted(unknown)}")
    if options.get("head_activation", "softmax") not in ("softmax", "identity", "sigmoid"):
        raise ValueError(f"R(2+1)D: head_activation must be softmax, sigmoid or identity, got "
                         f"{options['head_activation']!r}")
    cfg = R2Plus1DConfig(**{"clip_length": int(frames), **options, "continual": continual})
    if continual and (cfg.clip_length < TEMPORAL_STRIDE or cfg.clip_length % TEMPORAL_STRIDE):
        raise ValueError(f"CoR(2+1)D: the head window must be a positive multiple of {TEMPORAL_STRIDE} frames "
                         f"(the network's temporal stride), got {cfg.clip_length}")
    default = f"{'co' if continual else ''}r2plus1d_18_{cfg.clip_length}"
    return Model(name=name or default, net=build_r2plus1d(cfg), image_size=cfg.image_size,
                 clip_length=cfg.clip_length, frame_rate=cfg.frame_rate, num_classes=cfg.num_classes,
                 normalisation=IMAGENET, config=cfg, continual=continual)


# ------------------------------------------------------------------------------------ torch checkpoints
# The porter's knowledge of R(2+1)D checkpoints (weight_port reads CHECKPOINTS; see
# models/checkpoints.py): torchvision's r2plus1d_18 state dict (reference co3d.md §3.1), whose names
# co3d uses verbatim and so do our params paths: stem.{0,3}.weight, stem.{1,4}.* (BNs),
# layer{1..4}.{0,1}.conv{1,2}.0.{0,3}.weight (the Conv2Plus1D convs), .conv{1,2}.0.1.* (its inner BN),
# .conv{1,2}.1.*, layer{2,3,4}.0.downsample.{0,1}.*, fc.weight (400, 512), fc.bias.
from .checkpoints import CheckpointSpec, Naming, class_hint, torch_leaf  # noqa: E402


def jax_to_torchvision(path: str) -> str:
    """``layer2/0/residual/main/conv1/0/3/kernel`` -> ``layer2.0.conv1.0.3.weight``: drop the
    ``residual`` and ``main`` levels, join with ``.``, rename the leaf."""
    *mods, _ = path.split("/")
    mods = [m for m in mods if m not in ("residual", "main")]
    if not mods:
        raise ValueError(f"internal: no torchvision name for JAX parameter {path!r}")
    return ".".join([*mods, torch_leaf(path)])


def _detect(keys) -> str | None:
    keys = list(keys)
    hits = sum(k.startswith(("stem.", "layer1.", "layer2.", "layer3.", "layer4.", "fc.")) for k in keys)
    return "torchvision" if keys and hits >= len(keys) // 2 and any(k.startswith("stem.") for k in keys) else None


CHECKPOINTS = CheckpointSpec(
    label="R(2+1)D",
    layouts=("torchvision",),
    detect=_detect,
    unrecognised="unrecognised state dict layout: not a torchvision R(2+1)D state dict (stem.*, layer1..4.*, fc.*)",
    naming=lambda src: Naming(jax_to_torchvision),
    hints=lambda src, key: class_hint(src, "fc.weight", "pass num_classes={n}"),
)
# ------------------------------------------------------------------------------------ end of torch checkpoints

_VARIANTS = {f"r2plus1d_18_{t}": dict(frames=t) for t in (8, 16)}
_VARIANTS.update({f"cor2plus1d_18_{t}": dict(window=t, continual=True) for t in (8, 16)})

FAMILY = FamilySpec(
    name="r2plus1d",
    description="R(2+1)D-18/CoR(2+1)D-18",
    build=r2plus1d_18,
    variants=_VARIANTS,
    patterns=(Pattern(r"cor2plus1d_18_(\d+)", lambda m: dict(window=int(m[1]), continual=True),
                      "cor2plus1d_18_<window>", lambda o: f"cor2plus1d_18_{o['window']}"),),
    head="fc",
    final_bn=None,
    reported={"r2plus1d_18_8": Reported(53.52, 20.35), "r2plus1d_18_16": Reported(59.29, 40.71)},
    paper_batch=lambda name: 32,  # co3d's profiling scripts (reference §5.5)
    checkpoints=CHECKPOINTS,
)
