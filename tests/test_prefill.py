"""Prefill (``Layer.prefill``, ``Model.prefill``) equals stepping the same frames from a fresh state.

* Layers: every stateful layer's specialised prefill (Conv of several kernels, paddings, strides,
  groups and both fills; avg/max Pool with every fill and a temporal stride; GlobalAvgPool windows;
  Delay), the aligned ``BroadcastReduce`` and SE, and the scan fallback (a ``Parallel`` whose
  branches emit at different inputs), for input lengths 0, 1, the delay, one past it and >= 3x
  the receptive field: every state leaf (counters exactly) and every emitted output.
* Models: every continual registry model at reduced sizes (and X3D's ``temporal_fill='replicate'``
  and ``se_scope='clip'``), for ``T`` below the delay, equal to it and >= 3x the receptive field:
  ``Model.prefill`` against a jitted ``Model.step`` loop (every state leaf, every score, identical
  validity), then ``Model.stream`` from the prefilled state continues as stepping does, and
  ``Model.prefill_stream`` (the evaluation helper) too. Clip-only models raise like ``step``.

Relative error of a leaf: ``max |a - b| / max |b|``; the bound is 1e-5 (float32, highest
matmul precision). The largest error seen per group is printed at the end of the module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import co3d_jax
from co3d_jax import layers as L
from co3d_jax.layers.base import emit_positions
from co3d_jax.stream import run_layer

from helpers import random_params

TOL = 1e-5
MAX_ERR: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\nmax relative error, prefill vs stepping (test_prefill.py):")
    for k, v in sorted(MAX_ERR.items()):
        print(f"  {k:28s} {v:.2e}")


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    both_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    a, b = np.where(both_inf, 0, a), np.where(both_inf, 0, b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def assert_same_state(got, want, group: str, what: str = "") -> float:
    """Same tree, shapes and dtypes; integer leaves equal, float leaves within TOL."""
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    worst = 0.0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        name = f"{what}{jax.tree_util.keystr(path)}"
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        if jnp.issubdtype(a.dtype, jnp.integer):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
        else:
            e = rel(a, b)
            assert e <= TOL, (name, e)
            worst = max(worst, e)
    MAX_ERR[f"{group} state"] = max(MAX_ERR.get(f"{group} state", 0.0), worst)
    return worst


def record(group: str, e: float) -> None:
    assert e <= TOL, (group, e)
    MAX_ERR[group] = max(MAX_ERR.get(group, 0.0), e)


# ------------------------------------------------------------------------------------- layers
LAYERS = {
    "conv_k3p1": lambda: L.Conv(4, 5, 3, 1, 1, bias=True),
    "conv_k3p0_replicate": lambda: L.Conv(4, 5, (3, 3, 3), 1, (0, 1, 1), temporal_fill="replicate"),
    "conv_k5p2_depthwise": lambda: L.Conv(4, 4, (5, 1, 1), 1, (2, 0, 0), groups=4, temporal_fill="replicate"),
    "conv_k3_dw_lax_spatial2": lambda: L.Conv(4, 4, 3, (1, 2, 2), 1, groups=4, impl="lax"),
    "conv_k3s2_groups": lambda: L.Conv(4, 6, 3, (2, 2, 2), (1, 1, 1), groups=2, bias=True),
    "conv_k4s3_replicate": lambda: L.Conv(4, 3, (4, 1, 1), (3, 1, 1), (1, 0, 0), temporal_fill="replicate"),
    "conv_k1s2": lambda: L.Conv(4, 3, 1, (2, 1, 1), 0, bias=True),
    "conv_stateless": lambda: L.Conv(4, 3, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    "avgpool_k3p1": lambda: L.Pool("avg", 3, 1, 1),
    "avgpool_k4_replicate": lambda: L.Pool("avg", (4, 2, 2), (1, 2, 2), 0, temporal_fill="replicate"),
    "maxpool_k2s2": lambda: L.Pool("max", (2, 1, 1), (2, 1, 1), 0),
    "maxpool_k3s2_neginf": lambda: L.Pool("max", 3, 2, 1, temporal_fill="neg_inf"),
    "maxpool_spatial": lambda: L.Pool("max", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    "global_pool_w4": lambda: L.GlobalAvgPool(window=4),
    "global_pool_w3_replicate": lambda: L.GlobalAvgPool(window=3, temporal_fill="replicate"),
    "delay3": lambda: L.Delay(3),
    "se_clip_scope": lambda: L.squeeze_excitation(4, 2, scope="clip", window=3),
    "residual_block": lambda: L.Sequential.of(
        ("res", L.residual(L.Sequential.of(L.Conv(4, 4, 3, 1, 1), L.BatchNorm(4), L.Activation("swish"),
                                            L.Conv(4, 4, (3, 1, 1), 1, 0, temporal_fill="replicate")))),
        ("relu", L.Activation("relu")),
        ("pool", L.Pool("avg", (2, 2, 2), (2, 2, 2), 0))),
    "concat_aligned": lambda: L.broadcast_reduce(L.Conv(4, 2, 3, 1, 1), L.Delay(0), reduce="concat"),
    "parallel_unaligned": lambda: L.Sequential.of(
        L.Broadcast(2), L.Parallel.of(L.Conv(4, 4, (3, 1, 1), 1, 0), L.Delay(1), auto_delay=False), L.Reduce("sum")),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_prefill_equals_stepping(name):
    layer = LAYERS[name]()
    shape, b = (6, 6, 4), 2
    params = random_params(_as_model(layer, shape)) if layer.init(jax.random.key(0), shape) is not None else None
    rf, d = layer.receptive_field, layer.delay
    lengths = sorted({0, 1, d, d + 1, 3 * rf + 2 * layer.stride + 1})
    frames = jnp.asarray(np.random.default_rng(1).standard_normal((b, max(lengths), *shape)), jnp.float32)
    prefill = jax.jit(lambda p, x: layer.prefill(p, x))
    for n in lengths:
        state, (ys, vs) = run_layer(layer, params, layer.init_state(b, shape), frames[:, :n])
        got_state, got_ys = prefill(params, frames[:, :n])
        idx = emit_positions(n, d, layer.stride)
        want_valid = np.zeros((n,), bool)
        want_valid[idx] = True
        np.testing.assert_array_equal(np.asarray(vs), np.broadcast_to(want_valid, (b, n)))  # metadata = stepping
        assert_same_state(got_state, state, "layers", f"{name} n={n}")
        record("layers out", rel(got_ys, np.asarray(ys)[:, idx]))


def _as_model(layer, shape):
    """A throwaway Model wrapper so tests.helpers.random_params draws the layer's params."""
    return co3d_jax.Model(name="layer", net=layer, image_size=shape[0], clip_length=1, frame_rate=1, num_classes=1)


