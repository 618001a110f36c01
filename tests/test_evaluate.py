"""The evaluation experiment end to end on a generated mini Kinetics (and Charades) dataset.

Videos are written with PyAV (mpeg4, 48x64, a few dozen frames) next to a corrupt, an empty and a
truncated file; tiny random-weight models (image_size=32, 3 classes) are saved with save_params.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

av = pytest.importorskip("av")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import co3d_jax  # noqa: E402
from co3d_jax.data import (ClipSpec, centered_window, charades_indices, clip_size, decode_clip,  # noqa: E402
                           eval_transform, kinetics_csv, kinetics_folder, load_sample, open_dataset,
                           shipped_kinetics400_classes, temporal_indices, torch_linspace_f32)
from co3d_jax.data import metrics as M  # noqa: E402
from experiments import evaluate as E  # noqa: E402
from helpers import (MINI_CHARADES, MINI_KINETICS_BAD, MINI_KINETICS_VIDEOS, make_mini_charades,  # noqa: E402
                     make_mini_kinetics)

pytestmark = pytest.mark.filterwarnings("ignore:found 3 classes")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["archery", "bowling", "capoeira"]
VIDEOS, BAD = MINI_KINETICS_VIDEOS, MINI_KINETICS_BAD


def decode_all(path):
    with av.open(path) as c:
        return [(f.pts, f.to_rgb().to_ndarray()) for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def kin(tmp_path_factory):
    return make_mini_kinetics(tmp_path_factory.mktemp("k400"))


def _tiny(name):
    return co3d_jax.create_model(name, image_size=32, num_classes=3)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    out = {}
    for name in ("cox3d_s_13", "x3d_s"):
        model = _tiny(name)
        path = str(d / f"{name}.npz")
        co3d_jax.save_params(path, E.random_params(model, seed=3), metadata={"arch": name})
        out[name] = path
    return out


def _argv(model, weights, root, out, *extra):
    return ["--model", model, "--weights", weights, "--model-arg", "image_size=32", "--model-arg", "num_classes=3",
            "--dataset", "kinetics400", "--root", str(root), "--split", "validate", "--out", str(out),
            "--batch-size", "4", "--workers", "0", "--no-progress", "--save-scores", *extra]


def _preds(out):
    recs = {}
    for name in sorted(os.listdir(out)):
        if name.startswith("predictions") and name.endswith(".jsonl"):
            with open(os.path.join(out, name)) as f:
                for line in f:
                    r = json.loads(line)
                    recs[r["id"]] = r
    return recs


def _summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def sharded_proc(kin, weights, tmp_path_factory):
    """The 4-device run, started early in a subprocess so it overlaps the in-process runs
    (co_run asks for it and for two_process_run only to start them early)."""
    out = tmp_path_factory.mktemp("sharded")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    argv = _argv("x3d_s", weights["x3d_s"], kin, out)
    argv[argv.index("--workers") + 1] = "2"            # decode in worker processes too
    argv[argv.index("--batch-size") + 1] = "3"         # padded to 4 = one row per device
    code = ("import sys, jax; jax.config.update('jax_default_matmul_precision', 'highest'); "
            "assert jax.device_count() == 4; from experiments.evaluate import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def two_process_run(kin, weights, tmp_path_factory):
    """Multi-host evaluation as two jax.distributed processes of 2 CPU devices each (Gloo)."""
    import socket
    out = tmp_path_factory.mktemp("two_process")
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    code = ("import sys, jax; jax.config.update('jax_default_matmul_precision', 'highest'); "
            "from experiments.evaluate import main; sys.exit(main(sys.argv[1:]))")
    procs = []
    for pid in range(2):
        argv = _argv("x3d_s", weights["x3d_s"], kin, out, "--distributed", "--coordinator", f"localhost:{port}",
                     "--num-processes", "2", "--process-id", str(pid))
        procs.append(subprocess.Popen([sys.executable, "-c", code, *argv], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    yield procs, out
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def co_run(kin, weights, sharded_proc, two_process_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("co_full")
    assert E.main(_argv("cox3d_s_13", weights["cox3d_s_13"], kin, out)) == 0
    return out


@pytest.fixture(scope="module")
def clip_run(kin, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip_full")
    assert E.main(_argv("x3d_s", weights["x3d_s"], kin, out)) == 0
    return out


# ----------------------------------------------------------------------------- sampling / transforms
def test_sampler_matches_reference_formulas():
    torch = pytest.importorskip("torch")
    # (rate, frames) of every reported protocol, plus a grid; common and odd frame rates.
    cfgs = [(12, 4), (6, 13), (5, 16), (6, 41), (6, 92), (5, 44), (5, 92), (5, 73), (5, 121), (8, 8), (8, 17),
            (8, 73), (8, 25), (8, 81)] + [(r, n) for r in (1, 2, 3, 7) for n in range(1, 60, 4)]
    for rate, n in cfgs:
        for fps in (30.0, 30000 / 1001, 25.0, 24.0, 15.0, 60.0):
            size = rate * n / 30 * fps
            assert size == clip_size(rate, n, fps)
            ref_pos = torch.linspace(0, size - 1, n)
            np.testing.assert_array_equal(torch_linspace_f32(0, size - 1, n), ref_pos.numpy())
            for decoded in (1, int(size) // 2 + 1, int(size) + 1):
                ref = torch.clamp(ref_pos, 0, decoded - 1).long().numpy()
                np.testing.assert_array_equal(temporal_indices(decoded, size, n), ref)
    # centred window (frames_length/2 - clip_size/2, clamped at 0) and Charades' integer rule
    assert centered_window(300, 78.0) == (111.0, 188.0)
    assert centered_window(40, 78.0) == (0, 77.0)
    np.testing.assert_array_equal(charades_indices(100, 8, 8), [21 + 8 * i for i in range(8)])
    np.testing.assert_array_equal(charades_indices(20, 4, 8), [0, 8, 16, 19])


def test_transform_matches_torch():
    torch = pytest.importorskip("torch")
    import math
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    mean, std = (0.45, 0.4, 0.35), (0.225, 0.2, 0.25)
    for h, w, s in [(48, 64, 32), (64, 48, 32), (240, 320, 160), (33, 33, 32), (32, 45, 32), (90, 161, 56)]:
        x = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        t = torch.from_numpy(x).permute(3, 0, 1, 2).float() / 255.0
        if not ((w <= h and w == s) or (h <= w and h == s)):
            size = (int(math.floor(h / w * s)), s) if w < h else (s, int(math.floor(w / h * s)))
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        i, j = int(round((t.shape[2] - s) / 2.0)), int(round((t.shape[3] - s) / 2.0))
        t = t[..., i:i + s, j:j + s]
        t = (t - torch.tensor(mean)[:, None, None, None]) / torch.tensor(std)[:, None, None, None]
        np.testing.assert_allclose(eval_transform(x, s, mean, std), t.permute(1, 2, 3, 0).numpy(), atol=2e-6)


def test_device_transform_matches_numpy_reference():
    """The evaluation transform on the device (host taps + device_augment's gather/multiply-add)
    against the numpy reference eval_transform: upscale, downscale, portrait, landscape, square,
    odd sizes and frames already at the crop's short side, collated onto one canvas per size."""
    from co3d_jax.data import center_crop_taps
    from co3d_jax.data.device_augment import make_augment
    from co3d_jax.data.pipeline import collate_windows, stack_taps

    rng = np.random.default_rng(0)
    mean, std = (0.45, 0.4, 0.35), (0.225, 0.2, 0.25)
    cases = {32: [(24, 40), (16, 16), (48, 64), (64, 48), (33, 33), (32, 45), (45, 32), (32, 32), (31, 200)],
             160: [(240, 320), (320, 240), (100, 130), (160, 213)], 56: [(90, 161)]}
    worst = {}
    for size, shapes in cases.items():
        frames = [rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8) for h, w in shapes]
        taps = stack_taps([center_crop_taps(h, w, size) for h, w in shapes])
        got = np.asarray(make_augment(None, mean, std)(collate_windows(frames), taps))
        for (h, w), x, g in zip(shapes, frames, got):
            want = eval_transform(x, size, mean, std)
            assert g.shape == want.shape == (3, size, size, 3)
            worst[(h, w, size)] = float(np.abs(g - want).max())
    print("device vs numpy eval transform, max abs diff:", {f"{h}x{w}->{s}": f"{d:.1e}" for (h, w, s), d in worst.items()})
    assert max(worst.values()) <= 2e-6


