"""Continual pooling (continual-inference ``co.AvgPool3d/MaxPool3d/AdaptiveAvgPool3d``, reference §1.4).

Step mode pools the current frame spatially, keeps the last ``kT-1`` pooled frames, and reduces
(mean or max) over the ``kT``-frame window. Initial fill: ``zeros``, ``replicate`` (the layer's
first pooled input) or ``neg_inf``. As in the reference, a temporal average always divides by
``kT`` (padding counted).
"""

from __future__ import annotations

import math
from functools import partial

import jax.numpy as jnp
import numpy as np
from jax import lax

from .base import (Array, Layer, Out, Shape, bcast, check_input, check_state_frame, counter_advance, counter_after,
                   counter_full, counter_init, gate, per_frame, static, tuple3)
from .conv import conv_out_size

POOL_FILLS = ("zeros", "replicate", "neg_inf")


def _window_state(batch: int, k: int, shape: Shape, dtype, fill: str):
    value = -jnp.inf if fill == "neg_inf" else 0.0
    return {"buf": jnp.full((batch, k - 1, *shape), value, dtype), "n": counter_init(batch)}


def _window_step(state, x: Array, valid: Array, *, delay: int, stride: int, fill: str, reduce):
    """Push ``x`` (one pooled frame) into a ``kT-1`` ring and reduce over the ``kT`` window."""
    emit, n_next, first = counter_advance(state["n"], valid, delay, stride)
    buf = state["buf"]
    if fill == "replicate" and buf.shape[1]:
        buf = jnp.where(bcast(first, buf), x[:, None].astype(buf.dtype), buf)
    window = jnp.concatenate([buf, x[:, None].astype(buf.dtype)], axis=1)
    y = reduce(window, axis=1)
    return gate(valid, {"buf": window[:, 1:], "n": n_next}, state), Out(y, emit)


def _window_prefill(pooled: Array, *, k: int, delay: int, stride: int, fill: str, kind: str, dtype):
    """Prefill of :func:`_window_step` from the spatially pooled inputs ``(B, N, ...)``: the
    window reductions at the emitting inputs (one ``reduce_window`` over the left-filled
    sequence) and the last ``k-1`` filled inputs as the ring."""
    b, n = pooled.shape[:2]
    p = pooled.astype(dtype)
    pad_shape = (b, k - 1, *p.shape[2:])
    if fill == "replicate":
        pad = jnp.broadcast_to(p[:, :1], pad_shape)
    else:
        pad = jnp.full(pad_shape, -jnp.inf if fill == "neg_inf" else 0.0, dtype)
    pp = jnp.concatenate([pad, p], axis=1)  # input n at pp[:, n + k - 1]
    dims, strides = (1, k) + (1,) * (p.ndim - 2), (1, stride) + (1,) * (p.ndim - 2)
    if n <= delay:
        ys = jnp.zeros((b, 0, *p.shape[2:]), dtype)
    elif kind == "max":
        ys = lax.reduce_window(pp[:, delay:], np.array(-np.inf, dtype), lax.max, dims, strides, "VALID")
    else:
        ys = lax.reduce_window(pp[:, delay:], np.array(0, dtype), lax.add, dims, strides, "VALID") / k
    return {"buf": pp[:, n:], "n": counter_full(b, counter_after(n, delay, stride))}, ys


def _window_steps(state, pooled: Array, *, k: int, kind: str):
    """Bulk steps of :func:`_window_step` in a steady state: the ``N`` window reductions over the
    ring followed by the pooled inputs ``(B, N, ...)``, and the last ``k-1`` of them as the ring
    (averages sum in float32 at least, as ``jnp.mean`` does for the step)."""
    buf = state["buf"]
    n = pooled.shape[1]
    window = jnp.concatenate([buf, pooled.astype(buf.dtype)], axis=1)
    dims = (1, k) + (1,) * (window.ndim - 2)
    ones = (1,) * window.ndim
    if kind == "max":
        ys = lax.reduce_window(window, np.array(-np.inf, window.dtype), lax.max, dims, ones, "VALID")
    else:
        w = window.astype(jnp.promote_types(window.dtype, jnp.float32))
        ys = (lax.reduce_window(w, np.array(0, w.dtype), lax.add, dims, ones, "VALID") / k).astype(window.dtype)
    return {"buf": window[:, n:], "n": state["n"]}, ys


