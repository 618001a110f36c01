"""Decode + transform one evaluation sample, and run that over a dataset in worker processes.

:class:`ClipSpec` says what one sample is (frames, sampling rate, crop, normalisation);
:func:`load_sample` turns a :class:`~co3d_jax.data.datasets.VideoRecord` into a :class:`Sample`
(never raises for a bad video: ``Sample.error`` says why). :func:`iterate_samples` yields the
samples in dataset order, decoded by ``workers`` processes ahead of the consumer:

* ``loader="grain"``: ``grain.MapDataset(...).map(...).to_iter_dataset().mp_prefetch(...)``;
* ``loader="process"``: a ``concurrent.futures.ProcessPoolExecutor`` (``spawn`` context, safe
  with JAX's threads) with a bounded window of ``prefetch`` in-flight videos (no extra dependency);
* ``loader="auto"`` (default): Grain where it is installed, else ``process``; both give the same
  samples in the same order;
* ``workers=0``: decode in the calling thread (debugging, tests).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import os
from typing import Iterable, Iterator

import numpy as np

from ..normalisation import KINETICS
from .datasets import VideoRecord
from .sampling import charades_indices, charades_num_padded, num_repeated
from .sources import frame_media, video_media
from .transforms import eval_transform
from .video import VideoError, check_padding, decode_clip, read_image


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """One evaluation sample: ``num_frames`` frames at ``sampling_rate`` (30-fps frames apart),
    of which the first ``drop_first`` are dropped after sampling (X3D ``--forward_frame_delay``);
    ``image_size`` crop; ``mean``/``std`` normalisation; ``decoder`` ``pyav``/``opencv``;
    ``kind`` ``video`` (Kinetics) or ``frames`` (Charades JPEG folders); ``allow_padding``: a video
    shorter than the clip is padded by repeating its last frame (counted in ``info["padded"]``),
    or, when False, fails (:func:`~co3d_jax.data.video.check_padding`)."""

    num_frames: int
    sampling_rate: int
    image_size: int
    mean: tuple = KINETICS[0]
    std: tuple = KINETICS[1]
    decoder: str = "pyav"
    drop_first: int = 0
    kind: str = "video"
    allow_padding: bool = True

    @property
    def out_frames(self) -> int:
        return self.num_frames - self.drop_first


@dataclasses.dataclass
class Sample:
    position: int                 # index in the evaluated list
    record: VideoRecord
    frames: np.ndarray | None     # (T, S, S, 3) float32, normalised
    info: dict
    error: str | None = None


def load_sample(spec: ClipSpec, position: int, record: VideoRecord) -> Sample:
    """Decode, sample and transform one video; errors become ``Sample.error``."""
    try:
        if spec.kind == "frames":
            paths = frame_media(record)
            if not paths:
                raise VideoError("no frames listed")
            idx = charades_indices(len(paths), spec.num_frames, spec.sampling_rate)
            uniq = {int(i): read_image(paths[int(i)]) for i in sorted(set(idx.tolist()))}
            shapes = {a.shape for a in uniq.values()}
            if len(shapes) != 1:
                raise VideoError(f"frames of different sizes: {sorted(shapes)}")
            raw = np.stack([uniq[int(i)] for i in idx])
            info = dict(decoded=len(paths), indices=idx.tolist(), repeated=num_repeated(idx),
                        padded=charades_num_padded(len(paths), spec.num_frames, spec.sampling_rate))
        else:
            raw, info = decode_clip(video_media(record), spec.sampling_rate, spec.num_frames, spec.decoder)
        check_padding(info["padded"], spec.num_frames, spec.allow_padding)
        idx = np.asarray(info["indices"])[spec.drop_first:]
        raw = raw[spec.drop_first:]
        # Transform each distinct source frame once (long windows repeat the last frame).
        uniq, first, inverse = np.unique(idx, return_index=True, return_inverse=True)
        frames = eval_transform(raw[first], spec.image_size, spec.mean, spec.std)[inverse.reshape(-1)]
        info = dict(info, source_shape=list(raw.shape[1:3]))
        return Sample(position, record, frames, info)
    except VideoError as e:
        return Sample(position, record, None, {}, str(e))
    except Exception as e:  # anything else a broken file can trigger
        return Sample(position, record, None, {}, f"{type(e).__name__}: {e}")


class _Loader:
    """Picklable callable for worker processes."""

    def __init__(self, spec: ClipSpec):
        self.spec = spec

    def __call__(self, item):
        position, record = item
        return load_sample(self.spec, position, record)


def _spawn_context():
    # 'spawn' never forks a process that holds JAX/XLA threads.
    return mp.get_context("spawn")


def resolve_loader(loader: str = "auto") -> str:
    """``auto`` -> ``grain`` if it imports, else ``process``; other names are checked."""
    if loader == "auto":
        try:
            import grain  # noqa: F401
            return "grain"
        except ImportError:
            return "process"
    if loader not in ("grain", "process"):
        raise ValueError(f"unknown loader {loader!r} (auto, grain, process)")
    return loader


def iterate_samples(spec: ClipSpec, items: Iterable[tuple[int, VideoRecord]], workers: int = 0,
                    loader: str = "auto", prefetch: int | None = None) -> Iterator[Sample]:
    """Yield :class:`Sample` for ``items`` (``(position, record)`` pairs) in order."""
    items = list(items)
    loader = resolve_loader(loader)
    fn = _Loader(spec)
    if workers <= 0 or not items:
        for it in items:
            yield fn(it)
        return
    if loader == "grain":
        yield from _iterate_grain(fn, items, workers, prefetch)
        return
    window = max(1, prefetch or 4 * workers)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=_spawn_context()) as pool:
        pending: collections.deque = collections.deque()
        it = iter(items)
        try:
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    break
            while pending:
                fut = pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(fn, nxt))
                try:
                    yield fut.result()
                except cf.process.BrokenProcessPool:
                    raise
        finally:
            for f in pending:
                f.cancel()


def _iterate_grain(fn: _Loader, items, workers: int, prefetch: int | None):
    import grain

    try:  # grain reads absl flags; scripts that don't use absl.app never parse them
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    except ImportError:
        pass
    ds = grain.MapDataset.source(items).map(fn).to_iter_dataset()
    opts = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(1, (prefetch or 2 * workers) // workers))
    yield from ds.mp_prefetch(opts)


def default_workers() -> int:
    n = os.cpu_count() or 1
    return max(0, min(8, n - 1))
