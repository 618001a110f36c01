"""R(2+1)D-18: the clip baseline of the paper's table (reference co3d.md §2.4), clip mode only.

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

Clip-only: :meth:`Model.init_state` / :meth:`Model.step` raise ``NotImplementedError``
(temporally strided residual stages were never continualised in co3d).
"""

from __future__ import annotations

import dataclasses

from ..layers import (Activation, BatchNorm, ClipOnlySequential, Conv, Dense, GlobalAvgPool, Sequential,
                      broadcast_reduce)
from ..model import Model
from ..normalisation import IMAGENET
from .spec import FamilySpec, Reported


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


def basic_block(c_in: int, c_out: int, stride: int) -> Sequential:
    mid = midplanes(c_in, c_out)
    main = Sequential.of(
        ("conv1", Sequential.of(("0", conv2plus1d(c_in, c_out, mid, stride)), ("1", BatchNorm(c_out)),
                                ("2", Activation("relu")))),
        ("conv2", Sequential.of(("0", conv2plus1d(c_out, c_out, mid)), ("1", BatchNorm(c_out)))),
    )
    if stride != 1 or c_in != c_out:
        skip = ("downsample", Sequential.of(("0", Conv(c_in, c_out, 1, (stride, stride, stride))),
                                            ("1", BatchNorm(c_out))))
    else:
        skip = ("skip", Activation("identity"))
    # clip-only: no stream-mode delay alignment of the shortcut (auto_delay would rename it)
    return Sequential.of(("residual", broadcast_reduce(skip, ("main", main), auto_delay=False)),
                         ("relu", Activation("relu")))


def build_r2plus1d(cfg: R2Plus1DConfig) -> ClipOnlySequential:
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
        blocks = [(str(b), basic_block(c_in if b == 0 else planes, planes, stride if b == 0 else 1))
                  for b in range(depth)]
        children.append((f"layer{i + 1}", Sequential.of(*blocks)))
        c_in = planes
    children += [("avgpool", GlobalAvgPool()), ("fc", Dense(c_in, cfg.num_classes)),
                 ("act", Activation(cfg.head_activation))]
    return ClipOnlySequential.of(*children)


def r2plus1d_18(frames: int = 8, *, name: str | None = None, **options) -> Model:
    """R(2+1)D-18 for ``frames``-frame clips (registry ``r2plus1d_18_8``, ``r2plus1d_18_16``);
    ``options`` are :class:`R2Plus1DConfig` fields (``clip_length`` overrides ``frames``)."""
    unknown = set(options) - {f.name for f in dataclasses.fields(R2Plus1DConfig)}
    if unknown:
        raise TypeError(f"unknown R(2+1)D options {sorted(unknown)}")
    if options.get("head_activation", "softmax") not in ("softmax", "identity", "sigmoid"):
        raise ValueError(f"R(2+1)D: head_activation must be softmax, sigmoid or identity, got "
                         f"{options['head_activation']!r}")
    cfg = R2Plus1DConfig(**{"clip_length": int(frames), **options})
    return Model(name=name or f"r2plus1d_18_{cfg.clip_length}", net=build_r2plus1d(cfg), image_size=cfg.image_size,
                 clip_length=cfg.clip_length, frame_rate=cfg.frame_rate, num_classes=cfg.num_classes,
                 normalisation=IMAGENET, config=cfg, continual=False)


FAMILY = FamilySpec(
    name="r2plus1d",
    description="R(2+1)D-18",
    build=r2plus1d_18,
    variants={f"r2plus1d_18_{t}": dict(frames=t) for t in (8, 16)},
    head="fc",
    final_bn=None,
    reported={"r2plus1d_18_8": Reported(53.52, 20.35), "r2plus1d_18_16": Reported(59.29, 40.71)},
    paper_batch=lambda name: 32,  # co3d's profiling scripts (reference §5.5)
)
