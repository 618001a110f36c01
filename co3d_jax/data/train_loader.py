"""Training batches on Grain: a random augmented clip per sample, decoded ahead by worker
processes, augmented on the device.

The pipeline: ``grain.MapDataset.range`` over this process's positions in the global sample
order, mapped to global sample numbers (per-process shard by ``jax.process_index()``: process
``p`` of ``P`` takes samples ``step * B + p * B/P ... + B/P - 1`` of each update), then to
:func:`load_train_element` (decode, temporal window, the draws of
:func:`co3d_jax.data.augment.draw_sample`), read in order through ``mp_prefetch`` worker processes
(``workers=0``: in the calling process). Element ``s`` of the run is a pure function of
``(seed, s)``: its video (:func:`co3d_jax.data.augment.sample_indices`), the replacement of a
video that fails (the next ones in index order, inside the element) and every random choice
(:func:`co3d_jax.data.augment.sample_rng`). So the Grain iterator's state is the step: a resumed
run rebuilds the pipeline at its checkpointed step and sees exactly the batches an uninterrupted
run sees.

:class:`BatchLoader` collates a batch (uint8 windows padded to a canvas, crop taps), puts it on the
mesh with ``jax.make_array_from_process_local_data`` and applies the resize/crop/flip/normalisation
there (:mod:`co3d_jax.data.device_augment`), one batch ahead in a thread, so decoding, transfer and
augmentation overlap the train step. The CLI is ``experiments/finetune.py``.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from typing import NamedTuple

import numpy as np

from .augment import CropTaps, crop_taps, draw_sample, epoch_permutation, sample_rng, train_sample
from .sources import video_media
from .video import VideoError, VideoFrames, check_padding, decode_all

MAX_TRIES = 20   # videos in a row that may fail for one sample before the run stops


class TrainSample(NamedTuple):
    clip: np.ndarray | None     # None: the video cannot be used
    error: str | None
    padded: int = 0             # clip frames repeating the last frame (the video is shorter)


def load_train_sample(spec, seed: int, record, sample: int, allow_padding: bool = True) -> TrainSample:
    """Decode ``record``'s video (a file or stored TFDS bytes) and draw global sample ``sample``'s
    augmented clip in numpy (the reference of the device path). A bad video (the decoders' rules:
    unreadable, empty, truncated; too short when not ``allow_padding``) gives ``clip`` None and
    the ``error``."""
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


class TrainWindow(NamedTuple):
    frames: np.ndarray | None   # (T, H, W, 3) uint8: the sampled source frames, uncropped
    taps: CropTaps | None       # the sample's resize + crop + flip (applied on the device)
    error: str | None
    padded: int = 0


def load_train_window(spec, seed: int, record, sample: int, allow_padding: bool = True) -> TrainWindow:
    """:func:`load_train_sample` up to the spatial augmentation: the uint8 temporal window and the
    :class:`CropTaps` drawn for global sample ``sample``; the same errors."""
    try:
        video = VideoFrames(video_media(record))   # decodes only the sampled window (bit-exact)
        if len(video) == 0:
            return TrainWindow(None, None, "no frames")
        d = draw_sample(len(video), video.fps, spec, sample_rng(seed, sample))
        check_padding(d.padded, spec.num_frames, allow_padding)
        window = np.ascontiguousarray(video[d.indices])
        h, w = window.shape[1:3]
        taps = crop_taps(h, w, d.short, spec.image_size, d.top, d.left, d.flip)
        return TrainWindow(window, taps, None, d.padded)
    except VideoError as e:
        return TrainWindow(None, None, str(e))
    except Exception as e:  # anything a broken file can trigger
        return TrainWindow(None, None, f"{type(e).__name__}: {e}")


class TrainElement(NamedTuple):
    """Global sample ``sample`` of a run: video ``video`` (after replacements), its window and taps
    (None if ``error``: ``MAX_TRIES`` videos in a row failed), the videos that failed on the way."""

    sample: int
    video: int
    frames: np.ndarray | None
    taps: CropTaps | None
    padded: int
    failed: tuple                # ((video index, error), ...)
    error: str | None = None


def video_of_sample(seed: int, num_videos: int, sample: int) -> int:
    """The video of global sample ``sample``: position ``s % N`` of epoch ``s // N``'s permutation."""
    epoch, pos = divmod(sample, num_videos)
    return int(epoch_permutation(seed, epoch, num_videos)[pos])


