"""Video decoding with the reference's selective PyAV decode (co3d/PySlowFast ``decoder.py``).

:func:`decode_clip` returns the ``num_frames`` RGB frames the reference would sample from one
centred clip (§5.1): target 30 fps, ``clip_size = sampling_rate·num_frames/30·fps`` source frames,
a window centred on the stream's frame count, pts-based selective decoding (seek 1024 ticks early,
keep frames with ``start_pts <= pts <= end_pts`` plus the first frame after), then
``linspace(0, clip_size-1, num_frames)`` clamped to the last decoded frame and truncated. Videos
without a stream duration are decoded whole and sampled from frame 0 (not centred), as in the
reference.

Deviations, all for videos the reference cannot handle: the reference divides by a zero frame
count (``stream.frames == 0``, e.g. some MKV/WebM files) and fails; here the count is estimated
from the duration. A decode error, no decoded frame, or a stream that ends well before the window
its own metadata promises (a truncated file) raises :class:`VideoError`; the caller excludes the
video (the reference silently substitutes a random other video).

PyAV is preferred; OpenCV (``cv2``) is a fallback with frame-index (not pts) selection, which
agrees with PyAV for constant-frame-rate files but is not guaranteed bit-identical.

Every reader takes a path or the file's encoded bytes (a :data:`Media`; TFDS examples hold
bytes): PyAV reads bytes from memory, OpenCV from a temporary file, so both give the same frames
as the file on disk.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from typing import Any, NamedTuple, Union

import numpy as np

from .sampling import TARGET_FPS, centered_window, clip_size, num_padded, num_repeated, temporal_indices

SEEK_MARGIN = 1024

Media = Union[str, bytes]
"""A video or image: a file path, or the file's encoded bytes."""


def _check_media(media: Media, what: str = "file") -> None:
    if isinstance(media, (bytes, bytearray, memoryview)):
        if len(media) == 0:
            raise VideoError(f"empty {what}")
        return
    if not os.path.isfile(media):
        raise VideoError(f"{what} not found")
    if os.path.getsize(media) == 0:
        raise VideoError(f"empty {what}")


def _av_input(media: Media):
    """What ``av.open`` takes: the path, or a file object over the bytes."""
    return media if isinstance(media, str) else io.BytesIO(bytes(media))


@contextlib.contextmanager
def _as_path(media: Media, suffix: str = ".mp4"):
    """A path to ``media`` (a temporary file for bytes; OpenCV only reads files)."""
    if isinstance(media, str):
        yield media
        return
    fd, path = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(media))
        yield path
    finally:
        os.unlink(path)


class VideoError(Exception):
    """The video cannot be used (unreadable, empty, truncated, no video stream, or too short
    where padding is excluded)."""


TRUNCATION_TOLERANCE = 2
"""Frames a stream may end before its metadata promises without being called truncated."""


def _promised_last(last, unit=1):
    """The last position (pts, or frame number with ``unit`` 1) a complete stream must reach:
    the last one its metadata promises, less :data:`TRUNCATION_TOLERANCE` frames."""
    return last - TRUNCATION_TOLERANCE * unit


def _check_complete(reached, promised, unit: str) -> None:
    """The one truncation rule of every decoder: a stream that stops before ``promised`` (from
    :func:`_promised_last`; None: the metadata promises nothing) is truncated."""
    if promised is not None and reached is not None and reached < promised:
        raise VideoError(f"truncated: stream ends at {unit} {int(reached)}, metadata promises {int(promised)}")


def check_padding(padded: int, num_frames: int, allow: bool) -> None:
    """The one length rule: a clip whose last ``padded`` of ``num_frames`` frames fall past the end
    of the video (shown as its last frame: the video is shorter than the clip) is used and
    counted, unless ``allow`` is False (``--skip-padded``), when it is a :class:`VideoError`."""
    if padded and not allow:
        raise VideoError(f"too short: {padded} of {num_frames} clip frames fall past the video's end and would "
                         "show its last frame (padding excluded by --skip-padded)")


