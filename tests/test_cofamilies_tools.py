"""CoR(2+1)D and CoSlowFast in the tools every continual model joins (issue #21): the profile
table, ``experiments.evaluate``'s init-frame protocol, ``experiments.stream``, ``LiveStep`` and
the exported step. Reduced configurations (one block per R(2+1)D layer, SlowFast at width 8,
16-32 px) keep the compiles cheap; the exactness of the networks is in test_cor2plus1d.py and
test_coslowfast.py.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import co3d_jax
from co3d_jax.export import export_step, load_exported
from co3d_jax.live import LiveStep
from helpers import random_params

TINY = {
    "cor2plus1d_18_8": dict(image_size=16, layers=(1, 1, 1, 1), num_classes=5),
    "coslowfast_4x16_r50": dict(image_size=32, width_per_group=8, num_classes=5, window=16),
}


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request):
    """A reduced model, random params, a stream of D + 2 strides + 1 frames and its stream outputs."""
    name = request.param
    model = co3d_jax.create_model(name, **TINY[name])
    params = random_params(model, seed=1)
    t = model.delay + 2 * model.stride + 1
    frames = jnp.asarray(np.random.default_rng(2).standard_normal((1, t, *model.frame_shape)), jnp.float32)
    _, ref = model.stream_fn()(params, model.init_state(1), frames)
    valid = np.asarray(ref.valid[0])
    assert list(np.nonzero(valid)[0]) == [model.delay, model.delay + model.stride, model.delay + 2 * model.stride]
    return name, model, params, frames, ref


def test_live_step_equals_stream(tiny):
    _, model, params, frames, ref = tiny
    live = LiveStep(model, params, batch_size=1)
    state, scores, valid = live.init(), [], []
    for t in range(frames.shape[1]):
        state, out = live(state, frames[:, t])
        scores.append(np.asarray(out.scores))
        valid.append(np.asarray(out.valid))
    scores, valid = np.stack(scores, 1), np.stack(valid, 1)
    np.testing.assert_array_equal(valid, np.asarray(ref.valid))
    np.testing.assert_allclose(scores[valid], np.asarray(ref.scores)[valid], rtol=1e-6, atol=1e-7)


def test_exported_step_equals_stream(tiny, tmp_path):
    _, model, params, frames, ref = tiny
    export_step(model, params, str(tmp_path / "step"), batch_size=1)
    call, state, meta = load_exported(str(tmp_path / "step"))
    assert meta["delay"] == model.delay
    scores, valid = [], []
    for t in range(frames.shape[1]):
        state, s, v = call(state, np.asarray(frames[:, t]))
        scores.append(np.asarray(s))
        valid.append(np.asarray(v))
    scores, valid = np.stack(scores, 1), np.stack(valid, 1)
    np.testing.assert_array_equal(valid, np.asarray(ref.valid))
    np.testing.assert_allclose(scores[valid], np.asarray(ref.scores)[valid], rtol=1e-6, atol=1e-7)


def test_evaluate_init_frame_protocol(tiny):
    """``experiments.evaluate``: num_init = D frames, then the valid outputs among the next F
    averaged; with F = stride + 1 that is the outputs at D and D + stride."""
    from experiments.evaluate import build_parser, make_predict_fn, make_protocol

    name, model, params, frames, ref = tiny
    args = build_parser().parse_args(["--model", name, "--root", "x", "--out", "y", "--random-weights",
                                      "--num-forward-frames", str(model.stride + 1)])
    p = make_protocol(model, args)
    assert (p.mode, p.first_output, p.num_frames) == ("init_frame", model.delay, model.delay + model.stride + 1)
    scores, ok = make_predict_fn(model, p)(params, frames[:, :p.num_frames])
    want = np.asarray(ref.scores)[:, [model.delay, model.delay + model.stride]].mean(1)
    assert bool(ok[0])
    np.testing.assert_allclose(np.asarray(scores), want, rtol=1e-5, atol=1e-7)


def test_stream_cli(tiny, capsys):
    from experiments import stream as S

    name, model, _, _, _ = tiny
    opts = [a for k, v in TINY[name].items() if k != "image_size" for a in ("--option", f"{k}={json.dumps(v)}")]
    n = model.delay + model.stride + 1
    assert S.main(["--model", name, "--image-size", str(model.image_size), *opts, "--frames", str(n)]) == 0
    printed = capsys.readouterr().out
    assert f"delay {model.delay}" in printed
    emitted = [line for line in printed.splitlines() if line.startswith("frame") and "[0]" in line]
    assert [int(line.split()[1]) for line in emitted] == [model.delay, model.delay + model.stride]
    frames = {int(line.split()[1]): line for line in printed.splitlines() if line.startswith("frame")}
    assert all("(warming up)" in frames[t] for t in range(model.delay))
    assert all(f"(between outputs: {name} emits every {model.stride} frames)" in frames[t]
               for t in range(model.delay + 1, model.delay + model.stride))


def test_profile_rows(tmp_path):
    from experiments import profile

    names = ["cor2plus1d_18_16", "coslowfast_8x8_r50"]
    assert profile.main(["--out", str(tmp_path), "--models", ",".join(names), "--measure", "none"]) == 0
    rows = {r["model"]: r for r in json.loads((tmp_path / "profile.json").read_text())["rows"]}
    assert rows["cor2plus1d_18_16"]["params"] == 31_505_325 and rows["cor2plus1d_18_16"]["delay"] == 62
    assert rows["cor2plus1d_18_16"]["gmacs_paper_avg"] == pytest.approx(2.627, abs=5e-4)
    assert rows["coslowfast_8x8_r50"]["params"] == 34_566_488 and rows["coslowfast_8x8_r50"]["delay"] == 76
    assert rows["coslowfast_8x8_r50"]["gmacs_paper_avg"] == pytest.approx(2.229, abs=5e-4)
    assert all(r["kind"] == "continual" and r["reported_top1"] is None for r in rows.values())


def test_nnx_front_end_streams(tiny):
    """The Flax NNX wrapper streams the new families like the functional model."""
    nnx_front = pytest.importorskip("co3d_jax.nnx")
    _, model, params, frames, ref = tiny
    m = nnx_front.from_params(model, params)
    m.init_stream(1)
    out = m.stream(frames)
    np.testing.assert_array_equal(np.asarray(out.valid), np.asarray(ref.valid))
    v = np.asarray(ref.valid)
    np.testing.assert_allclose(np.asarray(out.scores)[v], np.asarray(ref.scores)[v], rtol=1e-6, atol=1e-7)
