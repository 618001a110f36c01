"""experiments.scaling's comparisons and device selection (the multi-device runs themselves are in
results/scaling_h100x2*; on CPU: ``python -m experiments.scaling --cpu-devices 2 ...``)."""

from __future__ import annotations

from co3d_jax.gpu_util import GpuUtil
from experiments.scaling import compare_losses, compare_predictions, device_env, make_dataset, used_gpus


def _rec(scores, pred=(0, 1), error=None):
    return {"error": error} if error else {"scores": list(scores), "pred": list(pred)}


def test_compare_predictions():
    a = {"v1": _rec([1.0, 0.5]), "v2": _rec([0.2, 0.9], (1, 0)), "bad": _rec(None, error="corrupt")}
    b = {"v1": _rec([1.0, 0.5 + 2e-5]), "v2": _rec([0.2, 0.9], (1, 0)), "bad": _rec(None, error="corrupt")}
    r = compare_predictions(a, b, rtol=1e-4)
    assert r["equal"] and r["videos"] == 2 and r["failed"] == 1 and r["same_top5"] == 2
    assert abs(r["max_rel_score_diff"] - 2e-5) < 1e-9
    assert not compare_predictions(a, b, rtol=1e-5)["equal"]
    assert compare_predictions(a, {**b, "bad": _rec([0.0, 1.0])}, 1e-4)["reason"] == "different videos failed"
    assert compare_predictions(a, {"v1": b["v1"]}, 1e-4)["reason"].startswith("different videos")
    only_bad = {"bad": _rec(None, error="corrupt")}
    assert compare_predictions(only_bad, only_bad, 1e-4) == dict(equal=False, reason="every video failed, e.g. corrupt")


def test_device_env(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_env(1, 0)["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in device_env(None, 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert device_env(1, 0)["CUDA_VISIBLE_DEVICES"] == "3"
    cpu = device_env(None, 4)
    assert cpu["JAX_PLATFORMS"] == "cpu" and cpu["XLA_FLAGS"].endswith("device_count=4")
    assert device_env(1, 4)["XLA_FLAGS"].endswith("device_count=1")


def test_device_env_last_and_used_gpus(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)   # conftest runs the suite on the CPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    env = device_env(1, 0, last=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert used_gpus(env) == [3]
    assert used_gpus(device_env(None, 0)) == [2, 3]
    assert used_gpus(device_env(1, 2)) == []


def test_compare_losses():
    r = compare_losses([2.0, 1.0], [2.0, 1.0005], 1e-3)
    assert r["equal"] and r["steps"] == 2 and abs(r["max_rel_diff"] - 5e-4) < 1e-12
    assert not compare_losses([2.0, 1.0], [2.0, 1.002], 1e-3)["equal"]
    assert not compare_losses([2.0], [2.0, 1.0], 1e-3)["equal"]
    assert not compare_losses([], [], 1e-3)["equal"]
    assert not compare_losses([float("nan")], [float("nan")], 1e-3)["equal"]


def test_gpu_util_summary_window_and_gpus():
    u = GpuUtil(gpus=(0, 1))
    u.samples = [(10.0, 0, 5.0, 100.0), (10.0, 1, 0.0, 50.0), (11.0, 0, 15.0, 80.0), (11.0, 1, 0.0, 30.0),
                 (20.0, 0, 0.0, 0.0), (20.0, 1, 0.0, 0.0)]
    s = u.summary(since=9.0, until=12.0)
    assert s["gpu_util_per_gpu"] == {0: 90.0, 1: 40.0} and s["gpu_util_mean"] == 65.0
    assert s["decoder_util_max"] == 15.0 and s["samples"] == 2
    assert u.summary(since=9.0, until=12.0, gpus=[1])["gpu_util_mean"] == 40.0
    assert u.summary(since=30.0) is None


def test_make_dataset_layout(tmp_path):
    d = make_dataset(str(tmp_path), videos=2, copies=3, frames=6, size=(32, 16), codec="mpeg4", procs=1)
    assert d["files"] == 6 and (d["width"], d["height"]) == (32, 16)
    files = sorted(p.relative_to(tmp_path / "data" / "validate").as_posix()
                   for p in (tmp_path / "data" / "validate").rglob("*.mp4"))
    assert len(files) == 6 and files[0].startswith("archery/") and not (tmp_path / "distinct").exists()
    from co3d_jax.data.video import VideoFrames
    v = VideoFrames(str(tmp_path / "data" / "validate" / "archery" / "v00000c00xxx_000000_000010.mp4"))
    assert len(v) == 6 and v[[0]].shape == (1, 16, 32, 3)
