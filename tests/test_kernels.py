"""Pallas kernels (``co3d_jax/kernels``) in interpret mode against the XLA path, on small shapes
(CPU, seconds): the fused continual depthwise step alone, inside a ``Conv`` over a stream with
validity gaps, and a reduced CoX3D over a 300-frame stream with validity, reset and chunking."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import co3d_jax
from co3d_jax.kernels import depthwise_step, depthwise_step_reference, pallas_supported
from co3d_jax.kernels.depthwise import tiles
from co3d_jax.layers import Conv
from co3d_jax.stream import run_layer


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("kernel,hw,c,bias,in_act,activation,padded", [
    ((3, 3, 3), (6, 5), 12, True, "", "", True),          # an already padded frame: no halo
    ((3, 3, 3), (7, 5), 13, True, "relu", "swish", False),  # odd H/W, channels not a power of 2, halo
    ((3, 3, 3), (5, 6), 20, False, "swish", "relu", False),
    ((5, 1, 1), (4, 7), 8, True, "", "relu", False),
])
def test_depthwise_step_kernel_matches_xla(kernel, hw, c, bias, in_act, activation, padded):
    kt, kh, kw = kernel
    ho, wo = hw
    ks = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(ks[0], (3, ho + kh - 1, wo + kw - 1, c) if padded else (3, ho, wo, c))
    acc = jax.random.normal(ks[1], (3, kt - 1, ho, wo, c))
    k = jax.random.normal(ks[2], (kt, kh, kw, c))
    b = jax.random.normal(ks[3], (c,)) if bias else None
    valid = jnp.array([True, False, True])
    # a small tile budget: several row, column and channel tiles, masked edges (and halos)
    y, new = depthwise_step(x, acc, k, b, valid, in_activation=in_act, activation=activation, budget=64, max_tc=8,
                            max_tw=4, interpret=True)
    y_ref, new_ref = depthwise_step_reference(x, acc, k, b, valid, in_activation=in_act, activation=activation)
    assert y.shape == y_ref.shape == (3, ho, wo, c) and new.shape == new_ref.shape
    assert _rel(y, y_ref) <= 1e-6 and _rel(new, new_ref) <= 1e-6
    np.testing.assert_array_equal(np.asarray(new[1]), np.asarray(acc[1]))  # invalid stream: state kept
    if not padded:  # the reference is the XLA path: activation, zero padding, shift-and-add
        xp = jnp.pad(jax.nn.relu(x) if in_act == "relu" else jax.nn.silu(x) if in_act == "swish" else x,
                     ((0, 0), ((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2, (0, 0)))
        y0, _ = depthwise_step_reference(xp, acc, k, b, valid, activation=activation)
        assert _rel(y_ref, y0) <= 1e-6


@pytest.mark.parametrize("hw,c,strides", [((9, 7), 13, (2, 2)), ((8, 8), 6, (2, 1))])
def test_strided_depthwise_step_kernel_matches_xla(hw, c, strides):
    """Spatial strides: the kernel (strided loads; gathers in the interpreter) equals the reference."""
    h, w = hw
    ho, wo = (h - 1) // strides[0] + 1, (w - 1) // strides[1] + 1
    ks = jax.random.split(jax.random.key(0), 4)
    x, acc = jax.random.normal(ks[0], (3, h, w, c)), jax.random.normal(ks[1], (3, 2, ho, wo, c))
    k, b = jax.random.normal(ks[2], (3, 3, 3, c)), jax.random.normal(ks[3], (c,))
    valid = jnp.array([True, False, True])
    kw = dict(strides=strides, pads=(1, 1), in_activation="relu", activation="swish")
    y, new = depthwise_step(x, acc, k, b, valid, budget=16, max_tc=8, max_tw=2, interpret=True, **kw)
    y_ref, new_ref = depthwise_step_reference(x, acc, k, b, valid, **kw)
    assert y.shape == (3, ho, wo, c) and _rel(y, y_ref) <= 1e-6 and _rel(new, new_ref) <= 1e-6
    with pytest.raises(ValueError, match="pass pads with spatial strides"):
        depthwise_step(x, acc, k, b, valid, strides=strides, interpret=True)


def test_kernel_activations_vanish_at_zero_and_others_are_refused():
    """The input activation stands for the zero padding of f(x): only f(0) = 0 is accepted."""
    from co3d_jax.kernels.depthwise import IN_ACTIVATIONS, _act
    for name in IN_ACTIVATIONS:
        assert float(_act(jnp.zeros(()), name)) == 0.0
    x, acc, k = jnp.ones((1, 4, 4, 2)), jnp.zeros((1, 2, 4, 4, 2)), jnp.ones((3, 3, 3, 2))
    with pytest.raises(ValueError, match="activations must be one of"):
        depthwise_step(x, acc, k, None, jnp.ones((1,), bool), in_activation="sigmoid", interpret=True)
    with pytest.raises(ValueError, match="in_activation and out_activation must be one of"):
        Conv(4, 4, (3, 3, 3), 1, (1, 1, 1), groups=4, in_activation="sigmoid")


def test_tiles_are_powers_of_two():
    for ho, wo, c in ((40, 40, 54), (20, 20, 108), (10, 10, 216), (5, 5, 432), (80, 80, 24)):
        th, tw, tc = tiles(ho, wo, c)
        assert all(v & (v - 1) == 0 for v in (th, tw, tc)) and tw >= wo and th * tw * tc <= max(2048, tw * tc)


def test_supported_shapes():
    assert pallas_supported((3, 3, 3), (1, 1, 1), "zeros") and pallas_supported((5, 1, 1), (1, 1, 1), "zeros")
    assert not pallas_supported((3, 3, 3), (1, 2, 2), "zeros")       # spatial stride: XLA path unless asked
    assert pallas_supported((3, 3, 3), (1, 2, 2), "zeros", spatial_strides=True)
    assert not pallas_supported((3, 3, 3), (2, 1, 1), "zeros", spatial_strides=True)  # temporal stride
    assert not pallas_supported((3, 3, 3), (1, 1, 1), "replicate")   # replicate fill: XLA path
    assert not pallas_supported((1, 3, 3), (1, 1, 1), "zeros")       # no temporal state


@pytest.mark.parametrize("kernel,strides,pads,fill", [
    ((3, 3, 3), 1, (1, 1, 1), "zeros"),
    ((5, 1, 1), 1, (2, 0, 0), "zeros"),
    ((3, 3, 3), (1, 2, 2), (1, 1, 1), "zeros"),      # strided loads (impl='pallas', and 'fused' on GPUs)
    ((3, 3, 3), 1, (1, 1, 1), "replicate"),         # falls back to the XLA step
])
def test_conv_pallas_step_equals_shift_over_a_stream(kernel, strides, pads, fill):
    c = 6
    ref = Conv(c, c, kernel, strides, pads, groups=c, bias=True, temporal_fill=fill)
    pal = Conv(c, c, kernel, strides, pads, groups=c, bias=True, temporal_fill=fill, impl="pallas")
    p = ref.init(jax.random.key(0), (9, 7, c))
    x = jax.random.normal(jax.random.key(1), (2, 12, 9, 7, c))
    valid = jnp.array([[True] * 12, [True, False, True, True, False, False] + [True] * 6])
    sr, outr = run_layer(ref, p, ref.init_state(2, (9, 7, c)), x, valid)
    sp, outp = run_layer(pal, p, pal.init_state(2, (9, 7, c)), x, valid)
    np.testing.assert_array_equal(np.asarray(outr.valid), np.asarray(outp.valid))
    v = np.asarray(outr.valid)
    assert _rel(np.asarray(outp.y)[v], np.asarray(outr.y)[v]) <= 1e-6
    for a, b in zip(jax.tree.leaves(sr), jax.tree.leaves(sp)):
        assert a.dtype == b.dtype and _rel(b, a) <= 1e-6
    # clip mode and prefill run the clip kernel: the shift path's values
    assert _rel(pal.forward(p, x), ref.forward(p, x)) <= 1e-6
    for n in (1, 2, 5, 12):  # below, at and past the delay
        (sa, ya), (sb, yb) = ref.prefill(p, x[:, :n]), pal.prefill(p, x[:, :n])
        assert ya.shape == yb.shape and _rel(yb, ya) <= 1e-6 if ya.size else ya.shape == yb.shape
        assert _rel(sb["acc"], sa["acc"]) <= 1e-6 and (np.asarray(sb["n"]) == np.asarray(sa["n"])).all()


def _ops(jaxpr) -> set:
    """Primitive names of a jaxpr and its sub-jaxprs, not looking inside Pallas kernels."""
    names = set()
    for e in jaxpr.eqns:
        names.add(e.primitive.name)
        if e.primitive.name == "pallas_call":
            continue
        for v in e.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _ops(inner)
    return names


def _fused_convs(layer, strides=False):
    """``(in_activation, out_activation)`` (or the strides) of every conv that has one."""
    from co3d_jax.layers import Parallel, Sequential
    if isinstance(layer, Sequential):
        return [f for n, c in layer.children for f in _fused_convs(c, strides)]
    if isinstance(layer, Parallel):
        return [f for n, c in layer.branches for f in _fused_convs(c, strides)]
    if isinstance(layer, Conv) and (layer.in_activation or layer.out_activation):
        return [layer.strides if strides else (layer.in_activation, layer.out_activation)]
    return []


def test_cox3d_pallas_equals_xla_over_300_frames_with_validity_reset_and_chunks(monkeypatch):
    """The default X3D on a (simulated) NVIDIA GPU, folded: stride-1 depthwise steps in the kernel with
    the activations fused (strided ones too), dense one-frame convs without library convolutions; vs XLA unfused."""
    import co3d_jax.kernels as kernels
    monkeypatch.setattr(kernels, "on_nvidia_gpu", lambda: True)
    kw = dict(image_size=32, depth_factor=0.3, num_classes=5)
    xla = co3d_jax.create_model("cox3d_s_13", depthwise_impl="auto", dense_impl="auto", fuse_activations=False, **kw)
    pal = co3d_jax.create_model("cox3d_s_13", **kw)
    params = xla.init(jax.random.key(0))
    xla, fp = xla.fold_batchnorm(params)
    pal, fp2 = pal.fold_batchnorm(params)
    assert jax.tree.structure(fp) == jax.tree.structure(fp2)
    fused = _fused_convs(pal.net)
    assert ("relu", "") in fused and ("relu", "swish") in fused and ("", "relu") in fused  # b with/without SE, stem
    assert not _fused_convs(xla.net)
    t = 300
    frames = jax.random.normal(jax.random.key(1), (2, t, 32, 32, 3))
    valid = np.asarray(jax.random.uniform(jax.random.key(2), (2, t)) > 0.2)

    def run(model):
        f = model.stream_fn()
        s, a = f(fp, model.init_state(2), frames[:, :120], jnp.asarray(valid[:, :120]))
        s = model.reset(s, jnp.array([False, True]))           # stream 1 restarts at frame 120
        s, b = f(fp, s, frames[:, 120:], jnp.asarray(valid[:, 120:]))  # a second chunk
        return s, np.concatenate([a.scores, b.scores], 1), np.concatenate([a.valid, b.valid], 1)

    sx, yx, vx = run(xla)
    sp, yp, vp = run(pal)
    np.testing.assert_array_equal(vx, vp)
    assert vx.sum() > 400
    for i in range(2):  # every valid frame, relative to that frame's scores
        for j in np.flatnonzero(vx[i]):
            assert _rel(yp[i, j], yx[i, j]) <= 1e-5, (i, j)
    for a, b in zip(jax.tree.leaves(sx), jax.tree.leaves(sp)):
        assert a.shape == b.shape and a.dtype == b.dtype and _rel(b, a) <= 1e-5


def test_x3d_default_is_fused_on_nvidia_gpus_only(monkeypatch):
    """X3D's default ``impl='fused'`` (unfolded): XLA only off NVIDIA GPUs (here), and on one (simulated)
    the step runs the Pallas kernels and no library convolution (outputs: the folded test below)."""
    import co3d_jax.kernels as kernels
    kw = dict(image_size=32, depth_factor=0.6, num_classes=5)
    fused, xla = co3d_jax.create_model("cox3d_s_13", **kw), co3d_jax.create_model(
        "cox3d_s_13", depthwise_impl="auto", dense_impl="auto", **kw)
    assert fused.config.depthwise_impl == fused.config.dense_impl == "fused"
    params = xla.init(jax.random.key(0))
    frame = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))

    def jaxpr(model):
        return str(jax.make_jaxpr(model.step)(params, model.init_state(2), frame))

    assert "pallas_call" not in jaxpr(fused) and jaxpr(fused) == jaxpr(xla)  # off NVIDIA GPUs: identical programs
    monkeypatch.setattr(kernels, "on_nvidia_gpu", lambda: True)
    on_gpu = jaxpr(fused)
    assert "pallas_call" in on_gpu and "conv_general_dilated" not in on_gpu
    frames = jax.random.normal(jax.random.key(2), (2, 13, 32, 32, 3))
    clip = str(jax.make_jaxpr(fused.forward)(params, frames))  # clip mode: the clip kernel, same scores
    # the stem's temporal conv and the 8 blocks' b convs, each one clip kernel; no grouped convolution left
    assert len(re.findall(r"\bname=depthwise_clip\b", clip)) == 9
    assert not re.search(r"feature_group_count=([2-9]|\d\d)", clip)
    assert _rel(jax.jit(fused.forward)(params, frames), jax.jit(xla.forward)(params, frames)) <= 1e-5


def test_fused_default_folded_is_the_xla_program_off_gpus_and_fuses_on_them(monkeypatch):
    """Folded (BN merged, activations moved into the depthwise convs): off NVIDIA GPUs the step and
    the clip forward are the very program of the unfused XLA model (prefill: the same bits); on a (simulated) one the step
    has no activation left outside the Pallas kernels of the depthwise convs, same outputs."""
    import co3d_jax.kernels as kernels
    kw = dict(image_size=32, depth_factor=0.6, num_classes=5)
    fused = co3d_jax.create_model("cox3d_s_13", **kw)
    xla = co3d_jax.create_model("cox3d_s_13", depthwise_impl="auto", dense_impl="auto", fuse_activations=False, **kw)
    params = xla.init(jax.random.key(0))
    fused, fp = fused.fold_batchnorm(params)
    xla, xp = xla.fold_batchnorm(params)
    assert _fused_convs(fused.net) and not _fused_convs(xla.net)
    frame = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    clip = jax.random.normal(jax.random.key(3), (2, 13, 32, 32, 3))

    def step(model):
        return str(jax.make_jaxpr(model.step)(fp, model.init_state(2), frame))

    assert step(fused) == step(xla)
    assert str(jax.make_jaxpr(fused.forward)(fp, clip)) == str(jax.make_jaxpr(xla.forward)(fp, clip))
    # prefill: the same elementwise ops (an Activation layer prefills frame-flattened): the same bits
    for a, b in zip(jax.tree.leaves(jax.jit(fused.prefill)(fp, clip)), jax.tree.leaves(jax.jit(xla.prefill)(fp, clip))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    monkeypatch.setattr(kernels, "on_nvidia_gpu", lambda: True)
    on_gpu = step(fused)
    assert "conv_general_dilated" not in on_gpu
    # one kernel per fused conv, the stages' first (spatially strided) b convs included
    strides = _fused_convs(fused.net, strides=True)
    assert sum(st != (1, 1, 1) for st in strides) == 4
    assert on_gpu.count("pallas_call[") == len(strides) == 9
    frames = jax.random.normal(jax.random.key(2), (2, 30, 32, 32, 3))
    _, a = xla.stream_fn()(fp, xla.init_state(2), frames)
    _, b = fused.stream_fn()(fp, fused.init_state(2), frames)
    v = np.asarray(a.valid)
    assert v.any() and (v == np.asarray(b.valid)).all()
    assert _rel(np.asarray(b.scores)[v], np.asarray(a.scores)[v]) <= 1e-5


@pytest.mark.parametrize("impl", ["auto", "pallas"])
def test_conv_activations_mean_the_activation_layers_in_every_mode(impl):
    """``Conv(in_activation, out_activation)`` = ``Activation -> Conv -> Activation`` in clip mode,
    prefill and a stream of steps with validity gaps (XLA and Pallas paths), with the same MACs."""
    from co3d_jax.layers import Activation, Sequential
    c = 6
    conv = Conv(c, c, (3, 3, 3), 1, (1, 1, 1), groups=c, bias=True, impl=impl)
    fused = Conv(c, c, (3, 3, 3), 1, (1, 1, 1), groups=c, bias=True, impl=impl, in_activation="relu",
                 out_activation="swish")
    ref = Sequential.of(("i", Activation("relu")), ("c", conv), ("o", Activation("swish")))
    p = conv.init(jax.random.key(0), (7, 5, c))
    x = jax.random.normal(jax.random.key(1), (2, 10, 7, 5, c))
    valid = jnp.array([[True] * 10, [True, False, True, True, False, False] + [True] * 4])
    assert _rel(fused.forward(p, x), ref.forward({"c": p}, x)) <= 1e-6
    (sf, yf), (sr, yr) = fused.prefill(p, x), ref.prefill({"c": p}, x)
    assert _rel(yf, yr) <= 1e-6 and _rel(sf["acc"], sr["c"]["acc"]) <= 1e-6
    s1, o1 = run_layer(fused, p, fused.init_state(2, (7, 5, c)), x, valid)
    s2, o2 = run_layer(ref, {"c": p}, ref.init_state(2, (7, 5, c)), x, valid)
    v = np.asarray(o2.valid)
    assert v.any() and (np.asarray(o1.valid) == v).all()
    assert _rel(np.asarray(o1.y)[v], np.asarray(o2.y)[v]) <= 1e-6 and _rel(s1["acc"], s2["c"]["acc"]) <= 1e-6
    for t in (None, 10):
        assert fused.macs((7, 5, c), t) == ref.macs((7, 5, c), t) > conv.macs((7, 5, c), t)
    if impl == "pallas":  # the kernel reads the unpadded frame and activates it itself: no op around it
        ops = _ops(jax.make_jaxpr(fused.step)(p, fused.init_state(2, (7, 5, c)), x[:, 0], valid[:, 0]).jaxpr)
        assert "pallas_call" in ops and not {"pad", "max", "logistic", "custom_jvp_call"} & ops, ops


def test_fuse_activations_stops_at_a_batchnorm_and_keeps_names():
    """Unfolded, only the input activation moves (the output one must follow the BatchNorm); folded,
    both; the layer names, params and MACs are those of the original."""
    from co3d_jax.flops import paper_macs
    from co3d_jax.layers import fuse_activations
    kw = dict(image_size=32, depth_factor=0.6, num_classes=5)
    model = co3d_jax.create_model("cox3d_s_13", **kw)
    plain = fuse_activations(model.net)
    assert set(_fused_convs(plain)) == {("relu", "")}
    names = lambda n: [k for k, _ in n.children]  # noqa: E731
    folded, _ = model.fold_batchnorm(model.init(jax.random.key(0)))
    assert names(folded.net) == names(model.net)
    unfused, _ = co3d_jax.create_model("cox3d_s_13", fuse_activations=False, **kw).fold_batchnorm(
        model.init(jax.random.key(0)))
    for mode in ("clip", "step"):
        assert paper_macs(folded, mode) == paper_macs(unfused, mode)


@pytest.mark.parametrize("impl", ["auto", "pallas"])
def test_a_frame_that_does_not_match_the_state_is_one_error(impl):
    """Both step paths refuse a frame of another batch or spatial size than the state's, naming both."""
    from co3d_jax.layers import Conv
    conv = Conv(8, 8, (3, 3, 3), 1, (1, 1, 1), groups=8, impl=impl)
    params = conv.init(jax.random.key(0))
    state = conv.init_state(2, (16, 16, 8))
    for shape in [(2, 12, 16, 8), (3, 16, 16, 8)]:
        with pytest.raises(ValueError, match=r"frame of shape .* does not match the state.*\(2, 2, 16, 16, 8\)"):
            conv.step(params, state, jnp.zeros(shape), jnp.ones((2,), bool))


