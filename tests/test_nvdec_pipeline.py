"""``--decoder nvdec`` in the commands (experiments.evaluate, experiments.finetune) without a GPU:
the fake ``PyNvVideoCodec`` of tests/test_nvdec.py, here serving each file's real frames (its
yuv420p planes decoded by PyAV, as NV12, which ``nv12_to_rgb`` converts to PyAV's RGB bit for bit
on x86-64), JAX's CPU backend taken for a CUDA GPU. The NVDEC path (threads of this process, the
frames as ``jax.Array`` s, collated on the device, evaluation's frames chosen from the demux index
by ``clip_positions``) must give the CPU path's predictions and batches exactly."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import platform
import sys

import numpy as np
import pytest

av = pytest.importorskip("av")

from co3d_jax.data import nvdec  # noqa: E402
from experiments import evaluate as E  # noqa: E402
from experiments import finetune as F  # noqa: E402
from helpers import make_mini_kinetics  # noqa: E402
from test_nvdec import Meta, make_fake  # noqa: E402

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="nv12_to_rgb equals PyAV's conversion bit for bit on x86-64 only")


def _nv12_of(path):
    """The file's frames as NV12 (PyAV's yuv420p planes), its fps; None if PyAV cannot decode it whole."""
    try:
        nv12, fps, _ = _file_fake().nv12_of(path)
        return nv12, fps
    except Exception:  # noqa: BLE001 (a bad file: the fake cannot open it)
        return None


@functools.lru_cache(maxsize=None)
def _file_fake():
    """tests/fakes/PyNvVideoCodec.py loaded under another name (``PyNvVideoCodec`` is the in-memory fake here)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("file_fake_pynvvideocodec", os.path.join(FAKES, "PyNvVideoCodec.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def real_fake(monkeypatch):
    """make_fake() serving real frames: ``serve(root)`` registers every decodable .mp4 below root."""
    f = make_fake()
    fps_of = {}

    def get_stream_metadata(self):
        t, h, w = len(self.video["nv12"]), self.video["h"], self.video["nv12"].shape[2]
        return Meta(num_frames=self.video["header"], average_fps=self.video["fps"], width=w, height=h,
                    codec_name="mpeg4")

    f.SimpleDecoder.get_stream_metadata = get_stream_metadata

    def serve(root):
        for p in sorted(pathlib.Path(root).rglob("*.mp4")):
            got = _nv12_of(str(p))
            if got is None:
                continue
            nv12, fps = got
            h = nv12.shape[1] * 2 // 3
            f.VIDEOS[p.read_bytes()] = dict(nv12=nv12, rgb=nv12[..., None], header=len(nv12), fps=fps, h=h)
            fps_of[str(p)] = fps

    f.serve = serve
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", f)
    monkeypatch.setattr(nvdec, "_jax_on_cuda", lambda: (True, ""))
    monkeypatch.setattr(nvdec, "_noticed", set())
    nvdec._availability.cache_clear()
    yield f
    nvdec._availability.cache_clear()


def _preds(out):
    with open(os.path.join(out, "predictions.jsonl")) as fh:
        return {r["id"]: r for r in map(json.loads, fh)}


def _assert_same_predictions(cpu_out, nv_out):
    """Both evaluations saw the mini Kinetics' 9 videos, failed on the same 3 (corrupt, empty,
    truncated) and gave every other video the same predictions, scores and frame accounting."""
    cpu, nv = _preds(cpu_out), _preds(nv_out)
    assert set(cpu) == set(nv) and len(cpu) == 9
    failed = {k for k, r in cpu.items() if "error" in r}
    assert failed == {k for k, r in nv.items() if "error" in r} and len(failed) == 3   # corrupt, empty, truncated
    for k in set(cpu) - failed:
        for field in ("pred", "pred_scores", "scores", "decoded", "repeated", "padded", "rank"):
            assert cpu[k][field] == nv[k][field], (k, field)


def test_evaluate_nvdec_gives_the_cpu_predictions(real_fake, tmp_path, capsys):
    root = make_mini_kinetics(tmp_path / "k400")
    real_fake.serve(root)
    common = ["--model", "x3d_xs", "--random-weights", "--model-arg", "image_size=32", "--model-arg", "num_classes=3",
              "--root", str(root), "--split", "validate", "--batch-size", "4", "--no-progress", "--save-scores"]
    assert E.main([*common, "--out", str(tmp_path / "cpu"), "--workers", "0"]) == 0
    assert E.main([*common, "--out", str(tmp_path / "nv"), "--decoder", "nvdec", "--decoder-threads", "3"]) == 0
    _assert_same_predictions(tmp_path / "cpu", tmp_path / "nv")
    assert real_fake.batches                                 # the frames came through the (fake) NVDEC
    timing = json.load(open(tmp_path / "nv" / "timing.json"))
    assert timing["decoder"] == "nvdec" and timing["loader"] == "nvdec-threads"
    # a resume refuses the other decoder (NVDEC's pixels may differ)
    assert E.main([*common, "--out", str(tmp_path / "nv"), "--decoder", "cpu"]) == 2
    assert "video_decoder" in capsys.readouterr().err


def _square(n, size, rng):
    out = np.full((n, size, size, 3), rng.integers(0, 255, 3), np.uint8)
    for t in range(n):
        out[t, 4 + t:14 + t, 6 + t:16 + t] = rng.integers(0, 255, 3)
    return out


@pytest.mark.filterwarnings("ignore:found 2 classes")   # a 2-class toy split, on purpose
def test_finetune_nvdec_gives_the_cpu_batches(real_fake, tmp_path):
    from co3d_jax.data.augment import TrainClipSpec
    from co3d_jax.data.datasets import VideoRecord
    from co3d_jax.data.train_loader import BatchLoader
    from co3d_jax.data.video import encode_video

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for c in ("archery", "bowling"):
        (data / "data" / "train" / c).mkdir(parents=True)
        for i in range(3):
            encode_video(str(data / "data" / "train" / c / f"{c[:2]}{i:09d}_000000_000010.mp4"),
                         _square(24 + 4 * i, 32, rng), 30 if i else 25)
    (data / "data" / "train" / "bowling" / "bad0000000_000000_000010.mp4").write_bytes(rng.bytes(3000))
    real_fake.serve(data)
    spec = TrainClipSpec(num_frames=4, sampling_rate=2, image_size=24, jitter=(24, 30))
    files = sorted((data / "data" / "train").rglob("*.mp4"))
    records = [VideoRecord(p.stem, str(p), i % 2) for i, p in enumerate(files)]
    got = {}
    for decoder in ("cpu", "nvdec"):
        loader = BatchLoader(records, spec, 0, 6, 0, 0, 2, stop=4, decoder=decoder, decoder_threads=3)
        try:
            got[decoder] = [tuple(np.asarray(a) for a in loader.next()) for _ in range(4)]
            got[decoder + "_failed"] = dict(loader.failed)
        finally:
            loader.close()
    for (xc, yc), (xn, yn) in zip(got["cpu"], got["nvdec"]):
        np.testing.assert_array_equal(xc, xn)
        np.testing.assert_array_equal(yc, yn)
    assert set(got["cpu_failed"]) == set(got["nvdec_failed"]) == {"bad0000000_000000_000010"}
    # the command: the same losses
    argv = ["--model", "x3d_xs", "--from-scratch", "--model-arg", "image_size=32", "--model-arg", "depth_factor=0.3",
            "--data", str(data), "--steps", "2", "--batch-size", "4", "--sampling-rate", "2", "--num-frames", "4",
            "--jitter", "32", "40", "--save-every", "2", "--log-every", "1", "--no-progress"]
    assert F.main([*argv, "--out", str(tmp_path / "cpu"), "--workers", "0"]) == 0
    assert F.main([*argv, "--out", str(tmp_path / "nv"), "--decoder", "nvdec", "--decoder-threads", "2"]) == 0
    loss = [[json.loads(x)["loss"] for x in open(tmp_path / r / F.METRICS)] for r in ("cpu", "nv")]
    assert loss[0] == loss[1]
    assert json.load(open(tmp_path / "nv" / "summary.json"))["decoder"] == "nvdec"


def test_auto_without_nvdec_is_the_cpu_path_with_one_notice(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(nvdec, "_jax_on_cuda", lambda: (False, "JAX's default backend is 'cpu', not an NVIDIA GPU"))
    monkeypatch.setattr(nvdec, "_noticed", set())
    nvdec._availability.cache_clear()
    try:
        assert nvdec.resolve_decoder("auto") == "cpu"
        assert nvdec.resolve_decoder("auto") == "cpu"
        err = capsys.readouterr().err
        assert err.count("note: decoding video on the CPU: NVDEC not used") == 1
        with pytest.raises(nvdec.NvdecUnavailable):
            nvdec.resolve_decoder("nvdec")
    finally:
        nvdec._availability.cache_clear()


# -- NVDEC in worker processes (--decoder-procs) ------------------------------------------------
FAKES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakes")


@pytest.fixture
def file_fake(monkeypatch, tmp_path):
    """The file-based fake PyNvVideoCodec of tests/fakes, which Grain's spawned workers import (they
    inherit sys.path); each decoder it opens is logged (pid, use_device_memory, path)."""
    log = tmp_path / "decoders.log"
    monkeypatch.syspath_prepend(FAKES)
    monkeypatch.delitem(sys.modules, "PyNvVideoCodec", raising=False)
    monkeypatch.setenv("FAKE_NVC_LOG", str(log))
    monkeypatch.setattr(nvdec, "_jax_on_cuda", lambda: (True, ""))
    monkeypatch.setattr(nvdec, "_noticed", set())
    nvdec._availability.cache_clear()
    yield log
    nvdec._availability.cache_clear()
    sys.modules.pop("PyNvVideoCodec", None)


def _decoders(log):
    """{(pid, use_device_memory)} of the decoders the fake opened."""
    return {(int(p), d == "True") for p, d, _ in (ln.split(" ", 2) for ln in log.read_text().splitlines())}


def test_evaluate_nvdec_procs_gives_the_cpu_predictions(file_fake, tmp_path):
    root = make_mini_kinetics(tmp_path / "k400")
    common = ["--model", "x3d_xs", "--random-weights", "--model-arg", "image_size=32", "--model-arg", "num_classes=3",
              "--root", str(root), "--split", "validate", "--batch-size", "4", "--no-progress", "--save-scores"]
    assert E.main([*common, "--out", str(tmp_path / "cpu"), "--workers", "0"]) == 0
    assert E.main([*common, "--out", str(tmp_path / "nv"), "--decoder", "nvdec", "--decoder-procs", "2"]) == 0
    _assert_same_predictions(tmp_path / "cpu", tmp_path / "nv")
    used = _decoders(file_fake)          # host-memory decoders, in 2 worker processes (not this one)
    assert {d for _, d in used} == {False} and len({p for p, _ in used}) == 2 and os.getpid() not in {p for p, _ in used}
    timing = json.load(open(tmp_path / "nv" / "timing.json"))
    assert timing["loader"] == "nvdec-procs" and timing["decoder_procs"] == 2


@pytest.mark.filterwarnings("ignore:found 2 classes")
def test_batchloader_nvdec_procs_gives_the_cpu_batches(file_fake, tmp_path):
    from co3d_jax.data.augment import TrainClipSpec
    from co3d_jax.data.datasets import VideoRecord
    from co3d_jax.data.train_loader import BatchLoader
    from co3d_jax.data.video import encode_video

    rng = np.random.default_rng(1)
    for i in range(4):
        encode_video(str(tmp_path / f"v{i}.mp4"), _square(24 + 4 * i, 32 + 8 * (i % 2), rng), 30 if i else 25)
    (tmp_path / "bad.mp4").write_bytes(rng.bytes(3000))
    spec = TrainClipSpec(num_frames=4, sampling_rate=2, image_size=24, jitter=(24, 30))
    records = [VideoRecord(p.stem, str(p), i % 2) for i, p in enumerate(sorted(tmp_path.glob("*.mp4")))]
    got = {}
    for procs in (0, 2):
        decoder = "nvdec" if procs else "cpu"
        loader = BatchLoader(records, spec, 0, 5, 0, 0, 2, stop=3, decoder=decoder, decoder_procs=procs)
        try:
            got[procs] = [tuple(np.asarray(a) for a in loader.next()) for _ in range(3)] + [dict(loader.failed)]
        finally:
            loader.close()
    for (xc, yc), (xn, yn) in zip(got[0][:3], got[2][:3]):
        np.testing.assert_array_equal(xc, xn)
        np.testing.assert_array_equal(yc, yn)
    assert set(got[0][3]) == set(got[2][3]) == {"bad"}
    assert {d for _, d in _decoders(file_fake)} == {False}
