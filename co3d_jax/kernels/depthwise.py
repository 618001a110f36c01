"""One fused Pallas kernel for the continual depthwise convolution step (X3D's ``b`` conv).

The XLA path (:meth:`co3d_jax.layers.Conv.step` with shift-and-add taps) computes, for a frame
``x`` ``(B, H, W, C)`` (optionally activated by ``f``, f(0) = 0), padded spatially to ``xp``
``(B, H+2p, W+2p, C)``, and the partial sums ``acc`` ``(B, kT-1, H', W', C)``::

    xp        = pad(f(x))
    z[t]      = sum_{i, j} kernel[t, i, j] * xp[:, i:i+H', j:j+W']        (i then j, as the XLA path)
    y         = g(acc[0] + z[kT-1] (+ bias))                               (g: relu, swish or none)
    acc'[i]   = acc[i+1] + z[kT-2-i]  (i < kT-2),   acc'[kT-2] = z[0]
    acc'      = where(valid, acc', acc)                                    (per stream)

This kernel does all of it in one pass over ``x`` and ``acc`` (``acc`` updated in place), one
program per ``(stream, row tile, channel tile)``: it reads the unpadded frame with masked halo
loads (positions outside the frame read 0, which is the padding of ``f(x)`` since f(0) = 0), so
no padded copy is made. Spatial strides too (strided loads on Triton; Pallas' interpreter, which
the CPU tests use, has no strided slices and gathers the same positions); ``zeros`` temporal fill
only (``replicate`` fill stays on the XLA path). Triton needs power-of-2 tiles: a tile is ``(TH, next_pow2(W'), TC)``, masked at the
edges.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def pallas_supported(kernel: tuple, strides: tuple, temporal_fill: str, spatial_strides: bool = False) -> bool:
    """Whether :func:`depthwise_step` covers a depthwise conv with this ``(kT, kH, kW)`` kernel,
    ``(t, h, w)`` strides and temporal fill: temporal stride 1, zeros fill, spatial stride 1 (or any
    spatial strides with ``spatial_strides=True``)."""
    strides = tuple(strides)
    return (kernel[0] >= 2 and strides[0] == 1 and temporal_fill == "zeros"
            and (spatial_strides or strides[1:] == (1, 1)))


def tiles(ho: int, wo: int, c: int, budget: int = 2048, max_tc: int = 64, max_tw: int = 128) -> tuple[int, int, int]:
    """Power-of-2 ``(TH, TW, TC)``: the (padded) row width up to ``max_tw`` columns, up to
    ``max_tc`` channels, and as many rows as fit ``budget`` elements (at least one)."""
    tw = min(_pow2(wo), max_tw)
    tc = min(_pow2(c), max_tc)
    th = max(1, min(_pow2(ho), budget // (tw * tc)))
    th = 1 << (th.bit_length() - 1)  # a power of 2 not above the budget
    return th, tw, tc


# activations the kernel applies (prologue: on the loaded input, only f(0) = 0, since positions
# outside the frame read 0 and stand for the zero padding of the activated input; epilogue: after bias)
ACTIVATIONS = ("", "relu", "swish")
IN_ACTIVATIONS = ("", "relu", "swish")  # f(0) = 0 (tests/test_kernels.py checks it)


def _act(v, name: str):
    if name == "relu":
        return jnp.maximum(v, 0.0)
    if name == "swish":
        return v * (1.0 / (1.0 + jnp.exp(-v)))
    return v


def _pads(x_shape, acc_shape, kernel_shape, strides=(1, 1), pads=None) -> tuple[int, int]:
    """The symmetric spatial padding ``(ph, pw)`` that maps a frame of ``x_shape`` to outputs of
    ``acc_shape``: ``pads`` checked, or (``None``, stride 1 only) inferred from the shapes (``(0, 0)``
    for an already padded frame)."""
    kh, kw = kernel_shape[1:3]
    if pads is None:
        if tuple(strides) != (1, 1):
            raise ValueError("depthwise_step: pass pads with spatial strides (the shapes do not determine them)")
        dh, dw = acc_shape[2] + kh - 1 - x_shape[1], acc_shape[3] + kw - 1 - x_shape[2]
        pads = (dh // 2, dw // 2) if dh >= 0 and dw >= 0 and not dh % 2 and not dw % 2 else (-1, -1)
    ok = all(p >= 0 and (n + 2 * p - k) // s + 1 == o for n, p, k, s, o in
             zip(x_shape[1:3], pads, (kh, kw), strides, acc_shape[2:4]))
    if not ok:
        raise ValueError(f"depthwise_step: frame {tuple(x_shape)} does not map to acc {tuple(acc_shape)} with kernel "
                         f"{tuple(kernel_shape)}, strides {tuple(strides)} and symmetric padding {pads}")
    return int(pads[0]), int(pads[1])


def _load_window(ref, b, r0, c0, ch0, shape, mask, interpret, sh=1, sw=1):
    """``ref[b, r0:r0+TH*sh:sh, c0:c0+TW*sw:sw, ch0:ch0+TC]`` with 0 where ``mask`` is False;
    ``r0``/``c0`` may be negative (the halo above/left of the frame). Triton: (strided) slices at
    those starts (masked lanes are never dereferenced); the interpreter clamps slice starts into the
    array and has no strided slices, so it gathers with index arrays instead (the same positions,
    the same mask)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu
    th, tw, tc = shape
    if not interpret:
        return plgpu.load(ref.at[b, pl.ds(r0, th, sh), pl.ds(c0, tw, sw), pl.ds(ch0, tc)], mask=mask, other=0.0)
    rows = r0 + sh * jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    cols = c0 + sw * jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    chans = ch0 + jax.lax.broadcasted_iota(jnp.int32, shape, 2)
    return plgpu.load(ref.at[b, jnp.where(mask, rows, 0), jnp.where(mask, cols, 0), jnp.where(mask, chans, 0)],
                      mask=mask, other=0.0)


