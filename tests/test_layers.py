"""Leaf layers vs continual-inference (random weights, CPU, fp32).

For every case: metadata (delay, receptive field, temporal stride and padding) equals the co
module's; ``run_layer`` frame by frame equals ``forward_step`` per frame, including which steps
emit nothing; clip ``forward`` equals the ``torch.nn`` forward. Streams are >= 3x the receptive
field and >= 24 frames. Containers, SE nesting and stream behaviour: ``test_layers_containers.py``.
"""

from __future__ import annotations

from collections import OrderedDict

import continual as co
import numpy as np
import pytest
import torch
from torch import nn

from co3d_jax import layers as L
from co3d_jax.stream import run_layer

from torch_utils import (ErrorLog, bn_params, clip_from_torch, clip_to_torch, co_forward_steps, compare_with_co,
                         conv_params, frame_from_torch, linear_params, params_from_torch, randomize_bn_, rel_err,
                         stack_valid)

TOL = 1e-5
LOG = ErrorLog(TOL, "max relative error per layer type (test_layers.py)")
record = LOG.record
_report_errors, _torch_no_grad = LOG.fixtures()


# ------------------------------------------------------------------------------------- conv

# name -> the layer under test; the co.Conv3d reference is built from its fields
CONV_CASES = {
    "k3p1": L.Conv(4, 6, (3, 3, 3), (1, 1, 1), (1, 1, 1), bias=True),
    "k3p0_nobias": L.Conv(4, 6, (3, 3, 3), (1, 1, 1), (0, 1, 1)),
    "k5p2": L.Conv(3, 5, (5, 1, 1), (1, 1, 1), (2, 0, 0), bias=True),
    "k2p1_even": L.Conv(4, 4, (2, 3, 3), (1, 1, 1), (1, 1, 1), bias=True),
    "k4p1_ts2_ss2": L.Conv(4, 6, (4, 3, 3), (2, 2, 2), (1, 1, 1), bias=True),
    "k1_stateless_ss2": L.Conv(4, 6, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=True),
    "groups2_ss2": L.Conv(4, 8, (3, 3, 3), (1, 2, 2), (1, 1, 1), groups=2, bias=True),
    "dw_lax_ss2": L.Conv(6, 6, (3, 3, 3), (1, 2, 2), (1, 1, 1), groups=6, impl="lax"),
    "dw_shift_ts2_ss2_bias": L.Conv(6, 6, (3, 3, 3), (2, 2, 2), (1, 1, 1), groups=6, bias=True, impl="shift"),
    "rep_k5p2_ss2": L.Conv(4, 4, (5, 3, 3), (1, 2, 2), (2, 1, 1), bias=True, temporal_fill="replicate"),
    "rep_dw_lax_k3p2_ts2": L.Conv(6, 6, (3, 1, 1), (2, 1, 1), (2, 0, 0), groups=6, temporal_fill="replicate",
                                  impl="lax"),
    "rep_dw_shift_k3p1": L.Conv(6, 6, (3, 3, 3), (1, 1, 1), (1, 1, 1), groups=6, temporal_fill="replicate",
                                impl="shift"),
    # dense convs without a library convolution (X3D's dense_impl="shift": the stem and projection shortcuts)
    "dense_shift_k1_stateless_ss2": L.Conv(3, 6, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=True, impl="shift"),
    "dense_shift_1x1_ss2": L.Conv(4, 6, 1, (1, 2, 2), impl="shift"),
}


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv(name):
    layer = CONV_CASES[name]
    co_conv = co.Conv3d(layer.in_channels, layer.out_channels, layer.kernel, stride=layer.strides, padding=layer.pads,
                        groups=layer.groups, bias=layer.bias, temporal_fill=layer.temporal_fill).eval()
    params = conv_params(co_conv)
    assert params["kernel"].shape == (*layer.kernel, layer.in_channels // layer.groups, layer.out_channels)
    in_shape = (7, 7, layer.in_channels) if layer.strides[1] == 2 else (6, 6, layer.in_channels)
    record("conv", compare_with_co(layer, params, co_conv, in_shape, jit_forward=layer.impl == "shift"))


def test_conv_k1_temporal_stride():
    """kT=1 with temporal stride 2. continual-inference 1.2.4 emits on *every* step here (its
    state buffer is empty, so ``get_state`` returns None and the stride counter restarts each
    step); the JAX layer follows the clip semantics and emits every 2nd frame. The values agree."""
    co_conv = co.Conv3d(4, 6, 1, stride=(2, 1, 1), bias=True).eval()
    layer = L.Conv(4, 6, 1, (2, 1, 1), 0, bias=True)
    params = conv_params(co_conv)
    assert (layer.delay, layer.receptive_field, layer.stride, layer.padding) == (
        co_conv.delay, co_conv.receptive_field, co_conv.stride[0], co_conv.padding[0])
    x = np.random.default_rng(0).standard_normal((2, 24, 5, 5, 4), dtype=np.float32)
    _, (ys, vs) = run_layer(layer, params, layer.init_state(2, (5, 5, 4)), x)
    outs = co_forward_steps(co_conv, clip_to_torch(x))
    assert all(o is not None for o in outs)  # the library quirk
    want_valid = np.arange(24) % 2 == 0
    np.testing.assert_array_equal(np.asarray(vs), np.broadcast_to(want_valid, (2, 24)))
    ref = np.stack([frame_from_torch(o) for o, v in zip(outs, want_valid) if v], 1)
    clip_ref = clip_from_torch(co_conv.forward(clip_to_torch(x)))
    record("conv", {"step": rel_err(np.asarray(ys)[:, want_valid], ref),
                    "clip": rel_err(np.asarray(layer.forward(params, x)), clip_ref)})
    np.testing.assert_allclose(ref, clip_ref, rtol=1e-6, atol=1e-6)  # co's strided outputs = clip


def test_conv_kernel_layout():
    """DHWIO tap 0 multiplies the oldest frame of the window, as torch's ``weight[:, :, 0]``."""
    kernel = np.zeros((3, 1, 1, 1, 1), np.float32)
    kernel[0] = 1.0
    x = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1, 1)
    y = L.Conv(1, 1, (3, 1, 1), 1, 0).forward({"kernel": kernel}, x)
    np.testing.assert_array_equal(np.asarray(y).ravel(), [0, 1, 2, 3])
    conv = nn.Conv3d(1, 1, (3, 1, 1), bias=False)
    conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).reshape(1, 1, 3, 1, 1))
    np.testing.assert_array_equal(conv_params(conv)["kernel"], kernel)


