"""Continual 3D convolution (continual-inference's ``co.Conv3d``, reference §1.3 and §4).

Weights use the DHWIO layout ``(kT, kH, kW, C_in/groups, C_out)``; tap ``kernel[0]`` multiplies
the *oldest* frame of the window, as PyTorch's ``weight[:, :, 0]`` does.

Step mode keeps the partial sums of the next ``kT-1`` outputs (``acc``, shape
``(B, kT-1, H', W', C_out)``): each frame is convolved spatially with all ``kT`` taps once, one tap
completes the current output, the others are added to the future outputs (the accumulator form
of reference §4, the paper's formulation). This equals the library's ``(kT-1)²``-map ring buffer
up to float summation order, and on an H100 it beat keeping the last ``kT-1`` inputs and
re-convolving the window (see ``benchmarks/perf_depthwise.py``). ``replicate`` fill starts the
sums as if the ``kT-1`` frames before the stream equalled the layer's first valid input. The bias
is added to emitted outputs only, never to the sums.

Prefill (a fresh stream's state after ``N`` inputs, in one pass): the emitted outputs are a clip
convolution over the inputs with left-only fill (zero padding or copies of the first input),
temporally strided from the first emitting position; ``acc`` is the same convolution over the
last ``kT-1`` inputs followed by ``kT-1`` zero frames (the taps of inputs not seen yet); with
stride 1 both come from one convolution padded ``(p, kT-1)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from .base import (Array, Layer, Out, Shape, bcast, check_channels, check_input, counter_advance, counter_after,
                   counter_full, counter_init, fan_in_uniform, gate, static, tuple3)
from .macs import count_padded_taps, valid_taps
from .simple import ACTIVATIONS, Activation

FILLS = ("zeros", "replicate")
IMPLS = ("auto", "lax", "shift", "pallas", "fused")
# activations a Conv can apply to its input (f(0) = 0: the zero padding of f(x) is f of the zero
# padding, so the fused kernel may read the unpadded frame) and to its output
CONV_ACTIVATIONS = ("", "relu", "swish")
# whether impl='fused' runs clip-mode (and prefill) depthwise convolutions in the Pallas clip kernel on
# NVIDIA GPUs: measured faster than both XLA paths on an H200 (results/clip_pallas_h200.json, fp32 clips/s:
# X3D-S 2,916 -> 3,630, X3D-M 1,152 -> 1,714, X3D-L 168 (grouped convs) -> 478)
CLIP_FUSED = True


def conv_out_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _pair(p) -> tuple[int, int]:
    return (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))


def _depthwise_shift(x: Array, kernel: Array, strides, padding) -> Array:
    """Depthwise conv as a sum of shifted, strided slices times per-channel taps.

    ``x``: ``(B, T, H, W, C)``; ``kernel``: ``(kT, kH, kW, 1, C)``; ``padding``: per-dim
    pads, an int (symmetric) or a ``(low, high)`` pair. XLA fuses the taps into one elementwise loop, which beats grouped
    convolutions on GPU in f32 and on CPU (jax_notes §4.0, §9).
    """
    kt, kh, kw = kernel.shape[:3]
    pads = [(0, 0)] + [_pair(p) for p in padding] + [(0, 0)]
    xp = jnp.pad(x, pads)
    out = [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(x.shape[1:4], (kt, kh, kw), strides, pads[1:4])]
    acc = None
    for a in range(kt):
        for b in range(kh):
            for c in range(kw):
                start = (0, a, b, c, 0)
                limit = (xp.shape[0], a + (out[0] - 1) * strides[0] + 1, b + (out[1] - 1) * strides[1] + 1,
                         c + (out[2] - 1) * strides[2] + 1, xp.shape[4])
                tap = lax.slice(xp, start, limit, (1, *strides, 1)) * kernel[a, b, c, 0]
                acc = tap if acc is None else acc + tap
    return acc


def _dense_frame(x: Array, kernel: Array, strides, padding) -> Array | None:
    """A ``groups=1`` conv with a one-frame temporal kernel (temporal stride 1, no temporal padding)
    without a library convolution, or None where this does not apply (jax_notes §9, ``step_kernels``:
    on GPUs XLA runs fp32 convolutions channels-first, so each one costs transposes around it).

    A 1x1 kernel is a matmul at spatial stride 1 whose output is then subsampled (no strided slice
    feeds the dot, which crashed XLA's Triton GEMM fusion, jax_notes §9); a larger spatial kernel
    over at most 4 input channels (the stem) is a sum of shifted, strided slices times taps, one
    elementwise loop."""
    kt, kh, kw, cin, _ = kernel.shape
    if kt != 1 or strides[0] != 1 or _pair(padding[0]) != (0, 0):
        return None
    (plh, phh), (plw, phw) = _pair(padding[1]), _pair(padding[2])
    if (kh, kw) == (1, 1) and (plh, phh, plw, phw) == (0, 0, 0, 0):
        y = jnp.einsum("...c,cd->...d", x, kernel[0, 0, 0])
        return y[:, :, ::strides[1], ::strides[2]] if strides[1:] != (1, 1) else y
    if cin > 4:
        return None
    xp = jnp.pad(x, ((0, 0), (0, 0), (plh, phh), (plw, phw), (0, 0)))
    acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
    ho = (xp.shape[2] - kh) // strides[1] + 1
    wo = (xp.shape[3] - kw) // strides[2] + 1
    acc = None
    for b in range(kh):
        for c in range(kw):
            s = lax.slice(xp, (0, 0, b, c, 0), (xp.shape[0], xp.shape[1], b + (ho - 1) * strides[1] + 1,
                                                 c + (wo - 1) * strides[2] + 1, cin), (1, 1, strides[1], strides[2], 1))
            for i in range(cin):  # accumulated in (at least) fp32, as a library convolution does
                t = s[..., i:i + 1].astype(acc_dtype) * kernel[0, b, c, i].astype(acc_dtype)
                acc = t if acc is None else acc + t
    return acc.astype(x.dtype)


@static
class Conv(Layer):
    """3D convolution usable clip-wise and frame-wise.

    Args: ``in_channels``, ``out_channels``; ``kernel``/``stride``/``padding`` as ``(t, h, w)``
    triples (explicit symmetric padding, never 'SAME'); ``groups`` (``= in_channels`` for
    depthwise); ``bias``; ``temporal_fill`` ``'zeros'`` or ``'replicate'``; ``impl`` selects the
    depthwise algorithm (``'lax'`` grouped convolution, ``'shift'`` shift-and-add, ``'auto'``:
    shift for depthwise; for a dense conv with a one-frame kernel, ``'shift'`` avoids the library
    convolution: a 1x1 kernel as a matmul then subsampled, a spatial kernel over at most 4 input
    channels as shifted multiply-adds; ``'pallas'``: the step of a zero-filled depthwise conv with temporal
    stride 1 (any spatial stride) runs as one fused Pallas kernel, :func:`co3d_jax.kernels.depthwise_step` (interpreted off GPUs), and
    everything else as ``'shift'``; a depthwise conv's clip forward and prefill run the clip kernel,
    :func:`co3d_jax.kernels.depthwise_clip`; ``'fused'``: on an NVIDIA GPU, ``'pallas'`` for a
    depthwise conv (strided ones too; clip mode too, :data:`CLIP_FUSED`) and in step mode ``'shift'`` for a
    dense one, everywhere else ``'auto'`` (X3D's default: the fastest exact path measured on an H200,
    ``results/README.md``)); ``clip_impl`` overrides it for clip mode and prefill.

    ``in_activation`` / ``out_activation`` (``''``, ``'relu'``, ``'swish'``): ``y = out_act(conv(in_act(x)) + bias)``
    in every mode (clip, prefill, step; XLA and Pallas paths), what an ``Activation`` before / after the conv
    computes; the Pallas step applies them inside its kernel. They are set by
    :func:`co3d_jax.layers.fuse_activations` on convs built with ``takes_activations=True`` (which marks
    the conv as a place for that pass to move neighbouring activations into; it changes nothing else).
    MACs count the activations as the ``Activation`` layers they replace do.
    """

    in_channels: int
    out_channels: int
    kernel: tuple = (1, 1, 1)
    strides: tuple = (1, 1, 1)
    pads: tuple = (0, 0, 0)
    groups: int = 1
    bias: bool = False
    temporal_fill: str = "zeros"
    impl: str = "auto"
    clip_impl: str = ""
    in_activation: str = ""
    out_activation: str = ""
    takes_activations: bool = False

    def __post_init__(self):
        object.__setattr__(self, "kernel", tuple3(self.kernel))
        object.__setattr__(self, "strides", tuple3(self.strides))
        object.__setattr__(self, "pads", tuple3(self.pads))
        if self.temporal_fill not in FILLS:
            raise ValueError(f"Conv: temporal_fill must be one of {FILLS}, got {self.temporal_fill!r}")
        if self.impl not in IMPLS or self.clip_impl not in IMPLS + ("",):
            raise ValueError(f"Conv: impl and clip_impl must be one of {IMPLS}, got {self.impl!r}, {self.clip_impl!r}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv: channels {self.in_channels}->{self.out_channels} not divisible by groups {self.groups}")
        if self.pads[0] > self.kernel[0] - 1:
            raise ValueError(f"Conv: temporal padding {self.pads[0]} exceeds kernel {self.kernel[0]} - 1")
        if self.in_activation not in CONV_ACTIVATIONS or self.out_activation not in CONV_ACTIVATIONS:
            raise ValueError(f"Conv: in_activation and out_activation must be one of {CONV_ACTIVATIONS}, got "
                             f"{self.in_activation!r}, {self.out_activation!r}")

    # ---------------------------------------------------------------- metadata
    @property
    def receptive_field(self) -> int:
        return self.kernel[0]

    @property
    def stride(self) -> int:
        return self.strides[0]

    @property
    def padding(self) -> int:
        return self.pads[0]

    @property
    def stateless(self) -> bool:
        return self.kernel[0] == 1 and self.pads[0] == 0 and self.strides[0] == 1

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels and self.in_channels == self.out_channels

    def out_shape(self, in_shape: Shape) -> Shape:
        h, w, _ = in_shape
        return (conv_out_size(h, self.kernel[1], self.strides[1], self.pads[1]),
                conv_out_size(w, self.kernel[2], self.strides[2], self.pads[2]), self.out_channels)

    def macs(self, in_shape: Shape, t: int | None = None) -> int:
        # ptflops `conv_flops_counter_hook` (continual registers it for co.Conv3d too): output
        # positions x the full kT*kH*kW kernel (padded taps included) x C_in/groups x C_out, plus
        # one bias add per output element. A step emits one frame, and the hook sees
        # forward_steps' (B, C, 1, H', W') output: one frame x all kT taps (not kT partial slices).
        # Inside `padded_taps(False)` (layers/macs.py) only taps that land in the input count (XLA's
        # convention); a step's kT-frame window is all real data, so its kT taps all count.
        h, w, _ = in_shape
        ho, wo, _ = self.out_shape(in_shape)
        kt, kh, kw = self.kernel
        frames = 1 if t is None else conv_out_size(t, kt, self.strides[0], self.pads[0])
        positions = frames * ho * wo
        if count_padded_taps():
            taps = positions * kt * kh * kw
        else:
            taps = ((frames * kt if t is None else valid_taps(t, kt, self.strides[0], self.pads[0]))
                    * valid_taps(h, kh, self.strides[1], self.pads[1]) * valid_taps(w, kw, self.strides[2], self.pads[2]))
        acts = ((Activation(self.in_activation).macs(in_shape, t) if self.in_activation else 0)
                + (Activation(self.out_activation).macs((ho, wo, self.out_channels), None if t is None else frames)
                   if self.out_activation else 0))
        return (taps * (self.in_channels // self.groups) * self.out_channels
                + (positions * self.out_channels if self.bias else 0) + acts)

    def store_macs(self, in_shape: Shape) -> int:
        # the accumulator form convolves every input frame with all kT taps, emitting or not; the
        # bias is only added to emitted outputs
        ho, wo, _ = self.out_shape(in_shape)
        return self.macs(in_shape) - (ho * wo * self.out_channels if self.bias else 0)

    # ---------------------------------------------------------------- params / state
    def init(self, key, in_shape=None):
        k1, k2 = jax.random.split(key)
        fan_in = (self.in_channels // self.groups) * math.prod(self.kernel)
        p = {"kernel": fan_in_uniform(k1, (*self.kernel, self.in_channels // self.groups, self.out_channels), fan_in)}
        if self.bias:
            p["bias"] = fan_in_uniform(k2, (self.out_channels,), fan_in)
        return p

    def init_state(self, batch, in_shape, dtype=jnp.float32):
        """``acc``: ``(B, kT-1, H', W', C_out)`` partial sums of the next ``kT-1`` outputs."""
        if self.stateless:
            return None
        ho, wo, c = self.out_shape(in_shape)
        return {"acc": jnp.zeros((batch, self.kernel[0] - 1, ho, wo, c), dtype), "n": counter_init(batch)}

    # ---------------------------------------------------------------- compute
    def _gpu_fused(self) -> bool:
        """``impl='fused'`` on an NVIDIA GPU (step mode only)."""
        if self.impl != "fused":
            return False
        from ..kernels import on_nvidia_gpu
        return on_nvidia_gpu()

    def _conv(self, params, x: Array, t_stride: int, t_pad, impl: str | None = None, step: bool = False) -> Array:
        """``x``: ``(B, T, H, W, C)`` -> ``(B, T', H', W', C_out)`` (no bias); ``t_pad``: an int
        (both ends) or a ``(low, high)`` pair; ``step``: a per-frame call of step mode."""
        impl = impl or self.impl
        strides = (t_stride, self.strides[1], self.strides[2])
        pads = (t_pad, self.pads[1], self.pads[2])
        if not step and self._clip_pallas(impl):
            return self._pallas_clip(params, x, strides, pads)
        if impl == "fused":
            impl = "shift" if step and self._gpu_fused() else "auto"
        kernel = params["kernel"].astype(x.dtype)
        if impl == "pallas":  # a frame's taps outside the step kernel shift and add
            impl = "shift"
        if self.depthwise and impl in ("auto", "shift"):
            return _depthwise_shift(x, kernel, strides, pads)
        if self.kernel == (1, 1, 1) and self.groups == 1 and strides == (1, 1, 1):
            return jnp.einsum("...c,cd->...d", x, kernel[0, 0, 0])
        if self.groups == 1 and impl == "shift" and (y := _dense_frame(x, kernel, strides, pads)) is not None:
            return y
        return lax.conv_general_dilated(
            x, kernel, window_strides=strides, padding=[_pair(p) for p in pads],
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=self.groups)

    def _bias(self, params, y):
        return y + params["bias"].astype(y.dtype) if self.bias else y

    def _in(self, x):
        return ACTIVATIONS[self.in_activation](x) if self.in_activation else x

    def _out(self, y):
        return ACTIVATIONS[self.out_activation](y) if self.out_activation else y

    def forward(self, params, x):
        check_input(self, x, clip=True)
        check_channels(self, x, self.in_channels)
        if self._clip_pallas(self.clip_impl or self.impl):  # activations and bias inside the kernel
            return self._pallas_clip(params, x, self.strides, self.pads, bias=True, activations=True)
        return self._out(self._bias(params, self._conv(params, self._in(x), self.strides[0], self.pads[0],
                                                       self.clip_impl or self.impl)))

    def apply(self, params, x):  # stateless frame-wise use
        return self._out(self._bias(params, self._conv(params, self._in(x)[:, None], 1, 0, step=True)[:, 0]))

    def taps(self, params, x: Array) -> Array:
        """Per-tap spatial convolutions of one frame: ``(B, H, W, C_in) -> (B, kT, H', W', C_out)``,
        slice ``tau`` being ``kernel[tau] (*) x`` (no bias)."""
        kernel = params["kernel"].astype(x.dtype)
        kt = self.kernel[0]
        sh, sw = self.strides[1:]
        ph, pw = self.pads[1:]
        if self.depthwise and self.impl in ("auto", "shift", "pallas", "fused"):
            ho, wo, _ = self.out_shape(x.shape[1:])
            xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))[:, None]
            acc = None
            for i in range(self.kernel[1]):
                for j in range(self.kernel[2]):
                    s = lax.slice(xp, (0, 0, i, j, 0), (xp.shape[0], 1, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1,
                                                        xp.shape[-1]), (1, 1, sh, sw, 1))
                    t = s * kernel[:, i, j, 0][None, :, None, None, :]
                    acc = t if acc is None else acc + t
            return acc
        if self.groups == 1:
            # all taps in one convolution with kT * C_out output channels
            k2 = jnp.moveaxis(kernel, 0, 3).reshape(*self.kernel[1:], self.in_channels, kt * self.out_channels)
            if self.kernel[1:] == (1, 1) and (sh, sw) == (1, 1):
                z = jnp.einsum("bhwc,cd->bhwd", x, k2[0, 0])
            else:
                z = lax.conv_general_dilated(x, k2, (sh, sw), [(ph, ph), (pw, pw)],
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.moveaxis(z.reshape(*z.shape[:3], kt, self.out_channels), 3, 1)
        return jnp.stack([lax.conv_general_dilated(x, kernel[t], (sh, sw), [(ph, ph), (pw, pw)],
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                   feature_group_count=self.groups) for t in range(kt)], axis=1)

    def _prefill(self, params, xs, dtype):
        if self.stateless:  # a 1-frame temporal kernel: the clip forward is per-frame already
            return None, self.forward(params, xs)
        check_channels(self, xs, self.in_channels)
        b, n = xs.shape[:2]
        kt, s, d = self.kernel[0], self.stride, self.delay
        impl = self.clip_impl or self.impl
        x = self._in(xs).astype(dtype)
        # Position m's output is the window of inputs m-kT+1 .. m; positions from `start` on are
        # computed, so `lo` fill frames go before input 0 (zeros as conv padding, or copies).
        start = min(d, n)
        lo = kt - 1 - start
        if self.temporal_fill == "replicate" and lo:
            x = jnp.concatenate([jnp.broadcast_to(x[:, :1], (b, lo, *x.shape[2:])), x], axis=1)
            lo = 0
        if s == 1:  # one pass: positions start .. n+kT-2, the last kT-1 only over inputs seen so far
            out = self._conv(params, x, 1, (lo, kt - 1), impl)
            ys, acc = out[:, d - start:n - start], out[:, n - start:]
        else:
            ho, wo, c = self.out_shape(xs.shape[2:])
            ys = (self._conv(params, x, s, (lo, 0), impl) if n > d else jnp.zeros((b, 0, ho, wo, c), dtype))
            m = x.shape[1]
            tail = x[:, max(m - (kt - 1), 0):]  # the last kT-1 (fill-padded) inputs
            acc = (self._conv(params, tail, 1, (kt - 1 - tail.shape[1], kt - 1), impl) if kt > 1
                   else jnp.zeros((b, 0, ho, wo, c), dtype))
        # acc[i]: the taps of position n+i over the inputs seen so far (the step's partial sums)
        return {"acc": acc, "n": counter_full(b, counter_after(n, d, s))}, self._out(self._bias(params, ys).astype(xs.dtype))

    @property
    def bulk_ok(self) -> bool:
        return self.stride == 1

    def steps(self, params, state, xs):
        """Bulk steps (:meth:`Layer.steps`): one clip-mode pass over the ``N`` inputs with
        ``kT-1`` zero frames at both ends gives ``N + kT - 1`` window sums, ``full[j]`` over inputs
        ``j-kT+1 .. j``; the state's partial sums complete the first ``kT-1`` (inputs before this
        chunk), the first ``N`` are the outputs and the last ``kT-1`` the new partial sums."""
        check_input(self, xs, clip=True)
        check_channels(self, xs, self.in_channels)
        if self.stateless:
            return state, self.forward(params, xs)
        acc = state["acc"]
        kt, n = self.kernel[0], xs.shape[1]
        full = self._conv(params, self._in(xs).astype(acc.dtype), 1, (kt - 1, kt - 1), self.clip_impl or self.impl)
        full = full.at[:, :kt - 1].add(acc)
        ys = self._out(self._bias(params, full[:, :n]).astype(xs.dtype))
        return {"acc": full[:, n:], "n": state["n"]}, ys

    def step(self, params, state, x, valid):
        """Accumulator form (reference §4): ``y = acc[0] + z[kT-1] (+ bias)``;
        ``acc'[i] = acc[i+1] + z[kT-2-i]``, ``acc'[kT-2] = z[0]``, with ``z[tau] = kernel[tau] (*) x``.
        Replicate fill starts ``acc[i] = sum_{tau <= kT-2-i} z[tau]`` at the first valid input."""
        check_input(self, x, clip=False)
        check_channels(self, x, self.in_channels)
        if self.stateless:
            return state, Out(self.apply(params, x), valid)
        acc = state["acc"]
        if x.shape[0] != acc.shape[0] or tuple(self.out_shape(x.shape[1:])) != acc.shape[2:]:
            raise ValueError(f"Conv: frame of shape {tuple(x.shape)} does not match the state, which was built "
                             f"for outputs (B, kT-1, H', W', C) = {tuple(acc.shape)}")
        if self.depthwise and (self.impl == "pallas" or self._gpu_fused()) and self._pallas_ok():
            emit, n_next, _ = counter_advance(state["n"], valid, self.delay, self.stride)
            return self._pallas_step(params, state, x, valid, emit, n_next)
        xa = self._in(x)  # before the counters: the program of an Activation layer followed by this conv
        emit, n_next, first = counter_advance(state["n"], valid, self.delay, self.stride)
        z = self.taps(params, xa.astype(acc.dtype))
        kt = self.kernel[0]
        if self.temporal_fill == "replicate" and kt > 1:
            rep = jnp.stack([jnp.sum(z[:, : kt - 1 - i], axis=1) for i in range(kt - 1)], axis=1)
            acc = jnp.where(bcast(first, acc), rep, acc)
        # kT == 1 is stateful only with a temporal stride: no partial sums, just gated outputs
        y = self._bias(params, acc[:, 0] + z[:, kt - 1] if kt > 1 else z[:, 0])
        rev = z[:, kt - 2::-1] if kt > 1 else z[:, :0]  # z[kT-2], ..., z[0]
        new_acc = jnp.concatenate([acc[:, 1:], jnp.zeros_like(acc[:, :1])], axis=1) + rev
        return gate(valid, {"acc": new_acc, "n": n_next}, state), Out(self._out(y.astype(x.dtype)), emit)

    def _clip_pallas(self, impl: str) -> bool:
        """Whether a clip or prefill convolution with this ``impl`` runs the clip kernel
        (:func:`co3d_jax.kernels.depthwise_clip`): ``'pallas'`` for a depthwise conv (interpreted off
        GPUs), ``'fused'`` for one on an NVIDIA GPU where :data:`CLIP_FUSED` says the kernel won."""
        if not self.depthwise or impl not in ("pallas", "fused"):
            return False
        from ..kernels import clip_supported, on_nvidia_gpu
        if not clip_supported(self.kernel):
            return False
        return impl == "pallas" or (CLIP_FUSED and on_nvidia_gpu())

    def _pallas_clip(self, params, x, strides, pads, bias: bool = False, activations: bool = False):
        """The clip kernel over ``x`` ``(B, T, H, W, C)``: with ``bias``/``activations`` the whole
        :meth:`forward` (input activation, taps, bias, output activation), else the bare convolution
        :meth:`_conv` computes."""
        from ..kernels import depthwise_clip
        return depthwise_clip(x, params["kernel"][:, :, :, 0, :].astype(x.dtype),
                              params["bias"] if bias and self.bias else None, strides=tuple(strides),
                              pads=tuple(p if isinstance(p, int) else tuple(p) for p in pads),
                              in_activation=self.in_activation if activations else "",
                              activation=self.out_activation if activations else "")

    def _pallas_ok(self) -> bool:
        """Whether the step kernel covers this conv (``'pallas'`` and ``'fused'``: spatial strides too,
        measured faster on an H200)."""
        from ..kernels import pallas_supported
        return pallas_supported(self.kernel, self.strides, self.temporal_fill, spatial_strides=self.impl in ("pallas", "fused"))

    def _pallas_step(self, params, state, x, valid, emit, n_next):
        """:meth:`step` as one fused kernel: input activation, taps over the unpadded frame (masked
        halo loads), output (+ bias, output activation), partial-sum update, gating."""
        from ..kernels import depthwise_step
        acc = state["acc"]
        y, new_acc = depthwise_step(x.astype(acc.dtype), acc, params["kernel"][:, :, :, 0, :],
                                    params.get("bias") if self.bias else None, valid, strides=self.strides[1:],
                                    pads=self.pads[1:], in_activation=self.in_activation,
                                    activation=self.out_activation)
        return {"acc": new_acc, "n": gate(valid, n_next, state["n"])}, Out(y.astype(x.dtype), emit)