@pytest.mark.parametrize("shape,kernel,strides,pads,bias,in_act,activation", [
    ((2, 5, 7, 9, 13), (3, 3, 3), (1, 1, 1), (1, 1, 1), True, "relu", "swish"),   # X3D's b conv, odd sizes
    ((1, 6, 9, 7, 10), (3, 3, 3), (1, 2, 2), (1, 1, 1), False, "", "relu"),        # a stage's strided first block
    ((2, 7, 4, 5, 6), (5, 1, 1), (1, 1, 1), (2, 0, 0), True, "", "relu"),          # the stem's temporal conv
    ((1, 7, 6, 6, 5), (3, 3, 3), (2, 1, 1), ((2, 2), 1, 1), True, "swish", ""),    # prefill: temporal stride, pads
    ((1, 3, 5, 5, 4), (3, 3, 3), (1, 1, 1), ((0, 2), 1, 1), False, "", ""),        # prefill's (lo, kT-1) pads
])
def test_depthwise_clip_kernel_matches_xla(shape, kernel, strides, pads, bias, in_act, activation):
    """The clip kernel (interpreted, small tiles: several row/column/channel tiles with masked edges)
    equals its shift-and-add reference, which equals a grouped ``lax`` convolution."""
    from co3d_jax.kernels import depthwise_clip, depthwise_clip_reference
    ks = jax.random.split(jax.random.key(0), 3)
    c = shape[-1]
    x, k = jax.random.normal(ks[0], shape), jax.random.normal(ks[1], (*kernel, c))
    b = jax.random.normal(ks[2], (c,)) if bias else None
    kw = dict(strides=strides, pads=pads, in_activation=in_act, activation=activation)
    y = depthwise_clip(x, k, b, interpret=True, budget=16, **kw)
    r = depthwise_clip_reference(x, k, b, **kw)
    assert y.shape == r.shape and _rel(y, r) <= 1e-6
    act = {"": lambda v: v, "relu": jax.nn.relu, "swish": jax.nn.silu}
    pp = [p if isinstance(p, tuple) else (p, p) for p in pads]
    lax_y = act[activation](jax.lax.conv_general_dilated(
        act[in_act](x), k[..., None, :], strides, pp, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        feature_group_count=c) + (0 if b is None else b))
    assert _rel(r, lax_y) <= 1e-5