def available_backends() -> list[str]:
    out = []
    try:
        import av  # noqa: F401
        out.append("pyav")
    except ImportError:
        pass
    try:
        import cv2  # noqa: F401
        out.append("opencv")
    except ImportError:
        pass
    return out


def resolve_backend(backend: str = "auto") -> str:
    avail = available_backends()
    if backend == "auto":
        if not avail:
            from ..extras import MissingExtra
            raise MissingExtra("av", "data", "decoding video (PyAV, or OpenCV as a fallback)")
        return avail[0]
    if backend not in ("pyav", "opencv"):
        raise ValueError(f"unknown decoder {backend!r} (pyav, opencv or auto)")
    if backend not in avail:
        from ..extras import MissingExtra
        raise MissingExtra("av" if backend == "pyav" else "cv2", "data", f"the decoder {backend!r}")
    return backend


def decode_clip(path: Media, sampling_rate: float, num_frames: int, backend: str = "pyav",
                target_fps: float = TARGET_FPS) -> tuple[np.ndarray, dict]:
    """The reference's centred test clip of ``path`` (a file or its bytes):
    ``(frames uint8 (num_frames, H, W, 3), info)``.

    ``info``: ``fps``, ``frames_meta`` (stream frame count), ``decoded`` (frames decoded in the
    window), ``indices`` (into the decoded frames), ``repeated`` (duplicated indices: the video
    is shorter than the window), ``padded`` (sampled positions past the last decoded frame, shown
    as it: the clip is padded by repetition), ``decode_all``.
    """
    _check_media(path)
    if backend == "pyav":
        return _decode_pyav(path, sampling_rate, num_frames, target_fps)
    if backend == "opencv":
        return _decode_opencv(path, sampling_rate, num_frames, target_fps)
    raise ValueError(f"unknown backend {backend!r}")


def _clip_window(fps: float, frames_meta: int, duration, time_base, sampling_rate: float, num_frames: int,
                 target_fps: float):
    """decode_clip's sampling window from the stream's metadata: ``(size, frames_length, timebase,
    start_pts, end_pts)``, the centred window of ``size`` frames in pts; ``timebase``, ``start_pts``
    and ``end_pts`` None where the whole video is read (no duration or frame count)."""
    size = clip_size(sampling_rate, num_frames, fps, target_fps)
    frames_length = frames_meta
    if duration is not None and frames_length <= 0 and time_base is not None:
        # Reference: ZeroDivisionError. Estimate the count from the duration instead.
        frames_length = int(round(float(duration * time_base) * fps))
    if duration is None or frames_length <= 0:
        return size, frames_length, None, None, None
    start_idx, end_idx = centered_window(frames_length, size)
    timebase = duration / frames_length
    return size, frames_length, timebase, int(start_idx * timebase), int(end_idx * timebase)


def clip_positions(index: PacketIndex, sampling_rate: float, num_frames: int,
                   target_fps: float = TARGET_FPS) -> tuple[np.ndarray, dict]:
    """The frames :func:`decode_clip` (PyAV) samples, from a trusted demux index (no decoding):
    ``(positions, info)``, ``positions`` indexing the video's frames in presentation order (the
    ``indices`` of a frame source such as :class:`~co3d_jax.data.nvdec.NvdecFrames`), ``info`` as
    decode_clip's. The same window (the centred one by pts, or the whole video without a
    duration), the frames kept by pts (from ``start_pts``, up to the first past ``end_pts``) and the
    same :func:`temporal_indices` over them, on the packets' pts where decode_clip reads the decoded
    frames' (equal where ``index.untrusted`` is None; callers decode other videos with decode_clip).
    Raises :class:`VideoError` as decode_clip does where the window holds no frame."""
    fps = float(index.fps)
    frames_meta = int(index.meta_frames or 0)
    size, _, timebase, start_pts, end_pts = _clip_window(fps, frames_meta, index.duration, index.time_base,
                                                         sampling_rate, num_frames, target_fps)
    pts = np.asarray(index.pts, np.int64)
    decode_all = timebase is None
    if decode_all:
        lo, hi = int(np.searchsorted(pts, 0, side="left")), len(pts)     # decode_clip keeps pts >= 0
    else:
        lo = int(np.searchsorted(pts, start_pts, side="left"))          # first pts >= start_pts
        hi = min(int(np.searchsorted(pts, end_pts, side="right")) + 1, len(pts))   # and one past end_pts
    if hi <= lo:
        raise VideoError("no frames decoded" if len(pts) == 0 else "no frames in the sampling window")
    idx = temporal_indices(hi - lo, size, num_frames)
    info = dict(fps=fps, frames_meta=frames_meta, decoded=hi - lo, indices=idx.tolist(),
                repeated=num_repeated(idx), padded=num_padded(hi - lo, size, num_frames), decode_all=decode_all)
    return lo + idx, info