def load_train_element(records, spec, seed: int, sample: int, allow_padding: bool = True) -> TrainElement:
    """Global sample ``sample``: its video, or when that fails to decode the next video in index
    order (the same sample number, so the same draws), up to ``min(N, MAX_TRIES)`` videos."""
    n = len(records)
    idx = video_of_sample(seed, n, sample)
    failed = []
    while True:
        got = load_train_window(spec, seed, records[idx], sample, allow_padding)
        if got.error is None:
            return TrainElement(sample, idx, got.frames, got.taps, got.padded, tuple(failed))
        failed.append((idx, got.error))
        if len(failed) >= min(n, MAX_TRIES):
            return TrainElement(sample, idx, None, None, 0, tuple(failed),
                                f"{len(failed)} videos in a row failed to decode (last: {got.error})")
        idx = (idx + 1) % n


class _LocalToGlobal:
    """Position ``i`` of this process's sample stream -> global sample number (picklable)."""

    def __init__(self, global_batch: int, local_batch: int, process: int):
        self.b, self.bl, self.p = global_batch, local_batch, process

    def __call__(self, i: int) -> int:
        step, j = divmod(int(i), self.bl)
        return step * self.b + self.p * self.bl + j


class _Element:
    """Global sample number -> :class:`TrainElement` (picklable, for Grain's workers)."""

    def __init__(self, records, spec, seed: int, allow_padding: bool):
        self.records, self.spec, self.seed, self.allow_padding = list(records), spec, seed, allow_padding

    def __call__(self, sample: int) -> TrainElement:
        return load_train_element(self.records, self.spec, self.seed, sample, self.allow_padding)


def _absl_parsed():
    try:  # grain reads absl flags; scripts that don't use absl.app never parse them
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    except ImportError:
        pass


def train_dataset(records, spec, seed: int, batch_size: int, start: int, stop: int, allow_padding: bool = True,
                  process: int = 0, num_processes: int = 1):
    """The ``grain.MapDataset`` of this process's elements for updates ``start .. stop - 1``, in order."""
    import grain

    if batch_size % num_processes:
        raise ValueError(f"batch size {batch_size} is not divisible by the {num_processes} processes")
    bl = batch_size // num_processes
    return (grain.MapDataset.range(start * bl, stop * bl)
            .map(_LocalToGlobal(batch_size, bl, process))
            .map(_Element(records, spec, seed, allow_padding)))


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def collate(elements, canvas: tuple[int, int] = (0, 0)):
    """Stack elements' windows onto a zero canvas of at least ``canvas`` (rounded up to 32) and
    their taps: ``(frames (B, T, H, W, 3) uint8, taps {field: (B, S)})``."""
    h = max([canvas[0]] + [e.frames.shape[1] for e in elements])
    w = max([canvas[1]] + [e.frames.shape[2] for e in elements])
    h, w = _round_up(h, 32), _round_up(w, 32)
    t = elements[0].frames.shape[0]
    out = np.zeros((len(elements), t, h, w, 3), np.uint8)
    for k, e in enumerate(elements):
        out[k, :, :e.frames.shape[1], :e.frames.shape[2]] = e.frames
    taps = {f: np.stack([getattr(e.taps, f) for e in elements]) for f in CropTaps._fields}
    return out, taps