# ------------------------------------------------------------------------------------- pooling

# (name, kind, kernel, stride, padding, fill)
POOL_CASES = [
    ("avg_k3_p1", "avg", (3, 3, 3), (1, 1, 1), (1, 1, 1), "zeros"),
    ("avg_k3_s2_p1", "avg", (3, 3, 3), (2, 2, 2), (1, 1, 1), "zeros"),
    ("avg_k2_s2_replicate", "avg", (2, 2, 2), (2, 2, 2), (1, 0, 0), "replicate"),
    ("max_k3_sp1", "max", (3, 3, 3), (1, 1, 1), (0, 1, 1), "zeros"),
    # temporal padding: the step pads with the fill (0 here: the first output is max(0, ...)),
    # while the clip pads with -inf; continual-inference does the same
    ("max_k3_p1_zeros", "max", (3, 3, 3), (1, 1, 1), (1, 1, 1), "zeros"),
    ("max_k3_p1_neginf", "max", (3, 1, 1), (1, 1, 1), (1, 0, 0), "neg_inf"),
    ("max_k3_p1_replicate_s2", "max", (3, 2, 2), (2, 2, 2), (1, 0, 0), "replicate"),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pool(case):
    name, kind, k, s, p, fill = case
    cls = co.AvgPool3d if kind == "avg" else co.MaxPool3d
    co_pool = cls(k, stride=s, padding=p, temporal_fill=fill).eval()
    layer = L.Pool(kind, k, s, p, temporal_fill=fill)
    record(f"pool_{kind}", compare_with_co(layer, None, co_pool, (6, 6, 4)))


@pytest.mark.parametrize("window,fill", [(1, "zeros"), (3, "zeros"), (5, "replicate")])
def test_global_avg_pool(window, fill):
    co_pool = co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=window, temporal_fill=fill).eval()
    layer = L.GlobalAvgPool(window=window, temporal_fill=fill)
    record("global_avg_pool", compare_with_co(layer, None, co_pool, (5, 5, 4)))