def test_scan_fallback_is_used_for_unaligned_branches():
    par = L.Parallel.of(L.Conv(4, 4, 3, 1, 0), L.Delay(1), auto_delay=False)
    assert not par.aligned and L.broadcast_reduce(L.Conv(4, 4, 3, 1, 0), L.Delay(1)).aligned


# ------------------------------------------------------------------------------------- models
X3D_SMALL = dict(image_size=32, depth_factor=0.3, width_factor=1.0, conv5_dim=16, num_classes=7)
RESNET_SMALL = dict(image_size=32, width=8, depths=(1, 1, 2, 2))

CONTINUAL = [n for n in co3d_jax.list_models() if co3d_jax.create_model(n).continual]
CASES = [(n, {}) for n in CONTINUAL] + [
    ("cox3d_s_13", dict(temporal_fill="replicate")),
    ("cox3d_s_13", dict(se_scope="clip")),
    ("cox3d_xs", dict(se_scope="clip", temporal_fill="replicate")),
    ("coslow_8", dict(temporal_fill="replicate")),
]


R2PLUS1D_SMALL = dict(image_size=16, layers=(1, 1, 1, 1), num_classes=7)
SLOWFAST_SMALL = dict(image_size=32, width_per_group=8, num_classes=7, window=16)


def small_model(name: str, **options):
    if name.startswith("cor2plus1d"):
        base = R2PLUS1D_SMALL
    elif name.startswith("coslowfast"):
        base = SLOWFAST_SMALL
    else:
        base = X3D_SMALL if name.startswith("cox3d") else dict(RESNET_SMALL, **({} if "charades" in name else
                                                                                   dict(num_classes=7)))
    return co3d_jax.create_model(name, **base, **options)