def test_decode_takes_the_reference_window(kin):
    split = kin / "data" / "validate"
    for label, ytid, n, fps, _ in VIDEOS[:4]:
        path = str(split / label / f"{ytid}_000000_000010.mp4")
        allf = decode_all(path)
        for rate, num in ((6, 13), (2, 5), (1, 3)):
            frames, info = decode_clip(path, rate, num)
            size = clip_size(rate, num, float(fps))
            with av.open(path) as c:
                st = c.streams.video[0]
                frames_length, duration = st.frames, st.duration
            start, end = centered_window(frames_length, size)
            tb = duration / frames_length
            lo, hi = int(start * tb), int(end * tb)
            window = [f for p, f in allf if lo <= p <= hi]
            after = [f for p, f in allf if p > hi][:1]                  # the reference keeps one more
            window += after
            idx = temporal_indices(len(window), size, num)
            assert info["indices"] == idx.tolist() and info["decoded"] == len(window)
            np.testing.assert_array_equal(frames, np.stack([window[i] for i in idx]))
    # the short video repeats its last frame
    _, info = decode_clip(str(split / "archery" / "aaaaaaaaaa2_000000_000010.mp4"), 6, 13)
    assert info["repeated"] > 0 and info["indices"][-1] == 11


# ----------------------------------------------------------------------------- datasets
def test_dataset_layouts_agree(kin, tmp_path):
    folder = kinetics_folder(str(kin), "val")
    assert folder.classes == CLASSES and len(folder.records) == 9 and folder.layout == "kinetics-folder"
    labels = {r.id: r.label for r in folder.records}
    assert labels["validate/bowling/bbbbbbbbbb1_000000_000010.mp4"] == 1
    # the reference's split JSON (one listed video is missing)
    ann = {ytid: {"subset": "validate", "annotations": {"label": label, "segment": [0.0, 10.0]}}
           for label, ytid, *_ in VIDEOS}
    ann["zzzzzzzzzz9"] = {"subset": "validate", "annotations": {"label": "archery", "segment": [5.0, 15.0]}}
    (kin / "splits").mkdir(exist_ok=True)
    (kin / "splits" / "validate.json").write_text(json.dumps(ann))
    try:
        js = kinetics_folder(str(kin), "validate")
    finally:
        (kin / "splits" / "validate.json").unlink()
    assert js.layout == "kinetics-json" and [m["id"] for m in js.missing] == ["validate/archery/zzzzzzzzzz9_000005_000015.mp4"]
    assert {r.id: r.label for r in js.records} == {k: v for k, v in labels.items() if k.split("/")[2][:11] in ann}
    # the official CSV beside a clips folder (searched recursively)
    csv_path = tmp_path / "validate.csv"
    rows = ["label,youtube_id,time_start,time_end,split"] + [f"{label},{ytid},0,10,val" for label, ytid, *_ in VIDEOS]
    rows += ["archery,notthere000,3,13,val", "bowling,trainonly00,0,10,train"]
    csv_path.write_text("\n".join(rows) + "\n")
    cs = kinetics_csv(str(csv_path), str(kin / "data"), "validate")
    assert cs.classes == CLASSES and len(cs.records) == 6 and [m["id"] for m in cs.missing] == ["notthere000_000003_000013"]
    assert sorted(r.label for r in cs.records) == [0, 0, 1, 1, 2, 2]
    shipped = shipped_kinetics400_classes()
    assert len(shipped) == 400 and shipped == sorted(shipped) and len(set(shipped)) == 400


