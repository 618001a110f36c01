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

:class:`BatchLoader` runs it through the input pipeline that evaluation shares
(:mod:`co3d_jax.data.pipeline`): a thread collates a batch (uint8 windows padded to a canvas, crop
taps), puts it on the mesh with ``jax.make_array_from_process_local_data`` and applies the
resize/crop/flip/normalisation there (:mod:`co3d_jax.data.device_augment`), one batch ahead, so
decoding, transfer and augmentation overlap the train step. The CLI is ``experiments/finetune.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..extras import require
from .augment import crop_taps, draw_sample, epoch_permutation, sample_rng, train_sample
from .pipeline import DevicePrefetcher, collate_on_device, collate_windows, open_reader, stack_taps
from .sources import video_media
from .transforms import CropTaps
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


def load_train_window(spec, seed: int, record, sample: int, allow_padding: bool = True,
                      decoder: str = "cpu") -> TrainWindow:
    """:func:`load_train_sample` up to the spatial augmentation: the uint8 temporal window and the
    :class:`CropTaps` drawn for global sample ``sample``; the same errors. ``decoder``: ``"cpu"``
    (:class:`~co3d_jax.data.video.VideoFrames`, numpy frames) or ``"nvdec"``/``"auto"``
    (:func:`co3d_jax.data.nvdec.frame_source`: the same indices and draws, from ``len``/``fps``;
    the window a ``jax.Array`` on the GPU)."""
    try:
        if decoder == "cpu":
            video = VideoFrames(video_media(record))   # decodes only the sampled window (bit-exact)
        else:
            from .nvdec import frame_source
            video = frame_source(video_media(record), decoder)
        if len(video) == 0:
            return TrainWindow(None, None, "no frames")
        d = draw_sample(len(video), video.fps, spec, sample_rng(seed, sample))
        check_padding(d.padded, spec.num_frames, allow_padding)
        window = video[d.indices]
        if isinstance(window, np.ndarray):
            window = np.ascontiguousarray(window)
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


def load_train_element(records, spec, seed: int, sample: int, allow_padding: bool = True,
                       decoder: str = "cpu") -> TrainElement:
    """Global sample ``sample``: its video, or when that fails to decode the next video in index
    order (the same sample number, so the same draws), up to ``min(N, MAX_TRIES)`` videos."""
    n = len(records)
    idx = video_of_sample(seed, n, sample)
    failed = []
    while True:
        got = load_train_window(spec, seed, records[idx], sample, allow_padding, decoder)
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

    def __init__(self, records, spec, seed: int, allow_padding: bool, decoder: str = "cpu"):
        self.records, self.spec, self.seed, self.allow_padding = list(records), spec, seed, allow_padding
        self.decoder = decoder

    def __call__(self, sample: int) -> TrainElement:
        return load_train_element(self.records, self.spec, self.seed, sample, self.allow_padding, self.decoder)


def train_dataset(records, spec, seed: int, batch_size: int, start: int, stop: int, allow_padding: bool = True,
                  process: int = 0, num_processes: int = 1, decoder: str = "cpu"):
    """The ``grain.MapDataset`` of this process's elements for updates ``start .. stop - 1``, in order."""
    grain = require("grain", "data", "the input pipeline")
    if batch_size % num_processes:
        raise ValueError(f"batch size {batch_size} is not divisible by the {num_processes} processes")
    bl = batch_size // num_processes
    return (grain.MapDataset.range(start * bl, stop * bl)
            .map(_LocalToGlobal(batch_size, bl, process))
            .map(_Element(records, spec, seed, allow_padding, decoder)))


def collate(elements, canvas: tuple[int, int] = (0, 0), on_device: bool = False) -> tuple:
    """Stack elements' windows onto a zero canvas of at least ``canvas`` (rounded up to 32) and
    their taps: ``(frames (B, T, H, W, 3) uint8, taps {field: (B, S)})``
    (:func:`co3d_jax.data.pipeline.collate_windows`, :func:`~co3d_jax.data.pipeline.stack_taps`);
    ``on_device``: the frames are a ``jax.Array`` built on the device (:func:`~co3d_jax.data.pipeline.collate_on_device`)."""
    stack = collate_on_device if on_device else collate_windows
    return stack([e.frames for e in elements], canvas=canvas), stack_taps([e.taps for e in elements])


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
    transferring (``put_s``, measured in the thread) and the batches handed out.

    ``decoder="nvdec"`` (or ``"auto"`` where NVDEC is available) decodes in ``decoder_threads``
    threads of this process instead of Grain's workers (``workers`` is then unused): the same
    elements (:func:`load_train_element`: videos, replacements, draws), the windows on the GPU,
    collated there. One process only. ``decoder_procs > 0``: NVDEC decodes in that many Grain worker
    processes instead (each its own decoder), which hand the windows over on the host as NV12
    (:class:`~co3d_jax.data.nvdec.Nv12Frames`), converted to RGB on the device."""

    def __init__(self, records, spec, seed: int, batch_size: int, start: int, workers: int, prefetch: int,
                 allow_padding: bool = True, failed: dict | None = None, padded: dict | None = None,
                 mesh=None, stop: int | None = None, decoder: str = "cpu", decoder_threads: int = 4,
                 decoder_procs: int = 0):
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
        if decoder != "cpu" and decoder_procs > 0:
            from .nvdec import HOST_DECODERS
            decoder, workers = HOST_DECODERS[decoder], decoder_procs
        self.decoder = decoder
        ds = train_dataset(records, spec, seed, batch_size, start, stop, allow_padding, self.pid, self.nproc,
                           decoder)
        self._reader = open_reader(ds, decoder, workers, decoder_threads, max(prefetch, 1) * self.local)
        augment = make_augment(mesh, tuple(spec.mean), tuple(spec.std))
        self.canvas = (0, 0)
        self._prefetcher = DevicePrefetcher(self._host_batch, mesh, transform=lambda x: (augment(x[0], x[1]), x[2]),
                                            close_source=self._reader.close, name="co3d-train-prefetch")
        self.stats = self._prefetcher.stats

    def _host_batch(self):
        """The next batch's elements from Grain, collated (in the prefetch thread); bookkeeping kept
        for hand-out. ``None`` after the last update."""
        elems = self._reader.take(self.local)
        if not elems:
            return None
        failed, padded = [], []
        for e in elems:
            failed.extend((self.records[i].id, err) for i, err in e.failed)
            if e.error is not None:
                raise RuntimeError(e.error)
            if e.padded:
                padded.append(self.records[e.video].id)
        frames, taps = collate(elems, self.canvas, on_device=self.decoder != "cpu")
        self.canvas = frames.shape[2:4]
        labels = np.asarray([self.records[e.video].label for e in elems], np.int32)
        return (frames, taps, labels), (failed, padded)

    def next(self):
        (clips, labels), (failed, padded) = next(self._prefetcher)
        for rid, err in failed:
            self.failed[rid] = err
        for rid in padded:
            self.padded[rid] = self.padded.get(rid, 0) + 1
        self.step += 1
        return clips, labels

    def close(self) -> None:
        """Stop reading and release the worker processes (idempotent)."""
        self._prefetcher.close()