def _decode_pyav(path, sampling_rate, num_frames, target_fps):
    import av

    try:
        container = av.open(_av_input(path))
    except Exception as e:  # av.error.* and OSError
        raise VideoError(f"cannot open: {type(e).__name__}: {e}") from None
    try:
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        if stream.average_rate is None or float(stream.average_rate) <= 0:
            raise VideoError("unknown frame rate")
        fps = float(stream.average_rate)
        frames_meta = int(stream.frames or 0)   # read while open (PyAV >= 19 asserts)
        size, frames_length, timebase, start_pts, end_pts = _clip_window(
            fps, frames_meta, stream.duration, stream.time_base, sampling_rate, num_frames, target_fps)
        decode_all = timebase is None
        if decode_all:
            start_pts, end_pts = 0, math.inf
            expect_last = None
        else:
            expect_last = _promised_last(min(end_pts, (frames_length - 1) * timebase), timebase)
        frames = {}
        max_pts = None
        passed_end = False
        try:
            container.seek(max(start_pts - SEEK_MARGIN, 0), any_frame=False, backward=True, stream=stream)
            for frame in container.decode(video=0):
                if frame.pts is None:
                    raise VideoError("frame without pts")
                max_pts = frame.pts if max_pts is None else max(max_pts, frame.pts)
                if frame.pts < start_pts:
                    continue
                frames[frame.pts] = frame
                if frame.pts > end_pts:  # the reference keeps this one extra frame (buffer_size=0)
                    passed_end = True
                    break
        except VideoError:
            raise
        except Exception as e:
            raise VideoError(f"decode error: {type(e).__name__}: {e}") from None
        if not frames:
            raise VideoError("no frames decoded" if max_pts is None else "no frames in the sampling window")
        if not passed_end:
            _check_complete(max_pts, expect_last, "pts")
        ordered = [frames[p] for p in sorted(frames)]
        idx = temporal_indices(len(ordered), size, num_frames)
        rgb = {int(i): ordered[int(i)].to_rgb().to_ndarray() for i in sorted(set(idx.tolist()))}
    finally:
        container.close()
    out = np.stack([rgb[int(i)] for i in idx])
    info = dict(fps=fps, frames_meta=frames_meta, decoded=len(ordered), indices=idx.tolist(),
                repeated=num_repeated(idx), padded=num_padded(len(ordered), size, num_frames), decode_all=decode_all)
    return out, info


def _decode_opencv(media, sampling_rate, num_frames, target_fps):
    with _as_path(media) as path:
        return _decode_opencv_file(path, sampling_rate, num_frames, target_fps)


