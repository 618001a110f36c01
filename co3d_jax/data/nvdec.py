"""Optional GPU video decoding (NVIDIA NVDEC through PyNvVideoCodec, the ``[nvdec]`` extra): the
frames of a video decoded into GPU memory and handed to JAX through DLPack, without a host copy.

Interface (what an input pipeline needs; see ``docs/nvdec.md``):

* :func:`frame_source` ``(media, decoder="auto"|"cpu"|"nvdec")`` opens a video (a path or its
  encoded bytes) and returns an object ``v`` with the contract of
  :class:`~co3d_jax.data.video.VideoFrames`: ``len(v)`` (frames), ``v.fps``, and ``v[indices]``
  (an int or a 1-D sequence of ints, repeats allowed, order kept, negative counted from the end)
  -> uint8 ``(n, H, W, 3)`` RGB. ``"cpu"`` gives a ``VideoFrames`` (numpy frames); ``"nvdec"`` a
  :class:`NvdecFrames` (a ``jax.Array`` on the GPU); ``"auto"`` the latter where
  :func:`available`, else the former, with one one-line notice per process on stderr. Tell them
  apart with ``isinstance(v, NvdecFrames)`` (or ``v.on_device``); ``jnp.asarray(v[idx])`` works
  for both. The host computes the sampled indices from ``len``/``fps``, reads them, and hands the
  uint8 frames with its host-computed resize taps to a jitted transform
  (:mod:`co3d_jax.data.device_augment`).
* :func:`available` / :func:`unavailable_reason`: whether NVDEC can be used here (PyNvVideoCodec
  and PyAV import AND JAX's default backend is a CUDA GPU), and if not, why, in one line.
* ``decoder="nvdec"`` where it is unavailable raises :class:`~co3d_jax.extras.MissingExtra`
  (package not installed) or :class:`NvdecUnavailable` (a subclass: no CUDA GPU, or the package
  does not load), one line each, which every command's ``cli_main`` prints as ``error: ...``.

Threading model: one PyNvVideoCodec ``SimpleDecoder`` per thread (``threading.local``), created
on the thread's first read and pointed at each new file with ``reconfigure_decoder`` (which keeps
an LRU cache of ``cache_size`` hardware decoders), so opening a video costs a reconfigure, not a
new decoder session (where a reconfigure fails, a new decoder is made, and that one's error, if
any, is the video's: counted in :data:`reconfigure_failures`). An :class:`NvdecFrames` holds no
decoder: any thread may open or read it, each with its own decoder, so loader threads need no
lock. A thread's decoder is freed when the
thread ends or on :func:`release_thread_decoder`. Encoded bytes (TFDS) cannot be passed to
``reconfigure_decoder`` (it takes a path), so each bytes video gets a new decoder on its thread
(and so does the path after it: only a decoder made from a path is reconfigured).

Reads: the distinct wanted indices are decoded in one ``get_batch_frames_by_index`` call (sorted:
PyNvVideoCodec drops repeats and silently skips out-of-range indices, so both are handled here),
imported with ``jax.dlpack.from_dlpack`` (zero copy), stacked on the device (one device-to-device
copy, repeats gathered there) and waited for, so the decoder's buffers may be reused at once.

Errors are :class:`~co3d_jax.data.video.VideoError` naming the file, as on the CPU: not found,
empty, cannot open, no decodable frame, truncated. Truncation is the CPU decoder's verdict with
its message: opening also demuxes the container with PyAV (no decoding;
:func:`~co3d_jax.data.video.demux_index`, the index ``VideoFrames`` builds) and applies its rule,
a stream whose last packet's pts falls more than
:data:`~co3d_jax.data.video.TRUNCATION_TOLERANCE` frames short of the end its metadata promises
is ``truncated: stream ends at pts P, metadata promises Q`` (PyNvVideoCodec's own counts missed a
cut MP4 on the GPU: ``results/nvdec_speed_h200.json``, ``bad_files``). A container PyAV cannot
read is an error too. The demux costs about 1.3 ms (h264) / 0.6 ms (mpeg4) of CPU per 300-frame
340x256 video (measured on a CPU host). What differs from the CPU decoder:

* Frame count: ``len(v)`` is PyNvVideoCodec's scanned packet count (``scan=True``, default;
  ``need_scanned_stream_metadata``), capped at the header's (PyNvVideoCodec serves no index past
  the header's count); the header alone (``scan=False``) can be wrong for MPEG-4 Part 2, and a
  read past the real end then raises "truncated: NVDEC returned ...".
* Damage inside the stream: NVDEC does not report corrupt packets per frame, so a damaged frame
  may decode to wrong pixels where PyAV would raise (or skip it).
* Pixels: NVDEC's decode and its YUV->RGB conversion are not PyAV's; the measured differences are
  in ``docs/nvdec.md`` (``benchmarks/nvdec_speed.py``): with ``color="nv12"`` (default) h264
  frames equal PyAV's exactly. ``color="nv12"`` opens yuv420p streams of even width only (others
  need ``color="rgb"``) and refuses others at open; MPEG-4 Part 2 is not opened from bytes
  (:data:`BYTES_UNSUPPORTED_CODECS`). With ``decoder="auto"`` a video
  that NVDEC cannot open (e.g. a codec the hardware lacks) is read by the CPU decoder instead,
  whose verdict (frames or error) then holds.

PyNvVideoCodec is imported lazily (never when this module is imported).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np

from ..extras import MissingExtra, require
from .video import Media, VideoError, VideoFrames, demux_index

DECODERS = ("auto", "cpu", "nvdec")
"""The ``decoder=`` choices of :func:`frame_source` (for a command's ``--decoder``)."""

HOST_DECODERS = {"nvdec": "nvdec-host", "auto": "auto-host"}
"""The decoder a worker process runs for a command's ``--decoder nvdec``/``auto`` with
``--decoder-procs N`` (:func:`frame_source`): NVDEC with frames copied to host memory as NV12
(:class:`Nv12Frames`), no JAX in the worker and no check of :func:`available` there (the main
process checked: :func:`resolve_decoder`); ``auto-host`` reads a video NVDEC cannot open on the CPU."""

COLORS = ("nv12", "rgb")
"""``NvdecFrames(color=...)``: ``nv12`` (the default) takes the decoder's native NV12 and converts
with :func:`nv12_to_rgb` in JAX (PyAV's default conversion, bit for bit on x86-64: h264 frames equal
PyAV's exactly on an H200); ``rgb`` converts on the decoder (PyNvVideoCodec's
``OutputColorType.RGB``: up to 2 levels off PyAV for h264), for streams other than yuv420p of even
width, which ``nv12`` refuses at open."""

BYTES_UNSUPPORTED_CODECS = ("mpeg4",)
"""Codecs (PyNvVideoCodec's ``codec_name``) that :class:`NvdecFrames` refuses from bytes at open
(a :class:`~co3d_jax.data.video.VideoError`, so ``decoder="auto"`` reads them on the CPU): with
PyNvVideoCodec 2.2.4 on the H200 an MPEG-4 Part 2 video opened from bytes failed at its first read
(``PyNvVCException: GetFramesByIdxList``) where the same files opened from paths were read, and h264
from bytes was read (``results/nvdec_speed_h200.json``, ``nvdec_bytes``)."""

MODULE = "PyNvVideoCodec"


class NvdecUnavailable(MissingExtra):
    """``decoder="nvdec"`` where NVDEC cannot be used although the package may be installed (JAX's
    default backend is not a CUDA GPU, or PyNvVideoCodec fails to load): one line. A
    :class:`~co3d_jax.extras.MissingExtra` so that every command's ``cli_main`` prints it as
    ``error: ...`` (exit code 2)."""

    def __init__(self, reason: str):
        ImportError.__init__(self, f"decoder='nvdec' cannot be used here: {reason} (use decoder='cpu' or 'auto')",
                             name=MODULE)
        self.module, self.extra, self.reason = MODULE, "nvdec", reason


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _import_nvc():
    """``import PyNvVideoCodec``, its error logging silenced (it logs several lines before
    re-raising when the driver is missing); :class:`MissingExtra` if it is not installed,
    :class:`NvdecUnavailable` if it does not load."""
    if sys.modules.get(MODULE) is not None:
        return sys.modules[MODULE]
    log = logging.getLogger(MODULE)
    was = log.disabled
    log.disabled = True
    try:
        return require(MODULE, "nvdec", "decoder='nvdec'")
    except MissingExtra:
        raise
    except Exception as e:   # RuntimeError: no driver / NVDEC library, driver too old
        raise NvdecUnavailable(f"PyNvVideoCodec does not load ({_first_line(e)})") from None
    finally:
        log.disabled = was


def _jax_on_cuda() -> tuple[bool, str]:
    """``(True, "")`` when JAX's default backend is a CUDA GPU, else ``(False, what it is)``."""
    try:
        backend = jax.default_backend()
        device = jax.devices()[0]
    except RuntimeError as e:
        return False, f"no JAX backend ({_first_line(e)})"
    version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
    if backend not in ("gpu", "cuda") or "rocm" in version or "hip" in version:
        return False, f"JAX's default backend is {str(device.platform)!r}, not an NVIDIA GPU"
    return True, ""


@functools.lru_cache(maxsize=1)
def _availability() -> tuple[str, str, tuple] | None:
    """None when NVDEC is usable, else ``(kind, one line, MissingExtra's arguments)``; kind
    ``missing`` (a package is not installed) or ``unavailable``. Cached per process
    (``_availability.cache_clear()`` re-checks)."""
    ok, why = _jax_on_cuda()
    if not ok:
        return "unavailable", why, ()
    try:
        _import_nvc()
    except NvdecUnavailable as e:
        return "unavailable", e.reason, ()
    except MissingExtra as e:
        return "missing", str(e), (MODULE, "nvdec", "decoder='nvdec'")
    purpose = "decoder='nvdec' (its check at open demuxes the container with PyAV)"
    try:
        require("av", "nvdec", purpose)
    except MissingExtra as e:
        return "missing", str(e), ("av", "nvdec", purpose)
    return None


def available() -> bool:
    """Whether ``decoder="nvdec"`` can be used here: PyNvVideoCodec and PyAV import and JAX's
    default backend is a CUDA GPU (checked first: on other machines the packages are not
    imported)."""
    return _availability() is None


def unavailable_reason() -> str | None:
    """Why NVDEC cannot be used here (one line), or None when it can."""
    got = _availability()
    return None if got is None else got[1]


def _unavailable_error() -> MissingExtra:
    kind, why, args = _availability()
    return MissingExtra(*args) if kind == "missing" else NvdecUnavailable(why)


# -- once-per-process notices ------------------------------------------------------------------
_notice_lock = threading.Lock()
_noticed: set[str] = set()


def notice_once(key: str, message: str) -> None:
    """Print ``note: message`` on stderr, once per process for ``key``."""
    with _notice_lock:
        if key in _noticed:
            return
        _noticed.add(key)
    print(f"note: {message}", file=sys.stderr, flush=True)


# -- colour conversion -------------------------------------------------------------------------
def _fixed13(c16: int) -> int:
    """A 16.16 coefficient as swscale's x86 SIMD path holds it: rounded to 3.13 fixed point."""
    return (c16 * 8192 + 32768) >> 16


# swscale's default (ITU-R BT.601, limited range) YUV->RGB: cy = 255/219 and the chroma
# coefficients of ff_yuv2rgb_coeffs[SWS_CS_DEFAULT], 16.16 fixed point.
_Y, _VR, _UB, _UG, _VG = (_fixed13(76309), _fixed13(104597), _fixed13(132201), -_fixed13(25675), -_fixed13(53279))


def _mulhi(a, c: int):
    """``pmulhw``: ``(a * c) >> 16`` (arithmetic shift: floor), int32."""
    return jnp.right_shift(a * jnp.int32(c), 16)


@functools.partial(jax.jit, static_argnums=1)
def nv12_to_rgb(nv12: jax.Array, height: int) -> jax.Array:
    """NV12 frames uint8 ``(..., height + ceil(height/2), W)`` (the Y plane over the interleaved
    UV plane; W even) -> RGB uint8 ``(..., height, W, 3)``: BT.601 limited range, each chroma
    sample for its 2x2 block, in the integer arithmetic of swscale's x86 SIMD yuv420p->rgb24
    (what PyAV's ``to_ndarray(format="rgb24")`` runs on x86-64, bit for bit there):
    ``R = sat(Yt + mulhi(8(V-128), vr))`` with ``Yt = mulhi(8(Y-16), cy)``, and so on."""
    w = nv12.shape[-1]
    lead = nv12.shape[:-2]
    y = nv12[..., :height, :].astype(jnp.int32)
    uv = nv12[..., height:, :].reshape(*lead, -1, w // 2, 2).astype(jnp.int32)
    uv = jnp.repeat(jnp.repeat(uv, 2, axis=-3)[..., :height, :, :], 2, axis=-2)[..., :w, :]
    u, v = 8 * (uv[..., 0] - 128), 8 * (uv[..., 1] - 128)
    yt = _mulhi(8 * (y - 16), _Y)
    rgb = jnp.stack([yt + _mulhi(v, _VR), yt + _mulhi(u, _UG) + _mulhi(v, _VG), yt + _mulhi(u, _UB)], axis=-1)
    return jnp.clip(rgb, 0, 255).astype(jnp.uint8)


@jax.tree_util.register_pytree_node_class
class Nv12Frames:
    """Frames that NVDEC decoded and copied to the host in its native NV12 layout (1.5 bytes a
    pixel, half of RGB's): ``nv12`` uint8 ``(T, H + ceil(H/2), W)`` (each frame's Y plane over its
    interleaved UV plane), ``height`` ``H``. What NVDEC worker processes hand over
    (``decoder="nvdec-host"``, :data:`HOST_DECODERS`); the device converts them
    (:func:`nv12_windows_to_device`, :func:`nv12_to_rgb`). Shaped like the RGB window it stands for:
    ``shape`` is ``(T, H, W, 3)``, ``ndim`` 4, and ``w[a:b]`` (or an index array) selects frames.
    A JAX pytree (the ``nv12`` array its leaf), so Grain hands it over in shared memory."""

    __slots__ = ("nv12", "height")
    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, nv12, height: int):
        self.nv12, self.height = nv12, int(height)

    @property
    def shape(self) -> tuple:
        t, _, w = self.nv12.shape
        return (t, self.height, w, 3)

    def __len__(self) -> int:
        return self.nv12.shape[0]

    def __getitem__(self, frames) -> Nv12Frames:
        if np.ndim(frames) == 0 and not isinstance(frames, slice):
            frames = slice(int(frames), int(frames) + 1 or None)
        return Nv12Frames(self.nv12[frames], self.height)

    def tree_flatten(self):
        return (self.nv12,), self.height

    @classmethod
    def tree_unflatten(cls, height, leaves):
        obj = object.__new__(cls)
        obj.nv12, obj.height = leaves[0], height
        return obj

    def __repr__(self) -> str:
        return f"Nv12Frames(shape={self.shape})"


def nv12_windows_to_device(windows: list, device=None) -> list:
    """Windows as a device decoder's worker processes hand them over -> the same windows as RGB
    ``jax.Array`` s ``(T, H, W, 3)`` uint8 on ``device`` (default: JAX's first): each
    :class:`Nv12Frames` transferred as NV12 (all in one ``device_put``) and converted there by
    :func:`nv12_to_rgb`; numpy windows (a video decoded on the CPU instead) are transferred as they
    are, ``None`` stays. Ready for :func:`~co3d_jax.data.pipeline.collate_on_device`."""
    device = jax.devices()[0] if device is None else device
    nv = [k for k, w in enumerate(windows) if isinstance(w, Nv12Frames)]
    rest = [k for k, w in enumerate(windows) if w is not None and not isinstance(w, Nv12Frames)]
    out = list(windows)
    put = jax.device_put([np.asarray(windows[k].nv12) for k in nv] + [np.asarray(windows[k]) for k in rest], device)
    jax.block_until_ready(put)        # the host buffers (Grain's shared memory) may go after this
    for k, a in zip(nv, put[:len(nv)]):
        out[k] = nv12_to_rgb(a, windows[k].height)
    for k, a in zip(rest, put[len(nv):]):
        out[k] = a
    return out


# -- the thread's decoder ----------------------------------------------------------------------
_local = threading.local()
reconfigure_failures = 0
"""How often ``reconfigure_decoder`` failed and a new decoder was made instead (diagnostics)."""


def release_thread_decoder() -> None:
    """Free this thread's decoder (the next read on the thread creates a new one)."""
    _local.decoder = _local.config = _local.media = None


def _check_media(media: Media, label: str) -> None:
    """The CPU decoder's first checks (not found, empty), with its messages."""
    if isinstance(media, (bytes, bytearray, memoryview)):
        if len(media) == 0:
            raise VideoError(f"{label}: empty file")
        return
    if not isinstance(media, str):
        raise TypeError(f"media must be a path or the file's bytes, got {type(media).__name__}")
    if not os.path.isfile(media):
        raise VideoError(f"{label}: file not found")
    if os.path.getsize(media) == 0:
        raise VideoError(f"{label}: empty file")


class NvdecFrames:
    """The frames of one video, decoded by NVDEC on the GPU: ``len(v)``, ``v.fps``, and
    ``v[indices]`` -> ``jax.Array`` uint8 ``(n, H, W, 3)`` on the GPU (an int index gives
    ``(H, W, 3)``), the contract of :class:`~co3d_jax.data.video.VideoFrames` (see the module
    docstring for the threading model and what differs from the CPU decoder).

    ``gpu_id``: the CUDA device to decode on (JAX's device with that id receives the frames).
    ``scan``: count the frames by scanning the packets (exact; the header count can be wrong for
    MPEG-4 Part 2). ``color``: one of :data:`COLORS` (default ``nv12``: PyAV's colour conversion).
    ``cache_size``: the thread decoder's LRU cache of hardware decoders (``decoder_cache_size``).
    ``host``: the decoder copies each frame to host memory (PyNvVideoCodec's
    ``use_device_memory=False``) and reads return :class:`Nv12Frames` (numpy NV12, ``color="nv12"``
    only) without touching JAX: for decoding in worker processes, whose frames the main process
    converts on the device (:func:`nv12_windows_to_device`). An int index then gives one frame.
    """

    def __init__(self, media: Media, *, gpu_id: int = 0, scan: bool = True, color: str = "nv12",
                 cache_size: int = 4, host: bool = False):
        if color not in COLORS:
            raise ValueError(f"color must be one of {COLORS}, got {color!r}")
        if host and color != "nv12":
            raise ValueError("host=True reads NV12 only (color='nv12'); the device converts it")
        self.on_device = not host
        if isinstance(media, os.PathLike):
            media = os.fspath(media)
        self.label = media if isinstance(media, str) else "(bytes)"
        _check_media(media, self.label)
        if isinstance(media, (bytearray, memoryview)):
            media = bytes(media)
        self.media = media
        self.config = (int(gpu_id), bool(scan), color, int(cache_size), bool(host))
        self.gpu_id, self.scan, self.color, self.cache_size, self.host = self.config
        self._nvc = _import_nvc()
        dec = self._decoder()
        try:
            meta = dec.get_stream_metadata()
            self.header_frames = int(getattr(meta, "num_frames", 0) or 0)
            self.fps = float(getattr(meta, "average_fps", 0.0) or 0.0) or 30.0
            self.width, self.height = int(meta.width), int(meta.height)
            self.codec = str(getattr(meta, "codec_name", ""))
            n = int(dec.get_scanned_stream_metadata().num_frames) if self.scan else self.header_frames
        except VideoError:
            raise
        except Exception as e:
            release_thread_decoder()
            raise VideoError(f"{self.label}: cannot open (nvdec): {_first_line(e)}") from None
        if n <= 0:
            raise VideoError(f"{self.label}: no decodable frame")
        if not isinstance(media, str) and self.codec in BYTES_UNSUPPORTED_CODECS:
            raise VideoError(f"{self.label}: cannot open (nvdec): {self.codec} from bytes: PyNvVideoCodec's reads "
                             "fail (GetFramesByIdxList; benchmarks/nvdec_speed.py), pass a path or decode on the CPU")
        index = self._check_container()
        self.index = index               # the demux index (pts in presentation order: clip_positions)
        if self.color == "nv12" and (index.pix_fmt not in (None, "yuv420p") or self.width % 2):
            what = f"{index.pix_fmt}" if self.width % 2 == 0 else f"{self.width} pixels wide"
            raise VideoError(f"{self.label}: cannot open (nvdec): color='nv12' reads yuv420p (8-bit 4:2:0, limited "
                             f"range) of even width only, this stream is {what}: use color='rgb'")
        # PyNvVideoCodec serves indices below the header's count only (where it gives one)
        self.n = min(n, self.header_frames) if self.header_frames > 0 else n

    def _check_container(self):
        """The CPU decoder's verdict at open (:class:`~co3d_jax.data.video.VideoFrames`), from the
        same demux-only packet index (:func:`~co3d_jax.data.video.demux_index`: a PyAV demux, no
        decoding): its truncation rule on the packets' pts against the end the stream's metadata
        promises, with its message; a container PyAV cannot read is an error too, as on the CPU.
        PyNvVideoCodec's own counts did not give this verdict: an MP4 cut at 60% of its bytes,
        whose index promises 90 frames (PyAV reads 90), opened as 50 frames with no error: the
        count PyNvVideoCodec 2.2.4 reported as the header's was not the index's 90 (the scanned
        50, or none), so comparing it with the scan could not see the cut
        (``results/nvdec_speed_h200.json``, ``bad_files``)."""
        try:
            index = demux_index(self.media)
            index.check_complete()
        except VideoError as e:
            raise VideoError(f"{self.label}: {e}") from None
        except Exception as e:  # noqa: BLE001 (av.error.*, OSError: VideoFrames's message)
            raise VideoError(f"{self.label}: cannot decode: {type(e).__name__}: {e}") from None
        return index

    def _decoder(self):
        """This thread's decoder, pointed at this video (created or reconfigured as needed)."""
        global reconfigure_failures
        nvc, st = self._nvc, _local
        dec = getattr(st, "decoder", None)
        try:
            if dec is not None and st.config == self.config:
                if st.media is self.media or (isinstance(self.media, str) and st.media == self.media):
                    return dec
                if isinstance(self.media, str) and st.from_path:    # (bytes: only a new decoder)
                    st.media = None              # not pointed at anything valid until this succeeds
                    try:
                        dec.reconfigure_decoder(self.media)
                        st.media = self.media
                        return dec
                    except Exception:  # noqa: BLE001 (a new decoder decides whether the file is bad)
                        reconfigure_failures += 1
            release_thread_decoder()
            gpu_id, scan, color, cache_size, host = self.config
            dec = nvc.SimpleDecoder(self.media, gpu_id=gpu_id, use_device_memory=not host,
                                    need_scanned_stream_metadata=scan, decoder_cache_size=cache_size,
                                    output_color_type=nvc.OutputColorType.RGB if color == "rgb"
                                    else nvc.OutputColorType.NATIVE)
        except Exception as e:
            release_thread_decoder()
            raise VideoError(f"{self.label}: cannot open (nvdec): {_first_line(e)}") from None
        st.decoder, st.config, st.media, st.from_path = dec, self.config, self.media, isinstance(self.media, str)
        return dec

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, indices) -> jax.Array | Nv12Frames:
        scalar = np.ndim(indices) == 0
        idx = np.atleast_1d(np.asarray(indices))
        if idx.ndim != 1:
            raise ValueError(f"frame indices must be an int or 1-D, got shape {idx.shape}")
        if idx.size and idx.dtype.kind not in "iu":
            raise TypeError(f"frame indices must be integers, got {idx.dtype}")
        given = idx.astype(np.int64)
        idx = np.where(given < 0, given + self.n, given)
        if idx.size == 0 and self.host:
            return Nv12Frames(np.zeros((0, self.height + (self.height + 1) // 2, self.width), np.uint8), self.height)
        if idx.size == 0:
            return jax.device_put(np.zeros((0, self.height, self.width, 3), np.uint8), self._device())
        bad = given[(idx < 0) | (idx >= self.n)]
        if bad.size:
            raise IndexError(f"{self.label}: frame index {int(bad[0])} out of range for {self.n} frames")
        wanted = np.unique(idx)                                  # sorted, distinct
        frames = self._read([int(i) for i in wanted])            # (len(wanted), H, W, 3) on the GPU
        if len(wanted) != len(idx) or np.any(wanted != idx):
            pick = np.searchsorted(wanted, idx)
            frames = frames[pick if self.host else jnp.asarray(pick)]   # repeats and order (on the device)
        return frames if self.host or not scalar else frames[0]

    def _device(self):
        return next((d for d in jax.devices() if d.id == self.gpu_id), jax.devices()[0])

    def _read(self, wanted: list[int]) -> jax.Array | Nv12Frames:
        dec = self._decoder()
        try:
            got = dec.get_batch_frames_by_index(wanted)
        except Exception as e:
            release_thread_decoder()
            raise VideoError(f"{self.label}: cannot decode (nvdec): {_first_line(e)}") from None
        if len(got) != len(wanted):
            raise VideoError(f"{self.label}: truncated: NVDEC returned {len(got)} of the {len(wanted)} frames "
                             f"asked for (up to frame {wanted[-1]}; header frame count {self.header_frames})")
        want = (self.height, self.width, 3) if self.color == "rgb" else (self.height + (self.height + 1) // 2, self.width)
        if self.host:
            try:
                return Nv12Frames(np.stack([_host_frame(f, want) for f in got]), self.height)
            except Exception as e:
                raise VideoError(f"{self.label}: copying an NVDEC frame from host memory failed: {_first_line(e)}") \
                    from None
        try:
            arrays = [jax.dlpack.from_dlpack(f) for f in got]
        except Exception as e:
            raise VideoError(f"{self.label}: DLPack import of an NVDEC frame failed: {_first_line(e)}") from None
        shapes = {(tuple(a.shape), str(a.dtype)) for a in arrays}
        if shapes != {(want, "uint8")}:
            raise VideoError(f"{self.label}: NVDEC returned frames {sorted(shapes)}, expected uint8 {want}"
                             + (" (not 8-bit 4:2:0: use color='rgb')" if self.color == "nv12" else ""))
        stacked = jnp.stack(arrays)                              # the one copy, device to device
        if self.color == "nv12":
            stacked = nv12_to_rgb(stacked, self.height)
        stacked.block_until_ready()                              # before the decoder reuses its buffers
        return stacked


def _host_frame(frame, shape: tuple) -> np.ndarray:
    """A frame PyNvVideoCodec decoded into host memory (``use_device_memory=False``) -> a numpy copy
    of ``shape`` ``(rows, W)`` (the decoder may reuse its buffer): through DLPack where the frame
    exports a CPU tensor, else from its plane pointer (``GetPtrToPlane(0)``, the planes contiguous,
    ``framesize()`` bytes where it says); rows wider than ``W`` (a pitch) are cut to ``W``."""
    rows, w = shape
    try:
        a = np.from_dlpack(frame)
    except Exception:  # noqa: BLE001 (no CPU DLPack export: read the plane pointer)
        import ctypes
        size = int(frame.framesize()) if hasattr(frame, "framesize") else rows * w
        a = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(int(frame.GetPtrToPlane(0))))
    if a.dtype != np.uint8 or a.size % rows or a.size // rows < w:
        raise ValueError(f"host frame {a.shape} {a.dtype}, expected uint8 {shape}")
    return np.array(a.reshape(rows, -1)[:, :w], copy=True)


def resolve_decoder(decoder: str) -> str:
    """A command's ``--decoder`` before any work: ``"cpu"`` stays; ``"nvdec"`` stays where
    :func:`available`, else raises as :func:`frame_source` does (one line); ``"auto"`` stays where
    available (each video then opened with ``frame_source(..., "auto")``: one NVDEC cannot open is
    decoded on the CPU), else is ``"cpu"``, with :func:`frame_source`'s one-line notice."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r} ({', '.join(DECODERS)})")
    if decoder == "cpu":
        return decoder
    if available():
        return decoder
    if decoder == "nvdec":
        raise _unavailable_error()
    notice_once("unavailable", f"decoding video on the CPU: NVDEC not used ({unavailable_reason()})")
    return "cpu"


def frame_source(media: Media, decoder: str = "auto", *, backend: str = "auto", **nvdec_options):
    """Open ``media`` for reading sampled frames: a :class:`~co3d_jax.data.video.VideoFrames`
    (``decoder="cpu"``; ``backend`` picks PyAV or OpenCV), an :class:`NvdecFrames` (``"nvdec"``;
    ``nvdec_options`` are its keyword arguments), or (``"auto"``) NVDEC where :func:`available`,
    else the CPU decoder with a one-line notice (once per process). With ``"auto"`` a video NVDEC
    cannot open falls back to the CPU decoder too (one notice per process), so which videos are
    rejected, and why, is the CPU decoder's verdict at open. ``"nvdec"`` where NVDEC is
    unavailable raises :class:`~co3d_jax.extras.MissingExtra` or :class:`NvdecUnavailable`.
    ``"nvdec-host"``/``"auto-host"`` (:data:`HOST_DECODERS`, for worker processes): as ``"nvdec"``/
    ``"auto"`` with ``NvdecFrames(host=True)`` (reads give :class:`Nv12Frames`), without
    :func:`available`'s check, which would start JAX's GPU backend in the worker."""
    if decoder not in DECODERS and decoder not in HOST_DECODERS.values():
        raise ValueError(f"unknown decoder {decoder!r} ({', '.join(DECODERS)})")
    if decoder == "nvdec-host":
        return NvdecFrames(media, **nvdec_options, host=True)
    if decoder == "cpu":
        return VideoFrames(media, backend)
    if decoder == "nvdec":
        if not available():
            raise _unavailable_error()
        return NvdecFrames(media, **nvdec_options)
    if decoder == "auto" and not available():
        notice_once("unavailable", f"decoding video on the CPU: NVDEC not used ({unavailable_reason()})")
        return VideoFrames(media, backend)
    if decoder == "auto-host":
        nvdec_options = dict(nvdec_options, host=True)
    label = media if isinstance(media, str) else "(bytes)"
    _check_media(media, label)            # a missing or empty file is an error for both decoders
    try:
        return NvdecFrames(media, **nvdec_options)
    except VideoError as e:
        notice_once("open-failed", f"NVDEC could not open a video, so it is decoded on the CPU (and any like it, "
                               f"without further notice): {e}")
        return VideoFrames(media, backend)
