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


def test_default_cpu_run_times_every_model_and_says_how(tmp_path, capsys):
    """The README's main job on a CPU: every model timed at a small input (no '-' without a
    reason), the settings in the table, CSV and JSON, the model being timed named in the progress
    bar, models without a reported accuracy listed under the plot, files readable by the group."""
    import os
    import stat
    names = ["cox3d_xs", "x3d_xs", "coslow_8_charades"]
    old = os.umask(0o022)
    try:
        assert profile.main(["--out", str(tmp_path), "--models", ",".join(names)]) == 0
    finally:
        os.umask(old)
    out, err = capsys.readouterr()
    data = json.loads((tmp_path / "profile.json").read_text())
    assert data["env"]["measurement"] == {"size": 64, "batch": 1, "dtypes": ["fp32"], "chunk": 4, "repeats": 2}
    for r in data["rows"]:
        assert r["measured_size"] == 64 and r["batch"] == 1 and r["throughput_fp32"] > 0 and r["memory_mb"] > 0
        assert not r["input"].endswith("x64x64")   # the counted FLOPs stay at the model's own size
    assert "timed at 64x64 px input (each model's clip length), batch 1, fp32" in out
    table = out[out.index("model "):]
    assert " - " not in table.split("\nGMACs:")[0]   # every row complete
    for name in names:
        assert f"{name}: compiling and timing" in err
    assert "measured_size" in (tmp_path / "profile.csv").read_text().splitlines()[0]
    for f in ("profile.json", "profile.csv", "accuracy_vs_flops.png"):
        assert stat.S_IMODE(os.stat(tmp_path / f).st_mode) == 0o644


def test_plot_lists_omitted_models_and_keeps_labels_apart(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [dict(model=f"m{i}", kind="clip", gmacs_paper=50 + i, reported_top1=67.4 + 0.05 * i,
                 throughput_fp32=1.5, throughput_unit="clips/s", device="cpu") for i in range(3)]
    rows.append(dict(model="no_accuracy", kind="continual", gmacs_paper=1.0, reported_top1=None, device="cpu"))
    texts = []
    real_savefig = plt.Figure.savefig

    def spy(fig, path, **kw):
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        texts.extend(t.get_window_extent(renderer) for t in ax.texts)
        texts.append(" ".join(t.get_text() for t in fig.texts))
        return real_savefig(fig, path, **kw)

    plt.Figure.savefig = spy
    try:
        profile.plot(rows, str(tmp_path / "p.png"), "64x64 px input, batch 1")
    finally:
        plt.Figure.savefig = real_savefig
    *boxes, caption = texts
    assert len(boxes) == 3
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert "Not shown (no Kinetics-400 accuracy reported): no_accuracy." in caption
    assert "Throughput: 64x64 px input, batch 1." in caption