def test_depthwise_clip_kernel_gradients_are_the_xla_paths():
    """Fine-tuning differentiates the kernel through its reference's VJP: equal gradients for the
    input, kernel and bias (activations included), and bf16 in and out with fp32 accumulation."""
    from co3d_jax.kernels import depthwise_clip, depthwise_clip_reference
    ks = jax.random.split(jax.random.key(1), 4)
    x, k, b = jax.random.normal(ks[0], (2, 4, 6, 5, 8)), jax.random.normal(ks[1], (3, 3, 3, 8)), jax.random.normal(ks[2], (8,))
    w = jax.random.normal(ks[3], (2, 4, 6, 5, 8))
    kw = dict(strides=(1, 1, 1), pads=(1, 1, 1), in_activation="relu", activation="swish")
    g = jax.grad(lambda *a: jnp.sum(depthwise_clip(*a, interpret=True, **kw) * w), argnums=(0, 1, 2))(x, k, b)
    gr = jax.grad(lambda *a: jnp.sum(depthwise_clip_reference(*a, **kw) * w), argnums=(0, 1, 2))(x, k, b)
    for a, r in zip(g, gr):
        assert a.shape == r.shape and _rel(a, r) <= 1e-5
    y16 = depthwise_clip(x.astype(jnp.bfloat16), k, b, interpret=True, **kw)
    assert y16.dtype == jnp.bfloat16 and _rel(y16, depthwise_clip_reference(x, k, b, **kw)) <= 2e-2


