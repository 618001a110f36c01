"""Containers vs continual-inference, and stream-driver behaviour.

* ``Sequential``, ``BroadcastReduce`` (sum, mul, concat; with ``auto_delay``), ``residual``
  and a nested network (stem + residual blocks with depthwise convs, spatial stride, SE of both
  scopes, a temporal stride-2 pool and a head) against the same co modules: metadata, frame
  stepping including exactly which steps emit nothing, and the clip forward.
* Stream behaviour on the nested network: chunked streaming equals one-shot exactly, the stride-2
  validity pattern, reset by mask, per-stream ``valid`` input, and trace-time input errors.
"""

from __future__ import annotations

from collections import OrderedDict

import continual as co
import jax
import numpy as np
import pytest
import torch
from torch import nn

from co3d_jax import layers as L
from co3d_jax.stream import reset_state, run_layer

from torch_utils import ErrorLog, compare_with_co, params_from_torch, randomize_bn_

TOL = 1e-5
LOG = ErrorLog(TOL, "max relative error per container type (test_layers_containers.py)")
record = LOG.record
_report_errors, _torch_no_grad = LOG.fixtures()


def bn(c: int, seed: int) -> nn.BatchNorm3d:
    return randomize_bn_(nn.BatchNorm3d(c), torch.Generator().manual_seed(seed)).eval()


# ------------------------------------------------------------------------------------- flat containers


def test_sequential():
    """Conv -> BN -> ReLU -> temporally and spatially strided conv -> strided max pool (stride 4)."""
    co_mod = co.Sequential(
        co.Conv3d(4, 6, 3, padding=1),
        bn(6, 1),
        nn.ReLU(),
        co.Conv3d(6, 6, 3, stride=(2, 2, 2), padding=(0, 1, 1), temporal_fill="replicate"),
        co.MaxPool3d((2, 1, 1), stride=(2, 1, 1)),
    ).eval()
    layer = L.Sequential.of(
        L.Conv(4, 6, 3, 1, 1, bias=True),
        L.BatchNorm(6),
        L.Activation("relu"),
        L.Conv(6, 6, 3, (2, 2, 2), (0, 1, 1), bias=True, temporal_fill="replicate"),
        L.Pool("max", (2, 1, 1), (2, 1, 1), 0),
    )
    assert layer.stride == 4
    record("sequential", compare_with_co(layer, params_from_torch(layer, co_mod), co_mod, (6, 6, 4)))


@pytest.mark.parametrize("reduce", ["sum", "mul", "concat"])
def test_broadcast_reduce(reduce):
    """Three branches with delays 1, 0 and 2: ``auto_delay`` appends Delay(1) and Delay(2)."""
    co_mod = co.BroadcastReduce(
        co.Conv3d(4, 4, 3, padding=1),
        co.Sequential(co.Conv3d(4, 4, 1), nn.Sigmoid()),
        co.AvgPool3d((5, 3, 3), stride=1, padding=(2, 1, 1)),
        reduce=reduce,
    ).eval()
    layer = L.broadcast_reduce(
        L.Conv(4, 4, 3, 1, 1, bias=True),
        L.Sequential.of(L.Conv(4, 4, bias=True), L.Activation("sigmoid")),
        L.Pool("avg", (5, 3, 3), 1, (2, 1, 1)),
        reduce=reduce,
    )
    assert [type(b).__name__ for _, b in layer.branches] == ["Sequential", "Sequential", "Pool"]
    record(f"broadcast_reduce_{reduce}", compare_with_co(layer, params_from_torch(layer, co_mod), co_mod, (5, 5, 4)))


@pytest.mark.parametrize("fill", ["replicate"])
def test_residual(fill):
    co_mod = co.Residual(co.Conv3d(4, 4, (5, 3, 3), padding=(2, 1, 1), temporal_fill=fill)).eval()
    layer = L.residual(L.Conv(4, 4, (5, 3, 3), 1, (2, 1, 1), bias=True, temporal_fill=fill))
    record("residual_sum", compare_with_co(layer, params_from_torch(layer, co_mod), co_mod, (5, 5, 4)))


# ------------------------------------------------------------------------------------- nested network

IN_SHAPE = (8, 8, 4)


def _co_se(c: int, cse: int, window: int) -> nn.Module:
    return co.Residual(co.Sequential(OrderedDict([
        ("avg_pool", co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=window)),
        ("fc1", co.Conv3d(c, cse, 1)), ("fc1_act", nn.ReLU()),
        ("fc2", co.Conv3d(cse, c, 1)), ("fc2_sig", nn.Sigmoid()),
    ])), reduce="mul")


