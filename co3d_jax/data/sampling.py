"""Temporal sampling exactly as the reference (co3d ``datasets/decoder.py``, §5.1 of the notes).

All helpers are pure Python/numpy and reproduce the reference's float arithmetic, including
``torch.linspace`` in float32 (CPU kernel: ``start + step*i`` below the halfway index and
``end - step*(steps-1-i)`` above it, each a fused multiply-add rounded once to float32), so the
``.long()`` truncation picks the same frame as PyTorch even where a position is within one ulp of
an integer.
"""

from __future__ import annotations

import numpy as np

TARGET_FPS = 30.0


def fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a*b + c`` for float32 arrays, rounded once to float32 (a fused multiply-add).

    ``a*b`` is exact in float64; the float64 sum is exact up to the error that TwoSum recovers,
    which only matters when the sum lands exactly on a float32 rounding midpoint."""
    a, b, c = (np.asarray(x, np.float32).astype(np.float64) for x in (a, b, c))
    prod = a * b
    s = prod + c
    bb = s - prod
    err = (prod - (s - bb)) + (c - bb)          # TwoSum: prod + c == s + err exactly
    r = s.astype(np.float32)
    lo = np.nextafter(r, np.float32(-np.inf)).astype(np.float64)
    hi = np.nextafter(r, np.float32(np.inf)).astype(np.float64)
    r64 = r.astype(np.float64)
    # s exactly halfway between r and a neighbour: the true value decides the direction.
    down = (s == (r64 + lo) / 2) & (err < 0)
    up = (s == (r64 + hi) / 2) & (err > 0)
    r = np.where(down, lo.astype(np.float32), r)
    r = np.where(up, hi.astype(np.float32), r)
    return r.astype(np.float32)


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` (float32, CPU) reproduced bit for bit."""
    if steps < 1:
        return np.zeros((0,), np.float32)
    s, e = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([s], np.float32)
    step = np.float32(np.float32(e - s) / np.float32(steps - 1))
    i = np.arange(steps)
    fwd = fma_f32(step, i.astype(np.float32), s)
    bwd = fma_f32(-step, (steps - 1 - i).astype(np.float32), e)
    return np.where(i < steps // 2, fwd, bwd).astype(np.float32)


def clip_size(sampling_rate: float, num_frames: int, fps: float, target_fps: float = TARGET_FPS) -> float:
    """Source frames spanned by one clip: ``sampling_rate·num_frames/target_fps·fps``."""
    return sampling_rate * num_frames / target_fps * fps


def centered_window(video_size: float, size: float) -> tuple[float, float]:
    """``get_start_end_idx_centered(video_size, size, clip_idx=0, num_clips=1)``: start clamped at 0."""
    segment_size = video_size / 1
    center = 0 * segment_size + segment_size / 2
    start = max(0, center - size / 2)
    return start, start + size - 1


def temporal_indices(num_decoded: int, size: float, num_frames: int, start: float = 0.0) -> np.ndarray:
    """Indices into the decoded frames: ``linspace(start, start+size-1, num_frames)`` clamped to
    ``[0, num_decoded-1]`` and truncated (``torch.clamp(...).long()``). Repeats the last frame
    when the video is shorter than the window."""
    if num_decoded < 1:
        raise ValueError("no decoded frames to sample from")
    pos = torch_linspace_f32(start, start + size - 1, num_frames)
    pos = np.clip(pos, np.float32(0), np.float32(num_decoded - 1))
    return np.trunc(pos).astype(np.int64)


def charades_indices(video_length: int, num_frames: int, sampling_rate: int) -> np.ndarray:
    """Charades test-mode frames (co3d ``Charades.get_seq_frames``, one centred view):
    start ``max(L - clip_len, 0)//2``, ``clip_len = (N-1)·rate + 1``, then ``start + i·rate``
    clamped to ``[0, L-1]`` (no fps conversion)."""
    if video_length < 1:
        raise ValueError("video has no frames")
    clip_len = (num_frames - 1) * sampling_rate + 1
    start = max(video_length - clip_len, 0) // 2
    return np.array([max(min(start + i * sampling_rate, video_length - 1), 0) for i in range(num_frames)], np.int64)


def num_padded(num_decoded: int, size: float, num_frames: int, start: float = 0.0) -> int:
    """How many of :func:`temporal_indices`' frames lie past the last decoded frame (clamped to
    it): the clip is padded by repeating the last frame because the video is shorter than the
    window. (Repeats from upsampling a low frame rate are not padding.)"""
    pos = np.trunc(torch_linspace_f32(start, start + size - 1, num_frames))
    return int(np.sum(pos > num_decoded - 1))


def charades_num_padded(video_length: int, num_frames: int, sampling_rate: int) -> int:
    """:func:`num_padded` for :func:`charades_indices`: positions past the last frame."""
    clip_len = (num_frames - 1) * sampling_rate + 1
    start = max(video_length - clip_len, 0) // 2
    return sum(start + i * sampling_rate > video_length - 1 for i in range(num_frames))


def num_repeated(indices: np.ndarray) -> int:
    """How many sampled frames repeat an earlier one (the reference logs this as padding)."""
    return int(len(indices) - len(set(int(i) for i in indices)))


__all__ = ["TARGET_FPS", "torch_linspace_f32", "clip_size", "centered_window", "temporal_indices",
           "charades_indices", "num_padded", "charades_num_padded", "num_repeated"]
