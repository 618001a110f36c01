"""Flax NNX front end (co3d_jax.nnx) against the functional API it wraps.

Bit-exact clip forward for one model of every family (CoX3D, CoI3D, R(2+1)D, SlowFast), every
step of a 3 x receptive-field stream with gaps and a reset (CoX3D, CoI3D), the functional <->
NNX round trip, a ported pytorchvideo X3D against torch, train/eval batch norm against
``forward_train``, an ``nnx.Optimizer`` training loop, Orbax, user modules holding wrapped layers,
``nnx.scan`` and the Linen bridge. Small configurations (32 px, reduced depths/widths).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import co3d_jax
import co3d_jax.nnx as cnx
from co3d_jax import layers as L
from co3d_jax.params import ParamsError
from co3d_jax.stream import run_layer

from helpers import random_params

SMALL = {
    "cox3d_s_13": dict(image_size=32, depth_factor=0.6, window=4, conv5_dim=64),
    "coi3d_8": dict(image_size=32, depths=(1, 1, 1, 1), width=8),
    "r2plus1d_18_8": dict(image_size=32, layers=(1, 1, 1, 1)),
    "slowfast_8x8_r50": dict(image_size=32, clip_length=8, width_per_group=8),
}
CONTINUAL = ("cox3d_s_13", "coi3d_8")
TINY_X3D = dict(image_size=32, depth_factor=0.3, width_factor=1.0, conv5_dim=32, window=4)
X3D_TRAIN = dict(TINY_X3D, head_activation="identity", num_classes=2)


def built(name: str, **extra):
    model = co3d_jax.create_model(name, **{**SMALL.get(name, {}), **extra})
    return model, random_params(model)


def normal(seed: int, shape) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape)


def equal_trees(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


# Compiled once per test module: eager calls compile every primitive separately, which costs far
# more CPU than one jit of these small networks. NNX and functional calls are compared compiled.
clip_fn = nnx.jit(lambda m, x: m(x))
train_clip_fn = nnx.jit(lambda m, x: m(x, use_running_average=False))
step_fn = nnx.jit(lambda m, x: m.step(x))
peek_fn = nnx.jit(lambda m, x: m.peek(x))


def stream_values(m: cnx.Continual):
    return nnx.state(m, cnx.StreamState).to_pure_dict()["stream_state"]


# ----------------------------------------------------------------------------- bit-exact parity
@pytest.mark.parametrize("name", sorted(SMALL))
def test_clip_forward_bit_exact(name):
    model, params = built(name)
    m = cnx.from_params(model, params)
    clip = normal(0, (2, min(model.clip_length, 8), *model.frame_shape))
    np.testing.assert_array_equal(clip_fn(m, clip), jax.jit(model.forward)(params, clip))
    assert m.use_running_average and m.name == model.name and m.num_classes == model.num_classes


@pytest.mark.parametrize("name", CONTINUAL)
def test_stream_every_step_and_reset_bit_exact(name):
    """``m.stream`` (one scan, under ``nnx.jit``) over 3 x RF frames with a gap in one stream and
    a reset of the other half-way; then ``m.step`` under ``nnx.jit``, frame by frame."""
    model, params = built(name)
    m = cnx.from_params(model, params)
    assert (m.delay, m.receptive_field, m.stride) == (model.delay, model.receptive_field, model.stride)
    half = (3 * model.receptive_field + 1) // 2
    frames = normal(1, (2, 2 * half, *model.frame_shape))
    valid = np.ones((2, 2 * half), bool)
    valid[1, 5:9] = False                                   # stream 1 gets no frames for a while
    valid = jnp.asarray(valid)
    mask = jnp.array([True, False])

    m.init_stream(2)
    stream = nnx.jit(lambda m, f, v: m.stream(f, v))
    f_stream = jax.jit(model.stream)
    state = model.init_state(2)
    n_valid = 0
    for part in (slice(0, half), slice(half, 2 * half)):
        if part.start:
            m.reset(mask)
            state = model.reset(state, mask)
        out = stream(m, frames[:, part], valid[:, part])
        state, ref = f_stream(params, state, frames[:, part], valid[:, part])
        assert isinstance(out, co3d_jax.StepOutput)
        np.testing.assert_array_equal(out.valid, ref.valid)
        np.testing.assert_array_equal(out.scores, ref.scores)
        equal_trees(stream_values(m), state)
        n_valid += int(ref.valid.sum())
    assert n_valid > half                                   # the comparison covers real outputs

    m.init_stream(2)
    step, f_step = nnx.jit(lambda m, x, v: m.step(x, v)), jax.jit(model.step)
    state, seen = model.init_state(2), False
    for t in range(model.delay + 2):
        out = step(m, frames[:, t], valid[:, t])
        state, ref = f_step(params, state, frames[:, t], valid[:, t])
        np.testing.assert_array_equal(out.valid, ref.valid, err_msg=f"valid, step {t}")
        np.testing.assert_array_equal(out.scores, ref.scores, err_msg=f"scores, step {t}")
        seen |= bool(ref.valid[0])
    assert seen
    equal_trees(stream_values(m), state)


# ----------------------------------------------------------------------------- params and variables
def test_round_trip_variable_types_split_merge():
    model, params = built("cox3d_s_13", **TINY_X3D)
    m = cnx.from_params(model, params)
    back = cnx.to_params(m)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert all(a is b for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)))  # the same arrays

    m.init_stream(2)
    flat = {k: v for k, v in co3d_jax.params.flatten(params).items()}
    stats = {k for k in flat if k.rsplit("/", 1)[1] in ("mean", "var")}

    def paths(filt):
        """The leaf paths inside the one variable of type ``filt`` (a tree-valued variable)."""
        (path, var), = nnx.to_flat_state(nnx.state(m, filt))
        assert type(var) is filt and len(path) == 1
        return set(co3d_jax.params.flatten(var.get_value())), path[0]
    assert paths(nnx.Param) == (set(flat) - stats, "vars") and stats
    assert paths(nnx.BatchStat) == (stats, "stats")
    assert paths(cnx.StreamState)[0] and not paths(cnx.StreamState)[0] & set(flat)
    equal_trees(stream_values(m), model.init_state(2))
    every = nnx.to_flat_state(nnx.state(m))
    assert len(every) == 3                                  # three tree-valued variables, not one per array
    assert len(jax.tree.leaves(nnx.state(m))) == len(flat) + len(paths(cnx.StreamState)[0])

    graphdef, state = nnx.split(m)
    m2 = nnx.merge(graphdef, state)
    frame = normal(2, (2, *model.frame_shape))
    np.testing.assert_array_equal(peek_fn(m2, frame).scores, peek_fn(m, frame).scores)

    assert isinstance(cnx.create_model("cox3d_s_13", rngs=nnx.Rngs(0), **TINY_X3D), cnx.ContinualModel)
    with pytest.raises(ParamsError, match="missing"):
        cnx.from_params("cox3d_s_13", {"s1": params["s1"]}, **TINY_X3D)
    with pytest.raises(RuntimeError, match="init_stream"):
        cnx.from_params(model, params).step(frame)


def test_ported_pytorchvideo_x3d(tmp_path):
    torch = pytest.importorskip("torch")
    create_x3d = pytest.importorskip("pytorchvideo.models.x3d").create_x3d
    from torch_utils import randomize_model_bn_
    from weight_port.convert import convert_state_dict, save_conversion

    torch.manual_seed(0)
    tm = create_x3d(input_clip_length=4, input_crop_size=64)
    randomize_model_bn_(tm, 1234)
    tm.eval()
    sd = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}
    path = str(tmp_path / "x3d_s.npz")
    save_conversion(convert_state_dict(sd, "x3d_s"), path, "X3D_S.pyth")
    params = co3d_jax.load_params(path, "x3d_s")
    m = cnx.from_params("x3d_s", params, image_size=64, window=4)
    equal_trees(cnx.to_params(m), params)

    x = torch.randn(1, 3, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tm(x).numpy()
    clip = jnp.asarray(x.permute(0, 2, 3, 4, 1).numpy())
    probs = np.asarray(clip_fn(m, clip))
    np.testing.assert_array_equal(probs, jax.jit(m.model.forward)(params, clip))
    assert np.max(np.abs(probs - ref)) / np.max(np.abs(ref)) <= 1e-5     # test_weight_port's tolerance
    assert ref.max() > 2.0 / ref.shape[1]


# ----------------------------------------------------------------------------- training
def test_train_eval_switch_matches_forward_train():
    model, params = built("x3d_s", **X3D_TRAIN)
    m = cnx.from_params(model, params)
    clip = normal(3, (3, 4, *model.frame_shape)) * 2 + 0.5
    y_ref, new_ref = jax.jit(model.forward_train)(params, clip)

    m.train()
    assert m.use_running_average is False
    np.testing.assert_array_equal(clip_fn(m, clip), y_ref)
    equal_trees(cnx.to_params(m), new_ref)                 # BatchStat updated, Param untouched
    assert not np.array_equal(new_ref["s1"]["bn"]["mean"], params["s1"]["bn"]["mean"])
    np.testing.assert_array_equal(new_ref["s1"]["conv"]["kernel"], params["s1"]["conv"]["kernel"])

    m.eval()
    np.testing.assert_array_equal(clip_fn(m, clip), jax.jit(model.forward)(new_ref, clip))
    equal_trees(cnx.to_params(m), new_ref)                 # eval mode changes nothing
    np.testing.assert_array_equal(train_clip_fn(m, clip), jax.jit(model.forward_train)(new_ref, clip)[0])


def test_optimizer_training_reduces_loss():
    model, params = built("x3d_s", **X3D_TRAIN)
    m = cnx.from_params(model, params)
    m.train()
    opt = nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param)
    labels = jnp.array([0, 1, 0, 1, 1, 0])
    clips = normal(4, (6, 4, *model.frame_shape)) + (2.0 * labels - 1.0)[:, None, None, None, None]

    def loss_fn(m, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def train_step(m, opt, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(m, x, y)
        opt.update(m, grads)
        return loss, grads

    # the first gradient equals the functional one (forward_train through Model)
    def f_loss(p, x, y):
        scores, _ = model.forward_train(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(scores, y).mean()
    f_grads = jax.jit(jax.grad(f_loss))(params, clips, labels)

    losses = []
    for i in range(6):
        loss, grads = train_step(m, opt, clips, labels)
        losses.append(float(loss))
        if i == 0:
            assert set(grads.to_pure_dict()) == {"vars"}          # only the nnx.Param variable
            g = grads.to_pure_dict()["vars"]
            assert "mean" not in g["s1"]["bn"] and set(g["s1"]["bn"]) == {"scale", "bias"}
            for key in ("s1", "conv", "kernel"), ("head", "projection", "kernel"):
                a, b = g, f_grads
                for k in key:
                    a, b = a[k], b[k]
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(b))))
    assert losses[-1] < 0.5 * losses[0], losses
    after = cnx.to_params(m)
    assert not np.array_equal(after["s1"]["conv"]["kernel"], params["s1"]["conv"]["kernel"])
    assert not np.array_equal(after["s1"]["bn"]["var"], params["s1"]["bn"]["var"])
    assert not nnx.state(m, cnx.StreamState)


# ----------------------------------------------------------------------------- checkpoints
def test_orbax_save_restore(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    name, options = "cox3d_s_13", TINY_X3D
    model, params = built(name, **options)
    m = cnx.from_params(model, params)
    m.init_stream(2)
    frames = normal(5, (2, 6, *model.frame_shape))
    nnx.jit(lambda m, f: m.stream(f))(m, frames[:, :5])   # a non-trivial stream state

    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "ckpt", nnx.state(m))
    ckpt.wait_until_finished()

    def empty():
        e = cnx.create_model(name, rngs=nnx.Rngs(1), **options)
        e.init_stream(2)
        return e

    graphdef, abstract = nnx.split(nnx.eval_shape(empty))
    m2 = nnx.merge(graphdef, ckpt.restore(tmp_path / "ckpt", abstract))
    equal_trees(cnx.to_params(m2), params)
    equal_trees(stream_values(m2), stream_values(m))
    np.testing.assert_array_equal(clip_fn(m2, frames), clip_fn(m, frames))
    np.testing.assert_array_equal(step_fn(m2, frames[:, 5]).scores, step_fn(m, frames[:, 5]).scores)


# ----------------------------------------------------------------------------- user modules
def block() -> L.Layer:
    return L.Sequential.of(("conv", L.Conv(3, 8, (3, 3, 3), 1, (1, 1, 1))), ("bn", L.BatchNorm(8)),
                           ("act", L.Activation("swish")), ("pool", L.Pool("max", (2, 1, 1), 1, 0)))


class UserNet(nnx.Module):
    """A user's module: a wrapped continual block and a Flax head."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.block = cnx.wrap(block(), rngs=rngs, in_shape=(8, 8, 3))
        self.head = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, clip):
        return self.head(self.block(clip).mean(axis=(1, 2, 3)))

    def step(self, frame):
        out = self.block.step(frame)
        return self.head(out.y.mean(axis=(1, 2))), out.valid