@pytest.mark.parametrize("shape,kernel,strides,pads,limit,calls", [
    ((3, 6, 5, 5, 4), (3, 3, 3), (1, 1, 1), ((2, 2), 1, 1), 2 * 8 * 100 * 4, 2),  # whole clips, 2 streams per call
    ((1, 7, 6, 6, 4), (3, 3, 3), (2, 2, 2), ((1, 1), 1, 1), 4 * 144 * 4, 4),        # strided: runs of 1 output frame
    ((1, 8, 4, 4, 2), (5, 1, 1), (1, 1, 1), ((4, 0), 0, 0), 6 * 32 * 4, 4),         # the stem's 5x1x1: runs of 2
])
def test_depthwise_clip_splits_calls_over_the_32_bit_limit(monkeypatch, shape, kernel, strides, pads, limit, calls):
    """Clips whose input or output would pass ``MAX_CALL_BYTES`` (2^31 bytes, Triton's 32-bit offsets:
    bulk steps over 64 frames faulted on an H200) run as several calls, by streams and then by runs of
    output frames with the input frames each run reads: the output of one call."""
    import co3d_jax.kernels.depthwise as dw
    ks = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(ks[0], shape)
    k, b = jax.random.normal(ks[1], (*kernel, shape[-1])), jax.random.normal(ks[2], (shape[-1],))
    cfg = (strides, pads, "relu", "swish", True, 2048, 4)
    whole = dw._clip_call(cfg, x, k, b)
    monkeypatch.setattr(dw, "MAX_CALL_BYTES", limit)
    jaxpr = str(jax.make_jaxpr(lambda *a: dw._clip_call(cfg, *a))(x, k, b))
    assert len(re.findall(r"name=co3d_depthwise_clip\b", jaxpr)) == calls
    split = dw._clip_call(cfg, x, k, b)
    assert split.shape == whole.shape and _rel(split, whole) <= 1e-6  # per element the same sums (XLA may fuse them differently)
    monkeypatch.setattr(dw, "MAX_CALL_BYTES", 100)  # not even one output frame's input fits
    with pytest.raises(ValueError, match="one output frame needs .* input bytes"):
        dw._clip_call(cfg, x, k, b)


