"""Seeking decode (co3d_jax.data.video.VideoFrames / decode_frames): bit-identical to the full
decode for every sampling, the same errors, and fewer frames decoded."""

from __future__ import annotations

import fractions
import re

import numpy as np
import pytest

av = pytest.importorskip("av")

from co3d_jax.data.augment import TrainClipSpec, sample_rng, train_sample  # noqa: E402
from co3d_jax.data.sampling import clip_size, temporal_indices  # noqa: E402
from co3d_jax.data.video import VideoError, VideoFrames, decode_all, decode_frames  # noqa: E402

N = 90


def make(path, codec, n=N, gop=None, pts0=0, faststart=False):
    yy, xx = np.mgrid[0:48, 0:64]
    rng = np.random.default_rng(1)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream(codec, rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        if gop:
            s.codec_context.gop_size = gop
        for t in range(n):
            img = np.stack([(xx * 4 + t * 9) % 256, (yy * 4 + t * 5) % 256, (xx * yy + t * 7) % 256], -1)
            img = img.astype(np.uint8)
            img[:, (t * 3) % 60:(t * 3) % 60 + 4] = rng.integers(0, 256, (48, 4, 3), dtype=np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts0:
                f.pts, f.time_base = pts0 + t, fractions.Fraction(1, 30)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


# h264 (B-frames, reordered pts) and mpeg4; GOPs of 1, 12 and one longer than the video.
VIDEOS = [(codec, gop, ext, pts0) for codec in ("libx264", "mpeg4") for gop in (1, 12, 250) for ext, pts0 in
          (("mp4", 0),)] + [("libx264", 12, "mp4", 17), ("mpeg4", 12, "mkv", 17), ("libx264", 12, "mkv", 0)]


@pytest.fixture(scope="module", params=VIDEOS, ids=lambda v: "-".join(map(str, v)))
def video(request, tmp_path_factory):
    codec, gop, ext, pts0 = request.param
    path = make(tmp_path_factory.mktemp("seek") / f"v.{ext}", codec, gop=gop, pts0=pts0)
    return path, decode_all(path, "pyav")


def windows(n):
    """Clip samplings: X3D-S (13 x 6), X3D-M (16 x 5), every start offset step, the last frames,
    past the end (clamped as temporal_indices does), single frames."""
    out = [[0], [n - 1], [n - 2, n - 1], [5, 5, 3], list(range(n))]
    for num, rate in ((13, 6), (16, 5), (4, 2)):
        size = clip_size(rate, num, 30.0)
        for start in np.linspace(0, n, 11):
            out.append(temporal_indices(n, size, num, float(start)).tolist())
    return out


def test_bit_identical_every_sampling(video):
    path, (full, fps) = video
    v = VideoFrames(path, "pyav")
    assert len(v) == len(full) == N and v.fps == fps and v.fallback is None
    for idx in windows(N):
        got = v[np.asarray(idx)]
        assert got.dtype == np.uint8 and np.array_equal(got, full[idx]), idx
    assert np.array_equal(v[N - 1], full[N - 1]) and np.array_equal(v[-1], full[-1])


def test_decodes_less_from_the_keyframe(tmp_path):
    path = make(tmp_path / "v.mp4", "mpeg4", gop=12)
    v = VideoFrames(path, "pyav")
    v[[60, 66, 72]]
    assert v.decoded <= 72 - 60 + 1 + 12        # from the keyframe at or before 60
    v.decoded = 0
    v[[3]]
    assert v.decoded == 4                        # stops after the last wanted frame


def test_bytes_and_opencv(video):
    path, (full, _) = video
    with open(path, "rb") as f:
        data = f.read()
    idx = [7, 13, 40, 89]
    x, _ = decode_frames(data, idx, "pyav")     # the TFDS path: the file's bytes
    assert np.array_equal(x, full[idx])
    if path.endswith(".mp4"):
        full_cv, _ = decode_all(path, "opencv")
        y, _ = decode_frames(data, idx, "opencv")
        v = VideoFrames(path, "opencv")
        assert len(v) == len(full_cv) and np.array_equal(y, full_cv[idx])


def test_training_sample_identical(video):
    path, (full, fps) = video
    spec = TrainClipSpec(num_frames=13, sampling_rate=6, image_size=32, jitter=(36, 44))
    v = VideoFrames(path, "pyav")
    for sample in range(12):
        ia, ib = {}, {}
        a = train_sample(full, fps, spec, sample_rng(3, sample), ia)
        b = train_sample(v, v.fps, spec, sample_rng(3, sample), ib)
        assert np.array_equal(a, b) and ia == ib


def test_short_video_padding_unchanged(tmp_path):
    path = make(tmp_path / "short.mp4", "libx264", n=20, gop=12)
    full, fps = decode_all(path)
    spec = TrainClipSpec(num_frames=13, sampling_rate=6, image_size=32, jitter=(36, 44))
    ia, ib = {}, {}
    a = train_sample(full, fps, spec, sample_rng(0, 0), ia)
    b = train_sample(VideoFrames(path), fps, spec, sample_rng(0, 0), ib)
    assert np.array_equal(a, b) and ia == ib and ia["padded"] > 0


def test_truncated_and_bad_files_same_errors(tmp_path):
    path = make(tmp_path / "fs.mp4", "mpeg4", gop=12, faststart=True)
    data = open(path, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    for bad in (str(cut), str(empty), str(junk), str(tmp_path / "missing.mp4"), data[: len(data) // 2]):
        for backend in ("pyav", "opencv"):
            with pytest.raises(VideoError) as want:
                decode_all(bad, backend)
            with pytest.raises(VideoError) as got:
                VideoFrames(bad, backend)[[0]]
            # (OpenCV reads bytes from a temporary file, which decode_all's message names)
            assert re.sub(r"/\S*/tmp\w+\.mp4", "TMP", str(got.value)) == \
                re.sub(r"/\S*/tmp\w+\.mp4", "TMP", str(want.value))


def test_untrusted_index_falls_back(tmp_path, monkeypatch):
    path = make(tmp_path / "v.mp4", "libx264", gop=12)
    full, _ = decode_all(path)
    v = VideoFrames(path)
    v.pts = list(v.pts)
    v.pts[50] += 1                              # the decode disagrees with the index
    assert np.array_equal(v[[45, 55]], full[[45, 55]]) and v.fallback is not None and v.full is not None
