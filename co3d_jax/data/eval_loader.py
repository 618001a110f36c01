"""Evaluation samples: decode on the host, transform on the device.

:class:`ClipSpec` says what one sample is (frames, sampling rate, crop, normalisation).
:func:`load_window` turns a :class:`~co3d_jax.data.datasets.VideoRecord` into an
:class:`EvalWindow`: the uint8 frames of the sampled indices (Kinetics video or Charades JPEG
frames), the decode info and the taps of the reference's resize + centre crop
(:func:`co3d_jax.data.transforms.center_crop_taps`); it never raises for a bad video
(``EvalWindow.error`` says why, and that sample is excluded, never replaced).

:class:`EvalLoader` runs the items through the input pipeline that fine-tuning shares
(:mod:`co3d_jax.data.pipeline`): this process's share (``items[jax.process_index()::
jax.process_count()]``) as a ``grain.MapDataset`` decoded by ``workers`` Grain processes (``0``:
in the calling process), collated onto a zero canvas, placed on the mesh one batch ahead and
transformed there (:mod:`co3d_jax.data.device_augment`: bilinear resize, centre crop, normalise),
equal to the numpy reference :func:`co3d_jax.data.transforms.eval_transform` up to float32 rounding.
:func:`load_sample` is that reference: the same decode, transformed on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from ..extras import require
from ..normalisation import KINETICS
from .datasets import VideoRecord
from .pipeline import (DevicePrefetcher, collate_on_device, collate_windows, default_workers, open_reader,
                       stack_taps)
from .sampling import charades_indices, charades_num_padded, num_repeated
from .sources import frame_media, video_media
from .transforms import CropTaps, center_crop_taps, eval_transform
from .video import VideoError, check_padding, clip_positions, decode_clip, read_image


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


class EvalWindow(NamedTuple):
    """A decoded evaluation sample (what a Grain worker returns).

    ``frames``: ``(T, H, W, 3)`` uint8, the source frames of the sampled indices after
    ``drop_first`` (``T = spec.out_frames``; a repeated index repeats its frame), or None when
    ``error`` says why the video is excluded, and in the windows :class:`EvalLoader` hands out
    (their frames are in the batch). ``taps``: the resize + centre crop of an ``H x W`` frame
    (None where ``frames`` is).
    ``info``: ``decoded`` (frames decoded), ``indices`` (sampled, before ``drop_first``),
    ``repeated``, ``padded``, ``source_shape`` ([H, W])."""

    position: int                 # index in the evaluated list
    record: VideoRecord
    frames: np.ndarray | None
    taps: CropTaps | None
    info: dict
    error: str | None = None


@dataclasses.dataclass
class Sample:
    """A sample transformed on the host by the numpy reference (:func:`load_sample`)."""

    position: int                 # index in the evaluated list
    record: VideoRecord
    frames: np.ndarray | None     # (T, S, S, 3) float32, normalised
    info: dict
    error: str | None = None


def _decode_on_device(spec: ClipSpec, media, decoder: str):
    """:func:`~co3d_jax.data.video.decode_clip`'s frames and info, decoded by
    ``frame_source(media, decoder)`` (:mod:`co3d_jax.data.nvdec`): the same frames, chosen from
    the demux index by :func:`~co3d_jax.data.video.clip_positions`, as a ``jax.Array`` on the GPU.
    A video NVDEC does not open (``decoder="auto"``) or whose index a seek decode cannot follow
    (``untrusted``) is decoded by decode_clip on the CPU (numpy frames)."""
    from .nvdec import NvdecFrames, frame_source

    video = frame_source(media, decoder, backend=spec.decoder)
    if isinstance(video, NvdecFrames):
        if video.index.untrusted is None:
            positions, info = clip_positions(video.index, spec.sampling_rate, spec.num_frames)
            return video[positions], info
        from .nvdec import notice_once
        notice_once("untrusted-index", f"{video.label}: decoded on the CPU (and any video like it, without further "
                                   f"notice): its packet index cannot be followed ({video.index.untrusted})")
    return decode_clip(media, spec.sampling_rate, spec.num_frames, spec.decoder)


def load_window(spec: ClipSpec, position: int, record: VideoRecord, decoder: str = "cpu") -> EvalWindow:
    """Decode and sample one video (or frame folder) without transforming it; errors become
    ``EvalWindow.error``. ``decoder``: ``"cpu"`` (:func:`~co3d_jax.data.video.decode_clip`, numpy
    frames) or ``"nvdec"``/``"auto"`` (videos decoded by NVDEC: the same sampled frames as a
    ``jax.Array`` on the GPU, :func:`_decode_on_device`; Charades frame folders stay on the CPU)."""
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
        elif decoder != "cpu":
            raw, info = _decode_on_device(spec, video_media(record), decoder)
        else:
            raw, info = decode_clip(video_media(record), spec.sampling_rate, spec.num_frames, spec.decoder)
        check_padding(info["padded"], spec.num_frames, spec.allow_padding)
        raw = raw[spec.drop_first:]
        if isinstance(raw, np.ndarray):
            raw = np.ascontiguousarray(raw, dtype=np.uint8)
        if raw.ndim != 4 or raw.shape[0] != spec.out_frames or raw.shape[-1] != 3:
            raise VideoError(f"decoded {raw.shape}, expected ({spec.out_frames}, H, W, 3)")
        h, w = raw.shape[1:3]
        info = dict(info, source_shape=[h, w])
        return EvalWindow(position, record, raw, center_crop_taps(h, w, spec.image_size), info)
    except VideoError as e:
        return EvalWindow(position, record, None, None, {}, str(e))
    except Exception as e:  # anything else a broken file can trigger
        return EvalWindow(position, record, None, None, {}, f"{type(e).__name__}: {e}")


def load_sample(spec: ClipSpec, position: int, record: VideoRecord) -> Sample:
    """:func:`load_window` transformed on the host by the numpy reference
    (:func:`~co3d_jax.data.transforms.eval_transform`): what :class:`EvalLoader` computes on the
    device, up to float32 rounding."""
    w = load_window(spec, position, record)
    if w.error is not None:
        return Sample(position, record, None, w.info, w.error)
    return Sample(position, record, eval_transform(w.frames, spec.image_size, spec.mean, spec.std), w.info)


class _WindowLoader:
    """``(position, record)`` -> :class:`EvalWindow` (picklable, for Grain's workers)."""

    def __init__(self, spec: ClipSpec, decoder: str = "cpu"):
        self.spec, self.decoder = spec, decoder

    def __call__(self, item: tuple[int, VideoRecord]) -> EvalWindow:
        return load_window(self.spec, *item, decoder=self.decoder)


def eval_dataset(spec: ClipSpec, items: Sequence[tuple[int, VideoRecord]], decoder: str = "cpu"):
    """The ``grain.MapDataset`` of :class:`EvalWindow` s of ``items`` (``(position, record)``), in order."""
    grain = require("grain", "data", "the input pipeline")
    return grain.MapDataset.source(list(items)).map(_WindowLoader(spec, decoder))


class EvalLoader:
    """Evaluation batches on the mesh: iterating gives ``steps`` pairs ``(clips, windows)``.

    ``clips``: ``(B, T, S, S, 3)`` float32, the global batch (``batch_size``, a multiple of
    ``jax.process_count()``) sharded over ``mesh``'s ``data`` axis (the default device without a
    mesh), transformed on the devices. ``windows``: this process's :class:`EvalWindow` s of the
    batch (frames and taps None), row ``k`` of its share of ``clips`` being ``windows[k]``; rows without a
    window (a failed video, the padding after this process's last item) hold no meaningful clip.

    Process ``p`` of ``P`` evaluates ``items[p::P]`` (:attr:`items`); every process runs the same
    :attr:`steps` (the longest share's), so collective programs line up. ``workers`` Grain
    processes decode about ``prefetch`` batches ahead (``0``: in the calling process). Close it
    (or use ``with``) on every exit path: that stops the workers and frees their shared memory.

    ``decoder="nvdec"`` (or ``"auto"`` where NVDEC is available: :func:`co3d_jax.data.nvdec.resolve_decoder`)
    decodes in ``decoder_threads`` threads of this process instead of Grain's workers (one NVDEC
    decoder per thread; CUDA does not belong in worker processes), the same samples in the same
    order (:func:`load_window`), collated on the device (:func:`~co3d_jax.data.pipeline.collate_on_device`):
    no host copy of the frames. One process only. ``decoder_procs > 0``: NVDEC decodes in that many
    Grain worker processes instead (each its own decoder), which hand the frames over on the host as
    NV12 (:class:`~co3d_jax.data.nvdec.Nv12Frames`), converted to RGB on the device."""

    def __init__(self, spec: ClipSpec, items: Sequence[tuple[int, VideoRecord]], batch_size: int, mesh=None,
                 workers: int | None = None, prefetch: int = 2, decoder: str = "cpu", decoder_threads: int = 4,
                 decoder_procs: int = 0):
        import jax

        from .device_augment import make_augment

        nproc, pid = jax.process_count(), jax.process_index()
        if batch_size < 1 or batch_size % nproc:
            raise ValueError(f"batch size {batch_size} is not a positive multiple of the {nproc} processes")
        items = list(items)
        self.spec = spec
        self.local = batch_size // nproc
        self.items = items[pid::nproc]
        self.steps = -(-len(items[0::nproc]) // self.local) if items else 0
        self.decoder = decoder
        self.workers = (default_workers() if workers is None else workers) if decoder == "cpu" else 0
        if decoder != "cpu" and decoder_procs > 0:
            from .nvdec import HOST_DECODERS
            decoder, self.workers = HOST_DECODERS[decoder], decoder_procs
        self._reader = open_reader(eval_dataset(spec, self.items, decoder), decoder, self.workers, decoder_threads,
                                   max(prefetch, 1) * self.local)
        self._made = 0
        transform = make_augment(mesh, tuple(spec.mean), tuple(spec.std))
        self._prefetcher = DevicePrefetcher(self._host_batch, mesh, transform=lambda x: transform(*x),
                                            close_source=self._reader.close, name="co3d-eval-prefetch")
        self.stats = self._prefetcher.stats

    def _host_batch(self):
        """The next batch (in the prefetch thread): uint8 frames on a zero canvas and taps."""
        if self._made >= self.steps:
            return None
        self._made += 1
        windows = self._reader.take(self.local)
        ok = [w.error is None for w in windows]
        collate = collate_windows if self.decoder == "cpu" else collate_on_device
        frames = collate([w.frames if k else None for w, k in zip(windows, ok)], rows=self.local,
                         num_frames=self.spec.out_frames)
        taps = stack_taps([w.taps if k else None for w, k in zip(windows, ok)], rows=self.local,
                          size=self.spec.image_size)
        # handed out without arrays: they are Grain's shared memory, released at close()
        return (frames, taps), [w._replace(frames=None, taps=None) for w in windows]

    def __iter__(self) -> Iterator[tuple]:
        return self

    def __next__(self) -> tuple:
        return next(self._prefetcher)

    def close(self) -> None:
        """Stop reading; release the worker processes and their shared memory (idempotent)."""
        self._prefetcher.close()

    def __enter__(self) -> EvalLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["ClipSpec", "EvalLoader", "EvalWindow", "Sample", "default_workers", "eval_dataset", "load_sample",
           "load_window"]