def test_depthwise_clip_refuses_bad_shapes_in_one_line():
    from co3d_jax.kernels import depthwise_clip
    x, k = jnp.ones((1, 4, 6, 6, 8)), jnp.ones((3, 3, 3, 8))
    with pytest.raises(ValueError, match=r"does not match kernel \(3, 3, 3, 4\)"):
        depthwise_clip(x, jnp.ones((3, 3, 3, 4)), interpret=True)
    with pytest.raises(ValueError, match="spatial padding must be symmetric"):
        depthwise_clip(x, k, pads=(1, (0, 1), 1), interpret=True)
    with pytest.raises(ValueError, match="too small for kernel"):
        depthwise_clip(jnp.ones((1, 1, 6, 6, 8)), k, pads=(0, 1, 1), interpret=True)


def test_clip_tiles_waste_few_lanes():
    """The tiles measured on an H200 (X3D-L's stages at 312 px: 78, 39, 20, 10 wide with 54, 108, 216,
    432 channels), and in general powers of 2 within the budget."""
    from co3d_jax.kernels.depthwise import clip_tiles
    assert [clip_tiles(n, n, c) for n, c in ((78, 54), (39, 108), (20, 216), (10, 432))] == [
        (2, 16, 64), (4, 8, 64), (8, 8, 32), (2, 16, 64)]
    for ho, wo, c in ((5, 5, 8), (112, 112, 24), (3, 200, 7)):
        th, tw, tc = clip_tiles(ho, wo, c)
        assert all(v & (v - 1) == 0 for v in (th, tw, tc)) and th * tw * tc <= 2048 and 8 <= tw <= 128


