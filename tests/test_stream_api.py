"""Live streaming API: export of the step, long-stream stability, LiveStep, bad input."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import co3d_jax
from co3d_jax.export import export_step, load_exported
from co3d_jax.layers import Activation, Conv, Dense, Pool, Sequential, residual, squeeze_excitation
from co3d_jax.live import LiveStep
from co3d_jax.model import Model
from co3d_jax.stream import run_layer


@pytest.fixture(scope="module")
def tiny():
    model = co3d_jax.create_model("cox3d_s_13", image_size=32, depth_factor=0.6, num_classes=5)
    params = model.init(jax.random.key(0))
    frames = jax.random.normal(jax.random.key(1), (1, 30, 32, 32, 3))
    _, ref = model.stream_fn()(params, model.init_state(1), frames)
    return model, params, frames, ref


def test_export_reloads_in_fresh_process_with_identical_outputs(tiny, tmp_path):
    model, params, frames, ref = tiny
    d = str(tmp_path / "step")
    export_step(model, params, d, batch_size=1)
    np.save(tmp_path / "frames.npy", np.asarray(frames[0]))
    # a fresh interpreter that imports jax and numpy only (the documented serving snippet)
    code = textwrap.dedent(f"""
        import sys, numpy as np, jax
        assert "co3d_jax" not in sys.modules
        d = {d!r}
        exp = jax.export.deserialize(bytearray(open(d + "/step.jaxexport", "rb").read()))
        z = np.load(d + "/state0.npz")
        state = jax.tree.unflatten(exp.in_tree.children()[0].children()[0], [z[str(i)] for i in range(len(z.files))])
        frames = np.load({str(tmp_path / 'frames.npy')!r})
        out, val = [], []
        for f in frames:
            state, scores, valid = exp.call(state, f[None])
            out.append(np.asarray(scores)); val.append(np.asarray(valid))
        np.save({str(tmp_path / 'out.npy')!r}, np.concatenate(out)); np.save({str(tmp_path / 'val.npy')!r}, np.concatenate(val))
        assert "co3d_jax" not in sys.modules
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path), env=env)
    got, valid = np.load(tmp_path / "out.npy"), np.load(tmp_path / "val.npy")
    np.testing.assert_array_equal(valid, np.asarray(ref.valid[0]))
    assert valid.sum() == 30 - model.delay
    np.testing.assert_allclose(got[valid], np.asarray(ref.scores[0])[valid], rtol=1e-6, atol=1e-7)
    call, state0, meta = load_exported(d)
    assert meta["delay"] == model.delay and meta["frame_shape"] == [32, 32, 3]