@static
class Pool(Layer):
    """Average or max pooling over ``(t, h, w)`` windows with explicit symmetric padding.

    Max pooling pads with ``-inf`` in clip mode (PyTorch semantics); average pooling counts
    padded positions (``count_include_pad=True``, PyTorch's default).
    """

    kind: str = "avg"
    kernel: tuple = (1, 1, 1)
    strides: tuple = (1, 1, 1)
    pads: tuple = (0, 0, 0)
    temporal_fill: str = "zeros"

    def __post_init__(self):
        object.__setattr__(self, "kernel", tuple3(self.kernel))
        object.__setattr__(self, "strides", tuple3(self.strides))
        object.__setattr__(self, "pads", tuple3(self.pads))
        if self.kind not in ("avg", "max"):
            raise ValueError(f"Pool: kind must be 'avg' or 'max', got {self.kind!r}")
        if self.temporal_fill not in POOL_FILLS:
            raise ValueError(f"Pool: temporal_fill must be one of {POOL_FILLS}, got {self.temporal_fill!r}")

    @property
    def receptive_field(self):
        return self.kernel[0]

    @property
    def stride(self):
        return self.strides[0]

    @property
    def padding(self):
        return self.pads[0]

    @property
    def stateless(self):
        return self.kernel[0] == 1 and self.pads[0] == 0 and self.strides[0] == 1

    def out_shape(self, in_shape):
        h, w, c = in_shape
        return (conv_out_size(h, self.kernel[1], self.strides[1], self.pads[1]),
                conv_out_size(w, self.kernel[2], self.strides[2], self.pads[2]), c)

    def macs(self, in_shape, t=None):
        # Clip (ptflops 0.7.5): the pool hook counts 1 per input element and the patched
        # F.avg_pool3d/F.max_pool3d another 1. Step (continual): the hook counts the input frame;
        # the spatial pool is a functools.partial bound before patching (0); the temporal
        # nn.AdaptiveAvg/MaxPool1d hook is nested in a counted module (dropped), but its patched
        # functional counts its (H'*W'*C, kT) input.
        if t is not None:
            return 2 * math.prod(in_shape) * t
        return math.prod(in_shape) + math.prod(self.out_shape(in_shape)) * self.kernel[0]

    def store_macs(self, in_shape):
        # continual's pool hook counts the input frame; the temporal reduction is not called
        return math.prod(in_shape)

    def _reduce_window(self, x, window, strides, pads):
        dims = (1, *window, 1)
        strd = (1, *strides, 1)
        pad = [(0, 0)] + [(p, p) for p in pads] + [(0, 0)]
        if self.kind == "max":
            return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, dims, strd, pad)
        # numpy init values stay concrete under jit, so lax recognises the monoid (differentiable)
        return lax.reduce_window(x, np.array(0, x.dtype), lax.add, dims, strd, pad) / math.prod(window)

    def forward(self, params, x):
        check_input(self, x, clip=True)
        return self._reduce_window(x, self.kernel, self.strides, self.pads)

    def apply(self, params, x):
        return self._reduce_window(x, self.kernel[1:], self.strides[1:], self.pads[1:])

    def init_state(self, batch, in_shape, dtype=jnp.float32):
        if self.stateless:
            return None
        return _window_state(batch, self.kernel[0], self.out_shape(in_shape), dtype, self.temporal_fill)

    def step(self, params, state, x, valid):
        check_input(self, x, clip=False)
        y = self.apply(params, x)
        if self.stateless:
            return state, Out(y, valid)
        check_state_frame(self, y, state["buf"], "spatially pooled frame")
        return _window_step(state, y, valid, delay=self.delay, stride=self.stride, fill=self.temporal_fill,
                            reduce=jnp.max if self.kind == "max" else jnp.mean)

    @property
    def bulk_ok(self):
        return self.stride == 1

    def steps(self, params, state, xs):
        check_input(self, xs, clip=True)
        pooled = per_frame(partial(self.apply, params), xs)
        if self.stateless:
            return state, pooled
        return _window_steps(state, pooled, k=self.kernel[0], kind=self.kind)

    def _prefill(self, params, xs, dtype):
        if self.stateless:  # a 1-frame temporal window: the clip forward is per-frame already
            return None, self.forward(params, xs)
        pooled = per_frame(partial(self.apply, params), xs)
        return _window_prefill(pooled, k=self.kernel[0], delay=self.delay, stride=self.stride,
                               fill=self.temporal_fill, kind=self.kind, dtype=dtype)


