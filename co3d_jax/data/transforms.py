"""Evaluation transforms in numpy, matching the reference's torch pipeline (§5.1):

1. ``ToTensorVideo``: uint8 -> float32 / 255.
2. Short-side resize to ``size`` (``RandomShortSideScaleJitterVideo(size, size)``): bilinear,
   ``align_corners=False``, no antialiasing; the long side becomes ``floor(long/short·size)``
   (ties: a square or landscape frame scales its width); skipped when the short side already
   equals ``size``.
3. ``CenterCropVideo(size)``: offset ``int(round((h - th)/2))`` (Python's round, half to even).
4. ``NormalizeVideo(mean, std)``.

Only the rows and columns inside the crop are interpolated (same values, less work). The
interpolation follows ``upsample_bilinear2d`` (CPU): ``scale = in/out`` in float32, source
``max(fma(scale, dst+0.5, -0.5), 0)``, neighbours ``i0 = floor(src)``, ``i1 = min(i0+1, in-1)``;
the separable evaluation differs from torch by float32 rounding only (~1e-7).

The same resize + crop as :class:`CropTaps` (two source rows/columns and two weights per output
row/column): :func:`center_crop_taps` gives the taps of this transform for an ``h x w`` frame, which
:mod:`co3d_jax.data.device_augment` applies on the device (evaluation's input pipeline,
:mod:`co3d_jax.data.eval_loader`) in the same float32 operations as :func:`resize_crop`; training's
random crops are taps too (:func:`co3d_jax.data.augment.crop_taps`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .sampling import fma_f32


def short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """Output ``(h, w)`` of the short-side resize (the reference's rule, including its tie-break)."""
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    new_h, new_w = size, size
    if w < h:
        new_h = int(math.floor((float(h) / w) * size))
    else:
        new_w = int(math.floor((float(w) / h) * size))
    return new_h, new_w


def center_crop_offset(length: int, target: int) -> int:
    return 0 if target >= length else int(round((length - target) / 2.0))


def bilinear_taps(in_size: int, out_size: int, lo: int, hi: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resizing ``in_size`` to ``out_size`` (bilinear, ``align_corners=False``, no antialiasing,
    torch's float32 source positions): for output positions ``lo .. hi-1``, the two source
    indices ``i0, i1`` (int64) and their weights ``w0, w1`` (float32), each of shape ``(hi - lo,)``;
    output ``k`` is ``w0[k] * x[i0[k]] + w1[k] * x[i1[k]]``."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(lo, hi, dtype=np.float32)
    src = fma_f32(np.full_like(dst, scale), dst + np.float32(0.5), np.full_like(dst, -0.5))
    src = np.maximum(src, np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1) - w1).astype(np.float32)
    return i0, i1, w0, w1


class CropTaps(NamedTuple):
    """Where the ``S``-square crop of a resized frame reads its source pixels: output row ``i``
    is ``rw0[i] * row r0[i] + rw1[i] * row r1[i]`` of the source, likewise columns. Each field is
    ``(S,)``: indices int32, weights float32. A horizontal flip is the columns reversed. The size
    does not depend on the frame or the resize, so the resize + crop (+ flip) runs on the device
    (:mod:`co3d_jax.data.device_augment`) without new shapes: training draws random taps
    (:func:`co3d_jax.data.augment.crop_taps`), evaluation takes :func:`center_crop_taps`."""

    r0: np.ndarray
    r1: np.ndarray
    rw0: np.ndarray
    rw1: np.ndarray
    c0: np.ndarray
    c1: np.ndarray
    cw0: np.ndarray
    cw1: np.ndarray


def _identity_taps(lo: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Taps that copy positions ``lo .. lo+size-1`` (weights 1 and 0: exact in float32)."""
    i = np.arange(lo, lo + size)
    return i, i, np.ones(size, np.float32), np.zeros(size, np.float32)


def center_crop_taps(h: int, w: int, size: int) -> CropTaps:
    """The taps of :func:`resize_crop` (short-side resize to ``size``, centre ``size``-square
    crop) for an ``h x w`` frame. Applied to uint8 frames as ``(x / 255)`` gathered and
    multiply-added in float32 (:mod:`co3d_jax.data.device_augment`), they give
    :func:`resize_crop`'s pixels up to float32 rounding."""
    nh, nw = short_side_size(h, w, size)
    oi, oj = center_crop_offset(nh, size), center_crop_offset(nw, size)
    if (nh, nw) == (h, w):   # no resize: a plain crop
        rows, cols = _identity_taps(oi, size), _identity_taps(oj, size)
    else:
        rows, cols = bilinear_taps(h, nh, oi, oi + size), bilinear_taps(w, nw, oj, oj + size)
    (r0, r1, rw0, rw1), (c0, c1, cw0, cw1) = rows, cols
    return CropTaps(*(np.ascontiguousarray(a, np.int32) for a in (r0, r1)),
                    *(np.ascontiguousarray(a, np.float32) for a in (rw0, rw1)),
                    *(np.ascontiguousarray(a, np.int32) for a in (c0, c1)),
                    *(np.ascontiguousarray(a, np.float32) for a in (cw0, cw1)))


def resize_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 or float ``(T, H, W, C)`` -> float32 ``(T, size, size, C)`` in [0, 1]: /255 (uint8
    input), short-side bilinear resize, centre crop."""
    t, h, w, c = frames.shape
    nh, nw = short_side_size(h, w, size)
    th, tw = min(size, nh), min(size, nw)
    oi, oj = center_crop_offset(nh, size), center_crop_offset(nw, size)

    def to_float(a):
        a = a.astype(np.float32)
        if frames.dtype == np.uint8:
            a /= np.float32(255.0)
        return a

    if (nh, nw) == (h, w):
        return np.ascontiguousarray(to_float(frames[:, oi:oi + th, oj:oj + tw]))
    r0, r1, rw0, rw1 = bilinear_taps(h, nh, oi, oi + th)
    c0, c1, cw0, cw1 = bilinear_taps(w, nw, oj, oj + tw)
    # Only the source rows/columns the crop reads, converted after the (uint8) gather.
    rs, cs = np.unique(np.concatenate([r0, r1])), np.unique(np.concatenate([c0, c1]))
    rmap, cmap = np.zeros(h, np.int64), np.zeros(w, np.int64)
    rmap[rs], cmap[cs] = np.arange(rs.size), np.arange(cs.size)
    xs = to_float(frames[:, rs][:, :, cs])
    # torch: h0w * (w0w * x00 + w1w * x01) + h1w * (w0w * x10 + w1w * x11)
    cols = xs[:, :, cmap[c0]]
    cols *= cw0[None, None, :, None]
    tmp = xs[:, :, cmap[c1]]
    tmp *= cw1[None, None, :, None]
    cols += tmp
    out = cols[:, rmap[r0]]
    out *= rw0[None, :, None, None]
    tmp = cols[:, rmap[r1]]
    tmp *= rw1[None, :, None, None]
    out += tmp
    return np.ascontiguousarray(out, dtype=np.float32)


def normalize(x: np.ndarray, mean, std) -> np.ndarray:
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return ((x - mean) / std).astype(np.float32)


def eval_transform(frames: np.ndarray, size: int, mean, std, chunk: int = 2) -> np.ndarray:
    """The full evaluation transform: uint8 ``(T, H, W, 3)`` -> normalised float32 ``(T, size, size, 3)``.
    Processed ``chunk`` frames at a time (cache-friendly: about 2x faster than all at once)."""
    parts = [normalize(resize_crop(frames[i:i + chunk], size), mean, std) for i in range(0, len(frames), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, size, size, frames.shape[-1]), np.float32)