def _kernel(valid_ref, x_ref, acc_ref, k_ref, *rest, kt, kh, kw, sh, sw, ph, pw, h, w, ho, wo, c, th, tw, tc, has_bias,
            in_activation, activation, interpret):
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
        r = rows * sh + (i - ph)  # input row of output row `rows`, tap i (outside the frame: zero padding)
        rmask = (r >= 0) & (r < h) & (chans < c)
        for j in range(kw):
            q = cols * sw + (j - pw)
            xmask = rmask & (q >= 0) & (q < w)
            xv = _load_window(x_ref, b, h0 * sh + (i - ph), w0 * sw + (j - pw), c0, (th, tw, tc), xmask, interpret,
                              sh, sw)
            xv = _act(xv.astype(f32), in_activation)
            for t in range(kt):
                kv = plgpu.load(k_ref.at[zero + t, zero + i, zero + j, pl.ds(c0, tc)], mask=cmask, other=0.0).astype(f32)
                term = xv * kv[None, None, :]
                z[t] = term if z[t] is None else z[t] + term
    acc = [plgpu.load(acc_ref.at[b, zero + s, pl.ds(h0, th), pl.ds(w0, tw), pl.ds(c0, tc)], mask=mask,
                      other=0.0).astype(f32) for s in range(kt - 1)]
    y = acc[0] + z[kt - 1]
    if has_bias:
        y = y + plgpu.load(b_ref.at[pl.ds(c0, tc)], mask=cmask, other=0.0).astype(f32)[None, None, :]
    y = _act(y, activation)
    plgpu.store(y_ref.at[b, pl.ds(h0, th), pl.ds(w0, tw), pl.ds(c0, tc)], y.astype(y_ref.dtype), mask=mask)
    valid = valid_ref[b] != 0
    for s in range(kt - 1):
        new = acc[s + 1] + z[kt - 2 - s] if s < kt - 2 else z[0]
        new = jnp.where(valid, new, acc[s])
        plgpu.store(nacc_ref.at[b, zero + s, pl.ds(h0, th), pl.ds(w0, tw), pl.ds(c0, tc)], new.astype(nacc_ref.dtype),
                    mask=mask)


@functools.partial(jax.jit, static_argnames=("strides", "pads", "in_activation", "activation", "interpret", "budget",
                                             "max_tc", "max_tw", "num_warps"))
