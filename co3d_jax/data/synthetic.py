"""Generated videos, so that the commands and tests run without a dataset: the default video of
``experiments/stream.py`` and the clips of ``experiments/scaling.py``'s generated dataset."""

from __future__ import annotations

import numpy as np


def moving_pattern(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """A generated video ``(T, size, size, 3)`` uint8: coloured bars sliding diagonally."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    colours = rng.integers(40, 255, size=(3, 3))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        phase = (xx + yy + 3 * t) // max(size // 8, 1) % 3
        out[t] = colours[phase]
    return out


def gradient_noise_video(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A generated video ``(T, height, width, 3)`` uint8 that costs a decoder about what real video
    does: colour gradients moving at seed-dependent speeds and a 20-row band of uniform noise moving
    down (the frames of ``benchmarks.nvdec_speed.make_video``, whose encoded clips the input-rate
    measurements in ``results/`` use)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        img = np.stack([(xx * 2 + t * (3 + seed)) % 256, (yy * 2 + t * 5) % 256,
                        (xx + yy + t * 7 + 11 * seed) % 256], -1).astype(np.uint8)
        r = (t * 4 + 13 * seed) % height
        img[r:r + 20] = rng.integers(0, 256, img[r:r + 20].shape, dtype=np.uint8)
        out[t] = img
    return out