def test_a_jit_over_several_devices_is_traced_without_the_fused_kernels(monkeypatch):
    """GSPMD cannot split a Pallas call over the batch: ``mesh.jit_over`` traces a function over a
    mesh of more than one device with the kernels off (the XLA program); one device keeps them."""
    import types

    import co3d_jax.kernels as kernels
    from co3d_jax.mesh import data_mesh, jit_over
    monkeypatch.setattr(kernels, "_nvidia_default_device", lambda: True)  # a simulated NVIDIA GPU
    model = co3d_jax.create_model("x3d_xs", image_size=32, depth_factor=0.6, num_classes=5)
    params = model.init(jax.random.key(0))
    clip = jnp.zeros((2, model.clip_length, 32, 32, 3))

    def kernels_in(fn):
        return len(re.findall(r"\bname=depthwise_clip\b", str(jax.make_jaxpr(fn)(params, clip))))

    assert kernels.on_nvidia_gpu() and kernels_in(model.forward) > 0
    with kernels.disabled():
        assert not kernels.on_nvidia_gpu() and kernels_in(model.forward) == 0
    assert kernels.on_nvidia_gpu()  # restored on exit
    assert kernels_in(jit_over(model.forward, data_mesh())) == kernels_in(model.forward)
    assert kernels_in(jit_over(model.forward, types.SimpleNamespace(size=2))) == 0
    assert kernels_in(kernels.traced_without(model.forward)) == 0