def depthwise_step(x, acc, kernel, bias, valid, *, strides: tuple = (1, 1), pads: tuple | None = None,
                   in_activation: str = "", activation: str = "",
                   interpret: bool | None = None, budget: int = 2048, max_tc: int = 64, max_tw: int = 128,
                   num_warps: int = 4):
    """``(y, acc')`` of one continual depthwise step (module docstring).

    ``x``: ``(B, H, W, C)`` the frame, unpadded; positions outside it read 0. ``strides``: the
    spatial ``(sh, sw)``; ``pads``: the symmetric spatial ``(ph, pw)``, at stride 1 inferred from the
    shapes when None (``H' = H + 2 ph - kH + 1``; an already padded frame ``(B, H'+kH-1, W'+kW-1, C)``
    means no padding); ``acc``: ``(B, kT-1, H', W', C)`` (donate it: it
    is updated in place); ``kernel``: ``(kT, kH, kW, C)``; ``bias``: ``(C,)`` or None; ``valid``:
    ``(B,)`` bool or int (nonzero: valid). ``in_activation`` (``''``, ``'relu'``, ``'swish'``: f(0) = 0)
    is applied to the frame as loaded, ``activation`` (same choices) to the output after the bias.
    ``interpret=None`` runs Pallas' interpreter off GPUs."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu
    if in_activation not in IN_ACTIVATIONS or activation not in ACTIVATIONS:
        raise ValueError(f"depthwise_step: activations must be one of {ACTIVATIONS} (input: f(0) = 0), got "
                         f"{in_activation!r}, {activation!r}")
    kt, kh, kw, c = kernel.shape
    b, h, w, _ = x.shape
    if acc.shape[:2] != (b, kt - 1) or acc.shape[4] != c or x.shape[3] != c:
        raise ValueError(f"depthwise_step: acc {acc.shape} does not match x {x.shape} and kernel {kernel.shape}")
    sh, sw = (int(s) for s in strides)
    ph, pw = _pads(x.shape, acc.shape, kernel.shape, (sh, sw), pads)
    ho, wo = acc.shape[2:4]
    if interpret is None:
        interpret = jax.devices()[0].platform != "gpu"
    th, tw, tc = tiles(ho, wo, c, budget, max_tc, max_tw)
    grid = (b, math.ceil(ho / th), math.ceil(wo / tw) * math.ceil(c / tc))
    has_bias = bias is not None
    body = functools.partial(_kernel, kt=kt, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, h=h, w=w, ho=ho, wo=wo, c=c, th=th, tw=tw,
                             tc=tc, has_bias=has_bias, in_activation=in_activation, activation=activation,
                             interpret=interpret)
    v = valid if valid.dtype == jnp.int32 else valid.astype(jnp.int32)
    args = [v, x, acc, kernel.astype(x.dtype)] + ([bias.astype(x.dtype)] if has_bias else [])
    return pl.pallas_call(
        body, grid=grid,
        out_shape=(jax.ShapeDtypeStruct((b, ho, wo, c), x.dtype), jax.ShapeDtypeStruct(acc.shape, acc.dtype)),
        input_output_aliases={2: 1}, interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        name="co3d_depthwise_step",
    )(*args)


_XLA_ACTIVATIONS = {"": lambda v: v, "relu": jax.nn.relu, "swish": lambda v: v * jax.nn.sigmoid(v)}


def depthwise_step_reference(x, acc, kernel, bias, valid, *, strides: tuple = (1, 1), pads: tuple | None = None,
                             in_activation: str = "", activation: str = ""):
    """The same step in plain XLA ops, in the XLA path's order of summation (for tests and timing):
    the activated frame zero-padded, the taps, the output (+ bias, then ``activation``)."""
    kt, kh, kw, c = kernel.shape
    sh, sw = strides
    ph, pw = _pads(x.shape, acc.shape, kernel.shape, strides, pads)
    ho, wo = acc.shape[2:4]
    xp = jnp.pad(_XLA_ACTIVATIONS[in_activation](x), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    k = kernel.astype(xp.dtype)
    z = None
    for i in range(kh):
        for j in range(kw):
            t = xp[:, None, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw] * k[:, i, j][None, :, None, None, :]
            z = t if z is None else z + t
    y = acc[:, 0] + z[:, kt - 1]
    if bias is not None:
        y = y + bias.astype(y.dtype)
    y = _XLA_ACTIVATIONS[activation](y)
    new = jnp.concatenate([acc[:, 1:], jnp.zeros_like(acc[:, :1])], axis=1) + z[:, kt - 2::-1]
    return y, jnp.where(valid.reshape(-1, 1, 1, 1, 1) != 0, new, acc)
