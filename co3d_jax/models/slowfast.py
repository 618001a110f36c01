"""SlowFast-R50 8x8 and 4x16: clip baselines of the paper's table (reference co3d.md §2.4).

co3d's ``models/slowfast`` is PySlowFast's ``SlowFast`` (ResNet-50, ``slowfast`` temporal
kernels, no non-local) with hparams ``8x8_R50.yaml`` (alpha 4, fusion kernel 7) and
``4x16_R50.yaml`` (alpha 8, fusion kernel 5); both: beta^-1 = 8, fusion conv channel ratio 2,
32 fast frames at sampling rate 2, 256 px, normalisation 0.45 / 0.225 (co3d.md §5.1), Caffe2
``.pkl`` weights. pytorchvideo's ``create_slowfast`` builds the same network (torch hub
``slowfast_r50`` is the 8x8 one; the 4x16 one is ``slowfast_fusion_conv_kernel_size=(5, 1, 1),
slowfast_fusion_conv_stride=(8, 1, 1)``), which the tests use as the reference.

Input: one clip ``(B, T, H, W, 3)`` of ``T`` fast-pathway frames. The slow pathway takes frames
``torch.linspace(0, T - 1, T // alpha).long()`` of it (co3d's ``pack_slowfast_pathways`` and
pytorchvideo's hub ``PackPathway``; T=32: 8x8 -> 0, 4, 8, 13, 17, 22, 26, 31 and 4x16 -> 0, 10,
20, 31), see :func:`slow_indices`.

Network (PySlowFast names, which the params pytree mirrors):

* ``s1``: ``pathway0_stem`` (slow) conv 3->64 (1,7,7) and ``pathway1_stem`` (fast) conv 3->8
  (5,7,7), both stride (1,2,2), pad (k//2,3,3), then BN, ReLU, max pool (1,3,3) stride (1,2,2)
  pad (0,1,1) (-inf padding).
* ``s{1..4}_fuse``: ``conv_f2s`` (k,1,1) stride (alpha,1,1) pad (k//2,0,0) on the fast pathway,
  C -> 2C, ``bn``, ReLU, concatenated to the slow pathway's channels. None after ``s5``.
* ``s2..s5``: bottleneck stages, depths 3, 4, 6, 3; ``pathway0`` (slow) widths 256/512/1024/2048
  (inner 64..512), ``pathway1`` (fast) 1/8 of that. Block ``res{i}``: ``branch2`` = ``a`` (k,1,1)
  pad (k//2,0,0), ``a_bn``, ReLU, ``b`` (1,3,3) stride (1,s,s), ``b_bn``, ReLU, ``c`` 1x1x1,
  ``c_bn``; shortcut ``branch1`` 1x1x1 stride (1,s,s) + ``branch1_bn`` on block 0; ReLU(sum).
  Temporal kernel k: slow 1, 1, 3, 3 (res2..res5), fast 3 everywhere; spatial stride 1, 2, 2, 2.
  PySlowFast's ``pathway{0,1}_pool`` between s2_fuse and s3 is a (1,1,1) max pool, the
  identity; it is kept as :class:`IdentityPool` (no computation) only because ptflops counts it.
* ``head``: average pool per pathway, kernel (T/alpha, S/32, S/32) and (T, S/32, S/32) stride 1
  (= global at the configured size), concat (2048 + 256), ``projection`` Linear 2304 -> 400,
  softmax; positions (one at the configured size) are averaged after the softmax by
  :meth:`Model.forward`, as PySlowFast's test-mode head does.

Parameters (measured; BN statistics excluded): 8x8 34,566,488, 4x16 34,480,216 (the table's
34.48 M is the 4x16 count; its 66.25 "M" for 8x8 repeats that row's GFLOPs, a typo). The two
differ only in the fusion kernels: 43,136 x (7 - 5) weights.

GMACs per clip (:func:`co3d_jax.flops.paper_macs`, ptflops 0.7.5 convention, 256 px, 32 fast
frames): 8x8 66.432930592, 4x16 36.578399008 (table 66.25 / 36.46). Convolutions and the
projection are 65.7089 / 36.0992; the rest is element-wise counting: BN 2 / element, ReLU 2,
max and average pools 2 per input element, softmax 1. The table's older ptflops counted ReLU
and pools once and functionals not at all, which gives 66.2493 / 36.4570 = the table's 66.25 /
36.46, **provided** PySlowFast's identity ``pathway{0,1}_pool`` (14.68 M / 9.44 M input
elements) is counted, which is why :class:`IdentityPool` exists. Against pytorchvideo's model
(no identity pools, a final ``AdaptiveAvgPool3d`` on the logits and no softmax) our count is
ptflops 0.7.5 + 2 x pool elements + 400 - 800, asserted to the MAC in ``tests/test_slowfast.py``.

Clip-only: :meth:`Model.init_state` / :meth:`Model.step` raise ``NotImplementedError``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from ..layers import (Activation, BatchNorm, ClipOnlySequential, Conv, Dense, IdentityPool, Layer, Pathways, Pool,
                      Sequential, clip_length, fold_batchnorm)
from ..layers.base import check_input, static
from ..model import Model
from ..normalisation import KINETICS
from .spec import FamilySpec, Reported
from .blocks import res_block
from .resnet3d import bottleneck, stem

# R50 only: for R101 PySlowFast applies the temporal kernel to the first 6 of res4's 23 blocks
# (NUM_BLOCK_TEMP_KERNEL), which this builder does not model
_STAGE_DEPTHS = {50: (3, 4, 6, 3)}
# PySlowFast _TEMPORAL_KERNEL_BASIS["slowfast"]: (slow, fast) for the stem and res2..res5
_TEMPORAL_KERNELS = ((1, 5), (1, 3), (1, 3), (3, 3), (3, 3))


def slow_indices(frames: int, alpha: int) -> np.ndarray:
    """``torch.linspace(0, frames - 1, frames // alpha, dtype=torch.long)`` (co3d's
    ``pack_slowfast_pathways``): the slow pathway's frame indices. Computed as torch's CPU kernel
    does for integer dtypes: a float64 step, the first half from the start and the second half
    back from the end, truncated (checked against torch for every T <= 1024, alpha 2-16).
    pytorchvideo's hub ``PackPathway`` (float32 ``linspace`` then ``.long()``) agrees for the
    configured T = 32 but not for every T (e.g. T = 55, alpha = 2)."""
    n = frames // alpha
    if n < 1:
        raise ValueError(f"SlowFast: a clip of {frames} frames has no slow-pathway frame at alpha {alpha}")
    if n == 1:
        return np.zeros(1, np.int64)
    step = (frames - 1) / (n - 1)
    i = np.arange(n)
    vals = np.where(i < n // 2, step * i, (frames - 1) - step * (n - 1 - i))
    return vals.astype(np.int64)


# -------------------------------------------------------------------------------- layers
@static
class PackPathways(Layer):
    """``x -> (x[:, slow_indices(T, alpha)], x)``: the (slow, fast) pathway inputs."""

    alpha: int = 4

    def out_shape(self, in_shape):
        return (in_shape, in_shape)

    def clip_lengths(self, t: int):
        return (len(slow_indices(t, self.alpha)), t)

    def macs(self, in_shape, t=None):
        return 0  # index_select: not counted by ptflops

    def forward(self, params, x):
        check_input(self, x, clip=True)
        idx = slow_indices(x.shape[1], self.alpha)
        return (jnp.take(x, jnp.asarray(idx), axis=1), x)

    def step(self, params, state, x, valid):
        raise NotImplementedError("clip-only model: SlowFast has no continual (frame-by-frame) mode")


@static
class FuseFastToSlow(Layer):
    """PySlowFast ``FuseFastToSlow``: ``(xs, xf) -> (concat(xs, path(xf)), xf)`` where ``path`` is
    ``conv_f2s`` (k,1,1) stride (alpha,1,1), ``bn``, ReLU: the slow pathway ``(B, T/alpha, H, W,
    C_s)`` gains ``ratio * C_f`` channels from the fast one ``(B, T, H, W, C_f)``. Params are
    ``path``'s, ``{"conv_f2s": ..., "bn": ...}``. Build with :meth:`of`.

    ``path`` is an ordinary :class:`Sequential`, so training mode (batch-statistics BN) and
    :func:`~co3d_jax.layers.fold_batchnorm` (through :meth:`fold_batchnorm`) treat its BN like
    every other one."""

    path: Sequential

    @classmethod
    def of(cls, fast_channels: int, ratio: int = 2, kernel_t: int = 7, alpha: int = 4) -> "FuseFastToSlow":
        c, k = fast_channels, kernel_t
        return cls(Sequential.of(
            ("conv_f2s", Conv(c, c * ratio, (k, 1, 1), (alpha, 1, 1), (k // 2, 0, 0))),
            ("bn", BatchNorm(c * ratio)),
            ("relu", Activation("relu")),
        ))

    def out_shape(self, in_shape):
        slow, fast = in_shape
        return ((*slow[:-1], slow[-1] + self.path.out_shape(fast)[-1]), fast)

    def clip_lengths(self, t):
        return t

    def macs(self, in_shape, t=None):
        return self.path.macs(in_shape[1], None if t is None else t[1])  # torch.cat: not counted

    def init(self, key, in_shape):
        return self.path.init(key, in_shape[1])

    def forward(self, params, xs):
        slow, fast = xs
        return self._concat(slow, self.path.forward(params, fast)), fast

    def forward_train(self, params, xs):
        """Training mode: ``path``'s BN normalises with batch statistics and its running
        statistics come back updated, as :meth:`BatchNorm.forward_train` does."""
        slow, fast = xs
        fused, params = self.path.forward_train(params, fast)
        return (self._concat(slow, fused), fast), params

    def fold_batchnorm(self, params):
        """``(layer', params')`` with ``conv_f2s`` and ``bn`` merged (the hook
        :func:`~co3d_jax.layers.fold_batchnorm` calls)."""
        path, params = fold_batchnorm(self.path, params)
        return dataclasses.replace(self, path=path), params

    @staticmethod
    def _concat(slow, fused):
        """``slow`` ``(B, T_s, H, W, C_s)`` and ``fused`` ``(B, T_s, H, W, C_fused)`` -> ``(B, T_s,
        H, W, C_s + C_fused)``."""
        if fused.shape[1] != slow.shape[1]:
            raise ValueError(f"FuseFastToSlow: the fast pathway gives {fused.shape[1]} fused frames for "
                             f"{slow.shape[1]} slow frames (clip length / alpha mismatch)")
        return jnp.concatenate([slow, fused.astype(slow.dtype)], axis=-1)

    def step(self, params, state, x, valid):
        raise NotImplementedError("clip-only model: SlowFast has no continual (frame-by-frame) mode")


@static
class SlowFastHead(Layer):
    """PySlowFast ``ResNetBasicHead``: per-pathway average pool (stride 1), concat,
    ``projection``, activation (per position). Params ``{"projection": ...}``."""

    channels: tuple = (2048, 256)
    pool_kernels: tuple = ((8, 8, 8), (32, 8, 8))
    num_classes: int = 400
    activation: str = "softmax"

    @property
    def pools(self):
        return tuple(Pool("avg", k, 1, 0) for k in self.pool_kernels)

    @property
    def projection(self) -> Dense:
        return Dense(sum(self.channels), self.num_classes)

    def _pooled_shapes(self, in_shape):
        return tuple(p.out_shape(s) for p, s in zip(self.pools, in_shape))

    def out_shape(self, in_shape):
        h, w, _ = self._pooled_shapes(in_shape)[0]
        return (h, w, self.num_classes)

    def clip_lengths(self, t):
        return clip_length(self.pools[0], t[0])

    def macs(self, in_shape, t=None):
        if t is None:
            raise NotImplementedError("clip-only model: SlowFast has no continual (frame-by-frame) mode")
        total = sum(p.macs(s, ti) for p, s, ti in zip(self.pools, in_shape, t))
        pooled = self._pooled_shapes(in_shape)
        t_out = clip_length(self.pools[0], t[0])
        cat = (*pooled[0][:-1], sum(s[-1] for s in pooled))
        total += self.projection.macs(cat, t_out)
        return total + Activation(self.activation).macs(self.out_shape(in_shape), t_out)

    def init(self, key, in_shape=None):
        return {"projection": self.projection.init(key)}

    def forward(self, params, xs):
        pooled = [p.forward(None, x) for p, x in zip(self.pools, xs)]
        if len({y.shape[1:4] for y in pooled}) != 1:
            raise ValueError(f"SlowFastHead: pooled pathway shapes differ: {[tuple(y.shape) for y in pooled]} "
                             f"(pool kernels {self.pool_kernels} do not fit the clip)")
        y = self.projection.apply(params["projection"], jnp.concatenate(pooled, axis=-1))
        return Activation(self.activation).apply(None, y)

    def step(self, params, state, x, valid):
        raise NotImplementedError("clip-only model: SlowFast has no continual (frame-by-frame) mode")


class SlowFastNet(ClipOnlySequential):
    """Root container: pack, s1, s1_fuse, ..., s5, head. Clip mode only; its ``macs`` follow the
    two pathways' clip lengths separately (:func:`~co3d_jax.layers.clip_length` through
    ``clip_lengths`` of :class:`PackPathways`, :class:`~co3d_jax.layers.Pathways`, ...)."""


# -------------------------------------------------------------------------------- config / builder
@dataclasses.dataclass(frozen=True)
class SlowFastConfig:
    """Hyper-parameters (co3d ``hparams/*_R50.yaml``). ``clip_length`` is the number of fast
    frames; ``image_size`` and ``clip_length`` set the head's pool kernels, as PySlowFast does."""

    alpha: int = 4
    beta_inv: int = 8
    fusion_conv_channel_ratio: int = 2
    fusion_kernel_size: int = 7
    depth: int = 50
    width_per_group: int = 64
    image_size: int = 256
    clip_length: int = 32
    frame_rate: int = 2
    num_classes: int = 400
    head_activation: str = "softmax"  # "softmax", "sigmoid" or "identity" (logits)

    @property
    def stage_depths(self) -> tuple:
        return _STAGE_DEPTHS[self.depth]

    @property
    def head_pool_kernels(self) -> tuple:
        s = self.image_size // 32
        return ((self.clip_length // self.alpha, s, s), (self.clip_length, s, s))


def _bottleneck_block(c_in: int, c_out: int, inner: int, kt: int, stride: int) -> Sequential:
    return res_block(bottleneck(c_in, c_out, inner, kt, stride), c_in, c_out, stride, continual=False)


def build_slowfast(cfg: SlowFastConfig) -> SlowFastNet:
    w, beta, ratio = cfg.width_per_group, cfg.beta_inv, cfg.fusion_conv_channel_ratio
    fuse = dict(ratio=ratio, kernel_t=cfg.fusion_kernel_size, alpha=cfg.alpha)
    k_stem = _TEMPORAL_KERNELS[0]
    children = [
        ("pack", PackPathways(cfg.alpha)),
        ("s1", Pathways.of(("pathway0_stem", stem(w, k_stem[0])), ("pathway1_stem", stem(w // beta, k_stem[1])),
                           auto_delay=False)),
        ("s1_fuse", FuseFastToSlow.of(w // beta, **fuse)),
    ]
    slow_in, fast_in = w + w // beta * ratio, w // beta
    for s, depth in enumerate(cfg.stage_depths):
        slow_out, slow_inner = w * 4 * 2 ** s, w * 2 ** s
        fast_out, fast_inner = slow_out // beta, slow_inner // beta
        stride = 1 if s == 0 else 2
        k_slow, k_fast = _TEMPORAL_KERNELS[s + 1]
        pathways = []
        for p, (c_in, c_out, inner, kt) in enumerate(((slow_in, slow_out, slow_inner, k_slow),
                                                       (fast_in, fast_out, fast_inner, k_fast))):
            blocks = [(f"res{i}", _bottleneck_block(c_in if i == 0 else c_out, c_out, inner, kt,
                                                    stride if i == 0 else 1)) for i in range(depth)]
            pathways.append((f"pathway{p}", Sequential.of(*blocks)))
        children.append((f"s{s + 2}", Pathways.of(*pathways, auto_delay=False)))
        if s + 1 < len(cfg.stage_depths):
            children.append((f"s{s + 2}_fuse", FuseFastToSlow.of(fast_out, **fuse)))
            if s == 0:  # PySlowFast's identity pools between s2 and s3 (_POOL1["slowfast"] = 1x1x1)
                children.append(("pathway_pool", Pathways.of(("pathway0_pool", IdentityPool()),
                                                             ("pathway1_pool", IdentityPool()), auto_delay=False)))
            slow_in, fast_in = slow_out + fast_out * ratio, fast_out
        else:
            slow_in, fast_in = slow_out, fast_out
    children.append(("head", SlowFastHead((slow_in, fast_in), cfg.head_pool_kernels, cfg.num_classes,
                                          cfg.head_activation)))
    return SlowFastNet.of(*children)


SLOWFAST_VARIANTS = {
    "8x8": dict(alpha=4, fusion_kernel_size=7),
    "4x16": dict(alpha=8, fusion_kernel_size=5),
}


def slowfast_r50(variant: str, *, name: str | None = None, **options) -> Model:
    """SlowFast-R50 ``variant`` (``"8x8"`` or ``"4x16"``); ``options`` are
    :class:`SlowFastConfig` fields."""
    if variant not in SLOWFAST_VARIANTS:
        raise ValueError(f"unknown SlowFast variant {variant!r}; choose from {sorted(SLOWFAST_VARIANTS)}")
    unknown = set(options) - {f.name for f in dataclasses.fields(SlowFastConfig)}
    if unknown:
        raise TypeError(f"unknown SlowFast options {sorted(unknown)}")
    cfg = SlowFastConfig(**{**SLOWFAST_VARIANTS[variant], **options})
    if cfg.depth not in _STAGE_DEPTHS:
        raise ValueError(f"SlowFast: depth must be one of {sorted(_STAGE_DEPTHS)}, got {cfg.depth}")
    if cfg.head_activation not in ("softmax", "sigmoid", "identity"):
        raise ValueError(f"SlowFast: head_activation must be softmax, sigmoid or identity, got {cfg.head_activation!r}")
    if cfg.clip_length // cfg.alpha < 1 or cfg.image_size < 32:
        raise ValueError(f"SlowFast: clip_length {cfg.clip_length} / image_size {cfg.image_size} too small "
                         f"(need >= alpha = {cfg.alpha} frames and >= 32 px)")
    return Model(name=name or f"slowfast_{variant}_r50", net=build_slowfast(cfg), image_size=cfg.image_size,
                 clip_length=cfg.clip_length, frame_rate=cfg.frame_rate, num_classes=cfg.num_classes,
                 normalisation=KINETICS, config=cfg, continual=False)


FAMILY = FamilySpec(
    name="slowfast",
    description="SlowFast-R50",
    build=slowfast_r50,
    variants={f"slowfast_{v}_r50": dict(variant=v) for v in SLOWFAST_VARIANTS},
    final_bn="c_bn",
    reported={"slowfast_8x8_r50": Reported(68.45, 66.25), "slowfast_4x16_r50": Reported(67.06, 36.46)},
    paper_batch=lambda name: 16,  # co3d's profiling scripts (reference §5.5)
)