# ----------------------------------------------------------------------------- metrics
def test_metrics_by_hand():
    ranks = [0, 1, 0, 4, 2, 0, 3]
    assert M.topk_accuracy(ranks, 1) == pytest.approx(3 / 7)
    assert M.topk_accuracy(ranks, 3) == pytest.approx(5 / 7)
    assert M.batch_mean_accuracy(ranks, 1, 3) == pytest.approx((2 / 3 + 1 / 3 + 0 / 1) / 3)
    assert M.label_rank(np.array([0.1, 0.5, 0.5, 0.2]), 2) == 1
    # AP: scores .9 (pos) .8 (neg) .7 (pos) .1 (neg) -> (1/2)*1 + (1/2)*(2/3)
    assert M.average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(0.5 + 1 / 3)
    # ties form one threshold: .5 (pos), .5 (neg) -> precision 1/2 at recall 1
    assert M.average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    m, aps = M.mean_average_precision(np.array([[0.9, 0.1], [0.2, 0.3]]), np.array([[1, 0], [0, 0]]))
    assert np.isnan(aps[1]) and m == pytest.approx(1.0)


# ----------------------------------------------------------------------------- the command
def test_cli_help_and_refusals(kin, tmp_path):
    r = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--random-weights" in r.stdout and "--num-forward-frames" in r.stdout
    argv = _argv("x3d_s", "x", kin, tmp_path / "o")
    i = argv.index("--weights")
    assert E.main(argv[:i] + argv[i + 2:]) == 2            # no weights, no --random-weights
    assert not os.path.exists(tmp_path / "o" / "predictions.jsonl")