class BatchLoader:
    """Batches for updates ``start, start+1, ...`` (up to ``stop``), on the mesh and augmented:
    ``next() -> (clips (B, T, S, S, 3) float32, labels (B,) int32)``, both sharded over
    ``mesh``'s ``data`` axis (or on the default device without a mesh).

    Samples are read through :func:`train_dataset` by ``workers`` Grain processes (``0``: in the
    calling process), ``prefetch`` batches ahead; a thread collates the next batch, transfers it
    and dispatches its augmentation while the current update runs. A video that fails to decode
    is replaced by the next video in index order (deterministic) and reported in ``failed``
    (id -> error); a clip padded by repeating frames is counted in ``padded`` (id -> samples)
    unless ``allow_padding`` is False, when the video fails. Both cover the batches handed out so
    far; a resumed run passes the saved ones back (``failed``, ``padded``). ``stats`` holds the
    seconds spent waiting in ``next()`` (``wait_s``), reading and collating (``host_s``) and
    transferring (``put_s``, measured in the thread) and the batches handed out."""

    def __init__(self, records, spec, seed: int, batch_size: int, start: int, workers: int, prefetch: int,
                 allow_padding: bool = True, failed: dict | None = None, padded: dict | None = None,
                 mesh=None, stop: int | None = None):
        import jax

        from .device_augment import make_augment

        self.records, self.spec, self.seed, self.batch = records, spec, seed, batch_size
        self.step = start
        self.failed: dict[str, str] = dict(failed or {})
        self.padded: dict[str, int] = dict(padded or {})
        self.mesh = mesh
        self.nproc, self.pid = jax.process_count(), jax.process_index()
        self.local = batch_size // self.nproc
        stop = start + (1 << 40) if stop is None else max(stop, start)
        ds = train_dataset(records, spec, seed, batch_size, start, stop, allow_padding, self.pid, self.nproc)
        it = ds.to_iter_dataset()
        if workers > 0:
            import grain
            _absl_parsed()
            per_worker = max(1, math.ceil(max(prefetch, 1) * self.local / workers))
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=per_worker))
        self._it = iter(it)
        self._augment = make_augment(mesh, tuple(spec.mean), tuple(spec.std))
        self.canvas = (0, 0)
        self.stats = dict(wait_s=0.0, host_s=0.0, put_s=0.0, batches=0)
        self._q: queue.Queue = queue.Queue(maxsize=1)   # one batch ahead on the device
        self._stop = threading.Event()
        self._left = stop - start
        self._thread = threading.Thread(target=self._fill, daemon=True, name="co3d-train-prefetch")
        self._thread.start()

    # ------------------------------------------------------------------ producer (thread)
    def _host_batch(self):
        """The next batch's elements from Grain, collated; bookkeeping kept for hand-out."""
        elems = [next(self._it) for _ in range(self.local)]
        failed, padded = [], []
        for e in elems:
            failed.extend((self.records[i].id, err) for i, err in e.failed)
            if e.error is not None:
                raise RuntimeError(e.error)
            if e.padded:
                padded.append(self.records[e.video].id)
        frames, taps = collate(elems, self.canvas)
        self.canvas = frames.shape[2:4]
        labels = np.asarray([self.records[e.video].label for e in elems], np.int32)
        return frames, taps, labels, failed, padded

    def _put(self, x):
        import jax

        if self.mesh is None:
            return jax.device_put(x)
        from ..mesh import shardings
        _, batch = shardings(self.mesh)
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(
            batch, a, (a.shape[0] * self.nproc, *a.shape[1:])), x)

    def _fill(self):
        import jax

        try:
            while self._left > 0 and not self._stop.is_set():
                t0 = time.perf_counter()
                frames, taps, labels, failed, padded = self._host_batch()
                t1 = time.perf_counter()
                dev = self._put((frames, taps, labels))
                jax.block_until_ready(dev)
                t2 = time.perf_counter()
                xf, xt, yl = dev
                clips = self._augment(xf, xt)
                self.stats["host_s"] += t1 - t0
                self.stats["put_s"] += t2 - t1
                self._left -= 1
                self._offer(("batch", clips, yl, failed, padded))
        except BaseException as e:  # handed to the consumer at its next()
            self._offer(("error", e))

    def _offer(self, item):
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # ------------------------------------------------------------------ consumer
    def next(self):
        t0 = time.perf_counter()
        item = self._q.get()
        self.stats["wait_s"] += time.perf_counter() - t0
        if item[0] == "error":
            raise item[1]
        _, clips, labels, failed, padded = item
        for rid, err in failed:
            self.failed[rid] = err
        for rid in padded:
            self.padded[rid] = self.padded.get(rid, 0) + 1
        self.step += 1
        self.stats["batches"] += 1
        return clips, labels

    def close(self):
        self._stop.set()
        while True:   # unblock the producer
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30)
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