def test_wrapped_layer_in_user_module_and_nnx_scan():
    net = UserNet(rngs=nnx.Rngs(0))
    layer, params = net.block.layer, cnx.to_params(net.block)
    frames = normal(6, (2, 9, 8, 8, 3))
    np.testing.assert_array_equal(net.block(frames), layer.forward(params, frames))

    net.block.init_stream(2)
    step = nnx.jit(lambda n, x: n.step(x))
    state = layer.init_state(2, (8, 8, 3))
    f_step = jax.jit(layer.step)
    for t in range(frames.shape[1]):
        scores, v = step(net, frames[:, t])
        state, ref = f_step(params, state, frames[:, t], jnp.ones((2,), bool))
        np.testing.assert_array_equal(v, ref.valid)
        np.testing.assert_array_equal(scores, net.head(ref.y.mean(axis=(1, 2))))
    assert bool(v.all())

    trainable = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(net, nnx.Param))}
    assert set(trainable) == {"block/vars", "head/kernel", "head/bias"}
    assert set(co3d_jax.params.flatten(trainable["block/vars"].get_value())) == {"conv/kernel", "bn/scale", "bn/bias"}
    stats = nnx.to_flat_state(nnx.state(net, nnx.BatchStat))
    assert [("/".join(p), set(co3d_jax.params.flatten(v.get_value()))) for p, v in stats] == \
        [("block/stats", {"bn/mean", "bn/var"})]

    # nnx.scan over frames == the wrapped layer's stream == the functional stream driver
    net.block.init_stream(2)

    @nnx.scan(in_axes=(nnx.Carry, 1), out_axes=(nnx.Carry, 1))
    def scan(b, frame):
        return b, b.step(frame)

    _, out = scan(net.block, frames)
    net.block.init_stream(2)
    out2 = net.block.stream(frames)
    _, ref = run_layer(layer, params, layer.init_state(2, (8, 8, 3)), frames)
    for o in (out, out2):
        assert isinstance(o, L.Out)
        np.testing.assert_allclose(o.y, ref.y, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(o.valid, ref.valid)
    net.block.reset(jnp.array([False, True]))
    n = stream_values(net.block)["conv"]["n"]
    assert n[0] > 0 and n[1] == 0


# flax's bridge warns "Found unknown module paths in incoming state" on every apply because each NNX
# variable holds a whole tree (docs/flax.md says how to silence it); the values are applied, as asserted.
@pytest.mark.filterwarnings("ignore:Found unknown module paths:UserWarning")
def test_linen_bridge():
    from flax.nnx import bridge

    layer = block()

    def make(*, rngs):
        b = cnx.wrap(layer, rngs=rngs, in_shape=(8, 8, 3))
        b.init_stream(2)
        return b

    lm = bridge.to_linen(make)
    clip = normal(7, (2, 5, 8, 8, 3))
    variables = lm.init(jax.random.key(0), clip)
    assert set(variables) == {"params", "batch_stats", "stream_state"}
    params = {k: {**v, **variables["batch_stats"]["stats"].get(k, {})} for k, v in variables["params"]["vars"].items()}
    np.testing.assert_array_equal(lm.apply(variables, clip), layer.forward(params, clip))

    y, upd = lm.apply(variables, clip, use_running_average=False, mutable=["batch_stats"])
    y_ref, new = layer.forward_train(params, clip)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(upd["batch_stats"]["stats"]["bn"]["mean"], new["bn"]["mean"])

    out, upd = lm.apply(variables, clip[:, 0], nnx_method="step", mutable=["stream_state"])
    state, ref = layer.step(params, layer.init_state(2, (8, 8, 3)), clip[:, 0], jnp.ones((2,), bool))
    np.testing.assert_array_equal(out.valid, ref.valid)
    equal_trees(upd["stream_state"]["stream_state"], state)


# ----------------------------------------------------------------------------- per-call overhead
def test_few_variables_independent_of_depth():
    """Each module holds three tree-valued variables (Param, BatchStat, StreamState), whatever its
    depth: ``nnx.jit`` walks that many variables per call, not one per array."""
    counts = []
    for options in (TINY_X3D, SMALL["cox3d_s_13"]):
        model, params = built("cox3d_s_13", **options)
        m = cnx.from_params(model, params)
        m.init_stream(1)
        _, state = nnx.split(m)
        variables = nnx.to_flat_state(state)
        assert sorted(type(v).__name__ for _, v in variables) == ["BatchStat", "Param", "StreamState"]
        counts.append((len(variables), len(jax.tree.leaves(params))))
    assert counts[0][0] == counts[1][0] == 3 and counts[0][1] < counts[1][1]
    # no batch norm: no BatchStat variable
    m = cnx.wrap(L.Sequential.of(("conv", L.Conv(3, 4, (3, 1, 1), 1, (0, 0, 0)))), rngs=nnx.Rngs(0),
                 in_shape=(4, 4, 3))
    assert m.stats is None and len(nnx.to_flat_state(nnx.state(m))) == 1
    m.init_stream(1)
    assert [type(v) for _, v in nnx.to_flat_state(nnx.state(m))] in ([nnx.Param, cnx.StreamState],
                                                                     [cnx.StreamState, nnx.Param])


def test_step_fn_stream_fn_fast_paths():
    """``m.step_fn()`` / ``m.stream_fn()`` give nnx.jit's outputs and state bit for bit, mix with
    ``m.reset``, and see new params."""
    model, params = built("cox3d_s_13", **TINY_X3D)
    m = cnx.from_params(model, params)
    frames = normal(8, (2, model.delay + 3, *model.frame_shape))
    f_step, state = jax.jit(model.step), model.init_state(2)
    m.init_stream(2)
    fast = m.step_fn(donate=True)
    for t in range(frames.shape[1]):
        if t == 2:
            m.reset(jnp.array([True, False]))
            state = model.reset(state, jnp.array([True, False]))
        out = fast(frames[:, t])
        state, ref = f_step(params, state, frames[:, t])
        np.testing.assert_array_equal(out.scores, ref.scores)
        np.testing.assert_array_equal(out.valid, ref.valid)
    assert bool(ref.valid.all())
    equal_trees(stream_values(m), state)

    m.init_stream(2)
    out = m.stream_fn()(frames, jnp.ones(frames.shape[:2], bool))
    state, ref = jax.jit(model.stream)(params, model.init_state(2), frames)
    np.testing.assert_array_equal(out.scores, ref.scores)
    equal_trees(stream_values(m), state)

    doubled = jax.tree.map(lambda a: 2 * a, m.vars.get_value())   # new weights: the callable sees them
    m.vars.set_value(doubled)
    outs = []
    for call in (fast, lambda x: step_fn(m, x)):
        m.init_stream(2)
        for t in range(model.delay + 1):
            out = call(frames[:, t])
        outs.append(out)
    assert bool(outs[0].valid.all())
    np.testing.assert_array_equal(outs[0].scores, outs[1].scores)
    _, ref = jax.jit(model.stream)(params, model.init_state(2), frames[:, :model.delay + 1])
    assert not np.array_equal(outs[0].scores, ref.scores[:, -1])