def _spec_for(model, protocol):
    return ClipSpec(protocol.num_frames, protocol.sampling_rate, model.image_size, tuple(model.normalisation[0]),
                    tuple(model.normalisation[1]), drop_first=protocol.drop_first)


def _direct_frames(kin, model, protocol, ids):
    spec = _spec_for(model, protocol)
    index = open_dataset("kinetics400", str(kin), "validate")
    recs = {r.id: r for r in index.records}
    return np.stack([load_sample(spec, 0, recs[i]).frames for i in ids])


def _assert_same_as_direct(preds, ok, direct, what):
    """The run's scores (device transform) against the model on numpy-reference frames (what
    evaluation computed before the transform moved to the device): same top-5, scores to 1e-5."""
    got = np.array([preds[i]["scores"] for i in ok])
    diff = float(np.abs(got - direct).max())
    print(f"{what}: {len(ok)} videos, max |score diff| vs numpy-transformed frames {diff:.1e}")
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-6)
    assert [preds[i]["pred"] for i in ok] == [np.argsort(-d.astype(np.float64), kind="stable")[:5].tolist()
                                             for d in direct]


def test_cox3d_run_matches_direct_model_call(kin, weights, co_run):
    s = _summary(co_run)
    assert s["complete"] and s["num_videos"] == 9 and s["num_evaluated"] == 6 and s["num_failed"] == 3
    errors = {f["id"].split("/", 1)[1]: f["error"] for f in s["failed"]}
    assert set(errors) == set(BAD) and all(errors.values())
    assert errors["bowling/empty00000_000000_000010.mp4"] == "empty file"
    assert errors["capoeira/trunc00000_000000_000010.mp4"].startswith("truncated")
    model = _tiny("cox3d_s_13")
    assert s["config"]["protocol"]["num_frames"] == model.delay + 1 and s["config"]["protocol"]["sampling_rate"] == 6
    preds = _preds(co_run)
    ok = sorted(i for i, r in preds.items() if "error" not in r)
    protocol = E.Protocol("init_frame", model.delay + 1, model.frame_rate, 0, model.delay, 1)
    frames = _direct_frames(kin, model, protocol, ok)
    params = co3d_jax.load_params(weights["cox3d_s_13"], model)
    _, out = jax.jit(model.stream)(params, model.init_state(len(ok)), jnp.asarray(frames))
    assert bool(out.valid[:, model.delay].all()) and not bool(out.valid[:, model.delay - 1].any())
    direct = np.asarray(out.scores[:, model.delay])
    _assert_same_as_direct(preds, ok, direct, "cox3d_s_13")
    # metrics by hand from the stored scores, in dataset order
    order = [r["id"] for r in sorted(preds.values(), key=lambda r: r["position"]) if "error" not in r]
    ranks = [list(np.argsort(-np.asarray(preds[i]["scores"]), kind="stable")).index(preds[i]["label"]) for i in order]
    assert len({tuple(preds[i]["scores"]) for i in order}) == len(order)      # informative scores
    assert [preds[i]["rank"] for i in order] == ranks
    m = s["metrics"]
    assert m["top1"] == pytest.approx(np.mean(np.array(ranks) < 1)) and m["top3"] == 1.0 and m["top5"] == 1.0
    batch = [np.mean(np.array(ranks[k:k + 4]) < 1) for k in range(0, 6, 4)]
    assert m["top1_batch_mean"] == pytest.approx(np.mean(batch))
    with open(os.path.join(co_run, "summary.csv")) as f:
        head, row = f.read().splitlines()
    assert "top1" in head.split(",") and "cox3d_s_13" in row


