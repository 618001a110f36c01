"""Bulk steps (``Layer.steps``, ``Model.stream(bulk=...)``) equal stepping the same frames.

* Layers: every stateful layer with bulk steps (Conv of several kernels, paddings, groups and
  activations; avg/max Pool; GlobalAvgPool windows; Delay; SE, residual and concat containers),
  from a state past the warm-up, for chunks of 1, 2 and 7 frames: every state leaf (counters
  exactly) and every output, against a ``lax.scan`` of ``step``. Layers with a temporal stride
  have none (``bulk_ok`` False).
* Models: which continual models run bulk steps, and for CoX3D and CoSlow (reduced sizes) a
  stream of 160 frames fed in 16-frame chunks with gaps in every third chunk and a reset in the
  middle: scores at every valid frame, validity and the final state against ``bulk=False`` (on an
  H200 the same over 300 frames for CoX3D-S/M/L at full size: ``benchmarks.fused_parity --chunk``).
* Dispatch: with the bulk path marked, ``Model.stream`` runs it exactly on the chunks whose frames
  are all valid and whose streams are all past their warm-up, and never with ``bulk=False``; the
  default is bulk steps on an NVIDIA GPU (simulated) and the scan elsewhere.

Relative error of a leaf: ``max |a - b| / max |b|``; the bound is 1e-5 (float32, highest matmul
precision, set in conftest).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import co3d_jax
from co3d_jax import layers as L
from co3d_jax.stream import run_layer

from helpers import random_params

TOL = 1e-5


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    both_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    a, b = np.where(both_inf, 0, a), np.where(both_inf, 0, b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)) if a.size else 0.0


def assert_close_state(got, want, what: str) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        name = f"{what}{jax.tree_util.keystr(path)}"
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if jnp.issubdtype(a.dtype, jnp.integer):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
        else:
            assert rel(a, b) <= TOL, (name, rel(a, b))


# ------------------------------------------------------------------------------------- layers
BULK_LAYERS = {
    "conv_k3p1_bias": lambda: L.Conv(4, 5, 3, 1, 1, bias=True),
    "conv_k3p0_replicate": lambda: L.Conv(4, 5, (3, 3, 3), 1, (0, 1, 1), temporal_fill="replicate"),
    "conv_k5p2_depthwise_acts": lambda: L.Conv(4, 4, (5, 3, 3), 1, (2, 1, 1), groups=4, in_activation="relu",
                                                out_activation="swish"),
    "conv_k3_dw_spatial2": lambda: L.Conv(4, 4, 3, (1, 2, 2), 1, groups=4, impl="lax"),
    "conv_stateless": lambda: L.Conv(4, 3, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    "avgpool_k3p1": lambda: L.Pool("avg", 3, 1, 1),
    "maxpool_k3_neginf": lambda: L.Pool("max", (3, 2, 2), (1, 2, 2), 0, temporal_fill="neg_inf"),
    "global_pool_w4": lambda: L.GlobalAvgPool(window=4),
    "delay3": lambda: L.Delay(3),
    "se_clip_scope": lambda: L.squeeze_excitation(4, 2, scope="clip", window=3),
    "residual_block": lambda: L.Sequential.of(
        ("res", L.residual(L.Sequential.of(L.Conv(4, 4, 3, 1, 1), L.BatchNorm(4), L.Activation("swish"),
                                            L.Conv(4, 4, (3, 1, 1), 1, 0, temporal_fill="replicate")))),
        ("relu", L.Activation("relu"))),
    "concat_aligned": lambda: L.broadcast_reduce(L.Conv(4, 2, 3, 1, 1), L.Delay(0), reduce="concat"),
}


def _as_model(layer, shape):
    return co3d_jax.Model(name="layer", net=layer, image_size=shape[0], clip_length=1, frame_rate=1, num_classes=1)


@pytest.mark.parametrize("name", sorted(BULK_LAYERS))
def test_layer_bulk_steps_equal_stepping(name):
    layer = BULK_LAYERS[name]()
    assert layer.bulk_ok
    shape, b = (6, 6, 4), 2
    params = random_params(_as_model(layer, shape)) if layer.init(jax.random.key(0), shape) is not None else None
    warm = max(layer.delay, 1)
    frames = jnp.asarray(np.random.default_rng(1).standard_normal((b, warm + 10, *shape)), jnp.float32)
    state, _ = run_layer(layer, params, layer.init_state(b, shape), frames[:, :warm])
    # one frame short of the warm-up is not steady; the warm-up itself is
    short, _ = run_layer(layer, params, layer.init_state(b, shape), frames[:, :warm - 1])
    if layer.init_state(b, shape) is not None:
        assert not np.asarray(layer.steady(short)).all()
    assert np.asarray(layer.steady(state)).all()
    steps = jax.jit(layer.steps)
    lo = warm
    for n in (1, 2, 7):
        want_state, (ys, vs) = run_layer(layer, params, state, frames[:, lo:lo + n])
        got_state, got = steps(params, state, frames[:, lo:lo + n])
        assert np.asarray(vs).all()  # in a steady state every input emits
        assert_close_state(got_state, want_state, f"{name} n={n}")
        assert rel(got, ys) <= TOL, (name, n, rel(got, ys))
        state, lo = want_state, lo + n


def test_temporally_strided_layers_have_no_bulk_steps():
    assert not L.Conv(4, 3, 3, (2, 1, 1), 1).bulk_ok
    assert not L.Pool("max", (2, 1, 1), (2, 1, 1), 0).bulk_ok
    assert not L.Sequential.of(L.Conv(4, 4, 3, 1, 1), L.Pool("avg", 2, 2, 0)).bulk_ok
    assert L.Sequential.of(L.Conv(4, 4, 3, 1, 1), L.Activation("relu"), L.Delay(2)).bulk_ok


# ------------------------------------------------------------------------------------- models
X3D_SMALL = dict(image_size=32, depth_factor=0.3, width_factor=1.0, conv5_dim=16, num_classes=7)
RESNET_SMALL = dict(image_size=32, width=8, depths=(1, 1, 2, 2), num_classes=7)


def test_which_models_run_bulk_steps():
    continual = [n for n in co3d_jax.list_models() if co3d_jax.create_model(n).continual]
    bulk = {n for n in continual if co3d_jax.create_model(n).bulk_ok}
    assert bulk == {n for n in continual if n.startswith(("cox3d", "coslow_"))}, sorted(bulk)
    model = co3d_jax.create_model("coi3d_8", **RESNET_SMALL)  # a temporal stride of 2
    with pytest.raises(ValueError, match="bulk steps need a network of temporal stride 1"):
        model.stream(None, None, jnp.zeros((1, 4, 32, 32, 3)), bulk=True)


def _chunked_stream(model, params, frames, valid, bulk, chunk=16, reset_at=80):
    f = model.stream_fn(bulk=bulk)
    state, outs, n_bulk = model.init_state(frames.shape[0]), [], 0
    for lo in range(0, frames.shape[1], chunk):
        if lo == reset_at:
            state = model.reset(state, jnp.arange(frames.shape[0]) == 1)
        v = valid[:, lo:lo + chunk]
        n_bulk += bool(v.all() and np.asarray(model.net.steady(state)).all())
        state, o = f(params, state, frames[:, lo:lo + chunk], jnp.asarray(v))
        outs.append(o)
    return (state, np.concatenate([o.scores for o in outs], 1), np.concatenate([o.valid for o in outs], 1),
            n_bulk)


@pytest.mark.parametrize("name,options", [("cox3d_s_13", X3D_SMALL),
                                          ("coslow_8", RESNET_SMALL)])
def test_bulk_stream_equals_stepping_with_gaps_reset_and_chunks(name, options):
    model = co3d_jax.create_model(name, **options)
    model, params = model.fold_batchnorm(random_params(model))
    t, b = 160, 2
    frames = jax.random.normal(jax.random.key(1), (b, t, *model.frame_shape))
    valid = np.array(jax.random.uniform(jax.random.key(2), (b, t)) > 0.15)
    valid[:, [i for i in range(t) if (i // 16) % 3 != 1]] = True  # gaps in every third chunk only
    s0, y0, v0, _ = _chunked_stream(model, params, frames, valid, bulk=False)
    s1, y1, v1, n_bulk = _chunked_stream(model, params, frames, valid, bulk=True)
    assert n_bulk >= 4, n_bulk
    np.testing.assert_array_equal(v0, v1)
    assert v0.sum() > 150
    for i in range(b):
        for j in np.flatnonzero(v0[i]):
            assert rel(y1[i, j], y0[i, j]) <= TOL, (i, j)
    assert_close_state(s1, s0, name)


def test_stream_dispatches_bulk_steps_only_where_they_equal_stepping(monkeypatch):
    """The bulk path marked (+1000 on the network's output): it runs on the chunks past every
    stream's warm-up with every frame valid, and on no other chunk, nor with ``bulk=False``."""
    model = co3d_jax.create_model("cox3d_s_13", **X3D_SMALL)
    model, params = model.fold_batchnorm(random_params(model))
    net_cls = type(model.net)
    orig = net_cls.steps

    def marked(self, p, s, x):
        s, y = orig(self, p, s, x)
        return s, (y + 1000.0 if self is model.net else y)

    monkeypatch.setattr(net_cls, "steps", marked)
    d, b = model.delay, 2
    frames = jax.random.normal(jax.random.key(1), (b, d + 40, *model.frame_shape))
    f, f_scan = model.stream_fn(bulk=True), model.stream_fn(bulk=False)
    state = model.init_state(b)

    def ran_bulk(out) -> bool:
        return bool(np.asarray(out.scores).max() > 500)

    state, out = f(params, state, frames[:, :d - 1])        # warm-up: no output valid yet
    assert not ran_bulk(out) and not np.asarray(out.valid).any()
    _, out = f(params, state, frames[:, d - 1:d + 7])          # one frame short of steady
    assert not ran_bulk(out) and np.asarray(out.valid[:, 1:]).all() and not np.asarray(out.valid[:, 0]).any()
    s_steady, out = f(params, f_scan(params, state, frames[:, d - 1:d])[0], frames[:, d:d + 8])
    assert ran_bulk(out) and np.asarray(out.valid).all()      # after `delay` frames every next frame emits
    _, out = f(params, s_steady, frames[:, d + 8:d + 16])     # steady, every frame valid
    assert ran_bulk(out) and np.asarray(out.valid).all()
    _, out = f_scan(params, s_steady, frames[:, d + 8:d + 16])
    assert not ran_bulk(out)
    gap = np.ones((b, 8), bool)
    gap[1, 3] = False
    _, out = f(params, s_steady, frames[:, d + 8:d + 16], jnp.asarray(gap))  # one missing frame
    assert not ran_bulk(out)
    reset = model.reset(s_steady, jnp.array([False, True]))  # stream 1 starts over
    _, out = f(params, reset, frames[:, d + 8:d + 16])
    assert not ran_bulk(out)
    _, out = f(params, s_steady, frames[:, d + 8:d + 9])     # one frame: a step
    assert not ran_bulk(out)


def test_bulk_steps_are_the_default_on_nvidia_gpus_only(monkeypatch):
    import co3d_jax.kernels as kernels
    model = co3d_jax.create_model("cox3d_s_13", **X3D_SMALL)
    params = jax.eval_shape(model.init, jax.random.key(0))
    state = jax.eval_shape(lambda: model.init_state(2))
    frames = jax.ShapeDtypeStruct((2, 8, *model.frame_shape), jnp.float32)

    def has_cond(**kw):  # a new function per call: make_jaxpr caches traces by function
        return "cond[" in str(jax.make_jaxpr(lambda p, s, x: model.stream(p, s, x, **kw))(params, state, frames))

    assert not has_cond() and has_cond(bulk=True)
    monkeypatch.setattr(kernels, "_nvidia_default_device", lambda: True)
    assert has_cond() and not has_cond(bulk=False)
    with kernels.disabled():  # the kernels off (a jit over several devices): bulk steps need none
        assert has_cond()
