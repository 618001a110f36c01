"""The README's main job (``experiments.profile``) and the benchmark model factory, on CPU."""

from __future__ import annotations

import json

import pytest

import co3d_jax
from experiments import profile
from co3d_jax.benchmark import bench_model


def test_every_registry_model_can_be_benchmarked():
    # depthwise_impl is an X3D/CoX3D option: the factory must not pass it to the other families
    for name in co3d_jax.list_models():
        assert bench_model(name).name == name
    assert bench_model("cox3d_s_13", "lax").net is not None
    with pytest.raises(TypeError, match="depthwise_impl"):
        bench_model("coslow_8", "lax")


def test_profile_static_table(tmp_path):
    names = ["x3d_xs", "cox3d_s_13", "slowfast_4x16_r50"]
    assert profile.main(["--out", str(tmp_path), "--models", ",".join(names), "--measure", "none"]) == 0
    rows = {r["model"]: r for r in json.loads((tmp_path / "profile.json").read_text())["rows"]}
    assert list(rows) == names
    assert rows["cox3d_s_13"]["params"] == 3_794_322 and rows["cox3d_s_13"]["delay"] == 40
    assert rows["x3d_xs"]["gmacs_paper"] == pytest.approx(0.645, abs=5e-4)
    assert rows["slowfast_4x16_r50"]["params"] == 34_480_216
    assert rows["slowfast_4x16_r50"]["gmacs_paper"] == pytest.approx(36.58, abs=5e-3)
    assert (tmp_path / "profile.csv").read_text().count("\n") == 4
    assert (tmp_path / "accuracy_vs_flops.png").stat().st_size > 10_000


def test_profile_merges_partial_runs(tmp_path):
    for part, names in (("a", "x3d_xs,cox3d_s_13"), ("b", "cox3d_s_13,coi3d_8")):
        assert profile.main(["--out", str(tmp_path / part), "--models", names, "--measure", "none"]) == 0
    parts = [str(tmp_path / p / "profile.json") for p in "ab"]
    assert profile.main(["--merge", *parts, "--out", str(tmp_path / "all")]) == 0
    merged = json.loads((tmp_path / "all" / "profile.json").read_text())
    assert [r["model"] for r in merged["rows"]] == ["coi3d_8", "cox3d_s_13", "x3d_xs"] and len(merged["env"]) == 2
    assert (tmp_path / "all" / "profile.csv").read_text().count("\n") == 4
    other = json.loads(open(parts[1]).read())
    other["env"]["device"] = "another device"
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert profile.main(["--merge", parts[0], str(tmp_path / "other.json"), "--out", str(tmp_path / "x")]) == 2