def test_x3d_run_matches_direct_model_call(kin, weights, clip_run):
    s = _summary(clip_run)
    assert s["num_evaluated"] == 6 and s["num_failed"] == 3
    model = _tiny("x3d_s")
    preds = _preds(clip_run)
    ok = sorted(i for i, r in preds.items() if "error" not in r)
    frames = _direct_frames(kin, model, E.Protocol("clip", 13, 6, 0, 0, 1), ok)
    params = co3d_jax.load_params(weights["x3d_s"], model)
    direct = np.asarray(jax.jit(model.forward)(params, jnp.asarray(frames)))
    _assert_same_as_direct(preds, ok, direct, "x3d_s")


def test_interrupted_run_resumes_to_the_same_summary(kin, weights, co_run, tmp_path):
    out = tmp_path / "resumed"
    argv = _argv("cox3d_s_13", weights["cox3d_s_13"], kin, out)
    assert E.main(argv + ["--limit", "5"]) == 0
    part = _summary(out)
    assert part["num_videos"] == 5 and part["complete"]
    with open(out / "predictions.jsonl", "a") as f:      # a run killed mid-line
        f.write('{"id": "capoeira/cccc')
    assert E.main(argv) == 0
    full, ref = _summary(out), _summary(co_run)
    for s in (full, ref):
        s["config"].pop("root")   # same dataset, same folder; out differs only
    assert full == ref
    assert len(_preds(out)) == 9
    # a different configuration is refused instead of mixed in
    assert E.main(argv + ["--num-forward-frames", "2"]) == 2


def _assert_same_predictions(out, reference):
    a, b = _preds(out), _preds(reference)
    assert a.keys() == b.keys()
    for k in a:
        assert ("error" in a[k]) == ("error" in b[k])
        if "error" not in a[k]:
            np.testing.assert_allclose(a[k]["scores"], b[k]["scores"], rtol=1e-5, atol=1e-6)
            assert a[k]["rank"] == b[k]["rank"]
    sa, sb = _summary(out), _summary(reference)
    assert sa["failed"] == sb["failed"]
    return sa, sb


