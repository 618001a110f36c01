"""Training-time data sampling (X3D recipe): which video and window each sample takes, and its
augmentation (random temporal window, short-side scale jitter, random crop, optional horizontal
flip). The data order and every sample's randomness are pure functions of ``(seed, global sample
number)``, so a run resumed from ``step`` sees exactly the batches an uninterrupted run would.
The draws are made on the host (:func:`draw_sample`); the spatial part becomes fixed-size
:class:`~co3d_jax.data.transforms.CropTaps` (as evaluation's centre crop is), which
:mod:`co3d_jax.data.device_augment` applies on the device;
:func:`train_sample` is the numpy reference. :mod:`co3d_jax.data.train_loader` decodes and
batches with these; the train step is in :mod:`co3d_jax.train`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import numpy as np

from ..normalisation import KINETICS
from .sampling import clip_size, num_padded, temporal_indices
from .transforms import CropTaps


@dataclasses.dataclass(frozen=True)
class TrainClipSpec:
    """X3D training sampling: ``num_frames`` at ``sampling_rate`` (30-fps frames apart) from a
    uniformly random window; short side resized to a random size in ``jitter`` (PySlowFast
    ``TRAIN_JITTER_SCALES``, e.g. [182, 228] for a 160 crop); random ``image_size`` crop;
    horizontal flip with probability 0.5 if ``flip``; ``mean``/``std`` normalisation."""

    num_frames: int
    sampling_rate: int
    image_size: int
    jitter: tuple = (0, 0)
    flip: bool = True
    mean: tuple = KINETICS[0]
    std: tuple = KINETICS[1]

    @staticmethod
    def default_jitter(image_size: int) -> tuple[int, int]:
        """PySlowFast's X3D ratios: [182, 228] for 160, [256, 320] for 224, [356, 446] for 312."""
        return (int(round(image_size * 256 / 224)), int(round(image_size * 320 / 224)))


def sample_indices(seed: int, num_videos: int, step: int, batch_size: int) -> list[tuple[int, int]]:
    """``(global sample number, video index)`` of the ``batch_size`` samples of update ``step``.

    Sample ``s`` is position ``s % N`` of epoch ``s // N``, whose order is a permutation drawn
    from ``(seed, epoch)``; a pure function, so resuming at any step reproduces the data order."""
    out = []
    for j in range(batch_size):
        s = step * batch_size + j
        epoch, pos = divmod(s, num_videos)
        out.append((s, int(epoch_permutation(seed, epoch, num_videos)[pos])))
    return out


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, 1, epoch]).permutation(n)


def sample_rng(seed: int, sample: int) -> np.random.Generator:
    """The augmentation RNG of global sample number ``sample``."""
    return np.random.default_rng([seed, 2, sample])


def _bilinear_rows(in_size: int, out_size: int, lo: int, hi: int):
    """torch ``upsample_bilinear`` (align_corners=False, no antialias) taps for outputs lo..hi-1."""
    scale = in_size / out_size
    src = np.maximum((np.arange(lo, hi) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, 1.0 - w1, w1


def crop_taps(h: int, w: int, short: int, size: int, top: float, left: float, flip: bool = False) -> CropTaps:
    """The taps of :func:`resize_crop_region` (then flipped if ``flip``) for an ``h x w`` frame."""
    if h <= w:
        nh, nw = short, int(math.floor(w / h * short))
    else:
        nh, nw = int(math.floor(h / w * short)), short
    nh, nw = max(nh, size), max(nw, size)   # a short side below the crop is stretched to it
    y0 = int(round(top * (nh - size)))
    x0 = int(round(left * (nw - size)))
    r0, r1, rw0, rw1 = _bilinear_rows(h, nh, y0, y0 + size)
    c0, c1, cw0, cw1 = _bilinear_rows(w, nw, x0, x0 + size)
    if flip:
        c0, c1, cw0, cw1 = c0[::-1], c1[::-1], cw0[::-1], cw1[::-1]
    return CropTaps(*(np.ascontiguousarray(a, np.int32) for a in (r0, r1)),
                    *(np.ascontiguousarray(a, np.float32) for a in (rw0, rw1)),
                    *(np.ascontiguousarray(a, np.int32) for a in (c0, c1)),
                    *(np.ascontiguousarray(a, np.float32) for a in (cw0, cw1)))


def apply_taps(frames: np.ndarray, taps: CropTaps) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` -> float32 in [0, 1] ``(T, S, S, 3)`` (the numpy reference)."""
    x = frames.astype(np.float32) / np.float32(255.0)
    cols = x[:, :, taps.c0] * taps.cw0[None, None, :, None] + x[:, :, taps.c1] * taps.cw1[None, None, :, None]
    return cols[:, taps.r0] * taps.rw0[None, :, None, None] + cols[:, taps.r1] * taps.rw1[None, :, None, None]


def resize_crop_region(frames: np.ndarray, short: int, size: int, top: float, left: float) -> np.ndarray:
    """Resize uint8 ``(T, H, W, 3)`` so the short side is ``short`` (bilinear) and crop a
    ``size``-square at relative offsets ``top``/``left`` in [0, 1]; float32 in [0, 1]."""
    t, h, w, _ = frames.shape
    return apply_taps(frames, crop_taps(h, w, short, size, top, left))


class SampleDraw(NamedTuple):
    """One training sample's random choices: the source frame of each clip frame (``indices``),
    how many repeat the last frame (``padded``), the short side, the relative crop offsets and
    the flip."""

    indices: np.ndarray
    padded: int
    short: int
    top: float
    left: float
    flip: bool


def draw_sample(num_decoded: int, fps: float, spec: TrainClipSpec, rng: np.random.Generator) -> SampleDraw:
    """Draw a sample's temporal window and augmentation from ``rng`` (:func:`sample_rng`), in
    the order :func:`train_sample` always drew them."""
    n = num_decoded
    size = clip_size(spec.sampling_rate, spec.num_frames, fps)
    start = rng.uniform(0.0, max(n - size, 0.0))
    idx = temporal_indices(n, size, spec.num_frames, start)
    padded = num_padded(n, size, spec.num_frames, start)
    lo, hi = spec.jitter if spec.jitter[1] > 0 else TrainClipSpec.default_jitter(spec.image_size)
    short = int(rng.integers(lo, hi + 1))
    top, left = rng.uniform(), rng.uniform()
    flip = bool(spec.flip and rng.uniform() < 0.5)
    return SampleDraw(np.asarray(idx), int(padded), short, float(top), float(left), flip)


def train_sample(frames: np.ndarray, fps: float, spec: TrainClipSpec, rng: np.random.Generator,
                 info: dict | None = None) -> np.ndarray:
    """One augmented training clip ``(num_frames, S, S, 3)`` float32 (normalised) from all the
    decoded uint8 frames of a video, in numpy: the reference of the device augmentation
    (:mod:`co3d_jax.data.device_augment`). ``info``, when given, receives ``padded``: the clip
    frames that repeat the last frame because the video is shorter than the window
    (:func:`co3d_jax.data.sampling.num_padded`)."""

    d = draw_sample(len(frames), fps, spec, rng)
    if info is not None:
        info["padded"] = d.padded
    clip = resize_crop_region(frames[d.indices], d.short, spec.image_size, d.top, d.left)
    if d.flip:
        clip = clip[:, :, ::-1]
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    return np.ascontiguousarray((clip - mean) / std, dtype=np.float32)
