"""GPU decoding's logic (co3d_jax.data.nvdec) without a GPU: a fake ``PyNvVideoCodec`` serves
frames from numpy arrays (numpy arrays export ``__dlpack__``, so ``jax.dlpack.from_dlpack`` takes
them as it takes NVDEC frames) and behaves as the real ``SimpleDecoder`` does where it matters:
repeated indices are dropped, out-of-range ones skipped with a warning, a truncated stream returns
fewer frames, ``reconfigure_decoder`` takes a path only. Each fake decoder refuses use from
another thread than its own, so sharing a decoder across threads fails these tests. The files
are real (tiny PyAV-encoded) videos, since opening one also demuxes it with PyAV (the CPU
decoder's truncation rule); the fake serves its own frames for them, whose RGB output is the
JAX conversion of its NV12 output, so both ``color``s give the same frames.

Pixel exactness and speed on a real GPU: ``benchmarks/nvdec_speed.py``."""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess
import sys
import textwrap
import threading
import types
import warnings

import jax
import numpy as np
import pytest

from co3d_jax.data import nvdec
from co3d_jax.data.nvdec import NvdecFrames, NvdecUnavailable, frame_source, nv12_to_rgb
from co3d_jax.data.video import VideoError, VideoFrames
from co3d_jax.extras import MissingExtra, cli_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the fake PyNvVideoCodec -------------------------------------------------------------------
class Meta:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def make_fake():
    """A module with PyNvVideoCodec's ``SimpleDecoder`` surface; videos are registered in
    ``fake.VIDEOS`` by file content: ``{content: dict(rgb=(T, H, W, 3), nv12=(T, 1.5H, W),
    header=the frame count get_stream_metadata reports, codec=its codec_name)}``."""
    fake = types.ModuleType("PyNvVideoCodec")
    fake.VIDEOS, fake.created, fake.reconfigured, fake.batches = {}, [], [], []
    fake.refuse_reconfigure = False
    fake.OutputColorType = types.SimpleNamespace(NATIVE="native", RGB="rgb", RGBP="rgbp")

    class SimpleDecoder:
        def __init__(self, src, gpu_id=0, cuda_context=0, cuda_stream=0, use_device_memory=True, max_width=0,
                     max_height=0, need_scanned_stream_metadata=0, decoder_cache_size=4,
                     output_color_type="native", bWaitForSessionWarmUp=False, enableDecodeStats=False):
            self.device_memory = use_device_memory      # False: NvdecFrames(host=True), the frames in host memory
            self.thread = threading.get_ident()
            self.scan, self.color = need_scanned_stream_metadata, output_color_type
            self._load(src)
            fake.created.append((self.thread, src if isinstance(src, str) else "(bytes)", output_color_type))
            fake.device_memory = getattr(fake, "device_memory", []) + [use_device_memory]

        def _load(self, src):
            content = open(src, "rb").read() if isinstance(src, str) else bytes(src)
            if content not in fake.VIDEOS:
                raise RuntimeError("Failed to open input stream\n(a second line the wrapper must drop)")
            self.video = fake.VIDEOS[content]

        def _own(self):
            if threading.get_ident() != self.thread:
                raise AssertionError("a decoder was used from another thread than the one that created it")

        def reconfigure_decoder(self, new_source):
            self._own()
            if not isinstance(new_source, str):
                raise TypeError("reconfigure_decoder takes a path")
            if fake.refuse_reconfigure:
                raise RuntimeError("Reconfigure Not supported for chroma format change")
            self._load(new_source)
            fake.reconfigured.append((self.thread, new_source))

        def get_stream_metadata(self):
            self._own()
            t, h, w, _ = self.video["rgb"].shape
            return Meta(num_frames=self.video["header"], average_fps=25.0, width=w, height=h,
                        codec_name=self.video.get("codec", "h264"))

        def get_scanned_stream_metadata(self):
            self._own()
            assert self.scan, "scanned metadata asked of a decoder created without need_scanned_stream_metadata"
            return Meta(num_frames=len(self.video["rgb"]))

        def get_batch_frames_by_index(self, indices):
            self._own()
            fake.batches.append(list(indices))
            seen, out = set(), []
            for i in indices:                      # as SimpleDecoder: range checked against the header
                if not 0 <= i < self.video["header"]:
                    warnings.warn(f"Skipping index {i}")
                elif i not in seen:
                    seen.add(i)
                    if i < len(self.video["rgb"]):      # the stream ends early (truncated): fewer frames
                        out.append(np.array(self.video["rgb" if self.color == "rgb" else "nv12"][i]))
            return out

    fake.SimpleDecoder = SimpleDecoder
    return fake


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The fake module as ``PyNvVideoCodec``, JAX's backend taken for a CUDA GPU; ``fake.add(name,
    T, header)`` writes a real T-frame video (PyAV, mpeg4) and registers the fake's frames for it
    (``header``: the count the fake reports as the header's); ``fake.register(path, T, header)``
    registers an existing file."""
    pytest.importorskip("av")
    from co3d_jax.data.video import encode_video
    f = make_fake()
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", f)
    monkeypatch.setattr(nvdec, "_jax_on_cuda", lambda: (True, ""))
    monkeypatch.setattr(nvdec, "_noticed", set())
    nvdec._availability.cache_clear()
    nvdec.release_thread_decoder()
    rng = np.random.default_rng(0)

    def register(path, t, header=None, h=6, w=8, codec="h264"):
        nv12 = rng.integers(0, 256, (t, h + (h + 1) // 2, w), dtype=np.uint8)
        rgb = np.asarray(nv12_to_rgb(nv12, h)) if t else np.zeros((0, h, w, 3), np.uint8)
        content = open(path, "rb").read()
        assert content not in f.VIDEOS
        f.VIDEOS[content] = dict(rgb=rgb, nv12=nv12, header=t if header is None else header, codec=codec)
        return str(path), rgb, nv12

    def add(name, t=20, header=None, h=6, w=8, codec="h264"):
        path = tmp_path / f"{name}.mp4"
        encode_video(str(path), rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8), 25)
        return register(path, t, header, h, w, codec)

    f.add, f.register = add, register
    yield f
    nvdec.release_thread_decoder()
    nvdec._availability.cache_clear()


def no_fake_gpu(monkeypatch):
    monkeypatch.setattr(nvdec, "_jax_on_cuda", lambda: (False, "JAX's default backend is 'cpu', not an NVIDIA GPU"))
    monkeypatch.setattr(nvdec, "_noticed", set())
    nvdec._availability.cache_clear()


@pytest.fixture
def real_video(tmp_path):
    pytest.importorskip("av")
    from co3d_jax.data.video import encode_video
    path = str(tmp_path / "real.mp4")
    encode_video(path, np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), 30)
    return path


# -- reads -------------------------------------------------------------------------------------
def test_reads_keep_order_and_repeats(fake):
    path, rgb, _ = fake.add("a")
    v = NvdecFrames(pathlib.Path(path))
    assert len(v) == 20 and v.fps == 25.0 and (v.height, v.width) == (6, 8) and v.label == path
    idx = [5, 3, 5, 19, -1, 0, 3]
    got = v[idx]
    assert isinstance(got, jax.Array) and got.dtype == np.uint8 and got.shape == (7, 6, 8, 3)
    np.testing.assert_array_equal(np.asarray(got), rgb[idx])
    assert fake.batches[-1] == [0, 3, 5, 19]          # one decode call, sorted, distinct
    np.testing.assert_array_equal(np.asarray(v[np.array([4, 2, 9])]), rgb[[4, 2, 9]])
    np.testing.assert_array_equal(np.asarray(v[np.arange(20)]), rgb)
    one = v[np.int64(7)]
    assert one.shape == (6, 8, 3)
    np.testing.assert_array_equal(np.asarray(one), rgb[7])
    assert v[[]].shape == (0, 6, 8, 3) and v[[]].dtype == np.uint8


def test_host_reads_are_nv12_on_the_host_in_order_with_repeats(fake, monkeypatch):
    from co3d_jax.data.nvdec import Nv12Frames, nv12_windows_to_device
    from co3d_jax.data.pipeline import collate_on_device

    monkeypatch.setattr(nvdec, "_jax_on_cuda", lambda: (_ for _ in ()).throw(AssertionError("JAX asked")))
    path, rgb, nv12 = fake.add("a", t=12, h=6, w=8)
    v = frame_source(path, "nvdec-host")                         # no availability check (no JAX) in a worker
    assert isinstance(v, NvdecFrames) and not v.on_device and fake.device_memory == [False]
    idx = [7, 2, 2, 11, 0]
    got = v[idx]
    assert isinstance(got, Nv12Frames) and isinstance(got.nv12, np.ndarray) and got.shape == (5, 6, 8, 3)
    np.testing.assert_array_equal(got.nv12, nv12[idx])
    np.testing.assert_array_equal(got[1:].nv12, nv12[idx[1:]])  # frames selected as a window's are
    assert v[[]].shape == (0, 6, 8, 3)
    leaves, tree = jax.tree_util.tree_flatten(got)               # Grain moves the leaf through shared memory
    assert len(leaves) == 1 and jax.tree_util.tree_unflatten(tree, leaves).height == 6
    other = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)   # a window decoded on the CPU
    out = nv12_windows_to_device([got, None, other])
    np.testing.assert_array_equal(np.asarray(out[0]), rgb[idx])
    assert out[1] is None
    np.testing.assert_array_equal(np.asarray(out[2]), other)
    batch = np.asarray(collate_on_device([got[:2], None, other[:2]], rows=4))
    assert batch.shape == (4, 2, 32, 32, 3)
    np.testing.assert_array_equal(batch[0, :, :6, :8], rgb[idx[:2]])
    np.testing.assert_array_equal(batch[2, :, :4, :5], other[:2])
    assert not batch[1].any() and not batch[3].any() and not batch[0, :, 6:].any()
    with pytest.raises(ValueError, match="NV12 only"):
        NvdecFrames(path, host=True, color="rgb")


def test_out_of_range_and_bad_indices_are_clear_errors(fake):
    path, _, _ = fake.add("a")
    v = NvdecFrames(path)
    for bad, shown in (([0, 20], 20), ([3, -21], -21), (25, 25)):
        with pytest.raises(IndexError, match=rf"a\.mp4: frame index {shown} out of range for 20 frames"):
            v[bad]
    with pytest.raises(TypeError, match="integers"):
        v[[1.5]]
    with pytest.raises(ValueError, match="1-D"):
        v[[[1, 2]]]


def test_nv12_output_is_converted_in_jax_by_default(fake):
    path, rgb, nv12 = fake.add("a", h=6, w=8)
    v = NvdecFrames(path)
    assert v.color == "nv12" and fake.created[-1][2] == "native"
    got = v[[2, 2, 0]]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(nv12_to_rgb(nv12[[2, 2, 0]], 6)))
    v = NvdecFrames(path, color="rgb")                    # the decoder's own conversion: another decoder
    assert fake.created[-1][2] == "rgb" and len(fake.created) == 2
    np.testing.assert_array_equal(np.asarray(v[[2, 0]]), rgb[[2, 0]])
    with pytest.raises(ValueError, match="color"):
        NvdecFrames(path, color="yuv")


def test_nv12_refuses_other_pixel_formats_at_open(fake, tmp_path):
    """``nv12_to_rgb`` is PyAV's conversion of yuv420p (limited range, even width) only: a stream
    in another pixel format (here full-range yuvj420p) or of odd width is refused at open, so
    ``auto`` reads it on the CPU; ``color="rgb"`` reads it on NVDEC."""
    import av
    path = str(tmp_path / "full_range.mp4")
    with av.open(path, "w") as c:
        s = c.add_stream("mjpeg", rate=25)
        s.width, s.height, s.pix_fmt = 8, 6, "yuvj420p"
        for i in range(6):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((6, 8, 3), 40 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    _, rgb, _ = fake.register(path, 6)
    with pytest.raises(VideoError, match=r"full_range\.mp4: cannot open \(nvdec\): color='nv12' reads yuv420p .* "
                                         r"this stream is yuvj420p: use color='rgb'"):
        NvdecFrames(path)
    np.testing.assert_array_equal(np.asarray(NvdecFrames(path, color="rgb")[[5]]), rgb[[5]])
    assert isinstance(frame_source(path, "auto"), VideoFrames)
    odd, _, _ = fake.add("odd_width", t=4)                 # (a real even-width file; the fake says 7 wide)
    fake.VIDEOS[open(odd, "rb").read()]["rgb"] = np.zeros((4, 6, 7, 3), np.uint8)
    with pytest.raises(VideoError, match="this stream is 7 pixels wide: use color='rgb'"):
        NvdecFrames(odd)
    assert NvdecFrames(odd, color="rgb")[[3]].shape == (1, 6, 7, 3)


def test_nv12_to_rgb_is_pyavs_conversion():
    """PyAV's ``to_ndarray(format="rgb24")`` of a yuv420p frame (swscale's default BT.601
    limited-range conversion, its x86 SIMD arithmetic): the reference that ``color="nv12"``
    follows, bit for bit on x86-64 (elsewhere swscale's C path rounds differently)."""
    av = pytest.importorskip("av")
    rng = np.random.default_rng(3)
    h, w = 64, 256
    y = rng.integers(0, 256, (h, w), dtype=np.uint8)
    u, v = (rng.integers(0, 256, (h // 2, w // 2), dtype=np.uint8) for _ in range(2))
    y[:4], u[:2], v[:2] = 16, 128, 128                                          # black
    i420 = np.concatenate([y, u.reshape(h // 4, w), v.reshape(h // 4, w)])
    ref = av.VideoFrame.from_ndarray(i420, format="yuv420p").to_ndarray(format="rgb24")
    nv12 = np.concatenate([y, np.stack([u, v], -1).reshape(h // 2, w)])
    got = np.asarray(nv12_to_rgb(nv12, h))
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert got.shape == (h, w, 3) and got.dtype == np.uint8
    assert (got[:4] == 0).all()
    exact = platform.machine() in ("x86_64", "AMD64")
    assert diff.max() <= (0 if exact else 3), (diff.max(), diff.mean())
    batch = np.asarray(nv12_to_rgb(np.stack([nv12, nv12]), h))
    np.testing.assert_array_equal(batch[1], got)


# -- errors ------------------------------------------------------------------------------------
def test_open_errors_name_the_file(fake, tmp_path):
    with pytest.raises(VideoError, match=r"missing\.mp4: file not found"):
        NvdecFrames(str(tmp_path / "missing.mp4"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty\.mp4: empty file"):
        NvdecFrames(str(tmp_path / "empty.mp4"))
    with pytest.raises(VideoError, match=r"\(bytes\): empty file"):
        NvdecFrames(b"")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoError) as e:
        NvdecFrames(str(tmp_path / "junk.mp4"))
    assert "junk.mp4: cannot open (nvdec): RuntimeError: Failed to open input stream" == str(e.value).split("/")[-1]
    path, rgb, _ = fake.add("ok")                   # a failed open does not break the thread's next one
    np.testing.assert_array_equal(np.asarray(NvdecFrames(path)[[1]]), rgb[[1]])


def cut_mp4(tmp_path):
    """``benchmarks/nvdec_speed.py``'s ``bad_files``: a 90-frame MP4 with its index first
    (faststart, so it opens) and its bytes cut at 60%: the index promises 90 frames, the file
    holds 50."""
    from co3d_jax.data.video import encode_video
    good = str(tmp_path / "faststart.mp4")
    encode_video(good, np.random.default_rng(0).integers(0, 256, (90, 64, 96, 3), dtype=np.uint8), 30, faststart=True)
    data = open(good, "rb").read()
    cut = tmp_path / "cut_at_60_percent.mp4"
    cut.write_bytes(data[:int(len(data) * 0.6)])
    return good, str(cut)


def test_a_truncated_mp4_gets_the_cpu_decoders_verdict(fake, tmp_path):
    """The case found on the GPU (``results/nvdec_speed_h200.json``, ``bad_files``): PyNvVideoCodec
    opened the cut MP4 as a 50-frame video, its header count and its packet scan both the cut
    stream's (as this fake reports them), where the CPU decoder says truncated. NVDEC now gives
    the CPU decoder's verdict, with its message, at open; from a path or bytes, with or without
    the scan, and ``auto`` too."""
    good, cut = cut_mp4(tmp_path)
    with pytest.raises(VideoError) as cpu:
        VideoFrames(cut, "pyav")
    assert "cut_at_60_percent.mp4: truncated: stream ends at pts 25088, metadata promises 44544" in str(cpu.value)
    from co3d_jax.data.video import demux_index
    packets = len(demux_index(cut).pts)
    assert packets == 50
    fake.register(cut, packets, header=packets, h=64, w=96)        # what PyNvVideoCodec 2.2.4 reported
    _, rgb, _ = fake.register(good, 90, h=64, w=96)
    for options in ({}, {"scan": False}, {"color": "rgb"}):
        with pytest.raises(VideoError) as e:
            NvdecFrames(cut, **options)
        assert str(e.value) == str(cpu.value)
    with pytest.raises(VideoError) as e:
        NvdecFrames(open(cut, "rb").read())
    assert str(e.value) == str(cpu.value).replace(cut, "(bytes)")
    with pytest.raises(VideoError, match="truncated: stream ends at pts 25088"):
        frame_source(cut, "auto")
    v = NvdecFrames(good)                                      # the intact file opens, after the cut one
    assert len(v) == 90
    np.testing.assert_array_equal(np.asarray(v[[0, 89]]), rgb[[0, 89]])


def test_frame_counts(fake):
    """``len`` is the scan's count, capped at the header's; the truncation verdict is the
    container's (PyAV's index), not a comparison of PyNvVideoCodec's two counts."""
    short, rgb, _ = fake.add("short", t=20, header=22)
    v = NvdecFrames(short)
    assert len(v) == 20
    np.testing.assert_array_equal(np.asarray(v[[19]]), rgb[[19]])
    over, rover, _ = fake.add("over", t=20, header=18)        # a header that undercounts: its count is what is served
    v = NvdecFrames(over)
    assert len(v) == 18
    np.testing.assert_array_equal(np.asarray(v[[17]]), rover[[17]])
    long, rlong, _ = fake.add("long", t=20, header=30)        # a complete container: the scan's count
    assert len(NvdecFrames(long)) == 20
    v = NvdecFrames(long, scan=False)                         # the header's count: found when read
    assert len(v) == 30
    np.testing.assert_array_equal(np.asarray(v[[0, 19]]), rlong[[0, 19]])
    with pytest.raises(VideoError, match=r"long\.mp4: truncated: NVDEC returned 1 of the 2 frames"):
        v[[5, 25]]


def test_a_file_pyav_cannot_demux_is_an_error(fake, tmp_path):
    """NVDEC opens it (the fake takes any registered content), the container check does not:
    the CPU decoder's message."""
    path = tmp_path / "not_a_container.mp4"
    path.write_bytes(b"this is no container" * 50)
    fake.register(path, 5)
    with pytest.raises(VideoError, match=r"not_a_container\.mp4: cannot decode: \w+"):
        NvdecFrames(str(path))


def test_mpeg4_from_bytes_is_refused_at_open(fake, real_video, capsys):
    """PyNvVideoCodec 2.2.4 failed the first read of MPEG-4 Part 2 from bytes on the H200
    (``GetFramesByIdxList``): refused at open instead, so ``auto`` decodes it on the CPU."""
    path, rgb, _ = fake.add("m4", codec="mpeg4")
    data = open(path, "rb").read()
    np.testing.assert_array_equal(np.asarray(NvdecFrames(path)[[3]]), rgb[[3]])     # from a path: NVDEC
    with pytest.raises(VideoError, match=r"\(bytes\): cannot open \(nvdec\): mpeg4 from bytes"):
        NvdecFrames(data)
    v = frame_source(data, "auto")
    assert isinstance(v, VideoFrames) and len(v) == 20
    assert "NVDEC could not open a video" in capsys.readouterr().err


# -- the thread's decoder ----------------------------------------------------------------------
def test_one_decoder_per_thread_reused_by_reconfigure(fake):
    a, ra, _ = fake.add("a")
    b, rb, _ = fake.add("b")
    va, vb = NvdecFrames(a), NvdecFrames(b)
    np.testing.assert_array_equal(np.asarray(va[[1, 2]]), ra[[1, 2]])    # back to a: reconfigured
    np.testing.assert_array_equal(np.asarray(va[[3]]), ra[[3]])          # still a: nothing to do
    np.testing.assert_array_equal(np.asarray(vb[[4]]), rb[[4]])
    me = threading.get_ident()
    assert [t for t, _, _ in fake.created] == [me]
    assert [p for _, p in fake.reconfigured] == [b, a, b]

    results, errors = {}, []
    alive = threading.Barrier(4, timeout=60)      # all alive at once: thread idents are distinct

    def work(k):
        try:
            alive.wait()
            for _ in range(3):
                results[k] = np.asarray(va[[k, 0]]), np.asarray(NvdecFrames(b)[[k]])
            alive.wait()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    for k, (x, y) in results.items():
        np.testing.assert_array_equal(x, ra[[k, 0]])
        np.testing.assert_array_equal(y, rb[[k]])
    assert len(fake.created) == 5 and len({t for t, _, _ in fake.created}) == 5   # one per thread

    nvdec.release_thread_decoder()
    NvdecFrames(a)
    assert len(fake.created) == 6
    NvdecFrames(a, color="rgb")                    # another output format: another decoder
    assert len(fake.created) == 7 and fake.created[-1][2] == "rgb"


def test_a_failed_reconfigure_makes_a_new_decoder(fake, monkeypatch, tmp_path):
    a, ra, _ = fake.add("a")
    b, rb, _ = fake.add("b")
    NvdecFrames(a)
    monkeypatch.setattr(nvdec, "reconfigure_failures", 0)
    fake.refuse_reconfigure = True
    np.testing.assert_array_equal(np.asarray(NvdecFrames(b)[[4]]), rb[[4]])
    assert len(fake.created) == 2 and nvdec.reconfigure_failures == 1
    (tmp_path / "junk.mp4").write_bytes(b"junk")
    with pytest.raises(VideoError, match="junk.mp4: cannot open"):    # the new decoder's verdict
        NvdecFrames(str(tmp_path / "junk.mp4"))
    fake.refuse_reconfigure = False
    np.testing.assert_array_equal(np.asarray(NvdecFrames(a)[[4]]), ra[[4]])


def test_bytes_media_get_a_new_decoder(fake):
    path, rgb, _ = fake.add("a")
    data = open(path, "rb").read()
    v = NvdecFrames(bytearray(data))
    assert v.label == "(bytes)"
    np.testing.assert_array_equal(np.asarray(v[[2, 1]]), rgb[[2, 1]])
    np.testing.assert_array_equal(np.asarray(v[[0]]), rgb[[0]])          # the same object: no new decoder
    assert len(fake.created) == 1 and not fake.reconfigured
    NvdecFrames(data)
    NvdecFrames(path)
    assert len(fake.created) == 3 and not fake.reconfigured


# -- choosing the decoder ----------------------------------------------------------------------
def test_auto_and_nvdec_use_nvdec_where_available(fake, real_video, capsys):
    path, rgb, _ = fake.add("a")
    assert nvdec.available() and nvdec.unavailable_reason() is None
    for decoder in ("auto", "nvdec"):
        v = frame_source(path, decoder)
        assert isinstance(v, NvdecFrames) and v.on_device
        np.testing.assert_array_equal(np.asarray(v[[3]]), rgb[[3]])
    assert isinstance(frame_source(real_video, "cpu", backend="pyav"), VideoFrames)
    assert capsys.readouterr().err == ""
    # A video NVDEC cannot open: auto reads it on the CPU (one notice), nvdec raises.
    for _ in range(3):
        v = frame_source(real_video, "auto")
        assert isinstance(v, VideoFrames) and v[[0, 7]].shape == (2, 16, 16, 3)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("note: NVDEC could not open a video") and "real.mp4" in err[0]
    with pytest.raises(VideoError, match="real.mp4: cannot open"):
        frame_source(real_video, "nvdec")
    with pytest.raises(VideoError, match="file not found"):
        frame_source(path + ".missing", "auto")
    with pytest.raises(ValueError, match="unknown decoder"):
        frame_source(path, "gpu")


def test_auto_falls_back_with_one_notice(monkeypatch, real_video, capsys):
    no_fake_gpu(monkeypatch)
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    assert not nvdec.available()
    assert nvdec.unavailable_reason() == "JAX's default backend is 'cpu', not an NVIDIA GPU"
    got = []
    threads = [threading.Thread(target=lambda: got.append(frame_source(real_video))) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    got.append(frame_source(real_video, "auto"))
    assert len(got) == 5 and all(isinstance(v, VideoFrames) for v in got)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["note: decoding video on the CPU: NVDEC not used (JAX's default backend is 'cpu', not an NVIDIA GPU)"]
    nvdec._availability.cache_clear()


def test_nvdec_where_unavailable_is_one_line(monkeypatch, tmp_path, capsys):
    path = str(tmp_path / "v.mp4")
    open(path, "wb").write(b"x")

    @cli_main
    def main(argv=None):
        frame_source(path, "nvdec")
        return 0

    def one_line():
        assert main([]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
        return err[0]

    no_fake_gpu(monkeypatch)                             # no CUDA GPU
    with pytest.raises(NvdecUnavailable) as e:
        frame_source(path, "nvdec")
    assert "\n" not in str(e.value) and "decoder='nvdec' cannot be used here: JAX's default backend is 'cpu'" in str(e.value)
    assert "'cpu'" in one_line()

    monkeypatch.setattr(nvdec, "_jax_on_cuda", lambda: (True, ""))   # a GPU, no package
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    nvdec._availability.cache_clear()
    with pytest.raises(MissingExtra) as e:
        frame_source(path, "nvdec")
    assert not isinstance(e.value, NvdecUnavailable)
    line = one_line()
    assert "'pynvvideocodec', which is not installed: pip install -e '.[nvdec]'" in line, line

    # A GPU, the package installed but failing to load (no driver library): its multi-line
    # error and its error logging become one line.
    pkg = tmp_path / "site" / "PyNvVideoCodec"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import logging
        logging.getLogger(__name__).error("Error importing PyNvVideoCodec: libnvcuvid.so.1 missing")
        raise RuntimeError("libnvcuvid.so.1: cannot open shared object file\\n\\n=== TROUBLESHOOTING STEPS ===")
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "PyNvVideoCodec")
    nvdec._availability.cache_clear()
    assert not nvdec.available()
    assert nvdec.unavailable_reason() == ("PyNvVideoCodec does not load (RuntimeError: libnvcuvid.so.1: cannot open "
                                          "shared object file)")
    assert capsys.readouterr().err == ""                # its logging silenced
    assert "does not load (RuntimeError: libnvcuvid.so.1" in one_line()
    nvdec._availability.cache_clear()


def test_nvdec_needs_pyav(fake, monkeypatch, capsys):
    """Opening a video demuxes it with PyAV (the CPU decoder's truncation rule), so NVDEC is
    unavailable without PyAV: ``nvdec`` is a one-line error naming the ``[nvdec]`` extra (which
    installs it), ``auto`` decodes on the CPU with one notice."""
    path, _, _ = fake.add("a")
    monkeypatch.setitem(sys.modules, "av", None)
    nvdec._availability.cache_clear()
    assert not nvdec.available()
    assert "'av', which is not installed: pip install -e '.[nvdec]'" in nvdec.unavailable_reason()
    with pytest.raises(MissingExtra) as e:
        frame_source(path, "nvdec")
    assert e.value.module == "av" and e.value.extra == "nvdec" and "\n" not in str(e.value)
    nvdec._availability.cache_clear()


def test_co3d_jax_imports_without_pynvvideocodec(tmp_path):
    """Importing co3d_jax (and this module), and asking ``available()`` on a machine without a
    CUDA GPU, never imports PyNvVideoCodec; blocked, nothing else breaks."""
    pkg = tmp_path / "PyNvVideoCodec"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise SystemExit('PyNvVideoCodec was imported')\n")
    code = textwrap.dedent("""
        import sys
        import co3d_jax, co3d_jax.data, co3d_jax.data.video
        from co3d_jax.data import nvdec
        assert not nvdec.available(), nvdec.unavailable_reason()
        assert "PyNvVideoCodec" not in sys.modules
        print("ok")
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
