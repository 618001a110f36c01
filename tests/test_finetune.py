"""Fine-tuning end to end on a generated Kinetics-style dataset (CPU).

The data: tiny mp4s (PyAV, mpeg4, 40x40, 10 frames) of a coloured square moving ``down``,
``left`` or ``right`` (the class) over a flat background; random start, colours and background.
The model: X3D-XS at image_size 32 with depth_factor 0.3 (5 blocks), 3 classes, from scratch.

One uninterrupted CLI run (32 SGD steps, batch 8, precise BN) is shared by the tests: it must learn (loss well
below ln 3, validation accuracy well above chance through ``experiments.evaluate``), a run resumed
from its step-16 checkpoint must reproduce it bit for bit (params and metrics), a checkpoint
written by a 2-device process (subprocess, ``--xla_force_host_platform_device_count=2``) must
restore and continue on 1 device, and the exported params must run as the continual CoX3D with
steady-state outputs equal to the clip model with per-frame SE.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

av = pytest.importorskip("av")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import co3d_jax  # noqa: E402
from co3d_jax import layers as L  # noqa: E402
from co3d_jax import train as T  # noqa: E402
from co3d_jax.data import augment as A  # noqa: E402
from co3d_jax.checkpoint import make_manager  # noqa: E402
from co3d_jax.params import ParamsError, flatten, read_npz, save_params  # noqa: E402
from experiments import finetune as F  # noqa: E402

from helpers import random_params  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:found 3 classes")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIRS = {"down": (1, 0), "left": (0, -1), "right": (0, 1)}
STEPS = 32
OPTS = dict(image_size=32, depth_factor=0.3)


# ----------------------------------------------------------------------------- data
def square_video(direction, n=10, size=40, square=10, speed=3, rng=None):
    """uint8 ``(n, size, size, 3)``: a square moving ``speed`` px/frame in ``direction``."""
    dy, dx = DIRS[direction]
    span = speed * (n - 1)
    y0 = int(rng.integers(0, size - square - (span if dy else 0) + 1)) + (span if dy < 0 else 0)
    x0 = int(rng.integers(0, size - square - (span if dx else 0) + 1)) + (span if dx < 0 else 0)
    bg, fg = rng.integers(0, 60, 3), rng.integers(120, 256, 3)
    out = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        out[t] = bg
        y, x = y0 + speed * t * dy, x0 + speed * t * dx
        out[t, y:y + square, x:x + square] = fg
    return out


def write_mp4(path, frames, fps=30):
    with av.open(path, "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.bit_rate = 2_000_000
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_dataset(root, split, per_class, seed):
    rng = np.random.default_rng(seed)
    for d in DIRS:
        folder = os.path.join(root, "data", split, d)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            write_mp4(os.path.join(folder, f"{d[:2]}{i:08d}_000000_000010.mp4"), square_video(d, rng=rng))


def cli(data, out, *extra):
    return ["--model", "x3d_xs", "--from-scratch", "--no-zero-init-final-bn",
            "--model-arg", "image_size=32", "--model-arg", "depth_factor=0.3",
            "--data", str(data), "--steps", str(STEPS), "--batch-size", "8", "--out", str(out),
            "--sampling-rate", "2", "--no-flip", "--jitter", "32", "40", "--lr", "0.05", "--warmup", "4",
            "--dropout", "0", "--save-every", "8", "--keep", "3", "--workers", "0", "--log-every", "8",
            "--precise-bn", "8", "--no-progress", *extra]


def metrics(run):
    with open(os.path.join(run, F.METRICS), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def npz_arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    data = root / "moving"
    make_dataset(data, "train", 10, seed=0)
    make_dataset(data, "validate", 8, seed=1)
    # the 2-device run works in the background while the 1-device reference trains
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    two = root / "two_devices"
    proc = subprocess.Popen([sys.executable, "-m", "experiments.finetune",
                             *cli(data, two, "--save-every", "4", "--stop-after", "5")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ref = root / "reference"
    try:
        assert F.main(cli(data, ref)) == 0
    except BaseException:
        proc.kill()
        raise
    yield dict(root=root, data=data, ref=str(ref), two=str(two), proc=proc)
    if proc.poll() is None:
        proc.kill()


# ----------------------------------------------------------------------------- end to end
def test_loss_falls_and_accuracy_above_chance(runs):
    m = metrics(runs["ref"])
    assert [r["step"] for r in m] == list(range(1, STEPS + 1))
    losses = np.array([r["loss"] for r in m])
    assert abs(losses[0] - math.log(3)) < 0.15, losses[0]         # starts at chance
    tail = losses[-16:].mean()
    print(f"\nloss: first {losses[0]:.3f}, mean of steps 1-8 {losses[:8].mean():.3f}, "
          f"last 16 {tail:.3f} (ln 3 = {math.log(3):.3f})")
    assert tail < 0.7, losses
    assert np.mean([r["accuracy"] for r in m[-16:]]) > 0.7
    ckpts = sorted(int(d) for d in os.listdir(os.path.join(runs["ref"], F.CHECKPOINTS)) if d.isdigit())
    assert ckpts == [16, 24, 32]                                      # every 8 steps, keep 3
    summary = json.load(open(os.path.join(runs["ref"], "summary.json")))
    assert summary["steps"] == STEPS and summary["failed_videos"] == {}
    # the steady phase (experiments.scaling samples the GPUs over it): after the first update, and its
    # updates end before the summary is written
    written = os.path.getmtime(os.path.join(runs["ref"], "summary.json"))
    first_done = summary["steady_from"]
    assert written - summary["seconds"] - 1 < first_done < written
    assert first_done + (STEPS - 1) / summary["steady_steps_per_s"] <= written + 0.01

    # the export runs through the evaluation experiment (held-out videos, centre crop)
    from experiments import evaluate as E
    out = runs["root"] / "eval"
    assert E.main(["--model", "x3d_xs", "--weights", os.path.join(runs["ref"], F.EXPORT),
                   "--model-arg", "image_size=32", "--model-arg", "depth_factor=0.3", "--model-arg", "num_classes=3",
                   "--root", str(runs["data"]), "--split", "validate", "--sampling-rate", "2",
                   "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    top1 = json.load(open(out / "summary.json"))["metrics"]["top1"]
    print(f"validation top-1 {top1:.3f} (chance 0.333)")
    assert top1 > 0.55


def test_resume_is_bit_identical(runs, tmp_path):
    """Interrupted after its step-16 checkpoint (later checkpoints, the export and the summary
    lost; metrics already written up to the end must be cut back), the resumed run equals the
    uninterrupted one exactly."""
    run = tmp_path / "resumed"
    shutil.copytree(runs["ref"], run)
    for step in (24, 32):
        shutil.rmtree(run / F.CHECKPOINTS / str(step))
    for f in (F.EXPORT, "summary.json"):
        os.remove(run / f)
    assert F.main(cli(runs["data"], run)) == 0
    assert json.load(open(run / "summary.json"))["resumed_from"] == 16
    with open(run / F.METRICS) as a, open(os.path.join(runs["ref"], F.METRICS)) as b:
        assert a.read() == b.read()
    got, want = npz_arrays(run / F.EXPORT), npz_arrays(os.path.join(runs["ref"], F.EXPORT))
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # a different run in the same folder is refused (before any work)
    assert F.main(cli(runs["data"], run, "--seed", "1")) == 2


def test_restore_with_a_different_device_count(runs):
    proc = runs["proc"]
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    two = runs["two"]
    m2 = metrics(two)
    assert [r["step"] for r in m2] == list(range(1, 6))
    ref = metrics(runs["ref"])
    # same data, same init: the first update agrees up to float summation order
    np.testing.assert_allclose(m2[0]["loss"], ref[0]["loss"], rtol=1e-5)
    assert jax.device_count() == 1
    assert F.main(cli(runs["data"], two, "--save-every", "4", "--stop-after", "6")) == 0  # resumes from 4
    m1 = metrics(two)
    assert [r["step"] for r in m1] == list(range(1, 7))
    assert m1[:4] == m2[:4]
    # step 5 replayed on 1 device from the 2-device checkpoint = the 2-device step 5
    for k in ("loss", "accuracy", "grad_norm", "lr"):
        np.testing.assert_allclose(m1[4][k], m2[4][k], rtol=2e-5, err_msg=k)
    mngr = make_manager(os.path.join(two, F.CHECKPOINTS), keep=3)
    assert mngr.all_steps() == [4]
    assert mngr.restore(4, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]["num_devices"] == 2
    mngr.close()


def test_export_runs_as_continual_model(runs):
    """The fine-tuned X3D as CoX3D: steady-state step output at frame t equals the clip model
    with per-frame SE at output position t - D."""
    path = os.path.join(runs["ref"], F.EXPORT)
    params = co3d_jax.load_params(path, "cox3d_xs")
    _, meta = read_npz(path)
    opts = json.loads(meta["model_options"])
    assert opts == dict(OPTS, num_classes=3) and meta["arch"] == "x3d_xs"
    co = co3d_jax.create_model("cox3d_xs", **opts)
    clip = co3d_jax.create_model("x3d_xs", se_clip_pool="frame", **opts)
    d = co.delay
    t = d + 6
    frames = jax.random.normal(jax.random.key(3), (2, t, 32, 32, 3))
    _, out = jax.jit(co.stream)(params, co.init_state(2), frames)
    ref = jax.jit(clip.net.forward)(params, frames).reshape(2, t - clip.clip_length + 1, 3)
    valid = np.asarray(out.valid)
    assert not valid[:, :d].any() and valid[:, d:].all()
    np.testing.assert_allclose(np.asarray(out.scores[:, d:]), np.asarray(ref[:, :t - d]), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- units
def test_head_replacement(tmp_path):
    five = co3d_jax.create_model("x3d_xs", num_classes=5, **OPTS)
    three = co3d_jax.create_model("x3d_xs", num_classes=3, **OPTS)
    src = random_params(five, seed=1)
    path = str(tmp_path / "five.npz")
    save_params(path, src, metadata={"arch": "x3d_xs"})
    params, info = T.load_pretrained(path, three)
    assert info["replaced_head"] and info["checkpoint_classes"] == 5
    proj = params["head"]["projection"]
    assert proj["kernel"].shape == (2048, 3) and not np.any(np.asarray(proj["bias"]))
    assert 0.005 < float(jnp.std(proj["kernel"])) < 0.015
    flat_new = flatten(params)
    for k, v in flatten(src).items():
        if not k.startswith("head/projection"):
            np.testing.assert_array_equal(flat_new[k], v, err_msg=k)
    same, info = T.load_pretrained(path, five)
    assert not info["replaced_head"]
    np.testing.assert_array_equal(same["head"]["projection"]["kernel"], src["head"]["projection"]["kernel"])
    with pytest.raises(ParamsError):   # the body must match exactly
        T.load_pretrained(path, co3d_jax.create_model("x3d_xs", num_classes=3, image_size=32, depth_factor=0.5))


def test_param_labels_and_weight_decay_mask():
    model = co3d_jax.create_model("x3d_xs", num_classes=3, **OPTS)
    params = random_params(model)
    labels = T.param_labels(params)
    flat = flatten(labels)
    assert flat["s1/bn/mean"] == "stats" and flat["s1/bn/scale"] == "bn"
    assert flat["s1/conv_xy/kernel"] == "kernel" and flat["head/projection/bias"] == "bias"
    assert set(flat.values()) == {"stats", "bn", "kernel", "bias"}
    # zero gradients: the L2 decay (SGD) / decoupled decay (AdamW) moves kernels only
    params = tiny_net().init(jax.random.key(0), (8, 8, 3))
    labels = T.param_labels(params)
    flat = flatten(labels)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for opt in ("sgd", "adamw"):
        cfg = T.TrainConfig(total_steps=10, optimizer=opt, lr=1.0, weight_decay=0.1, momentum=0.0)
        tx = T.make_optimizer(cfg, labels)
        updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)   # warmup 0: peak lr at step 0
        for k, u in flatten(updates).items():
            assert bool(jnp.any(u != 0)) == (flat[k] == "kernel"), (opt, k)


def tiny_net():
    return L.Sequential.of(
        ("conv", L.Conv(3, 8, (3, 3, 3), 1, (1, 1, 1))), ("bn", L.BatchNorm(8)), ("relu", L.Activation("relu")),
        ("head", L.Sequential.of(("pool", L.Pool("avg", (4, 8, 8))), ("projection", L.Dense(8, 3)),
                                 ("act", L.Activation("softmax")))))


def test_train_step_bf16_adamw_dropout():
    """A tiny net through the full train step: bf16 compute, AdamW, dropout, clipping, label
    smoothing; params/optimizer/BN statistics stay f32 and the running statistics move."""
    net = tiny_net()
    params = net.init(jax.random.key(0), (8, 8, 3))
    cfg = T.TrainConfig(total_steps=4, optimizer="adamw", lr=1e-2, warmup_steps=1, weight_decay=0.05,
                        dropout=0.5, grad_clip=1.0, label_smoothing=0.1, compute_dtype="bfloat16")
    mesh = T.data_mesh()
    p, o = T.replicate((params, T.init_opt_state(params, cfg)), mesh)
    step = T.make_train_step(net, cfg, mesh, donate=False)
    rng = np.random.default_rng(0)
    for s in range(3):
        x = rng.standard_normal((4, 4, 8, 8, 3)).astype(np.float32)
        y = rng.integers(0, 3, 4).astype(np.int32)
        p, o, m = step(p, o, *T.shard_batch(x, y, mesh), np.int32(s))
        assert np.isfinite(float(m["loss"]))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(p))
    assert not np.allclose(p["bn"]["mean"], params["bn"]["mean"])
    assert float(m["lr"]) > 0
    # the inference net is untouched by training: softmax scores
    scores = net.forward(p, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(scores.sum(-1)), 1.0, rtol=1e-5)


def test_data_order_is_a_function_of_seed_and_step():
    n, b = 7, 3
    seen = [idx for step in range(7) for _, idx in A.sample_indices(0, n, step, b)]
    for e in range(3):  # every epoch is a permutation of the videos
        assert sorted(seen[e * n:(e + 1) * n]) == list(range(n))
    assert A.sample_indices(0, n, 5, b) == A.sample_indices(0, n, 5, b)
    assert A.sample_indices(0, n, 5, b) != A.sample_indices(1, n, 5, b)
    frames = np.random.default_rng(0).integers(0, 255, (20, 24, 30, 3)).astype(np.uint8)
    spec = A.TrainClipSpec(num_frames=4, sampling_rate=2, image_size=16, jitter=(16, 20))
    a = A.train_sample(frames, 30.0, spec, A.sample_rng(0, 11))
    assert a.shape == (4, 16, 16, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, A.train_sample(frames, 30.0, spec, A.sample_rng(0, 11)))


def test_precise_bn_averages_batch_statistics():
    net = tiny_net()
    params = net.init(jax.random.key(1), (8, 8, 3))
    mesh = T.data_mesh()
    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((4, 4, 8, 8, 3)).astype(np.float32) * (1 + i), np.zeros(4, np.int32))
               for i in range(3)]
    new = T.precise_bn(net, T.replicate(params, mesh), batches, mesh)
    feats = [np.asarray(net["conv"].forward(params["conv"], jnp.asarray(x)), np.float64) for x, _ in batches]
    axes = (0, 1, 2, 3)
    np.testing.assert_allclose(new["bn"]["mean"], np.mean([f.mean(axes) for f in feats], 0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new["bn"]["var"], np.mean([f.var(axes, ddof=1) for f in feats], 0), rtol=1e-4)
    np.testing.assert_array_equal(new["bn"]["scale"], params["bn"]["scale"])
    np.testing.assert_array_equal(new["conv"]["kernel"], params["conv"]["kernel"])