def _decode_opencv_file(path, sampling_rate, num_frames, target_fps):
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoError("cannot open (opencv)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if fps <= 0:
            raise VideoError("unknown frame rate")
        frames_length = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        size = clip_size(sampling_rate, num_frames, fps, target_fps)
        if frames_length > 0:
            decode_all = False
            start_idx, end_idx = centered_window(frames_length, size)
            first, last = math.ceil(start_idx), math.floor(end_idx) + 1  # + the reference's one extra frame
        else:
            decode_all = True
            first, last = 0, math.inf
        decoded = []
        i = 0
        while i <= last:
            ok = cap.grab()
            if not ok:
                break
            if i >= first:
                ok, bgr = cap.retrieve()
                if not ok:
                    raise VideoError(f"decode error at frame {i} (opencv)")
                decoded.append(bgr)
            i += 1
    finally:
        cap.release()
    if not decoded:
        raise VideoError("no frames decoded (opencv)")
    if not decode_all:
        _check_complete(i - 1, _promised_last(min(last, frames_length - 1)), "frame")
    idx = temporal_indices(len(decoded), size, num_frames)
    out = np.stack([decoded[int(j)][..., ::-1] for j in idx])
    info = dict(fps=fps, frames_meta=frames_length, decoded=len(decoded), indices=idx.tolist(),
                repeated=num_repeated(idx), padded=num_padded(len(decoded), size, num_frames),
                decode_all=decode_all)
    return np.ascontiguousarray(out), info


def read_image(path: Media) -> np.ndarray:
    """One RGB image (a file or its encoded bytes) as uint8 ``(H, W, 3)`` (Pillow, else PyAV's
    image demuxer)."""
    name = os.path.basename(path) if isinstance(path, str) else "(bytes)"
    if not isinstance(path, str) and len(path) == 0:
        raise VideoError("cannot read image (bytes): empty")
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        try:
            with Image.open(_av_input(path)) as im:
                return np.asarray(im.convert("RGB"))
        except Exception as e:
            raise VideoError(f"cannot read image {name}: {type(e).__name__}: {e}") from None
    import av
    try:
        with av.open(_av_input(path)) as c:
            for f in c.decode(video=0):
                return f.to_rgb().to_ndarray()
    except Exception as e:
        raise VideoError(f"cannot read image {name}: {type(e).__name__}: {e}") from None
    raise VideoError(f"cannot read image {name}")


def _promised_stream_end(stream, fps: float):
    """:func:`_promised_last` for a whole PyAV stream (pts), or None when its metadata gives no
    duration (then nothing can be called truncated). The same frame-count estimate as
    :func:`decode_clip`."""
    duration, tb = stream.duration, stream.time_base
    frames_length = int(stream.frames or 0)
    if duration is None or tb is None:
        return None
    if frames_length <= 0:
        frames_length = int(round(float(duration * tb) * fps))
    if frames_length <= 0:
        return None
    timebase = duration / frames_length
    return _promised_last((frames_length - 1) * timebase, timebase)


def decode_all(path: Media, backend: str = "auto") -> tuple[np.ndarray, float]:
    """Every frame of ``path`` (a file or its bytes): ``(frames uint8 (T, H, W, 3), fps)``.

    Raises :class:`VideoError` naming the problem for a missing, empty, unreadable, frameless or
    truncated file (the same truncation rule as :func:`decode_clip`: the stream stops more than
    :data:`TRUNCATION_TOLERANCE` frames before its metadata's end).
    """
    label = path if isinstance(path, str) else "(bytes)"
    try:
        _check_media(path)
    except VideoError as e:
        raise VideoError(f"{label}: {e}") from None
    backend = resolve_backend(backend)
    if backend == "opencv" and not isinstance(path, str):
        with _as_path(path) as tmp:
            return decode_all(tmp, backend)
    frames, fps = [], 30.0
    try:
        if backend == "pyav":
            import av
            with av.open(_av_input(path)) as container:
                if not container.streams.video:
                    raise VideoError(f"{label}: no video stream")
                stream = container.streams.video[0]
                fps = float(stream.average_rate or 30.0)
                promised = _promised_stream_end(stream, fps)
                max_pts = None
                for f in container.decode(video=0):
                    frames.append(f.to_ndarray(format="rgb24"))
                    if f.pts is not None:
                        max_pts = f.pts if max_pts is None else max(max_pts, f.pts)
                if frames:
                    _check_complete(max_pts, promised, "pts")
        else:
            import cv2
            cap = cv2.VideoCapture(path)
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 30.0)
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            while True:
                ok, img = cap.read()
                if not ok:
                    break
                frames.append(img[..., ::-1])
            cap.release()
            if frames and count > 0:
                _check_complete(len(frames) - 1, _promised_last(count - 1), "frame")
    except VideoError as e:
        raise VideoError(str(e) if str(e).startswith(label) else f"{label}: {e}") from None
    except Exception as e:  # decoder errors (av.error.*, OSError)
        raise VideoError(f"{label}: cannot decode: {type(e).__name__}: {e}") from None
    if not frames:
        raise VideoError(f"{label}: no decodable frame")
    return np.stack(frames), fps