def _co_block(cin, cout, inner, s, se_window, fill, seed):
    layers = OrderedDict([
        ("a", co.Conv3d(cin, inner, 1, bias=False)), ("a_bn", bn(inner, seed)), ("a_relu", nn.ReLU()),
        ("b", co.Conv3d(inner, inner, 3, stride=(1, s, s), padding=1, groups=inner, bias=False, temporal_fill=fill)),
        ("b_bn", bn(inner, seed + 1)),
    ])
    if se_window:
        layers["se"] = _co_se(inner, 4, se_window)
    layers["b_relu"] = co.Lambda(lambda x: x * torch.sigmoid(x))
    layers["c"] = co.Conv3d(inner, cout, 1, bias=False)
    layers["c_bn"] = bn(cout, seed + 2)
    main = co.Sequential(layers)
    if cin != cout or s != 1:
        res = co.BroadcastReduce(co.Sequential(co.Conv3d(cin, cout, 1, stride=(1, s, s), bias=False),
                                               bn(cout, seed + 3)), main, reduce="sum")
    else:
        res = co.Residual(main)
    return co.Sequential(res, nn.ReLU())


def _jax_block(cin, cout, inner, s, se_window, fill, impl):
    layers = [
        ("a", L.Conv(cin, inner)), ("a_bn", L.BatchNorm(inner)), ("a_relu", L.Activation("relu")),
        ("b", L.Conv(inner, inner, 3, (1, s, s), 1, groups=inner, temporal_fill=fill, impl=impl)),
        ("b_bn", L.BatchNorm(inner)),
    ]
    if se_window:
        layers.append(("se", L.squeeze_excitation(inner, 4, scope="frame" if se_window == 1 else "clip",
                                                  window=se_window)))
    layers += [("b_relu", L.Activation("swish")), ("c", L.Conv(inner, cout)), ("c_bn", L.BatchNorm(cout))]
    main = L.Sequential.of(*layers)
    skip = None
    if cin != cout or s != 1:
        skip = L.Sequential.of(("branch1", L.Conv(cin, cout, 1, (1, s, s))), ("branch1_bn", L.BatchNorm(cout)))
    return L.Sequential.of(("residual", L.residual(main, skip)), ("relu", L.Activation("relu")))


# (cin, cout, inner, spatial stride, SE window (0: none, 1: frame scope, K: clip scope), fill, impl)
S2 = [(8, 8, 12, 1, 1, "zeros", "shift")]
S3 = [(8, 6, 8, 2, 3, "replicate", "lax")]


def build_nested():
    """A three-level network: Sequential(stem, stage of residual blocks, temporal stride-2 max pool,
    stage of residual blocks (spatial stride 2, projection skip, clip-scope SE), head)."""
    co_net = co.Sequential(OrderedDict([
        ("s1", co.Sequential(OrderedDict([
            ("conv_xy", co.Conv3d(4, 8, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)),
            ("conv", co.Conv3d(8, 8, (5, 1, 1), padding=(2, 0, 0), groups=8, bias=False, temporal_fill="replicate")),
            ("bn", bn(8, 10)), ("relu", nn.ReLU())]))),
        ("s2", co.Sequential(*[_co_block(*b[:-1], seed=20 + 5 * i) for i, b in enumerate(S2)])),
        ("pool", co.MaxPool3d((2, 1, 1), stride=(2, 1, 1))),
        ("s3", co.Sequential(*[_co_block(*b[:-1], seed=40 + 5 * i) for i, b in enumerate(S3)])),
        ("head", co.Sequential(OrderedDict([
            ("avg_pool", co.AvgPool3d((3, 2, 2), stride=1)),
            ("lin", co.Linear(6, 5, channel_dim=1)), ("act", nn.Softmax(dim=1))]))),
    ])).eval()
    net = L.Sequential.of(
        ("s1", L.Sequential.of(
            ("conv_xy", L.Conv(4, 8, (1, 3, 3), (1, 2, 2), (0, 1, 1))),
            ("conv", L.Conv(8, 8, (5, 1, 1), 1, (2, 0, 0), groups=8, temporal_fill="replicate")),
            ("bn", L.BatchNorm(8)), ("relu", L.Activation("relu")))),
        ("s2", L.Sequential.of(*[_jax_block(*b) for b in S2])),
        ("pool", L.Pool("max", (2, 1, 1), (2, 1, 1), 0)),
        ("s3", L.Sequential.of(*[_jax_block(*b) for b in S3])),
        ("head", L.Sequential.of(("avg_pool", L.Pool("avg", (3, 2, 2), 1, 0)), ("lin", L.Dense(6, 5)),
                                 ("act", L.Activation("softmax")))),
    )
    return net, params_from_torch(net, co_net), co_net