def test_x3d_gradients_through_the_clip_kernel_equal_the_xla_paths(monkeypatch):
    """Fine-tuning on an NVIDIA GPU (simulated; kernels interpreted) differentiates the clip kernel:
    the parameter gradients of a tiny X3D equal those of the XLA path."""
    import co3d_jax.kernels as kernels
    model = co3d_jax.create_model("x3d_xs", image_size=32, depth_factor=0.3, num_classes=5)
    params = model.init(jax.random.key(0))
    clip = jax.random.normal(jax.random.key(1), (2, model.clip_length, 32, 32, 3))
    w = jax.random.normal(jax.random.key(2), (2, 5))

    def grads():  # a new function each time: jit caches traces by function, and the path is chosen when tracing
        return jax.jit(lambda p: jax.grad(lambda q: jnp.sum(model.forward(q, clip) * w))(p))

    g_xla = grads()(params)
    monkeypatch.setattr(kernels, "_nvidia_default_device", lambda: True)
    assert len(re.findall(r"\bname=depthwise_clip\b", str(jax.make_jaxpr(grads())(params)))) > 0
    g_fused = grads()(params)
    for a, b in zip(jax.tree.leaves(g_xla), jax.tree.leaves(g_fused)):
        assert a.shape == b.shape and _rel(b, a) <= 1e-4