class PacketIndex(NamedTuple):
    """What demuxing a video's packets (no decoding) tells: :func:`demux_index`."""

    fps: float
    meta_frames: int          # the stream's frame count in its metadata (0: none given)
    promised: int | None      # the last pts a complete stream must reach (_promised_stream_end)
    pts: list[int]            # every packet's pts, sorted: presentation order
    keyframes: list[int]      # positions in ``pts`` of the keyframes
    pix_fmt: str | None       # the stream's pixel format (e.g. "yuv420p"), None where not known
    untrusted: str | None     # why a seek decode cannot follow this index (None: it can)
    duration: int | None = None       # the stream's duration in its time base (None: not given)
    time_base: Any = None             # seconds per pts unit, a Fraction (None: not given)

    def check_complete(self) -> None:
        """The truncation rule of every decoder (:func:`_check_complete`) on the demuxed packets:
        :class:`VideoError` ``truncated: stream ends at pts P, metadata promises Q`` when the
        last packet's pts falls short of what the metadata promises. Without a packet pts
        nothing can be called truncated (as :func:`decode_all` with no frame pts)."""
        if self.pts:
            _check_complete(self.pts[-1], self.promised, "pts")


def demux_index(media: Media) -> PacketIndex:
    """Demux ``media``'s first video stream with PyAV (no decoding): its packets' pts in
    presentation order, keyframe positions, metadata frame count and promised end. ``untrusted``
    names the first reason a seek decode may not follow the index (a packet without pts, a
    corrupt or discarded packet, no packets, repeated pts, a packet count other than the
    metadata's frame count, a stream that ends before its metadata promises, no keyframe);
    :class:`VideoFrames` then decodes the whole video. Raises :class:`VideoError` ``no video
    stream``; PyAV's errors (unreadable files) propagate."""
    import av
    untrusted = None
    pkts = []
    with av.open(_av_input(media)) as container:
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30.0)
        promised = _promised_stream_end(stream, fps)
        meta_frames = int(stream.frames or 0)
        duration = None if stream.duration is None else int(stream.duration)
        time_base = stream.time_base     # a Fraction, as decode_clip uses it
        try:
            pix_fmt = stream.codec_context.pix_fmt
        except Exception:  # noqa: BLE001 (not known: None)
            pix_fmt = None
        for p in container.demux(stream):
            if p.size == 0 and p.pts is None:
                continue                             # the demuxer's final flush packet
            if p.pts is None:
                untrusted = untrusted or "a packet without pts"
                continue
            if p.is_corrupt or p.is_discard:
                untrusted = untrusted or "a corrupt or discarded packet"
            pkts.append((int(p.pts), bool(p.is_keyframe)))
    pkts.sort()
    pts = [q for q, _ in pkts]
    keyframes = [i for i, (_, k) in enumerate(pkts) if k]
    if untrusted is None:
        if not pkts:
            untrusted = "no packets"
        elif len(set(pts)) != len(pts):
            untrusted = "repeated pts"
        elif meta_frames > 0 and meta_frames != len(pkts):
            untrusted = f"{len(pkts)} packets, metadata says {meta_frames} frames"
        elif promised is not None and pts[-1] < promised:
            untrusted = "truncated"
        elif not keyframes:
            untrusted = "no keyframe"
    return PacketIndex(fps, meta_frames, promised, pts, keyframes, pix_fmt and str(pix_fmt), untrusted, duration,
                       time_base)


_LATE = object()