@pytest.fixture(scope="module")
def nested():
    torch.manual_seed(0)
    with torch.no_grad():
        return build_nested()


def stream_len(net) -> int:
    """A multiple of 3 frames, >= 3x the receptive field (chunked tests split it in three)."""
    t = max(24, 3 * net.receptive_field)
    return t + (-t) % 3


def nested_input(net, seed=0):
    return np.random.default_rng(seed).standard_normal((2, stream_len(net), *IN_SHAPE), dtype=np.float32)


def test_nested(nested):
    net, params, co_net = nested
    assert net.stride == 2 and net.out_shape(IN_SHAPE) == (1, 1, 5)
    record("nested", compare_with_co(net, params, co_net, IN_SHAPE, x=nested_input(net), jit_forward=True))


# ------------------------------------------------------------------------------------- stream behaviour


def _run(net, params, state, x, valid=None):
    """run_layer with an explicit valid mask (one compiled program per chunk length); numpy out."""
    if valid is None:
        valid = np.ones(x.shape[:2], bool)
    state, (y, v) = run_layer(net, params, state, x, valid)
    return state, np.asarray(y), np.asarray(v)


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _tree_equal(a, b) -> bool:
    a, b = _np(a), _np(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_chunked_equals_one_shot(nested):
    net, params, _ = nested
    x = nested_input(net, seed=1)
    t = x.shape[1]
    fresh = net.init_state(2, IN_SHAPE)
    s_full, y_full, v_full = _run(net, params, fresh, x)
    state, ys, vs = fresh, [], []
    for i in range(3):
        state, y, v = _run(net, params, state, x[:, i * t // 3:(i + 1) * t // 3])
        ys.append(y)
        vs.append(v)
    np.testing.assert_array_equal(np.concatenate(vs, 1), v_full)
    np.testing.assert_array_equal(np.concatenate(ys, 1), y_full)
    assert _tree_equal(state, s_full)


def test_stride2_validity_pattern(nested):
    """Output valid iff t >= delay and (t - delay) % stride == 0; continual returns None elsewhere
    (test_nested checks that None pattern step by step)."""
    net, params, _ = nested
    x = nested_input(net, seed=2)
    _, _, v = _run(net, params, net.init_state(2, IN_SHAPE), x)
    t = np.arange(x.shape[1])
    want = (t >= net.delay) & ((t - net.delay) % net.stride == 0)
    assert want.sum() >= 3
    np.testing.assert_array_equal(v, np.broadcast_to(want, v.shape))


def test_reset_by_mask(nested):
    net, params, _ = nested
    x = nested_input(net, seed=3)
    h = x.shape[1] // 3
    x1, x2 = x[:, :h], x[:, h:2 * h]
    fresh = net.init_state(2, IN_SHAPE)
    s1, _, _ = _run(net, params, fresh, x1)
    s_reset = reset_state(s1, fresh, np.array([True, False]))
    _, y_r, v_r = _run(net, params, s_reset, x2)
    _, y_f, v_f = _run(net, params, fresh, x2)       # stream 0 must restart as fresh
    _, y_u, v_u = _run(net, params, s1, x2)          # stream 1 must be untouched
    np.testing.assert_array_equal(v_r[0], v_f[0])
    np.testing.assert_array_equal(y_r[0], y_f[0])
    np.testing.assert_array_equal(v_r[1], v_u[1])
    np.testing.assert_array_equal(y_r[1], y_u[1])
    assert not v_r[0, :net.delay].any() and v_u[1].any()
    with pytest.raises(ValueError, match="reset mask"):
        reset_state(s1, fresh, np.array([True, False, True]))


def test_valid_input_skips_frames(nested):
    """A stream given valid=False at some steps behaves as if those frames were never fed: its
    outputs (in order) and final state equal a run on only its valid frames, and garbage (NaN)
    in the skipped frames never leaks."""
    net, params, _ = nested
    x = nested_input(net, seed=4)
    b, t = x.shape[:2]
    rng = np.random.default_rng(5)
    valid = np.ones((b, t), bool)
    valid[1] = rng.random(t) > 0.3
    valid[1, :3] = [True, False, False]               # skips before the first emission, too
    x_in = x.copy()
    x_in[~valid] = np.nan
    s, y, v = _run(net, params, net.init_state(b, IN_SHAPE), x_in, valid)
    assert not v[1][~valid[1]].any(), "an output was emitted on a skipped step"

    n = int(valid[1].sum())
    x_c = np.zeros_like(x)                            # stream 1's valid frames first, then padding
    x_c[:, :n] = x[1, valid[1]]
    valid_c = np.zeros((b, t), bool)
    valid_c[:, :n] = True
    s_c, y_c, v_c = _run(net, params, net.init_state(b, IN_SHAPE), x_c, valid_c)
    assert v_c[1].sum() >= 2
    np.testing.assert_array_equal(v[1].sum(), v_c[1].sum())
    np.testing.assert_array_equal(y[1][v[1]], y_c[1][v_c[1]])
    assert _tree_equal(jax.tree.map(lambda a: a[1], _np(s)), jax.tree.map(lambda a: a[1], _np(s_c)))
    # stream 0 (all valid) is unaffected by stream 1's gaps
    _, y0, v0 = _run(net, params, net.init_state(b, IN_SHAPE), x)
    np.testing.assert_array_equal(v[0], v0[0])
    np.testing.assert_array_equal(y[0], y0[0])


# ------------------------------------------------------------------------------------- input errors

def _zero_params(layer, in_shape):
    """Params of the right structure without running (and compiling) the random initialisers."""
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(layer.init, jax.random.key(0), in_shape))


# name -> (layer, channel count checked in step mode, ... in clip mode). Channel-agnostic layers
# (pools, Delay) only know their channel count through the stream state.
ERROR_LAYERS = {
    "Conv": (L.Conv(4, 6, 3, 1, 1), True, True),
    "Conv_stateless": (L.Conv(4, 6, (1, 3, 3), 1, (0, 1, 1)), True, True),
    "Pool": (L.Pool("avg", 3, 1, 1), True, False),
    "GlobalAvgPool": (L.GlobalAvgPool(window=3), True, False),
    "Delay": (L.Delay(2), True, False),
    "BatchNorm": (L.BatchNorm(4), True, True),
    "Dense": (L.Dense(4, 3), True, True),
    "Activation": (L.Activation("relu"), False, False),
    "Sequential": (L.Sequential.of(L.Conv(4, 6, 3, 1, 1), L.Activation("relu")), True, True),
}


@pytest.mark.parametrize("name", list(ERROR_LAYERS))
@pytest.mark.parametrize("problem", ["channels", "rank", "dtype"])
def test_input_errors(name, problem):
    """Wrong channel count, wrong rank or an integer dtype raise at trace time, naming the layer
    (for a container: the child that rejects the input)."""
    layer, channels_step, channels_clip = ERROR_LAYERS[name]
    if problem == "channels" and not channels_step:
        pytest.skip("per-element layer: any channel count is valid")
    in_shape = (5, 5, 4)
    params = _zero_params(layer, in_shape)
    state = layer.init_state(2, in_shape)
    shape = {"channels": (2, 6, 5, 5, 3), "rank": (2, 6, 5, 4), "dtype": (2, 6, 5, 5, 4)}[problem]
    frames = np.zeros(shape, np.int32 if problem == "dtype" else np.float32)
    exc = TypeError if problem == "dtype" else ValueError
    owner = "Conv" if name == "Sequential" else name.split("_")[0]
    with pytest.raises(exc, match=owner):
        run_layer(layer, params, state, frames)
    if problem != "channels" or channels_clip:
        with pytest.raises(exc, match=owner):
            layer.forward(params, frames)


def test_valid_mask_shape_error():
    layer = L.Delay(1)
    state = layer.init_state(2, (3, 3, 2))
    with pytest.raises(ValueError, match="valid"):
        run_layer(layer, None, state, np.zeros((2, 5, 3, 3, 2), np.float32), np.ones((2, 4), bool))


def test_state_shape_mismatch_error():
    """A state built for another frame size is rejected with the layer's name, not a scan error."""
    layer = L.Sequential.of(L.Conv(4, 4, 1), L.Pool("max", 2, 1, 0))
    state = layer.init_state(2, (6, 6, 4))
    with pytest.raises(ValueError, match="Pool"):
        run_layer(layer, _zero_params(layer, (6, 6, 4)), state, np.zeros((2, 3, 5, 5, 4), np.float32))


# ------------------------------------------------------------------------------------- Sequential variants


def test_strided_sequential_equals_sequential(nested):
    """StridedSequential skips the layers after the stride-2 pool on steps where it does not emit;
    outputs, validity and final state equal the plain Sequential's exactly, with gaps in the input."""
    net, params, _ = nested
    strided = L.StridedSequential(net.children)
    assert strided._split() == [n for n, _ in net.children].index("pool") + 1
    for attr in ("delay", "receptive_field", "stride", "padding"):
        assert getattr(strided, attr) == getattr(net, attr)
    x = nested_input(net, seed=6)
    valid = np.ones(x.shape[:2], bool)
    valid[1, 5:9] = False
    s, y, v = _run(net, params, net.init_state(2, IN_SHAPE), x, valid)
    s2, y2, v2 = _run(strided, params, strided.init_state(2, IN_SHAPE), x, valid)
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(y2[v2], y[v])
    head = L.Sequential(net.children[:strided._split()])   # up to the strided pool
    _, _, v_pool = _run(head, {n: p for n, p in params.items() if n in dict(head.children)}, head.init_state(2, IN_SHAPE),
                        x, valid)
    none = ~v_pool.any(axis=0)                        # steps where the pool emits for no stream
    assert none[net.delay:].any() and not y2[:, none].any(), "steps skipped for every stream give zeros"
    assert _tree_equal(_np(s2), _np(s))
    np.testing.assert_array_equal(np.asarray(strided.forward(params, x)), np.asarray(net.forward(params, x)))
    assert strided.macs(IN_SHAPE, 12) == net.macs(IN_SHAPE, 12) and strided.macs(IN_SHAPE) == net.macs(IN_SHAPE)


def test_clip_only_sequential():
    seq = L.Sequential.of(("conv", L.Conv(4, 6, 3, 1, 1)), ("pool", L.GlobalAvgPool()))
    root = L.ClipOnlySequential(seq.children)
    params = seq.init(jax.random.key(0), IN_SHAPE)
    x = np.random.default_rng(0).standard_normal((2, 5, *IN_SHAPE), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(root.forward(params, x)), np.asarray(seq.forward(params, x)))
    assert root.macs(IN_SHAPE, 5) == seq.macs(IN_SHAPE, 5)
    for call in (lambda: root.init_state(2, IN_SHAPE), lambda: root.macs(IN_SHAPE),
                 lambda: root.step(params, {}, x[:, 0], np.ones(2, bool))):
        with pytest.raises(NotImplementedError, match="clip-only model"):
            call()


def test_pathways_and_clip_length():
    """Pathways takes a tuple of per-stream clip lengths; clip_length chains through Sequentials,
    treats Delay as the identity and a global pool as length 1."""
    slow = L.Sequential.of(L.Conv(4, 4, (3, 1, 1)), L.Delay(2))
    fast = L.Conv(4, 2, (5, 1, 1), 1, (2, 0, 0))
    paths = L.Pathways.of(("slow", slow), ("fast", fast), auto_delay=False)
    assert L.clip_length(slow, 9) == 7 and L.clip_length(fast, 9) == 9
    assert L.clip_length(paths, (9, 36)) == (7, 36)
    assert L.clip_length(L.Sequential.of(fast, L.GlobalAvgPool()), 9) == 1
    assert paths.macs((IN_SHAPE, IN_SHAPE), (9, 36)) == slow.macs(IN_SHAPE, 9) + fast.macs(IN_SHAPE, 36)
    assert paths.macs((IN_SHAPE, IN_SHAPE), 9) == L.Parallel(paths.branches).macs((IN_SHAPE, IN_SHAPE), 9)


def test_identity_pool():
    """IdentityPool (kernel = stride = 1 max pool) computes nothing and costs what Pool("max")
    costs, in a clip and in a step."""
    pool = L.IdentityPool()
    x = np.random.default_rng(0).standard_normal((2, 4, *IN_SHAPE), dtype=np.float32)
    assert pool.forward(None, x) is x and pool.init_state(2, IN_SHAPE) is None
    _, (y, v) = run_layer(pool, None, None, x)
    np.testing.assert_array_equal(np.asarray(y), x)
    assert np.asarray(v).all()
    for t in (None, 4):
        assert pool.macs(IN_SHAPE, t) == L.Pool("max").macs(IN_SHAPE, t) > 0
    assert (pool.delay, pool.receptive_field, pool.stride, pool.padding) == (0, 1, 1, 0)
    with pytest.raises(ValueError, match="IdentityPool"):
        L.IdentityPool(kernel=(2, 1, 1))
