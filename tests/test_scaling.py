"""experiments.scaling's comparisons and device selection (the multi-device runs themselves are in
results/scaling_h100x2*; on CPU: ``python -m experiments.scaling --cpu-devices 2 ...``)."""

from __future__ import annotations

from experiments.scaling import compare_predictions, device_env


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
