"""TFDS builders (co3d_kinetics400, co3d_charades) against the folder path they are built from.

The generated mini datasets of ``helpers`` are prepared with the builders (ArrayRecord, no
TensorFlow), read back as a DatasetIndex and through the evaluation command; everything must
equal what the folder path gives for the same files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

av = pytest.importorskip("av")
tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

from co3d_jax.data import ClipSpec, decode_clip, kinetics_csv, kinetics_folder, load_sample, open_dataset  # noqa: E402
from co3d_jax.data.datasets import charades  # noqa: E402
from co3d_jax.data.tfds.__main__ import build, main as build_main  # noqa: E402
from co3d_jax.data.tfds.reader import TfdsDatasetError, read_example  # noqa: E402
from helpers import (MINI_CHARADES, MINI_KINETICS_VIDEOS, make_mini_charades, make_mini_kinetics,  # noqa: E402
                     write_video)

pytestmark = pytest.mark.filterwarnings("ignore:found .* classes in the split")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def kin(tmp_path_factory):
    return make_mini_kinetics(tmp_path_factory.mktemp("k400"))


@pytest.fixture(scope="module")
def kin_tfds(kin, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    out = build("kinetics400", str(kin), str(data_dir))
    assert out["splits"] == {"validate": 9}
    return data_dir, out["builder_dir"]


@pytest.fixture(scope="module")
def cha(tmp_path_factory):
    root = make_mini_charades(tmp_path_factory.mktemp("charades"))
    data_dir = tmp_path_factory.mktemp("tfds_charades")
    out = build("charades", str(root), str(data_dir))
    assert out["splits"] == {"val": 3}
    return root, data_dir


def _same_samples(spec, folder_records, tfds_records):
    for i, (a, b) in enumerate(zip(folder_records, tfds_records, strict=True)):
        sa, sb = load_sample(spec, i, a), load_sample(spec, i, b)
        assert (sa.error is None) == (sb.error is None), (a.id, sa.error, sb.error)
        if sa.error is None:
            assert sa.info["indices"] == sb.info["indices"]
            np.testing.assert_array_equal(sa.frames, sb.frames)


@pytest.mark.parametrize("classes", ["dataset", "shipped"])
def test_kinetics_index_equals_the_folder_index(kin, kin_tfds, classes):
    a = kinetics_folder(str(kin), "validate", classes)
    b = open_dataset("kinetics400", str(kin_tfds[0]), "val", classes=classes, source="tfds")
    assert b.layout == "tfds" and b.split == "validate"
    assert b.classes == a.classes
    assert [(r.id, r.label) for r in b.records] == [(r.id, r.label) for r in a.records]
    assert len(b.records) == 9 and {r.label for r in b.records} == {a.classes.index(c) for c in ("archery", "bowling", "capoeira")}


def test_kinetics_samples_equal_the_files(kin, kin_tfds):
    a = kinetics_folder(str(kin), "validate")
    b = open_dataset("kinetics400", str(kin_tfds[0]), "validate", source="tfds")
    _same_samples(ClipSpec(13, 6, 32), a.records, b.records)
    failed = [r.id for r in b.records if load_sample(ClipSpec(13, 6, 32), 0, r).error]
    assert sorted(failed) == sorted(f"validate/{k}" for k in
                                    ("archery/corrupt0000_000000_000010.mp4", "bowling/empty00000_000000_000010.mp4",
                                     "capoeira/trunc00000_000000_000010.mp4"))
    # OpenCV reads the stored bytes through a temporary file: same frames as from the file
    pytest.importorskip("cv2")
    rec = b.records[0]
    x, ix = decode_clip(read_example(rec.tfds, rec.id)["video"], 6, 13, "opencv")
    y, iy = decode_clip(a.records[0].path, 6, 13, "opencv")
    assert ix == iy
    np.testing.assert_array_equal(x, y)


def test_kinetics_examples_for_tfds_users(kin, kin_tfds):
    builder = tfds.builder_from_directory(kin_tfds[1])
    assert builder.info.name == "co3d_kinetics400" and str(builder.info.file_format.value) == "array_record"
    ds = builder.as_data_source("validate")
    assert len(ds) == 9
    label = builder.info.features["label"]
    for i, rec in enumerate(kinetics_folder(str(kin), "validate").records):
        ex = ds[i]
        assert ex["id"].decode() == rec.id
        assert ex["video"] == open(rec.path, "rb").read()
        assert label.int2str(ex["label"]) == ex["label_name"].decode() == rec.id.split("/")[1]
        ytid = os.path.basename(rec.id).split("_")[0]
        assert (ex["youtube_id"].decode(), ex["time_start"], ex["time_end"]) == (ytid, 0, 10)
    assert "tensorflow" not in sys.modules   # built and read without TensorFlow


def test_kinetics_csv_layout_and_unlabelled_test_split(tmp_path):
    man = tmp_path / "manual"
    (man / "annotations").mkdir(parents=True)
    (man / "clips" / "a").mkdir(parents=True)
    rows = ["label,youtube_id,time_start,time_end,split"]
    for k, (label, ytid, n, fps, hw) in enumerate(MINI_KINETICS_VIDEOS[:4]):
        write_video(str(man / "clips" / "a" / f"{ytid}_{k:06d}_{k + 10:06d}.mp4"), n, fps, hw, seed=k)
        rows.append(f'"{label}",{ytid},{k},{k + 10},val')
    rows.append("archery,missingvid01,0,10,val")          # listed, no file
    (man / "annotations" / "validate.csv").write_text("\n".join(rows) + "\n")
    write_video(str(man / "clips" / "testvideo01_000003_000013.mp4"), 20, seed=9)
    (man / "annotations" / "test.csv").write_text("youtube_id,time_start,time_end,split\ntestvideo01,3,13,test\n")
    data_dir = tmp_path / "tfds"
    assert build_main(["--dataset", "kinetics400", "--manual-dir", str(man), "--data-dir", str(data_dir)]) == 0
    a = kinetics_csv(str(man / "annotations" / "validate.csv"), str(man), "validate")
    b = open_dataset("kinetics400", str(data_dir), "validate", source="tfds")
    assert [(r.id, r.label) for r in b.records] == [(r.id, r.label) for r in a.records]
    assert b.classes == a.classes == ["archery", "bowling"] and b.missing == a.missing == [
        dict(id="missingvid01_000000_000010", label="archery")]
    t = open_dataset("kinetics400", str(data_dir), "test", source="tfds")
    assert [(r.id, r.label) for r in t.records] == [("testvideo01_000003_000013", None)]
    assert read_example(t.records[0].tfds)["label"] == -1


def test_charades_index_and_frames_equal_the_files(cha):
    root, data_dir = cha
    a = charades(str(root), "val")
    b = open_dataset("charades", str(data_dir), "test", source="tfds")
    assert b.multilabel and b.classes == a.classes == ["c000 a", "c001 b", "c002 c"]
    assert [(r.id, r.label) for r in b.records] == [(r.id, r.label) for r in a.records]
    assert [r.id for r in b.records] == list(MINI_CHARADES)
    _same_samples(ClipSpec(8, 2, 32, kind="frames"), a.records, b.records)
    ex = read_example(b.records[0].tfds)
    assert ex["frame_paths"][0].decode() == "AAAAA/AAAAA-000001.jpg"
    assert ex["frames"][3] == open(a.records[0].frames[3], "rb").read()


def test_charades_missing_frame_fails_that_video_only(tmp_path):
    root = make_mini_charades(tmp_path / "charades")
    os.remove(root / "data" / "Charades_v1_rgb" / "BBBBB" / "BBBBB-000006.jpg")
    with pytest.warns(UserWarning, match="BBBBB-000006.jpg is missing"):
        build("charades", str(root), str(tmp_path / "tfds"))
    b = open_dataset("charades", str(tmp_path / "tfds"), "val", source="tfds")
    spec = ClipSpec(12, 1, 32, kind="frames")   # reads every frame of BBBBB
    errors = {r.id: load_sample(spec, 0, r).error for r in b.records}
    assert errors["AAAAA"] is None and errors["CCCCC"] is None and "empty" in errors["BBBBB"]


def test_evaluate_from_tfds_equals_the_folder_run(kin, kin_tfds, tmp_path):
    import co3d_jax
    from experiments import evaluate as E

    model = co3d_jax.create_model("x3d_s", image_size=32, num_classes=3)
    weights = str(tmp_path / "x3d_s.npz")
    co3d_jax.save_params(weights, E.random_params(model, seed=3), metadata={"arch": "x3d_s"})
    outs = {}
    for source, root, workers in (("files", kin, "0"), ("tfds", kin_tfds[0], "1")):
        outs[source] = tmp_path / source
        argv = ["--model", "x3d_s", "--weights", weights, "--model-arg", "image_size=32", "--model-arg",
                "num_classes=3", "--dataset", "kinetics400", "--root", str(root), "--source", source,
                "--out", str(outs[source]), "--batch-size", "4", "--workers", workers, "--no-progress", "--save-scores"]
        assert E.main(argv) == 0
    preds = {}
    for source, out in outs.items():
        with open(out / "predictions.jsonl") as f:
            preds[source] = {r["id"]: r for r in map(json.loads, f)}
    assert preds["files"].keys() == preds["tfds"].keys() and len(preds["files"]) == 9
    for k, a in preds["files"].items():
        b = preds["tfds"][k]
        assert ("error" in a) == ("error" in b)
        if "error" not in a:
            assert a["label"] == b["label"] and a["rank"] == b["rank"]
            np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-6, atol=1e-7)
    sa, sb = (json.loads((outs[s] / "summary.json").read_text()) for s in ("files", "tfds"))
    assert sa["metrics"] == sb["metrics"]
    assert sorted(f["id"] for f in sa["failed"]) == sorted(f["id"] for f in sb["failed"])
    assert sa["num_evaluated"] == sb["num_evaluated"] == 6


def test_train_sample_from_tfds_equals_the_file(kin, kin_tfds):
    from co3d_jax.data.augment import TrainClipSpec
    from co3d_jax.data.train_loader import load_train_sample

    spec = TrainClipSpec(num_frames=4, sampling_rate=2, image_size=32, jitter=(36, 44))
    a = kinetics_folder(str(kin), "validate").records
    b = open_dataset("kinetics400", str(kin_tfds[0]), "validate", source="tfds").records
    (x, ex, _), (y, ey, _) = load_train_sample(spec, 0, a[3], 5), load_train_sample(spec, 0, b[3], 5)
    assert ex is None and ey is None and x.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(x, y)
    assert "corrupt" in a[2].id and load_train_sample(spec, 0, b[2], 5)[1] is not None


def test_errors_name_the_problem(kin, kin_tfds, tmp_path):
    with pytest.raises(FileNotFoundError, match="no prepared co3d_kinetics400 dataset.*python -m co3d_jax.data.tfds"):
        open_dataset("kinetics400", str(tmp_path), "validate", source="tfds")
    with pytest.raises(TfdsDatasetError, match="no split 'train' \\(it has validate\\)"):
        open_dataset("kinetics400", str(kin_tfds[0]), "train", source="tfds")
    rec = open_dataset("kinetics400", str(kin_tfds[0]), "validate", source="tfds").records[1]
    with pytest.raises(TfdsDatasetError, match="example #1 is .* the index says 'other'"):
        read_example(rec.tfds, "other")
    # a label outside the 400 classes, and a folder that is no Kinetics layout
    bad = tmp_path / "bad"
    (bad / "data" / "validate" / "not_a_kinetics_class").mkdir(parents=True)
    write_video(str(bad / "data" / "validate" / "not_a_kinetics_class" / "x_000000_000010.mp4"), 5)
    with pytest.raises(ValueError, match="'not_a_kinetics_class' in split 'validate' is not one of the 400"):
        build("kinetics400", str(bad), str(tmp_path / "t1"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    assert build_main(["--dataset", "kinetics400", "--manual-dir", str(tmp_path / "other"),
                       "--data-dir", str(tmp_path / "t2")]) == 2


def test_cli_help_and_default_path_imports_no_tfds(kin):
    code = ("import sys, co3d_jax.data, experiments.evaluate, experiments.finetune; "
            f"co3d_jax.data.open_dataset('kinetics400', {str(kin)!r}, 'validate'); "
            "bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'array_record') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "co3d_jax.data.tfds", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--manual-dir" in r.stdout
