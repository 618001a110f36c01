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


# ---------------------------------------------------------------------------- clip mode
#
# A clip (or prefill) forward of a depthwise conv, ``x`` ``(B, T, H, W, C)`` -> ``y``
# ``(B, T', H', W', C)``: one program per ``(output frame, row tile, column x channel tile)`` sums
# the ``kT x kH x kW`` taps of the unpadded input (masked loads: frames and positions outside the
# clip read 0, the zero padding of ``f(x)``), adds the bias and applies the output activation, in
# the XLA shift-and-add path's order of summation (frame tap, then row, then column). It exists
# because grouped convolutions run channels-first in cuDNN's slow grouped direct kernel on GPUs
# and the XLA shift-and-add loop reads each input up to 27 times from HBM at X3D-L's sizes
# (results/README.md, "Why clip X3D-L is slower than PyTorch").


def clip_tiles(ho: int, wo: int, c: int, budget: int = 2048) -> tuple[int, int, int]:
    """Power-of-2 ``(TH, TW, TC)`` for :func:`depthwise_clip`: the column tile (8..128) and channel
    tile (32 or 64) that waste the fewest masked lanes at the edges (ties: the larger tile), and as
    many rows as fit ``budget`` elements."""
    def waste(n, t):
        return math.ceil(n / t) * t - n
    tw = min((t for t in (128, 64, 32, 16, 8) if t <= max(8, _pow2(wo))), key=lambda t: waste(wo, t))
    tc = min((64, 32), key=lambda t: waste(c, t))
    th = max(1, min(_pow2(ho), budget // (tw * tc)))
    return 1 << (th.bit_length() - 1), tw, tc


def _clip_kernel(x_ref, k_ref, b_ref, y_ref, *, t, to, kt, kh, kw, st, sh, sw, lt, ph, pw, h, w, ho, wo, c, th, tw, tc,
                 in_activation, activation, interpret):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu
    bt = pl.program_id(0)  # batch * T' + output frame
    b, tout = bt // to, bt % to
    h0 = pl.program_id(1) * th
    nc = (c + tc - 1) // tc
    w0 = (pl.program_id(2) // nc) * tw
    c0 = (pl.program_id(2) % nc) * tc
    zero = h0 * 0
    shape = (th, tw, tc)
    rows = h0 + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    cols = w0 + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    chans = c0 + jax.lax.broadcasted_iota(jnp.int32, shape, 2)
    mask = (rows < ho) & (cols < wo) & (chans < c)
    cmask = (c0 + jax.lax.broadcasted_iota(jnp.int32, (tc,), 0)) < c
    f32 = jnp.float32
    acc = None
    for a in range(kt):
        ti = tout * st + (a - lt)  # input frame of tap a (outside the clip: zero padding)
        frame = b * t + jnp.clip(ti, 0, t - 1)
        fmask = (ti >= 0) & (ti < t) & (chans < c)
        for i in range(kh):
            r = rows * sh + (i - ph)
            rmask = fmask & (r >= 0) & (r < h)
            for j in range(kw):
                q = cols * sw + (j - pw)
                xv = _load_window(x_ref, frame, h0 * sh + (i - ph), w0 * sw + (j - pw), c0, shape,
                                  rmask & (q >= 0) & (q < w), interpret, sh, sw)
                kv = plgpu.load(k_ref.at[zero + a, zero + i, zero + j, pl.ds(c0, tc)], mask=cmask, other=0.0).astype(f32)
                term = _act(xv.astype(f32), in_activation) * kv[None, None, :]
                acc = term if acc is None else acc + term
    y = acc + plgpu.load(b_ref.at[pl.ds(c0, tc)], mask=cmask, other=0.0).astype(f32)[None, None, :]
    y = _act(y, activation)
    plgpu.store(y_ref.at[bt, pl.ds(h0, th), pl.ds(w0, tw), pl.ds(c0, tc)], y.astype(y_ref.dtype), mask=mask)


def clip_supported(kernel: tuple, groups_equal_channels: bool = True) -> bool:
    """Whether :func:`depthwise_clip` covers a depthwise conv with this ``(kT, kH, kW)`` kernel (any
    strides and padding; a kernel of at least 2 taps in some dimension, which is where it pays)."""
    return groups_equal_channels and math.prod(kernel) > 1


def _clip_geometry(x_shape, kernel_shape, strides, pads):
    (lt, ht), (ph, ph2), (pw, pw2) = (tuple(int(v) for v in ((p, p) if isinstance(p, int) else p)) for p in pads)
    if ph != ph2 or pw != pw2:
        raise ValueError(f"depthwise_clip: spatial padding must be symmetric, got {pads}")
    kt, kh, kw = kernel_shape[:3]
    st, sh, sw = (int(s) for s in strides)
    _, t, h, w, _ = x_shape
    out = tuple((n + lo + hi - k) // s + 1 for n, lo, hi, k, s in
                zip((t, h, w), (lt, ph, pw), (ht, ph, pw), (kt, kh, kw), (st, sh, sw)))
    if min(out) < 1:
        raise ValueError(f"depthwise_clip: input {tuple(x_shape)} is too small for kernel {tuple(kernel_shape[:3])} "
                         f"with strides {tuple(strides)} and padding {pads}")
    return (st, sh, sw), (lt, ht, ph, pw), out


# Triton addresses one call's operands with 32-bit offsets: a call whose input or output passes 2^31
# bytes faulted on an H200 (CUDA_ERROR_ILLEGAL_ADDRESS: bulk steps of 64 frames of 64 CoX3D-S streams,
# a 2.5 GB input; 48 frames, 2.0 GB, ran). Larger clips are split into calls under this bound.
MAX_CALL_BYTES = 2**31 - 1


def _clip_splits(b: int, t: int, to: int, frame_in: int, frame_out: int, st: int, kt: int) -> tuple[int, int]:
    """``(streams, output frames)`` per call so that each call's input and output stay under
    :data:`MAX_CALL_BYTES`: whole clips of as many streams as fit, else one stream's output frames in
    runs (each reading the ``(n-1)*st + kT`` input frames its run needs)."""
    whole = max(t * frame_in, to * frame_out)
    if whole <= MAX_CALL_BYTES:
        return max(1, min(b, MAX_CALL_BYTES // whole)), to
    n = 0
    while n < to and max((n * st + kt) * frame_in, (n + 1) * frame_out) <= MAX_CALL_BYTES:
        n += 1
    if n == 0:
        raise ValueError(f"depthwise_clip: one output frame needs {kt * frame_in} input bytes, over the "
                         f"{MAX_CALL_BYTES} one kernel call can address")
    return 1, n


def _clip_call(cfg, x, kernel, bias):
    """:func:`_clip_call_one` over the whole clip, or over pieces of it (:func:`_clip_splits`)."""
    strides, pads = cfg[:2]
    (st, _, _), (lt, _, ph, pw), (to, ho, wo) = _clip_geometry(x.shape, kernel.shape, strides, pads)
    b, t, h, w, c = x.shape
    kt = kernel.shape[0]
    item = jnp.dtype(x.dtype).itemsize
    nb, nt = _clip_splits(b, t, to, h * w * c * item, ho * wo * c * item, st, kt)
    one = functools.partial(_clip_call_one, cfg, kernel=kernel, bias=bias, ph=ph, pw=pw, ho=ho, wo=wo)
    if (nb, nt) == (b, to):
        return one(x, lt=lt, to=to)
    parts = []
    for b0 in range(0, b, nb):
        runs = []
        for o0 in range(0, to, nt):
            o1 = min(o0 + nt, to)
            i0 = min(max(0, o0 * st - lt), t - 1)             # the input frames these outputs read
            i1 = max(min(t, (o1 - 1) * st - lt + kt), i0 + 1)
            runs.append(one(x[b0:b0 + nb, i0:i1], lt=lt - o0 * st + i0, to=o1 - o0))
        parts.append(runs[0] if len(runs) == 1 else jnp.concatenate(runs, axis=1))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)


def _clip_call_one(cfg, x, *, kernel, bias, ph: int, pw: int, ho: int, wo: int, lt: int, to: int):
    """One Pallas call: output frames ``0 .. to-1``, frame ``o`` reading input frames
    ``o*st - lt .. o*st - lt + kT - 1`` (zero outside ``x``); the spatial geometry is the whole clip's."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu
    strides, _, in_activation, activation, interpret, budget, num_warps = cfg
    st, sh, sw = strides
    b, t, h, w, c = x.shape
    kt, kh, kw = kernel.shape[:3]
    th, tw, tc = clip_tiles(ho, wo, c, budget)
    grid = (b * to, math.ceil(ho / th), math.ceil(wo / tw) * math.ceil(c / tc))
    body = functools.partial(_clip_kernel, t=t, to=to, kt=kt, kh=kh, kw=kw, st=st, sh=sh, sw=sw, lt=lt, ph=ph, pw=pw,
                             h=h, w=w, ho=ho, wo=wo, c=c, th=th, tw=tw, tc=tc, in_activation=in_activation,
                             activation=activation, interpret=interpret)
    y = pl.pallas_call(
        body, grid=grid, out_shape=jax.ShapeDtypeStruct((b * to, ho, wo, c), x.dtype), interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        name="co3d_depthwise_clip",
    )(x.reshape(b * t, h, w, c), kernel.astype(x.dtype), bias.astype(x.dtype))
    return y.reshape(b, to, ho, wo, c)


def depthwise_clip_reference(x, kernel, bias=None, *, strides: tuple = (1, 1, 1), pads: tuple = (1, 1, 1),
                             in_activation: str = "", activation: str = ""):
    """:func:`depthwise_clip` in XLA ops, shift-and-add in the kernel's order of summation (the
    clip path of ``Conv(impl='shift')``): the tests' reference and the function whose VJP is the
    kernel's backward pass (so training differentiates the same ops as the shift path)."""
    (st, sh, sw), (lt, ht, ph, pw), (to, ho, wo) = _clip_geometry(x.shape, kernel.shape, strides, pads)
    kt, kh, kw = kernel.shape[:3]
    xp = jnp.pad(_XLA_ACTIVATIONS[in_activation](x), ((0, 0), (lt, ht), (ph, ph), (pw, pw), (0, 0)))
    k = kernel.astype(x.dtype)
    y = None
    for a in range(kt):
        for i in range(kh):
            for j in range(kw):
                tap = jax.lax.slice(xp, (0, a, i, j, 0), (xp.shape[0], a + (to - 1) * st + 1, i + (ho - 1) * sh + 1,
                                                          j + (wo - 1) * sw + 1, xp.shape[4]), (1, st, sh, sw, 1))
                y = tap * k[a, i, j] if y is None else y + tap * k[a, i, j]
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return _XLA_ACTIVATIONS[activation](y)


def _clip_xla(cfg, x, kernel, bias):
    strides, pads, in_activation, activation = cfg[:4]
    return depthwise_clip_reference(x, kernel, bias, strides=strides, pads=pads, in_activation=in_activation,
                                    activation=activation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _clip(cfg, x, kernel, bias):
    return _clip_call(cfg, x, kernel, bias)


def _clip_fwd(cfg, x, kernel, bias):
    return _clip_call(cfg, x, kernel, bias), (x, kernel, bias)


def _clip_bwd(cfg, res, g):
    return jax.vjp(functools.partial(_clip_xla, cfg), *res)[1](g)


_clip.defvjp(_clip_fwd, _clip_bwd)


@functools.partial(jax.jit, static_argnames=("strides", "pads", "in_activation", "activation", "interpret", "budget",
                                             "num_warps"))
def depthwise_clip(x, kernel, bias=None, *, strides: tuple = (1, 1, 1), pads: tuple = (1, 1, 1),
                   in_activation: str = "", activation: str = "", interpret: bool | None = None, budget: int = 2048,
                   num_warps: int = 4):
    """``y = activation(conv(in_activation(x)) + bias)`` of a depthwise conv over a clip, one Pallas call.

    ``x``: ``(B, T, H, W, C)``, unpadded; ``kernel``: ``(kT, kH, kW, C)``; ``bias``: ``(C,)`` or None;
    ``strides``: ``(t, h, w)``; ``pads``: per dimension an int (both ends) or a ``(low, high)`` pair,
    symmetric spatially (the temporal pair may differ: prefill pads ``(lo, kT-1)``). Returns
    ``(B, T', H', W', C)`` in ``x``'s dtype, accumulated in fp32. Differentiable: the backward pass is
    that of :func:`depthwise_clip_reference` (shift-and-add, XLA). ``interpret=None`` runs Pallas' interpreter off GPUs."""
    if in_activation not in IN_ACTIVATIONS or activation not in ACTIVATIONS:
        raise ValueError(f"depthwise_clip: activations must be one of {ACTIVATIONS} (input: f(0) = 0), got "
                         f"{in_activation!r}, {activation!r}")
    if x.ndim != 5 or kernel.ndim != 4 or kernel.shape[3] != x.shape[4]:
        raise ValueError(f"depthwise_clip: x {x.shape} (B, T, H, W, C) does not match kernel {kernel.shape} (kT, kH, kW, C)")
    if interpret is None:
        interpret = jax.devices()[0].platform != "gpu"
    pads = tuple(p if isinstance(p, int) else (int(p[0]), int(p[1])) for p in pads)
    bias = jnp.zeros((x.shape[4],), x.dtype) if bias is None else bias
    cfg = (tuple(int(s) for s in strides), pads, in_activation, activation, bool(interpret), budget, num_warps)
    return _clip(cfg, x, kernel, bias)