@static
class IdentityPool(Pool):
    """A max pool with kernel = stride = (1, 1, 1): the identity (PySlowFast's ``pathway0_pool`` of
    Slow and ``pathway{0,1}_pool`` of SlowFast). Computes nothing, but is kept as a layer so that
    its MACs count what ptflops counts for that module (2 per element in a clip: module hook +
    patched ``F.max_pool3d``)."""

    kind: str = "max"

    def __post_init__(self):
        super().__post_init__()
        if self.kernel != (1, 1, 1) or self.strides != (1, 1, 1) or self.pads != (0, 0, 0):
            raise ValueError(f"IdentityPool: kernel, strides and pads must be 1, 1, 0, got {self.kernel}, "
                             f"{self.strides}, {self.pads}")

    def forward(self, params, x):
        check_input(self, x, clip=True)
        return x

    def apply(self, params, x):
        return x


@static
class GlobalAvgPool(Layer):
    """Adaptive average pooling to ``(1, 1, 1)`` (``co.AdaptiveAvgPool3d``).

    Clip mode averages over all ``T, H, W`` (``clip_pool='global'``, the ``torch.nn``
    semantics) or over ``H, W`` only, keeping ``T`` (``clip_pool='frame'``, the clip
    counterpart of a one-frame window). Step mode averages the spatial means of the last
    ``window`` frames (delay ``window - 1``). Output per frame: ``(1, 1, C)``.
    """

    window: int = 1
    clip_pool: str = "global"
    temporal_fill: str = "zeros"

    def __post_init__(self):
        if self.clip_pool not in ("global", "frame"):
            raise ValueError(f"GlobalAvgPool: clip_pool must be 'global' or 'frame', got {self.clip_pool!r}")
        if self.clip_pool == "frame" and self.window != 1:
            raise ValueError("GlobalAvgPool: clip_pool='frame' requires window=1")

    @property
    def receptive_field(self):
        return self.window

    def out_shape(self, in_shape):
        return (1, 1, in_shape[-1])

    def macs(self, in_shape, t=None):
        # Clip: nn.AdaptiveAvgPool3d hook + patched F.adaptive_avg_pool3d = 2 per input element
        # (also used for clip_pool='frame'). Step: co.AdaptiveAvgPool3d hook (input frame) + the
        # patched F.adaptive_avg_pool1d over the (C, window) ring; see Pool.macs.
        if t is not None:
            return 2 * math.prod(in_shape) * t
        return math.prod(in_shape) + in_shape[-1] * self.window

    def forward(self, params, x):
        check_input(self, x, clip=True)
        axes = (1, 2, 3) if self.clip_pool == "global" else (2, 3)
        return jnp.mean(x, axis=axes, keepdims=True)

    def apply(self, params, x):
        return jnp.mean(x, axis=(1, 2), keepdims=True)

    def init_state(self, batch, in_shape, dtype=jnp.float32):
        if self.window == 1:
            return None
        return _window_state(batch, self.window, self.out_shape(in_shape), dtype, self.temporal_fill)

    def step(self, params, state, x, valid):
        check_input(self, x, clip=False)
        y = self.apply(params, x)
        if self.window == 1:
            return state, Out(y, valid)
        check_state_frame(self, y, state["buf"], "spatially pooled frame")
        return _window_step(state, y, valid, delay=self.delay, stride=1, fill=self.temporal_fill, reduce=jnp.mean)

    @property
    def bulk_ok(self):
        return True

    def steps(self, params, state, xs):
        check_input(self, xs, clip=True)
        pooled = per_frame(partial(self.apply, params), xs)
        if self.window == 1:
            return state, pooled
        return _window_steps(state, pooled, k=self.window, kind="avg")

    def _prefill(self, params, xs, dtype):
        pooled = per_frame(partial(self.apply, params), xs)
        if self.window == 1:
            return None, pooled
        return _window_prefill(pooled, k=self.window, delay=self.delay, stride=1, fill=self.temporal_fill,
                               kind="avg", dtype=dtype)