class VideoFrames:
    """The frames :func:`decode_all` would return, decoded only where they are read.

    ``len(v)`` is the frame count, ``v.fps`` the frame rate, and ``v[indices]`` (an int or a
    sequence/array of indices, repeats allowed) the frames ``decode_all(media)[0][indices]``,
    bit for bit. Training (:func:`co3d_jax.data.augment.train_sample`) only calls ``len`` and
    reads its sampled indices once, so it can take this object in place of the decoded array.

    PyAV: opening demuxes the packets (no decoding) into an index, each packet's pts sorted into
    presentation order, with the keyframes. Reading seeks to the keyframe at or before the first
    wanted frame (``container.seek(pts, stream, backward=True, any_frame=False)``), decodes
    forward, names each frame by its pts and stops after the last wanted frame; only those frames
    are converted to RGB. The index is trusted only when every packet has a pts, the pts are
    distinct, no packet is flagged corrupt or discarded (an edit list that drops frames), the
    packet count equals the stream's frame count where the metadata gives one, and the stream
    reaches the end its metadata promises (the truncation rule). Otherwise (and for a stream that
    cannot seek) the whole video is decoded with :func:`decode_all`, whose errors are therefore
    unchanged (a truncated file fails at open, with the same message). A read whose decoded frames
    do not follow the index (a missing, extra or out-of-order pts, a frame before the keyframe:
    an open GOP) falls back to the full decode too, so a wrong frame is never returned.

    OpenCV (no pts): opening counts the frames with ``grab()`` (decodes, no conversion); reading
    reopens the file and grabs up to the last wanted frame, retrieving only the wanted ones.

    Decoding errors are those of :func:`decode_all` (a :class:`VideoError` naming the file).
    Damage in a part of the stream that is never decoded (corrupt data between keyframes that the
    demuxer does not flag) is not seen, as with :func:`decode_clip`.
    """

    def __init__(self, media: Media, backend: str = "auto"):
        self.label = media if isinstance(media, str) else "(bytes)"
        try:
            _check_media(media)
        except VideoError as e:
            raise VideoError(f"{self.label}: {e}") from None
        self.media, self.backend = media, resolve_backend(backend)
        self.full: np.ndarray | None = None     # the whole decode, when the index is not trusted
        self.pts: list[int] = []                # presentation order
        self.keyframes: list[int] = []          # positions in self.pts
        self.fps = 30.0
        self.n = 0
        self.fallback: str | None = None        # why the whole video was decoded
        self.decoded = 0                        # frames decoded by reads (PyAV; diagnostics)
        try:
            if self.backend == "pyav":
                self._index_pyav()
            else:
                self._index_opencv()
        except VideoError as e:
            raise VideoError(str(e) if str(e).startswith(self.label) else f"{self.label}: {e}") from None
        except Exception as e:
            raise VideoError(f"{self.label}: cannot decode: {type(e).__name__}: {e}") from None
        if self.fallback is not None:
            self._decode_whole()

    def _decode_whole(self):
        self.full, self.fps = decode_all(self.media, self.backend)
        self.n = len(self.full)

    # -- PyAV ---------------------------------------------------------------------------------
    def _index_pyav(self):
        index = demux_index(self.media)
        self.fps = index.fps
        if index.untrusted is not None:
            self.fallback = index.untrusted          # (truncated: decode_all raises the same error)
            return
        self.pts, self.keyframes = index.pts, index.keyframes
        self.n = len(self.pts)

    def _read_pyav(self, wanted: list[int]) -> dict | None:
        """{index: rgb} for sorted distinct ``wanted``, or None when the decode does not follow
        the index (then the caller decodes the whole video)."""
        import bisect
        first = wanted[0]
        if self.keyframes[0] > first:
            return None
        k = bisect.bisect_right(self.keyframes, first) - 1
        while True:
            got = self._read_pyav_from(self.keyframes[k], wanted)
            if got is not _LATE:
                return got
            # The seek landed on a later keyframe than asked (a demuxer that seeks by dts, with
            # reordered frames): start one keyframe earlier; from position 0 nothing is sought.
            k -= 1
            if k < 0:
                return None

    def _read_pyav_from(self, kpos: int, wanted: list[int]):
        import av
        want, last, out = set(wanted), wanted[-1], {}
        pos = kpos                                   # the index position the next frame must have
        with av.open(_av_input(self.media)) as container:
            stream = container.streams.video[0]
            if kpos > 0:
                container.seek(self.pts[kpos], stream=stream, backward=True, any_frame=False)
            for f in container.decode(stream):
                self.decoded += 1
                if f.pts is None:
                    return None
                if f.pts < self.pts[kpos]:
                    # The seek landed on an earlier keyframe (skip up to ours), or an open GOP's
                    # leading picture; only allowed before our keyframe.
                    if pos != kpos:
                        return None
                    continue
                if pos == kpos and f.pts > self.pts[kpos]:
                    return _LATE
                if pos >= self.n or f.pts != self.pts[pos]:
                    return None
                if pos in want:
                    out[pos] = f.to_ndarray(format="rgb24")
                if pos == last:
                    return out
                pos += 1
        return None                                  # the stream ended before the index did

    # -- OpenCV -------------------------------------------------------------------------------
    def _index_opencv(self):
        import cv2
        with _as_path(self.media) as path:
            cap = cv2.VideoCapture(path)
            try:
                self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 30.0)
                count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
                n = 0
                while cap.grab():
                    n += 1
            finally:
                cap.release()
        if n == 0 or (count > 0 and n - 1 < _promised_last(count - 1)):
            self.fallback = "no frame or truncated"  # decode_all raises the error
            return
        self.n = n

    def _read_opencv(self, wanted: list[int]) -> dict | None:
        import cv2
        want, last, out = set(wanted), wanted[-1], {}
        with _as_path(self.media) as path:
            cap = cv2.VideoCapture(path)
            try:
                for i in range(last + 1):
                    self.decoded += 1
                    if not cap.grab():
                        return None
                    if i in want:
                        ok, bgr = cap.retrieve()
                        if not ok:
                            return None
                        out[i] = bgr[..., ::-1]
            finally:
                cap.release()
        return out

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    def __getitem__(self, indices) -> np.ndarray:
        if self.full is not None:
            return self.full[indices]
        scalar = np.ndim(indices) == 0
        idx = np.atleast_1d(np.asarray(indices))
        if idx.dtype.kind not in "iu":
            raise TypeError(f"frame indices must be integers, got {idx.dtype}")
        idx = np.where(idx < 0, idx + self.n, idx)
        if idx.size == 0:
            return self._whole()[idx]
        if idx.min() < 0 or idx.max() >= self.n:
            raise IndexError(f"frame index out of range for {self.n} frames")
        wanted = sorted(set(int(i) for i in idx))
        try:
            got = (self._read_pyav if self.backend == "pyav" else self._read_opencv)(wanted)
        except VideoError as e:
            raise VideoError(str(e) if str(e).startswith(self.label) else f"{self.label}: {e}") from None
        except Exception as e:  # decoder errors (av.error.*, OSError)
            raise VideoError(f"{self.label}: cannot decode: {type(e).__name__}: {e}") from None
        if got is None:
            self.fallback = "the decode did not follow the index"
            return self._whole()[indices]
        out = np.stack([got[int(i)] for i in idx])
        return out[0] if scalar else out

    def _whole(self) -> np.ndarray:
        if self.full is None:
            self._decode_whole()
        return self.full


def decode_frames(path: Media, indices, backend: str = "auto") -> tuple[np.ndarray, float]:
    """``decode_all(path)[0][indices]`` and the fps, decoding only from the keyframe before the
    first index to the last (:class:`VideoFrames`)."""
    v = VideoFrames(path, backend)
    return v[indices], v.fps


def encode_video(path: str, frames: np.ndarray, fps: float = 30, codec: str = "mpeg4",
                 faststart: bool = False) -> None:
    """Write uint8 RGB ``frames`` ``(T, H, W, 3)`` (even H and W) to ``path`` with PyAV
    (``mpeg4``: what PyPI's PyAV wheels encode); ``faststart`` puts the MP4 index first."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    with av.open(path, "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
