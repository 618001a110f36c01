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

Clip models: :meth:`Model.init_state` / :meth:`Model.step` raise ``NotImplementedError``.

CoSlowFast-R50 (``coslowfast_8x8_r50``, ``coslowfast_4x16_r50``; head window ``window=T``
frames, default 32, also ``coslowfast_<v>_r50_<T>``; issue #21, not in the paper): the same
network and params tree (the same weights load), stepped frame by frame. The fast pathway steps
on every frame; the slow pathway on every alpha-th frame (frames 0, alpha, 2 alpha, ... of the
stream: uniform sampling, not ``linspace``, which no causal stream can do); every temporal conv is
a continual conv with zero fill, the fusions' ``conv_f2s`` (stride alpha) included; the two inputs
of each fusion's concatenation and of the head are aligned by delays computed in
:func:`build_slowfast` (a slow pathway can only wait whole slow steps, so the fast side takes
the remainder, placed before the strided conv / pool); the head averages the last T/alpha slow
and the last T fast outputs (the fast pool strided by alpha). Validity is a per-pathway tuple
between the pack and the head (:class:`~co3d_jax.layers.Pathways`), and a pathway's layers are
skipped under ``lax.cond`` on frames where it has no input. Metadata (input frames; window 32):
8x8 delay 76, receptive field 125, padding 48; 4x16 delay 112, RF 196, padding 83; a window T
adds T - 32 to both. **Stride alpha**: it emits at t = D, D + alpha, ..., and the output at t
equals the clip SlowFast over frames 0..t (zero padded before frame 0) with slow input
``x[::alpha]``, its pathway features averaged over slow outputs (t - D)/alpha .. + T/alpha - 1 and
fast outputs t - D .. t - D + T - 1 (``tests/test_coslowfast.py`` against pytorchvideo). Per-step
GMACs at 256 px (:func:`co3d_jax.flops.paper_step_macs`): 8x8 7.692 emitting, 0.409 on a step
where only the fast pathway runs, **2.229 per frame** averaged over alpha frames (the clip model:
2.08 per frame of a 32-frame clip); 4x16 7.640 / 0.357 / **1.268** (clip 1.14).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from ..layers import (Activation, BatchNorm, ClipOnlySequential, Conv, Delay, Dense, IdentityPool, Layer, Out, Pathways,
                      Pool, Sequential, clip_length, fold_batchnorm)
from ..layers.base import check_input, counter_advance, counter_init, gate, scan_prefill, static
from ..model import Model
from ..normalisation import KINETICS
from .spec import FamilySpec, Pattern, Reported
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
    """``x -> (x[:, slow_indices(T, alpha)], x)``: the (slow, fast) pathway inputs. ``uniform``
    (the continual model): the slow pathway takes every ``alpha``-th frame, ``x[:, ::alpha]``,
    and in stream mode the slow output is valid on the 0th, alpha-th, 2 alpha-th ... valid frame
    (a per-stream validity tuple ``(slow, fast)``)."""

    alpha: int = 4
    uniform: bool = False

    def indices(self, frames: int) -> np.ndarray:
        return np.arange(0, frames, self.alpha) if self.uniform else slow_indices(frames, self.alpha)

    def out_shape(self, in_shape):
        return (in_shape, in_shape)

    def clip_lengths(self, t: int):
        return (len(self.indices(t)), t)

    def macs(self, in_shape, t=None):
        return 0  # index_select: not counted by ptflops

    def rated_macs(self, in_shape, rate, skip, recurse):
        return 0, (0.0 if skip else rate / self.alpha, rate)

    def forward(self, params, x):
        check_input(self, x, clip=True)
        return (jnp.take(x, jnp.asarray(self.indices(x.shape[1])), axis=1), x)

    def init_state(self, batch, in_shape, dtype=jnp.float32):
        return {"n": counter_init(batch)} if self.uniform else None

    def step(self, params, state, x, valid):
        if not self.uniform:
            raise NotImplementedError("clip-only model: SlowFast's linspace frame sampling has no continual "
                                      "(frame-by-frame) mode")
        check_input(self, x, clip=False)
        slow, n_next, _ = counter_advance(state["n"], valid, 0, self.alpha)
        return gate(valid, {"n": n_next}, state), Out((x, x), (slow, valid))


@static
class FuseFastToSlow(Layer):
    """PySlowFast ``FuseFastToSlow``: ``(xs, xf) -> (concat(xs, path(xf)), xf)`` where ``path`` is
    ``conv_f2s`` (k,1,1) stride (alpha,1,1), ``bn``, ReLU: the slow pathway ``(B, T/alpha, H, W,
    C_s)`` gains ``ratio * C_f`` channels from the fast one ``(B, T, H, W, C_f)``. Params are
    ``path``'s, ``{"conv_f2s": ..., "bn": ...}``. Build with :meth:`of`.

    ``path`` is an ordinary :class:`Sequential`, so training mode (batch-statistics BN) and
    :func:`~co3d_jax.layers.fold_batchnorm` (through :meth:`fold_batchnorm`) treat its BN like
    every other one.

    Stream mode (the continual model): the inputs are valid on their own pathway's frames (a
    ``(slow, fast)`` validity tuple); ``conv_f2s`` is a continual conv with stride alpha on the
    fast frames. The two inputs of the concatenation are aligned by a Delay of ``fast_delay``
    fast frames at the start of ``path`` (before the strided conv, so any number of frames) and
    one of ``slow_delay`` slow steps on the slow pathway; both are identities in clip mode."""

    path: Sequential
    slow_delay: int = 0

    @classmethod
    def of(cls, fast_channels: int, ratio: int = 2, kernel_t: int = 7, alpha: int = 4, fast_delay: int = 0,
           slow_delay: int = 0) -> "FuseFastToSlow":
        c, k = fast_channels, kernel_t
        return cls(Sequential.of(
            *([("delay", Delay(fast_delay))] if fast_delay else []),
            ("conv_f2s", Conv(c, c * ratio, (k, 1, 1), (alpha, 1, 1), (k // 2, 0, 0))),
            ("bn", BatchNorm(c * ratio)),
            ("relu", Activation("relu")),
        ), slow_delay)

    def out_shape(self, in_shape):
        slow, fast = in_shape
        return ((*slow[:-1], slow[-1] + self.path.out_shape(fast)[-1]), fast)

    def clip_lengths(self, t):
        return t

    def macs(self, in_shape, t=None):
        return self.path.macs(in_shape[1], None if t is None else t[1])  # torch.cat: not counted

    def rated_macs(self, in_shape, rate, skip, recurse):
        return recurse(self.path, in_shape[1], rate[1], skip)[0], rate

    def init(self, key, in_shape):
        return self.path.init(key, in_shape[1])

    def init_state(self, batch, in_shape, dtype=jnp.float32):
        state = {"slow": Delay(self.slow_delay).init_state(batch, in_shape[0], dtype),
                 "path": self.path.init_state(batch, in_shape[1], dtype)}
        return {k: v for k, v in state.items() if v is not None}

    def step(self, params, state, xs, valid):
        (slow, fast), (v_slow, v_fast) = xs, valid
        s_slow, (slow, v_slow) = Delay(self.slow_delay).step(None, state.get("slow"), slow, v_slow)
        s_path, (fused, v_fused) = self.path.step(params, state.get("path"), fast, v_fast)
        new = {k: v for k, v in {"slow": s_slow, "path": s_path}.items() if v is not None}
        return new, Out((jnp.concatenate([slow, fused.astype(slow.dtype)], axis=-1), fast), (v_slow & v_fused, v_fast))

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



@static
class SlowFastHead(Layer):
    """PySlowFast ``ResNetBasicHead``: per-pathway average pool (stride 1), concat,
    ``projection``, activation (per position). Params ``{"projection": ...}``.

    The continual head (``fast_stride`` = alpha): the fast pool averages the last T fast frames
    with stride alpha, so that its outputs pair with the slow pool's (the last T/alpha slow
    frames); ``slow_delay`` (slow steps, after the slow pool) and ``fast_delay`` (fast frames,
    before the strided fast pool) align them in stream mode."""

    channels: tuple = (2048, 256)
    pool_kernels: tuple = ((8, 8, 8), (32, 8, 8))
    num_classes: int = 400
    activation: str = "softmax"
    fast_stride: int = 1
    slow_delay: int = 0
    fast_delay: int = 0

    @property
    def pools(self):
        return Pool("avg", self.pool_kernels[0], 1, 0), Pool("avg", self.pool_kernels[1], (self.fast_stride, 1, 1), 0)

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
        ts = (None, None) if t is None else t
        total = sum(p.macs(s, ti) for p, s, ti in zip(self.pools, in_shape, ts))
        return total + self._classify_macs(in_shape, None if t is None else clip_length(self.pools[0], t[0]))

    def _classify_macs(self, in_shape, t_out):
        pooled = self._pooled_shapes(in_shape)
        cat = (*pooled[0][:-1], sum(s[-1] for s in pooled))
        return self.projection.macs(cat, t_out) + Activation(self.activation).macs(self.out_shape(in_shape), t_out)

    def rated_macs(self, in_shape, rate, skip, recurse):
        slow_pool, fast_pool = self.pools
        cost = recurse(slow_pool, in_shape[0], rate[0], skip)[0]
        cost_f, out_rate = recurse(fast_pool, in_shape[1], rate[1], skip)
        return cost + cost_f + out_rate * self._classify_macs(in_shape, None), out_rate

    def init_state(self, batch, in_shape, dtype=jnp.float32):
        slow_pool, fast_pool = self.pools
        state = {"slow_pool": slow_pool.init_state(batch, in_shape[0], dtype),
                 "slow_delay": Delay(self.slow_delay).init_state(batch, slow_pool.out_shape(in_shape[0]), dtype),
                 "fast_delay": Delay(self.fast_delay).init_state(batch, in_shape[1], dtype),
                 "fast_pool": fast_pool.init_state(batch, in_shape[1], dtype)}
        return {k: v for k, v in state.items() if v is not None}

    def step(self, params, state, xs, valid):
        slow_pool, fast_pool = self.pools
        new = {}
        new["slow_pool"], out_s = slow_pool.step(None, state.get("slow_pool"), xs[0], valid[0])
        new["slow_delay"], out_s = Delay(self.slow_delay).step(None, state.get("slow_delay"), *out_s)
        new["fast_delay"], out_f = Delay(self.fast_delay).step(None, state.get("fast_delay"), xs[1], valid[1])
        new["fast_pool"], out_f = fast_pool.step(None, state.get("fast_pool"), *out_f)
        y = self.projection.apply(params["projection"], jnp.concatenate([out_s.y, out_f.y.astype(out_s.y.dtype)], -1))
        return ({k: v for k, v in new.items() if v is not None},
                Out(Activation(self.activation).apply(None, y), out_s.valid & out_f.valid))

    def init(self, key, in_shape=None):
        return {"projection": self.projection.init(key)}

    def forward(self, params, xs):
        pooled = [p.forward(None, x) for p, x in zip(self.pools, xs)]
        if len({y.shape[1:4] for y in pooled}) != 1:
            raise ValueError(f"SlowFastHead: pooled pathway shapes differ: {[tuple(y.shape) for y in pooled]} "
                             f"(pool kernels {self.pool_kernels} do not fit the clip)")
        y = self.projection.apply(params["projection"], jnp.concatenate(pooled, axis=-1))
        return Activation(self.activation).apply(None, y)


class SlowFastNet(ClipOnlySequential):
    """Root container: pack, s1, s1_fuse, ..., s5, head. Clip mode only; its ``macs`` follow the
    two pathways' clip lengths separately (:func:`~co3d_jax.layers.clip_length` through
    ``clip_lengths`` of :class:`PackPathways`, :class:`~co3d_jax.layers.Pathways`, ...)."""


@static
class CoSlowFastNet(Sequential):
    """Root container of the continual SlowFast: the same children, stepped frame by frame. The
    temporal metadata of a two-rate network is not a chain of single-stream strides, so the
    builder computes it (:func:`build_slowfast`) and stores it here: ``meta`` = (delay,
    receptive field, padding, stride) in input frames."""

    meta: tuple = (0, 1, 0, 1)

    @property
    def delay(self):
        return self.meta[0]

    @property
    def receptive_field(self):
        return self.meta[1]

    @property
    def padding(self):
        return self.meta[2]

    @property
    def stride(self):
        return self.meta[3]

    def _prefill(self, params, xs, dtype):
        # the pathways' outputs are emitted at different rates, which the chained per-layer prefill
        # does not pair up: scan the step (exact by construction)
        return scan_prefill(self, params, xs, dtype)


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
    continual: bool = False

    @property
    def window(self) -> int:
        """The continual head window in input (fast) frames (= ``clip_length``)."""
        return self.clip_length

    @property
    def stage_depths(self) -> tuple:
        return _STAGE_DEPTHS[self.depth]

    @property
    def head_pool_kernels(self) -> tuple:
        s = self.image_size // 32
        return ((self.clip_length // self.alpha, s, s), (self.clip_length, s, s))


def _bottleneck_block(c_in: int, c_out: int, inner: int, kt: int, stride: int, continual: bool) -> Sequential:
    return res_block(bottleneck(c_in, c_out, inner, kt, stride), c_in, c_out, stride, continual=continual)


class _Latency:
    """The continual builder's alignment bookkeeping, in input frames: slow output ``j`` of the
    current depth appears at frame ``alpha * j + slow``, fast output ``i`` at ``i + fast``;
    ``left_slow``/``left_fast``: the earliest input frame output 0 of each pathway depends on
    (negative: zero padding before the stream)."""

    def __init__(self, alpha: int):
        self.alpha, self.slow, self.fast, self.left_slow, self.left_fast = alpha, 0, 0, 0, 0

    def pathways(self, slow: Layer, fast: Layer) -> None:
        self.slow += self.alpha * slow.delay
        self.fast += fast.delay
        self.left_slow -= self.alpha * slow.padding
        self.left_fast -= fast.padding

    def align(self, slow_at: int, fast_at: int) -> tuple[int, int]:
        """Delays ``(slow steps, fast frames)`` making a slow output that would appear at
        ``alpha * j + slow_at`` and a fast one at ``alpha * j + fast_at`` appear together (the
        slow pathway can only wait whole slow steps; the fast one any number of frames)."""
        m = max(0, -(-(fast_at - slow_at) // self.alpha))
        return m, slow_at + m * self.alpha - fast_at


def build_slowfast(cfg: SlowFastConfig) -> Sequential:
    """The network: a :class:`SlowFastNet` (clip model) or, with ``cfg.continual``, a
    :class:`CoSlowFastNet` with uniform slow sampling, the fusions and the head aligned by delays
    and the fast head pool strided by alpha."""
    w, beta, ratio, alpha = cfg.width_per_group, cfg.beta_inv, cfg.fusion_conv_channel_ratio, cfg.alpha
    fuse = dict(ratio=ratio, kernel_t=cfg.fusion_kernel_size, alpha=alpha)
    k_stem = _TEMPORAL_KERNELS[0]
    lat = _Latency(alpha)

    def fusion(fast_channels: int) -> FuseFastToSlow:
        if not cfg.continual:
            return FuseFastToSlow.of(fast_channels, **fuse)
        conv = FuseFastToSlow.of(fast_channels, **fuse).path["conv_f2s"]
        m, d = lat.align(lat.slow, lat.fast + conv.delay)
        lat.slow += m * alpha
        lat.left_slow = min(lat.left_slow, lat.left_fast - conv.padding)
        return FuseFastToSlow.of(fast_channels, **fuse, fast_delay=d, slow_delay=m)

    stems = (stem(w, k_stem[0]), stem(w // beta, k_stem[1]))
    lat.pathways(*stems)
    children = [
        ("pack", PackPathways(alpha, uniform=cfg.continual)),
        ("s1", Pathways.of(("pathway0_stem", stems[0]), ("pathway1_stem", stems[1]), auto_delay=False)),
        ("s1_fuse", fusion(w // beta)),
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
                                                    stride if i == 0 else 1, cfg.continual)) for i in range(depth)]
            pathways.append((f"pathway{p}", Sequential.of(*blocks)))
        lat.pathways(pathways[0][1], pathways[1][1])
        children.append((f"s{s + 2}", Pathways.of(*pathways, auto_delay=False)))
        if s + 1 < len(cfg.stage_depths):
            children.append((f"s{s + 2}_fuse", fusion(fast_out)))
            if s == 0:  # PySlowFast's identity pools between s2 and s3 (_POOL1["slowfast"] = 1x1x1)
                children.append(("pathway_pool", Pathways.of(("pathway0_pool", IdentityPool()),
                                                             ("pathway1_pool", IdentityPool()), auto_delay=False)))
            slow_in, fast_in = slow_out + fast_out * ratio, fast_out
        else:
            slow_in, fast_in = slow_out, fast_out
    if not cfg.continual:
        children.append(("head", SlowFastHead((slow_in, fast_in), cfg.head_pool_kernels, cfg.num_classes,
                                              cfg.head_activation)))
        return SlowFastNet.of(*children)
    # head: slow pool output q (slow steps q .. q + T/alpha - 1) appears at alpha*q + slow + T - alpha,
    # the alpha-strided fast pool's (fast frames alpha*q .. alpha*q + T - 1) at alpha*q + fast + T - 1
    t = cfg.clip_length
    m, d = lat.align(lat.slow + t - alpha, lat.fast + t - 1)
    children.append(("head", SlowFastHead((slow_in, fast_in), cfg.head_pool_kernels, cfg.num_classes,
                                          cfg.head_activation, fast_stride=alpha, slow_delay=m, fast_delay=d)))
    delay, padding = lat.slow + t - alpha + m * alpha, -min(lat.left_slow, lat.left_fast)
    return CoSlowFastNet(tuple(children), meta=(delay, delay + 1 + padding, padding, alpha))


SLOWFAST_VARIANTS = {
    "8x8": dict(alpha=4, fusion_kernel_size=7),
    "4x16": dict(alpha=8, fusion_kernel_size=5),
}


def slowfast_r50(variant: str, *, continual: bool = False, window: int | None = None, name: str | None = None,
                 **options) -> Model:
    """SlowFast-R50 ``variant`` (``"8x8"`` or ``"4x16"``), or with ``continual=True`` CoSlowFast
    whose head averages the last ``window`` (default 32) frames; ``options`` are
    :class:`SlowFastConfig` fields (``clip_length`` is the window)."""
    if window is not None:
        if not continual:
            raise TypeError("unknown SlowFast options ['window'] (a head window is a continual option; the clip "
                            "models take clip_length)")
        options["clip_length"] = int(window)
    if variant not in SLOWFAST_VARIANTS:
        raise ValueError(f"unknown SlowFast variant {variant!r}; choose from {sorted(SLOWFAST_VARIANTS)}")
    unknown = set(options) - {f.name for f in dataclasses.fields(SlowFastConfig)}
    if unknown:
        raise TypeError(f"unknown SlowFast options {sorted(unknown)}")
    cfg = SlowFastConfig(**{**SLOWFAST_VARIANTS[variant], **options, "continual": continual})
    if cfg.depth not in _STAGE_DEPTHS:
        raise ValueError(f"SlowFast: depth must be one of {sorted(_STAGE_DEPTHS)}, got {cfg.depth}")
    if cfg.head_activation not in ("softmax", "sigmoid", "identity"):
        raise ValueError(f"SlowFast: head_activation must be softmax, sigmoid or identity, got {cfg.head_activation!r}")
    if cfg.clip_length // cfg.alpha < 1 or cfg.image_size < 32:
        raise ValueError(f"SlowFast: clip_length {cfg.clip_length} / image_size {cfg.image_size} too small "
                         f"(need >= alpha = {cfg.alpha} frames and >= 32 px)")
    if continual and cfg.clip_length % cfg.alpha:
        raise ValueError(f"CoSlowFast: the head window {cfg.clip_length} must be a multiple of alpha = {cfg.alpha}")
    default = f"{'co' if continual else ''}slowfast_{variant}_r50"
    return Model(name=name or default, net=build_slowfast(cfg), image_size=cfg.image_size,
                 clip_length=cfg.clip_length, frame_rate=cfg.frame_rate, num_classes=cfg.num_classes,
                 normalisation=KINETICS, config=cfg, continual=continual)


_VARIANTS = {f"slowfast_{v}_r50": dict(variant=v) for v in SLOWFAST_VARIANTS}
_VARIANTS.update({f"coslowfast_{v}_r50": dict(variant=v, continual=True) for v in SLOWFAST_VARIANTS})


def _pattern_name(o: dict) -> str:
    return f"coslowfast_{o['variant']}_r50" + (f"_{o['window']}" if o.get("window") else "")


# ------------------------------------------------------------------------------------ torch checkpoints
# The porter's knowledge of SlowFast-R50 checkpoints (weight_port reads CHECKPOINTS; see
# models/checkpoints.py). Three layouts, named through PySlowFast's names (jax_to_slowfast), which our
# params mirror:
# * "slowfast": PySlowFast / co3d: s1.pathway1_stem.conv.weight, s1_fuse.conv_f2s.weight,
#   s3.pathway0_res0.branch1_bn.weight, s4.pathway1_res2.branch2.a.weight, head.projection.weight;
# * "pytorchvideo": create_slowfast / torch hub slowfast_r50: blocks.0.multipathway_blocks.{p}.{conv,norm},
#   blocks.{n}.multipathway_fusion.{conv_fast_to_slow,norm} (n = 0..3 <-> s{n+1}_fuse),
#   blocks.{S-1}.multipathway_blocks.{p}.res_blocks.{i}.{branch1_conv,...,branch2.norm_c}, blocks.6.proj
#   (blocks.5 is the parameter-free PoolConcatPathway);
# * "caffe2": PySlowFast's Caffe2 model zoo (SLOWFAST_{4x16,8x8}_R50.pkl), renamed with PySlowFast's
#   get_name_convert_func (CAFFE2_RULES, same regexes in the same order): conv1_w / t_conv1_w (slow /
#   fast stem), res{S}_{i}_branch2{a,b,c}_w, ..._bn_{s,b,rm,riv} (t_: fast), fusion t_pool1_subsample_*
#   (-> s1_fuse) and t_res{n}_{last}_branch2c_bn_subsample_* (-> s{n}_fuse; the files carry the stage's
#   last block), pred_{w,b}. Solver blobs are skipped; any other unused blob is an error.
import re  # noqa: E402

from .checkpoints import CAFFE2_BN_INV, CheckpointSpec, Naming, class_hint, torch_leaf, vote  # noqa: E402

# PySlowFast slowfast/utils/c2_model_loading.py::get_name_convert_func (as in co3d), applied in order
# with re.sub; the non-local rules are irrelevant to SlowFast-R50 and left out.
CAFFE2_RULES: tuple[tuple[str, str], ...] = (
    (r"^t_pool1_subsample_bn_(.*)", r"s1_fuse.bn.\1"),
    (r"^t_pool1_subsample_(.*)", r"s1_fuse.conv_f2s.\1"),
    (r"^t_res([0-9]+)_([0-9]+)_branch2c_bn_subsample_bn_(.*)", r"s\1_fuse.bn.\3"),
    (r"^t_res([0-9]+)_([0-9]+)_branch2c_bn_subsample_(.*)", r"s\1_fuse.conv_f2s.\3"),
    (r"^res([0-9]+)_([0-9]+)_branch([0-9]+)([a-z])_(.*)", r"s\1.pathway0_res\2.branch\3.\4_\5"),
    (r"^res_conv1_bn_(.*)", r"s1.pathway0_stem.bn.\1"),
    (r"^conv1_xy(.*)", r"s1.pathway0_stem.conv_xy\1"),
    (r"^conv1_(.*)", r"s1.pathway0_stem.conv.\1"),
    (r"^res([0-9]+)_([0-9]+)_branch([0-9]+)_(.*)", r"s\1.pathway0_res\2.branch\3_\4"),
    (r"^res_conv1_(.*)", r"s1.pathway0_stem.conv.\1"),
    (r"^t_res([0-9]+)_([0-9]+)_branch([0-9]+)([a-z])_(.*)", r"s\1.pathway1_res\2.branch\3.\4_\5"),
    (r"^t_res_conv1_bn_(.*)", r"s1.pathway1_stem.bn.\1"),
    (r"^t_conv1_(.*)", r"s1.pathway1_stem.conv.\1"),
    (r"^t_res([0-9]+)_([0-9]+)_branch([0-9]+)_(.*)", r"s\1.pathway1_res\2.branch\3_\4"),
    (r"^t_res_conv1_(.*)", r"s1.pathway1_stem.conv.\1"),
    (r"pred_(.*)", r"head.projection.\1"),
    (r"(.*)b_bn_fc(.*)", r"\1se.fc\2"),
    (r"conv_5(.*)", r"head.conv_5\1"),
    (r"lin_5(.*)", r"head.lin_5\1"),
    (r"(.*)bn.b\Z", r"\1bn.bias"),
    (r"(.*)bn.s\Z", r"\1bn.weight"),
    (r"(.*)bn.rm\Z", r"\1bn.running_mean"),
    (r"(.*)bn.riv\Z", r"\1bn.running_var"),
    (r"(.*)[\._]b\Z", r"\1.bias"),
    (r"(.*)[\._]w\Z", r"\1.weight"),
)
_PV_BLOCK = {"branch1": "branch1_conv", "branch1_bn": "branch1_norm",
             **{f"branch2.{x}": f"branch2.conv_{x}" for x in "abc"},
             **{f"branch2.{x}_bn": f"branch2.norm_{x}" for x in "abc"}}


def jax_to_slowfast(path: str) -> str:
    """``s2/pathway1/res0/residual/skip/branch1/kernel`` -> ``s2.pathway1_res0.branch1.weight``;
    ``s1/pathway0_stem/bn/var`` -> ``s1.pathway0_stem.bn.running_var``;
    ``s3_fuse/conv_f2s/kernel`` -> ``s3_fuse.conv_f2s.weight``; ``head/projection/bias``."""
    *mods, _ = path.split("/")
    leaf = torch_leaf(path)
    if len(mods) >= 4 and re.fullmatch(r"s\d+", mods[0]) and re.fullmatch(r"pathway\d", mods[1]) \
            and re.fullmatch(r"res\d+", mods[2]) and mods[3] == "residual":
        rest = [m for m in mods[4:] if m != "skip"]
        return ".".join([mods[0], f"{mods[1]}_{mods[2]}", *rest, leaf])
    if mods and (re.fullmatch(r"s\d+(_fuse)?", mods[0]) or mods[0] == "head"):
        return ".".join([*mods, leaf])
    raise ValueError(f"internal: no PySlowFast name for JAX parameter {path!r}")


def slowfast_to_pytorchvideo(key: str, num_stages: int = 4) -> str | None:
    """PySlowFast name -> pytorchvideo ``create_slowfast`` name (``None`` if it has none)."""
    if "." not in key:
        return None
    module, param = key.rsplit(".", 1)
    if m := re.fullmatch(r"s1\.pathway(\d)_stem\.(conv|bn)", module):
        return f"blocks.0.multipathway_blocks.{m[1]}.{'conv' if m[2] == 'conv' else 'norm'}.{param}"
    if m := re.fullmatch(r"s(\d+)_fuse\.(conv_f2s|bn)", module):
        sub = "conv_fast_to_slow" if m[2] == "conv_f2s" else "norm"
        return f"blocks.{int(m[1]) - 1}.multipathway_fusion.{sub}.{param}"
    if m := re.fullmatch(r"s(\d+)\.pathway(\d)_res(\d+)\.(.+)", module):
        sub = _PV_BLOCK.get(m[4])
        if sub is None or int(m[1]) < 2:
            return None
        return f"blocks.{int(m[1]) - 1}.multipathway_blocks.{m[2]}.res_blocks.{m[3]}.{sub}.{param}"
    if module == "head.projection":
        return f"blocks.{num_stages + 2}.proj.{param}"
    return None


def caffe2_to_slowfast(blob: str) -> str:
    """PySlowFast's Caffe2 -> PyTorch name conversion (:data:`CAFFE2_RULES` in order)."""
    for pattern, repl in CAFFE2_RULES:
        blob = re.sub(pattern, repl, blob)
    return blob


def slowfast_to_caffe2(key: str, stage_depths: tuple[int, ...] = (3, 4, 6, 3)) -> str | None:
    """Inverse of :func:`caffe2_to_slowfast` for SlowFast-R50 parameters (for naming missing
    blobs; fusion blobs carry the stage's last block index)."""
    module, param = key.rsplit(".", 1)

    def suffix(bn: bool) -> str:
        return ("bn_" + CAFFE2_BN_INV[param]) if bn else {"weight": "w", "bias": "b"}[param]

    try:
        if m := re.fullmatch(r"s1\.pathway(\d)_stem\.(conv|bn)", module):
            t = "t_" if m[1] == "1" else ""
            return f"{t}conv1_w" if m[2] == "conv" else f"{t}res_conv1_{suffix(True)}"
        if m := re.fullmatch(r"s(\d+)_fuse\.(conv_f2s|bn)", module):
            n = int(m[1])
            base = "t_pool1_subsample" if n == 1 else f"t_res{n}_{stage_depths[n - 2] - 1}_branch2c_bn_subsample"
            return f"{base}_{suffix(m[2] == 'bn')}"
        if m := re.fullmatch(r"s(\d+)\.pathway(\d)_res(\d+)\.(branch1|branch1_bn|branch2\.([abc])(_bn)?)", module):
            t = "t_" if m[2] == "1" else ""
            branch = "branch1" if m[4].startswith("branch1") else f"branch2{m[5]}"
            bn = m[4] == "branch1_bn" or bool(m[6])
            return f"{t}res{m[1]}_{m[3]}_{branch}_{suffix(bn)}"
        if module == "head.projection":
            return f"pred_{suffix(False)}"
    except KeyError:
        return None
    return None


def _naming(src) -> Naming:
    depths = tuple(src.config.stage_depths)
    if src.layout == "slowfast":
        return Naming(jax_to_slowfast)
    if src.layout == "pytorchvideo":
        def key(path: str) -> str:
            name = slowfast_to_pytorchvideo(jax_to_slowfast(path), len(depths))
            if name is None:  # pragma: no cover - every JAX leaf has a pytorchvideo name
                raise ValueError(f"internal: no pytorchvideo name for {path}")
            return name
        return Naming(key)
    # caffe2: rename the blobs with PySlowFast's rules, then look the PySlowFast names up
    wanted = {jax_to_slowfast(p) for p in src.targets}
    by_name: dict[str, str] = {}
    duplicates: list[str] = []
    for blob in src.shapes:
        name = caffe2_to_slowfast(blob)
        if name in wanted:
            if name in by_name:
                duplicates.append(f"{blob} (also {by_name[name]} -> {name})")
            by_name.setdefault(name, blob)
    if duplicates:
        shown = ", ".join(duplicates[:6]) + (f", ... ({len(duplicates)} in all)" if len(duplicates) > 6 else "")
        raise ValueError(f"several Caffe2 blobs map to one parameter: {shown}")
    used = set(by_name.values())
    skipped = sum(1 for b in src.shapes if b not in used and src.ignorable(b))
    notes = (f"skipped {skipped} Caffe2 solver blobs (momentum / lr / model_iter)",) if skipped else ()

    def blob_key(path: str) -> str:
        sf = jax_to_slowfast(path)
        return by_name.get(sf) or slowfast_to_caffe2(sf, depths) or f"<blob for {sf}>"
    return Naming(blob_key, notes)


def _hints(src, key) -> list[str]:
    """8x8 and 4x16 differ only in the fusion kernels (7 vs 5); other class counts."""
    hints = []
    w = src.shapes.get(key("s1_fuse/conv_f2s/kernel"))
    want = src.config.fusion_kernel_size
    if w is not None and len(w) == 5 and w[2] != want:
        like = {7: "slowfast_8x8_r50", 5: "slowfast_4x16_r50"}.get(int(w[2]))
        hints.append(f"the checkpoint's fusion kernel is {w[2]}" + (f" like {like}" if like else "")
                     + f", --arch {src.arch} has {want}")
    return hints + class_hint(src, key("head/projection/kernel"), "pass num_classes={n}")


CHECKPOINTS = CheckpointSpec(
    label="SlowFast",
    layouts=("slowfast", "pytorchvideo", "caffe2"),
    detect=lambda keys: vote(keys, {
        "pytorchvideo": lambda k: k.startswith("blocks.") and "multipathway" in k,
        "slowfast": lambda k: re.match(r"(s\d+\.pathway\d_|s\d+_fuse\.|head\.)", k),
        "caffe2": lambda k: re.match(r"(t_)?(conv1_|res_conv1_|res\d+_\d+_branch|pool1_subsample|pred_)", k)}),
    unrecognised="unrecognised SlowFast checkpoint layout: neither PySlowFast names (s1.pathway0_stem.*), "
                 "pytorchvideo names (blocks.*.multipathway_*) nor Caffe2 blobs (conv1_w, t_conv1_w, "
                 "res2_0_branch2a_w, ...)",
    naming=_naming,
    blob_layouts=("caffe2",),
    hints=_hints,
)
# ------------------------------------------------------------------------------------ end of torch checkpoints

FAMILY = FamilySpec(
    name="slowfast",
    description="SlowFast-R50/CoSlowFast-R50",
    build=slowfast_r50,
    variants=_VARIANTS,
    patterns=(Pattern(r"coslowfast_(8x8|4x16)_r50_(\d+)", lambda m: dict(variant=m[1], continual=True, window=int(m[2])),
                      "coslowfast_<8x8|4x16>_r50_<window>", _pattern_name),),
    final_bn="c_bn",
    reported={"slowfast_8x8_r50": Reported(68.45, 66.25), "slowfast_4x16_r50": Reported(67.06, 36.46)},
    paper_batch=lambda name: 16,  # co3d's profiling scripts (reference §5.5)
    checkpoints=CHECKPOINTS,
)