def test_every_continual_model_is_covered():
    assert {n for n, _ in CASES} >= set(CONTINUAL)
    assert len(CONTINUAL) >= 13


@pytest.mark.parametrize("name,options", CASES, ids=[n + "".join(f"-{k}={v}" for k, v in o.items())
                                                      for n, o in CASES])
def test_model_prefill_equals_stepping(name, options):
    model = small_model(name, **options)
    params = random_params(model)
    b, d, rf, s = 2, model.delay, model.receptive_field, model.stride
    short, long = max(1, d // 2), 3 * rf + s
    frames = jnp.asarray(np.random.default_rng(0).standard_normal((b, long, *model.frame_shape)), jnp.float32)

    # reference: one jitted step at a time from a fresh state, snapshots at the prefill lengths
    step = jax.jit(model.step)
    state, scores, valid, snaps = model.init_state(b), [], [], {}
    for t in range(long):
        state, out = step(params, state, frames[:, t])
        scores.append(out.scores)
        valid.append(out.valid)
        if t + 1 in (short, d, long):
            snaps[t + 1] = state
    scores, valid = np.stack(scores, 1), np.stack(valid, 1)
    assert valid[:, :d].sum() == 0 and valid[:, d].all()

    prefill = jax.jit(model.prefill)
    for t in sorted(snaps):
        got_state, out = prefill(params, frames[:, :t])
        assert_same_state(got_state, snaps[t], "models", f"{model.name} T={t}")
        np.testing.assert_array_equal(np.asarray(out.valid), valid[:, :t])
        record("models scores", rel(out.scores, scores[:, :t]))
        if t == short:
            short_state = got_state

    # the stream continues from the prefilled state exactly as from the stepped one
    end_state, rest = jax.jit(model.stream)(params, short_state, frames[:, short:])
    np.testing.assert_array_equal(np.asarray(rest.valid), valid[:, short:])
    record("continuation scores", rel(rest.scores, scores[:, short:]))
    assert_same_state(end_state, snaps[long], "continuation")


def test_prefill_stream_helper():
    """``prefill_stream`` (evaluate's init_frame protocol) = stepping, for every split point."""
    model = small_model("coi3d_8")
    params = random_params(model)
    t = model.delay + 5
    frames = jnp.asarray(np.random.default_rng(2).standard_normal((2, t, *model.frame_shape)), jnp.float32)
    want_state, want = jax.jit(model.stream)(params, model.init_state(2), frames)
    for k in (0, model.delay, t):
        state, out = jax.jit(model.prefill_stream, static_argnums=2)(params, frames, k)
        np.testing.assert_array_equal(np.asarray(out.valid), np.asarray(want.valid))
        record("prefill_stream scores", rel(out.scores, want.scores))
        assert_same_state(state, want_state, "prefill_stream")


def test_invalid_steps_have_zero_scores():
    model = small_model("cox3d_xs")
    params = random_params(model)
    frames = jnp.ones((1, model.delay + 1, *model.frame_shape), jnp.float32)
    _, out = jax.jit(model.stream)(params, model.init_state(1), frames)
    assert not np.asarray(out.scores)[0, :model.delay].any() and np.asarray(out.scores)[0, model.delay].any()


@pytest.mark.parametrize("name", ["r2plus1d_18_8", "slowfast_4x16_r50"])
def test_clip_only_models_raise(name):
    model = co3d_jax.create_model(name, image_size=32)
    with pytest.raises(NotImplementedError, match="clip-only") as stepping:
        model.init_state(1)
    with pytest.raises(NotImplementedError, match="clip-only") as prefilling:
        jax.eval_shape(model.prefill, jax.eval_shape(model.init, jax.random.key(0)),
                       jax.ShapeDtypeStruct((1, 8, 32, 32, 3), jnp.float32))
    assert str(prefilling.value) == str(stepping.value)
    with pytest.raises(NotImplementedError, match="clip-only"):
        model.net.prefill(None, jnp.zeros((1, 8, 32, 32, 3)))
