"""One fused Pallas kernel for the continual depthwise convolution step (X3D's ``b`` conv).

The XLA path (:meth:`co3d_jax.layers.Conv.step` with shift-and-add taps) computes, for a frame
``x`` padded spatially to ``xp`` ``(B, H+2p, W+2p, C)`` and the partial sums ``acc``
``(B, kT-1, H', W', C)``::

    z[t]      = sum_{i, j} kernel[t, i, j] * xp[:, i:i+H', j:j+W']        (i then j, as the XLA path)
    y         = acc[0] + z[kT-1] (+ bias) (then optionally swish)
    acc'[i]   = acc[i+1] + z[kT-2-i]  (i < kT-2),   acc'[kT-2] = z[0]
    acc'      = where(valid, acc', acc)                                    (per stream)

This kernel does all of it in one pass over ``xp`` and ``acc`` (``acc`` updated in place), one
program per ``(stream, row tile, channel tile)``. Spatial stride 1 only (strided loads are not
supported by Pallas' interpret mode, which the CPU tests use); ``zeros`` temporal fill only
(``replicate`` fill stays on the XLA path). Triton needs power-of-2 tiles: a tile is
``(TH, next_pow2(W'), TC)``, masked at the edges.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def pallas_supported(kernel: tuple, strides: tuple, temporal_fill: str) -> bool:
    """Whether :func:`depthwise_step` covers a depthwise conv with this ``(kT, kH, kW)`` kernel,
    ``(t, h, w)`` strides and temporal fill."""
    return kernel[0] >= 2 and tuple(strides) == (1, 1, 1) and temporal_fill == "zeros"


def tiles(ho: int, wo: int, c: int, budget: int = 2048, max_tc: int = 64, max_tw: int = 128) -> tuple[int, int, int]:
    """Power-of-2 ``(TH, TW, TC)``: the (padded) row width up to ``max_tw`` columns, up to
    ``max_tc`` channels, and as many rows as fit ``budget`` elements (at least one)."""
    tw = min(_pow2(wo), max_tw)
    tc = min(_pow2(c), max_tc)
    th = max(1, min(_pow2(ho), budget // (tw * tc)))
    th = 1 << (th.bit_length() - 1)  # a power of 2 not above the budget
    return th, tw, tc


def _kernel(valid_ref, xp_ref, acc_ref, k_ref, *rest, kt, kh, kw, ho, wo, c, th, tw, tc, has_bias, activation):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu
    if has_bias:
        b_ref, y_ref, nacc_ref = rest
    else:
        (y_ref, nacc_ref), b_ref = rest, None
    b = pl.program_id(0)
    h0 = pl.program_id(1) * th
    nc = (c + tc - 1) // tc
    w0 = (pl.program_id(2) // nc) * tw  # traced: a tile past the array's edge is masked, never out of bounds
    c0 = (pl.program_id(2) % nc) * tc
    zero = h0 * 0  # static indices as traced values (Pallas' interpreter needs them so)
    rows = h0 + jax.lax.broadcasted_iota(jnp.int32, (th, tw, tc), 0)
    cols = w0 + jax.lax.broadcasted_iota(jnp.int32, (th, tw, tc), 1)
    chans = c0 + jax.lax.broadcasted_iota(jnp.int32, (th, tw, tc), 2)
    mask = (rows < ho) & (cols < wo) & (chans < c)
    cmask = (c0 + jax.lax.broadcasted_iota(jnp.int32, (tc,), 0)) < c
    f32 = jnp.float32
    z = [None] * kt
    for i in range(kh):
        for j in range(kw):
            xv = plgpu.load(xp_ref.at[b, pl.ds(h0 + i, th), pl.ds(w0 + j, tw), pl.ds(c0, tc)], mask=mask,
                            other=0.0).astype(f32)
            for t in range(kt):
                kv = plgpu.load(k_ref.at[zero + t, zero + i, zero + j, pl.ds(c0, tc)], mask=cmask, other=0.0).astype(f32)
                term = xv * kv[None, None, :]
                z[t] = term if z[t] is None else z[t] + term
    acc = [plgpu.load(acc_ref.at[b, zero + s, pl.ds(h0, th), pl.ds(w0, tw), pl.ds(c0, tc)], mask=mask,
                      other=0.0).astype(f32) for s in range(kt - 1)]
    y = acc[0] + z[kt - 1]
    if has_bias:
        y = y + plgpu.load(b_ref.at[pl.ds(c0, tc)], mask=cmask, other=0.0).astype(f32)[None, None, :]
    if activation == "swish":
        y = y * (1.0 / (1.0 + jnp.exp(-y)))
    plgpu.store(y_ref.at[b, pl.ds(h0, th), pl.ds(w0, tw), pl.ds(c0, tc)], y.astype(y_ref.dtype), mask=mask)
    valid = valid_ref[b] != 0
    for s in range(kt - 1):
        new = acc[s + 1] + z[kt - 2 - s] if s < kt - 2 else z[0]
        new = jnp.where(valid, new, acc[s])
        plgpu.store(nacc_ref.at[b, zero + s, pl.ds(h0, th), pl.ds(w0, tw), pl.ds(c0, tc)], new.astype(nacc_ref.dtype),
                    mask=mask)


@functools.partial(jax.jit, static_argnames=("activation", "interpret", "budget", "max_tc", "max_tw", "num_warps"))
def depthwise_step(xp, acc, kernel, bias, valid, *, activation: str = "", interpret: bool | None = None,
                   budget: int = 2048, max_tc: int = 64, max_tw: int = 128, num_warps: int = 4):
    """``(y, acc')`` of one continual depthwise step (module docstring), stride 1.

    ``xp``: ``(B, H'+kH-1, W'+kW-1, C)`` the spatially padded frame; ``acc``: ``(B, kT-1, H', W', C)``
    (donate it: it is updated in place); ``kernel``: ``(kT, kH, kW, C)``; ``bias``: ``(C,)`` or
    None; ``valid``: ``(B,)`` bool. ``interpret=None`` runs Pallas' interpreter off GPUs."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu
    kt, kh, kw, c = kernel.shape
    b, h2, w2, _ = xp.shape
    ho, wo = h2 - kh + 1, w2 - kw + 1
    if acc.shape != (b, kt - 1, ho, wo, c):
        raise ValueError(f"depthwise_step: acc {acc.shape} does not match xp {xp.shape} and kernel {kernel.shape}")
    if interpret is None:
        interpret = jax.devices()[0].platform != "gpu"
    th, tw, tc = tiles(ho, wo, c, budget, max_tc, max_tw)
    grid = (b, math.ceil(ho / th), math.ceil(wo / tw) * math.ceil(c / tc))
    has_bias = bias is not None
    body = functools.partial(_kernel, kt=kt, kh=kh, kw=kw, ho=ho, wo=wo, c=c, th=th, tw=tw, tc=tc,
                             has_bias=has_bias, activation=activation)
    args = [valid.astype(jnp.int32), xp, acc, kernel.astype(xp.dtype)] + ([bias.astype(xp.dtype)] if has_bias else [])
    return pl.pallas_call(
        body, grid=grid,
        out_shape=(jax.ShapeDtypeStruct((b, ho, wo, c), xp.dtype), jax.ShapeDtypeStruct(acc.shape, acc.dtype)),
        input_output_aliases={2: 1}, interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        name="co3d_depthwise_step",
    )(*args)


def depthwise_step_reference(xp, acc, kernel, bias, valid, *, activation: str = ""):
    """The same step in plain XLA ops, in the XLA path's order of summation (for tests and timing)."""
    kt, kh, kw, c = kernel.shape
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    k = kernel.astype(xp.dtype)
    z = None
    for i in range(kh):
        for j in range(kw):
            t = xp[:, None, i:i + ho, j:j + wo] * k[:, i, j][None, :, None, None, :]
            z = t if z is None else z + t
    y = acc[:, 0] + z[:, kt - 1]
    if bias is not None:
        y = y + bias.astype(y.dtype)
    if activation == "swish":
        y = jax.nn.silu(y)
    new = jnp.concatenate([acc[:, 1:], jnp.zeros_like(acc[:, :1])], axis=1) + z[:, kt - 2::-1]
    return y, jnp.where(valid.reshape(-1, 1, 1, 1, 1), new, acc)
