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