_PER_DEVICE_SCRIPT = r"""
import re, sys
import numpy as np, jax
import co3d_jax, co3d_jax.kernels as kernels
from co3d_jax.mesh import data_mesh
from experiments.evaluate import Protocol, compiled_predict, make_predict_fn
jax.config.update("jax_default_matmul_precision", "highest")
kernels._nvidia_default_device = lambda: True  # a simulated NVIDIA GPU: impl='fused' takes the kernels (interpreted)
mesh = data_mesh()
assert mesh.size == 2
model = co3d_jax.create_model("cox3d_xs", image_size=32, depth_factor=0.3, num_classes=5)
model, params = model.fold_batchnorm(model.init(jax.random.key(0)))
d = model.delay
frames = jax.random.normal(jax.random.key(1), (4, d + 4, 32, 32, 3))
protocol = Protocol("init_frame", d + 4, 1, 0, d, 4)  # the first d frames by prefill (clip kernel), 4 streamed (bulk steps: clip kernel; or steps: step kernel)
predict = compiled_predict(model, protocol, mesh)
jaxpr = str(jax.make_jaxpr(predict)(params, frames))
hlo = predict.lower(params, frames).compile().as_text()
scores, ok = predict(params, frames)
with kernels.disabled():
    ref, ok_ref = jax.jit(make_predict_fn(model, protocol))(params, frames)
print("kernels", len(re.findall(r"name=co3d_depthwise_(?:clip|step)\b", jaxpr)), "shard_map" in jaxpr,
      "all-gather" in hlo, bool(np.asarray(ok).all() and np.asarray(ok_ref).all()),
      float(np.max(np.abs(np.asarray(scores) - np.asarray(ref))) / np.max(np.abs(np.asarray(ref)))))
"""


def test_evaluation_on_two_devices_runs_the_kernels_per_device():
    """``experiments.evaluate``'s predict on a 2-device mesh (forced CPU devices, a simulated NVIDIA GPU,
    kernels interpreted): each device runs the fused kernels on its shard under ``shard_map`` (no
    all-gather in the compiled program), with the scores of the one-device XLA path."""
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _PER_DEVICE_SCRIPT], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    words = out.stdout.split()
    n, shard_map, gather, ok, rel = int(words[1]), words[2], words[3], words[4], float(words[5])
    # 6 depthwise convs (the stem's, one per block), each as a clip kernel (prefill), and in the stream's
    # two branches as a clip kernel (bulk steps) and a step kernel
    assert n == 18 and shard_map == "True" and gather == "False" and ok == "True"
    assert rel <= 1e-5