def test_global_avg_pool_frame_clip_mode():
    """``clip_pool='frame'`` is the clip counterpart of the one-frame window: a per-frame mean."""
    layer = L.GlobalAvgPool(window=1, clip_pool="frame")
    x = np.random.default_rng(0).standard_normal((2, 24, 5, 5, 4), dtype=np.float32)
    ref = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(np.asarray(layer.forward(None, x)), ref, rtol=1e-5, atol=1e-6)
    assert layer.delay == 0


# ------------------------------------------------------------------------------------- delay, BN, activations, dense


@pytest.mark.parametrize("d", [0, 3])
def test_delay(d):
    co_delay = co.Delay(d)
    layer = L.Delay(d)
    errs = compare_with_co(layer, None, co_delay, (4, 4, 3))
    assert errs == {"step": 0.0, "clip": 0.0}  # pure data movement: bit-exact
    record("delay", errs)


def test_batchnorm():
    gen = torch.Generator().manual_seed(1)
    bn = randomize_bn_(nn.BatchNorm3d(6, eps=1e-3), gen).eval()
    co_bn = co.continual(bn)
    layer = L.BatchNorm(6, eps=1e-3)
    record("batchnorm", compare_with_co(layer, bn_params(bn), co_bn, (5, 5, 6)))


# (JAX fn, continual module); all run side by side in one concat BroadcastReduce (one compile)
ACTIVATIONS = {
    "relu": ("relu", lambda: nn.ReLU()),
    "swish_silu": ("swish", lambda: nn.SiLU()),
    "swish_lambda": ("swish", lambda: co.Lambda(lambda x: x * torch.sigmoid(x))),
    "sigmoid": ("sigmoid", lambda: nn.Sigmoid()),
    "softmax_channels": ("softmax", lambda: nn.Softmax(dim=1)),
}


def test_activations():
    """ReLU, Swish (nn.SiLU and co.Lambda), Sigmoid and Softmax over channels. Each one is also
    checked on its own slice of the concatenated output."""
    c = 5
    # each branch wrapped in a Sequential: continual 1.2.4's BroadcastReduce.forward_step sets a
    # *string* call_mode on its children, which naively converted torch.nn modules cannot dispatch
    co_mod = co.BroadcastReduce(*[co.Sequential(make()) for _, make in ACTIVATIONS.values()], reduce="concat")
    layer = L.broadcast_reduce(*[L.Activation(fn) for fn, _ in ACTIVATIONS.values()], reduce="concat")
    x = np.random.default_rng(0).standard_normal((2, 24, 4, 4, c), dtype=np.float32) * 3
    errs = compare_with_co(layer, None, co_mod, (4, 4, c), x=x)
    assert errs["step"] <= TOL and errs["clip"] <= TOL
    y = np.asarray(layer.forward(None, x))
    _, (ys, _) = run_layer(layer, None, layer.init_state(2, (4, 4, c)), x, np.ones(x.shape[:2], bool))  # cached
    ys = np.asarray(ys)
    for i, (name, (fn, make)) in enumerate(ACTIVATIONS.items()):
        single = co.continual(make())
        assert (single.delay, single.receptive_field, single.stride[0], single.padding[0]) == (0, 1, 1, 0)
        ref = clip_from_torch(single.forward(clip_to_torch(x)))
        step_ref = np.stack([frame_from_torch(single.forward_step(clip_to_torch(x)[:, :, t]))
                             for t in range(x.shape[1])], 1)
        sl = slice(i * c, (i + 1) * c)
        record(f"activation_{fn}", {"clip": rel_err(y[..., sl], ref), "step": rel_err(ys[..., sl], step_ref)})


