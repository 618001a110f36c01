"""Training batches: a random augmented clip per sample, decoded ahead by worker processes.

:class:`BatchLoader` yields the batches of updates ``start, start+1, ...`` in order. Which video a
sample is and how it is augmented are functions of ``(seed, sample number)``
(:func:`co3d_jax.data.augment.sample_indices`, :func:`co3d_jax.data.augment.sample_rng`), so a resumed run
sees exactly the batches an uninterrupted run sees. The CLI is ``experiments/finetune.py``.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing as mp
from typing import NamedTuple

import numpy as np

from .augment import sample_indices, sample_rng, train_sample
from .sources import video_media
from .video import VideoError, check_padding, decode_all


class TrainSample(NamedTuple):
    clip: np.ndarray | None     # None: the video cannot be used
    error: str | None
    padded: int = 0             # clip frames repeating the last frame (the video is shorter)


def load_train_sample(spec, seed: int, record, sample: int, allow_padding: bool = True) -> TrainSample:
    """Decode ``record``'s video (a file or stored TFDS bytes) and draw global sample ``sample``'s
    augmented clip. A bad video (the decoders' rules: unreadable, empty, truncated; too short
    when not ``allow_padding``) gives ``clip`` None and the ``error``."""
    try:
        frames, fps = decode_all(video_media(record))
        if len(frames) == 0:
            return TrainSample(None, "no frames")
        info: dict = {}
        clip = train_sample(frames, fps, spec, sample_rng(seed, sample), info)
        check_padding(info["padded"], spec.num_frames, allow_padding)
        return TrainSample(clip, None, info["padded"])
    except VideoError as e:
        return TrainSample(None, str(e))
    except Exception as e:  # anything a broken file can trigger
        return TrainSample(None, f"{type(e).__name__}: {e}")


class BatchLoader:
    """Batches for updates ``start, start+1, ...`` in order, decoded ``prefetch`` batches ahead
    by ``workers`` spawned processes (or inline). Sample ``s`` of the run is video
    ``sample_indices(seed, N, step, B)``; a video that fails to decode is replaced by the next
    video in index order (deterministic), and reported in ``failed`` (id -> error); a clip padded
    by repeating frames is counted in ``padded`` (id -> samples) unless ``allow_padding`` is False,
    when the video fails. Both cover the batches consumed so far; a resumed run passes the saved
    ones back (``failed``, ``padded``)."""

    def __init__(self, records, spec, seed: int, batch_size: int, start: int, workers: int, prefetch: int,
                 allow_padding: bool = True, failed: dict | None = None, padded: dict | None = None):
        self.records, self.spec, self.seed, self.batch = records, spec, seed, batch_size
        self.allow_padding = allow_padding
        self.step = start
        self.failed: dict[str, str] = dict(failed or {})
        self.padded: dict[str, int] = dict(padded or {})
        self.pool = None
        if workers > 0:
            self.pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        self.prefetch = max(prefetch, 0) if self.pool else 0
        self.pending: collections.deque = collections.deque()
        self.next_submit = start

    def _tasks(self, step):
        return sample_indices(self.seed, len(self.records), step, self.batch)

    def _submit(self, step):
        futs = []
        for s, idx in self._tasks(step):
            rec = self.records[idx]
            if self.pool:
                futs.append((s, idx, self.pool.submit(load_train_sample, self.spec, self.seed, rec, s,
                                                      self.allow_padding)))
            else:
                futs.append((s, idx, None))
        self.pending.append((step, futs))

    def next(self):
        while self.next_submit <= self.step + self.prefetch:
            self._submit(self.next_submit)
            self.next_submit += 1
        step, futs = self.pending.popleft()
        assert step == self.step
        clips, labels = [], []
        for s, idx, fut in futs:
            got = fut.result() if fut else self._load(idx, s)
            tries = 0
            while got.clip is None:
                self.failed[self.records[idx].id] = got.error
                tries += 1
                if tries >= min(len(self.records), 20):
                    raise RuntimeError(f"{tries} videos in a row failed to decode (last: {got.error})")
                idx = (idx + 1) % len(self.records)
                got = self._load(idx, s)
            if got.padded:
                rid = self.records[idx].id
                self.padded[rid] = self.padded.get(rid, 0) + 1
            clips.append(got.clip)
            labels.append(self.records[idx].label)
        self.step += 1
        return np.stack(clips), np.asarray(labels, np.int32)

    def _load(self, idx, sample):
        return load_train_sample(self.spec, self.seed, self.records[idx], sample, self.allow_padding)

    def close(self):
        if self.pool:
            for _, futs in self.pending:
                for _, _, f in futs:
                    f.cancel()
            self.pool.shutdown(wait=False, cancel_futures=True)