def test_live_step_equals_stream_and_peek_does_not_advance(tiny):
    model, params, frames, ref = tiny
    live = LiveStep(model, params, batch_size=1)
    state = live.init()
    outs = []
    for t in range(frames.shape[1]):
        peek_scores, peek_valid = live.peek(state, frames[:, t])
        state, (scores, valid) = live(state, frames[:, t])
        np.testing.assert_array_equal(np.asarray(peek_scores), np.asarray(scores))
        assert bool(peek_valid[0]) == bool(valid[0]) == (t >= model.delay)
        outs.append(np.asarray(scores))
    np.testing.assert_allclose(np.stack(outs, 1)[:, model.delay:], np.asarray(ref.scores)[:, model.delay:],
                               rtol=1e-6, atol=1e-7)
    fresh = live.reset(state, jnp.array([True]))
    for a, b in zip(fresh, live.init()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_live_step_packings_give_the_same_stream(tiny):
    """``split_bytes``: every float state array packed (2 buffers), none packed (its own array each) or
    the default split: the same outputs and state; a state of another packing or batch size is one
    clear error."""
    model, params, frames, ref = tiny
    n_float = sum(jnp.issubdtype(a.dtype, jnp.floating) for a in jax.tree.leaves(model.init_state(1)))
    sizes = sorted(a.nbytes for a in jax.tree.leaves(model.init_state(1)) if jnp.issubdtype(a.dtype, jnp.floating))
    middle = sizes[len(sizes) // 2]
    want = {float("inf"): 2, 0: 2 + n_float, middle: 2 + sum(b >= middle for b in sizes)}
    states = {}
    for split, arrays in want.items():
        live = LiveStep(model, params, batch_size=1, split_bytes=split)
        state = live.init()
        assert len(state) == arrays
        outs = []
        for t in range(frames.shape[1]):
            state, out = live(state, frames[:, t])
            outs.append(np.asarray(out.scores))
        np.testing.assert_allclose(np.stack(outs, 1)[:, model.delay:], np.asarray(ref.scores)[:, model.delay:],
                                   rtol=1e-6, atol=1e-7)
        states[split] = live.unpack(state)
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[float("inf")])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    split2, split3 = LiveStep(model, params, batch_size=2, split_bytes=0), LiveStep(model, params, batch_size=3, split_bytes=0)
    with pytest.raises(ValueError, match=r"the state is for 2 stream\(s\) but this LiveStep is for 3"):
        split3(split2.init(), jnp.zeros((3, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"packed as 2 arrays but this LiveStep packs \d+ \(split_bytes=0\)"):
        split2(LiveStep(model, params, batch_size=2, split_bytes=float("inf")).init(), jnp.zeros((2, 32, 32, 3)))
    with pytest.raises(ValueError, match="split_bytes must be >= 0"):
        LiveStep(model, params, split_bytes=-1)


def test_live_step_rejects_bad_input(tiny):
    model, params, _, _ = tiny
    live = LiveStep(model, params, batch_size=2)
    state = live.init()
    with pytest.raises(ValueError, match=r"cox3d_s_13.*\(2, 32, 32, 3\)"):
        live(state, jnp.zeros((2, 30, 32, 3)))
    with pytest.raises(TypeError, match="float"):
        live(state, jnp.zeros((2, 32, 32, 3), jnp.uint8))
    with pytest.raises(ValueError, match=r"\(2,\) bool"):
        live.reset(state, jnp.array([True, False, True]))
    with pytest.raises(ValueError, match=r"\(2,\) bool"):
        live(state, jnp.zeros((2, 32, 32, 3)), valid=jnp.array([1, 0]))


def test_state_and_frame_batch_mismatch_is_one_clear_error(tiny):
    """A state for 2 streams and a frame for 3: one ValueError at the model boundary naming both
    batch sizes (not a traceback from inside the layers), eagerly and under jit (trace time)."""
    model, params, _, _ = tiny
    state = model.init_state(2)
    frame = jnp.zeros((3, 32, 32, 3))
    pattern = r"cox3d_s_13: the state is for 2 stream\(s\).*frame has batch size 3"
    with pytest.raises(ValueError, match=pattern):
        model.step(params, state, frame)
    with pytest.raises(ValueError, match=pattern):
        jax.jit(model.step)(params, state, frame)
    with pytest.raises(ValueError, match=pattern):
        model.peek(params, state, frame)
    with pytest.raises(ValueError, match=r"state is for 2 stream\(s\).*frames has batch size 3"):
        model.stream_fn()(params, state, jnp.zeros((3, 4, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"reset mask must be a \(2,\) bool array \(the state is for 2 stream"):
        model.reset(state, jnp.array([True, False, True]))
    # LiveStep: a frame for another batch size, and a packed state of another LiveStep
    live2, live3 = LiveStep(model, params, batch_size=2), LiveStep(model, params, batch_size=3)
    with pytest.raises(ValueError, match=r"LiveStep is for 2 stream\(s\).*frame has batch size 3"):
        live2(live2.init(), frame)
    with pytest.raises(ValueError, match=r"the state is for 2 stream\(s\) but this LiveStep is for 3"):
        live3(live2.init(), frame)
    with pytest.raises(ValueError, match=r"the state is for 2 stream\(s\) but this LiveStep is for 3"):
        live3.peek(live2.init(), frame)
    with pytest.raises(ValueError, match=r"the state is for 2 stream\(s\) but this LiveStep is for 3"):
        live3.reset(live2.init(), jnp.array([True, False, True]))


def _drift_net() -> Sequential:
    """A small CoX3D-like stack: temporal convs, residual with SE, a 13-frame head pool."""
    return Sequential.of(
        ("stem", Conv(3, 8, (5, 3, 3), 1, (2, 1, 1))),
        ("act", Activation("relu")),
        ("block", residual(Sequential.of(
            ("dw", Conv(8, 8, (3, 3, 3), 1, (1, 1, 1), groups=8)),
            ("se", squeeze_excitation(8, 4)),
            ("act", Activation("swish"))))),
        ("pool", Pool("avg", (13, 4, 4))),
        ("fc", Dense(8, 6)),
        ("softmax", Activation("softmax")),
    )


def test_100k_frame_stream_does_not_drift():
    """After 100,000 frames the output equals a fresh stream over just the receptive field."""
    net = _drift_net()
    model = Model(name="drift", net=net, image_size=4, clip_length=13, frame_rate=1, num_classes=6)
    params = model.init(jax.random.key(0))
    n, chunk = 100_000, 10_000
    rng = np.random.default_rng(0)
    step = jax.jit(lambda s, x: run_layer(net, params, s, x), donate_argnums=(0,))
    state = model.init_state(1)
    last = None
    for start in range(0, n, chunk):
        x = jnp.asarray(rng.standard_normal((1, chunk, 4, 4, 3), np.float32))
        state, (out, valid) = step(state, x)
        last = x
    y_long = np.asarray(out[0, -1]).reshape(-1)
    assert bool(valid[0, -1])
    rf = net.receptive_field
    window = last[:, -rf:]
    _, (out_w, valid_w) = run_layer(net, params, model.init_state(1), window)
    assert bool(valid_w[0, -1])
    y_fresh = np.asarray(out_w[0, -1]).reshape(-1)
    rel = np.abs(y_long - y_fresh).max() / np.abs(y_fresh).max()
    assert rel <= 1e-5, rel
    # counters stay bounded however long the stream runs
    counters = [a for a in jax.tree.leaves(state) if a.dtype == jnp.int32]
    assert counters and max(int(c.max()) for c in counters) <= net.receptive_field + 1


def test_one_step_contract(tiny):
    """Layers, containers, models, the scan and LiveStep all return ``(state, Out)``;
    ``StepOutput`` is ``Out`` with ``scores`` naming ``y``."""
    from co3d_jax.layers.base import Out
    model, params, frames, ref = tiny
    assert co3d_jax.StepOutput is Out and isinstance(ref, Out)
    state, out = jax.jit(model.step)(params, model.init_state(1), frames[:, 0])  # jitted: eager op-by-op is slow
    assert isinstance(out, Out) and out.scores is out.y and out.y.shape == (1, 5)
    conv = Conv(3, 4, (3, 1, 1), 1, (1, 0, 0))
    p = conv.init(jax.random.key(0), (32, 32, 3))
    _, out = conv.step(p, conv.init_state(1, (32, 32, 3)), frames[:, 0], jnp.ones((1,), bool))
    assert isinstance(out, Out) and out.y.shape == (1, 32, 32, 4)
    _, out = run_layer(model.net, params, model.init_state(1), frames[:, :4])
    assert isinstance(out, Out) and out.valid.shape == (1, 4)
    live = LiveStep(model, params, batch_size=1)
    _, out = live(live.init(), frames[:, 0])
    assert isinstance(out, Out) and isinstance(live.peek(live.init(), frames[:, 0]), Out)


def test_live_step_call_dispatches_no_eager_op(tiny, monkeypatch):
    """After the first (compiling) call, ``LiveStep.__call__``/``peek`` run no eager JAX op: the
    all-valid mask is cached on the device, the cast is inside the compiled step and the checks
    are plain Python. Counted by intercepting every primitive bound outside the compiled call
    (the jitted call itself is the only one allowed, and its C++ fast path binds none)."""
    from jax._src import core
    model, params, frames, _ = tiny
    live = LiveStep(model, params, batch_size=1)
    state = live.init()
    frame = frames[:, 0]
    valid = jnp.ones((1,), bool)
    for _ in range(2):  # compile and warm both paths (valid=None and an explicit mask)
        state, _ = live(state, frame)
        state, _ = live(state, frame, valid)
        live.peek(state, frame)
    bound = []
    real_bind = core.Primitive.bind

    def counting_bind(self, *args, **kwargs):
        bound.append(self.name)
        return real_bind(self, *args, **kwargs)

    monkeypatch.setattr(core.Primitive, "bind", counting_bind)
    for _ in range(3):
        state, out = live(state, frame)
        state, out = live(state, frame, valid)
        out = live.peek(state, frame)
    monkeypatch.undo()
    assert [b for b in bound if b not in ("jit", "pjit")] == [], bound
    jax.block_until_ready(out)