@pytest.mark.parametrize("kind,bias", [("linear", True), ("conv1x1x1", False)])
def test_dense(kind, bias):
    if kind == "linear":
        co_mod = co.Linear(5, 7, bias=bias, channel_dim=1)
    else:
        co_mod = co.Conv3d(5, 7, 1, bias=bias)
    layer = L.Dense(5, 7, bias=bias)
    params = linear_params(co_mod)
    assert params_from_torch(layer, co_mod)["kernel"].shape == (5, 7)
    record("dense", compare_with_co(layer, params, co_mod, (3, 3, 5)))


def test_dense_after_global_pool():
    """The head pattern: pool to 1x1 then a channel-dim Linear (a (B, C, 1, 1) step output)."""
    co_mod = co.Sequential(co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=4), co.Linear(6, 3, channel_dim=1))
    layer = L.Sequential.of(L.GlobalAvgPool(window=4), L.Dense(6, 3))
    record("dense", compare_with_co(layer, params_from_torch(layer, co_mod), co_mod, (4, 4, 6)))


# ------------------------------------------------------------------------------------- squeeze-excitation


def co_se(channels: int, se_channels: int, window: int) -> nn.Module:
    """co3d's ``CoSe`` (reference §2.1.4): ``Residual(Sequential(pool, fc1, relu, fc2, sigmoid), reduce="mul")``."""
    return co.Residual(co.Sequential(OrderedDict([
        ("avg_pool", co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=window)),
        ("fc1", co.Conv3d(channels, se_channels, kernel_size=1, bias=True)),
        ("fc1_act", nn.ReLU()),
        ("fc2", co.Conv3d(se_channels, channels, kernel_size=1, bias=True)),
        ("fc2_sig", nn.Sigmoid()),
    ])), reduce="mul")


def se_input(in_shape, frames: int = 24, seed: int = 3) -> np.ndarray:
    """Noise plus slowly varying per-channel offsets, so the SE gates vary across channels and time."""
    rng = np.random.default_rng(seed)
    offset = rng.uniform(-2.0, 2.0, in_shape[-1]) * (1.0 + np.sin(np.arange(frames) / 3.0))[:, None]
    x = 0.5 * rng.standard_normal((2, frames, *in_shape)) + offset[None, :, None, None, :]
    return x.astype(np.float32)


@pytest.mark.parametrize("scope,window", [("frame", 1), ("clip", 3), ("clip", 6)])
def test_squeeze_excitation(scope, window):
    c, cse = 8, 4
    co_mod = co_se(c, cse, window).eval()
    layer = L.squeeze_excitation(c, cse, scope=scope, window=window)
    params = params_from_torch(layer, co_mod)
    assert set(params) == {"gate"} and set(params["gate"]) == {"fc1", "fc2"}
    errs = compare_with_co(layer, params, co_mod, (5, 5, c), x=se_input((5, 5, c)))
    assert layer.delay == window - 1
    record(f"se_{scope}", errs)


def test_squeeze_excitation_frame_clip_pool():
    """Frame-scope SE with ``clip_pool='frame'``: the clip forward equals continual's frame-by-frame
    SE (the exact clip reference of reference §2.1.4: pool over H, W only)."""
    c, cse = 8, 4
    co_mod = co_se(c, cse, 1).eval()
    layer = L.squeeze_excitation(c, cse, scope="frame", clip_pool="frame")
    params = params_from_torch(layer, co_mod)
    x = se_input((5, 5, c))
    valid, ref = stack_valid(co_forward_steps(co_mod, clip_to_torch(x)))  # frame scope: every step emits
    assert valid.all()
    record("se_frame", {"clip_pool_frame": rel_err(np.asarray(layer.forward(params, x)), ref)})