def test_sharded_run_equals_single_device(sharded_proc, clip_run):
    proc, out = sharded_proc
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "4 device(s), batch 4, 2 worker(s)" in err
    assert "leaked" not in err and "Exception ignored" not in err, err[-3000:]   # workers, shared memory released
    sa, sb = _assert_same_predictions(out, clip_run)
    assert sa["metrics"]["top1"] == sb["metrics"]["top1"]


def test_two_process_run_equals_single_device(two_process_run, clip_run):
    procs, out = two_process_run
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "4 device(s), batch 4" in err
    assert sorted(f for f in os.listdir(out) if f.startswith("predictions")) == ["predictions.0.jsonl",
                                                                                 "predictions.1.jsonl"]
    sa, sb = _assert_same_predictions(out, clip_run)
    assert sa["metrics"] == sb["metrics"]


def test_charades_frames_run(weights, tmp_path):
    root = make_mini_charades(tmp_path / "charades")
    vids = MINI_CHARADES
    out = tmp_path / "out"
    argv = _argv("x3d_s", weights["x3d_s"], root, out)
    argv[argv.index("kinetics400")] = "charades"
    argv[argv.index("validate")] = "val"
    assert E.main(argv) == 0
    s = _summary(out)
    assert s["num_evaluated"] == 3 and s["metrics"]["classes_with_positives"] == 3
    preds = _preds(out)
    assert preds["AAAAA"]["label"] == [0, 2] and preds["BBBBB"]["label"] == [1]
    scores = np.array([preds[v]["scores"] for v in vids])
    targets = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1]])
    assert s["metrics"]["mAP"] == pytest.approx(M.mean_average_precision(scores, targets)[0])


def test_eval_loader_workers_match_inline_and_the_reference(kin):
    """The loader's device-transformed batches: the same bits from 2 Grain workers as decoded in
    the calling process, each row the numpy reference (load_sample) up to float32 rounding, failed
    videos and the last batch's padding rows marked, and the workers released."""
    from co3d_jax.data import EvalLoader
    index = kinetics_folder(str(kin), "validate")
    items = list(enumerate(index.records))             # 6 videos, 3 bad files
    spec = ClipSpec(5, 2, 32)

    def run(workers):
        with EvalLoader(spec, items, 4, workers=workers) as loader:
            assert loader.steps == 3
            return [(np.asarray(clips), windows) for clips, windows in loader]

    inline, pooled = run(0), run(2)
    assert [len(w) for _, w in inline] == [4, 4, 1]
    worst = 0.0
    for (a, wa), (b, wb) in zip(inline, pooled):
        assert a.shape == (4, 5, 32, 32, 3) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        assert wa == wb and all(w.frames is None and w.taps is None for w in wa)
        for row, w in enumerate(wa):
            ref = load_sample(spec, w.position, w.record)
            assert ref.error == w.error and ref.info == w.info
            if w.error is None:
                worst = max(worst, float(np.abs(a[row] - ref.frames).max()))
    assert sorted(w.record.id.split("/", 1)[1] for _, ws in inline for w in ws if w.error) == sorted(BAD)
    print(f"loader vs numpy reference: max abs diff {worst:.2e}")
    assert worst <= 2e-6


def test_opencv_fallback_agrees_with_pyav(kin):
    pytest.importorskip("cv2")
    from co3d_jax.data import VideoError
    split = kin / "data" / "validate"
    for label, ytid, *_ in VIDEOS[:4]:
        path = str(split / label / f"{ytid}_000000_000010.mp4")
        a, ia = decode_clip(path, 6, 13, "pyav")
        b, ib = decode_clip(path, 6, 13, "opencv")
        assert ia["indices"] == ib["indices"] and ia["decoded"] == ib["decoded"]
        assert np.abs(a.astype(int) - b).mean() < 1.0
    for bad in BAD:
        with pytest.raises(VideoError):
            decode_clip(str(split / bad), 6, 13, "opencv")
