"""Pallas kernels (``co3d_jax/kernels``) in interpret mode against the XLA path, on small shapes
(CPU, seconds): the fused continual depthwise step alone, inside a ``Conv`` over a stream with
validity gaps, and a reduced CoX3D over a 300-frame stream with validity, reset and chunking."""

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


@pytest.mark.parametrize("kernel,hw,c,bias,activation", [
    ((3, 3, 3), (6, 5), 12, True, ""),
    ((3, 3, 3), (5, 5), 20, False, "swish"),
    ((5, 1, 1), (4, 7), 8, True, ""),
])
def test_depthwise_step_kernel_matches_xla(kernel, hw, c, bias, activation):
    kt, kh, kw = kernel
    ho, wo = hw
    ks = jax.random.split(jax.random.key(0), 4)
    xp = jax.random.normal(ks[0], (3, ho + kh - 1, wo + kw - 1, c))
    acc = jax.random.normal(ks[1], (3, kt - 1, ho, wo, c))
    k = jax.random.normal(ks[2], (kt, kh, kw, c))
    b = jax.random.normal(ks[3], (c,)) if bias else None
    valid = jnp.array([True, False, True])
    # a small tile budget: several row, column and channel tiles, masked edges
    y, new = depthwise_step(xp, acc, k, b, valid, activation=activation, budget=64, max_tc=8, max_tw=4,
                            interpret=True)
    y_ref, new_ref = depthwise_step_reference(xp, acc, k, b, valid, activation=activation)
    assert y.shape == y_ref.shape and new.shape == new_ref.shape
    assert _rel(y, y_ref) <= 1e-6 and _rel(new, new_ref) <= 1e-6
    np.testing.assert_array_equal(np.asarray(new[1]), np.asarray(acc[1]))  # invalid stream: state kept


def test_tiles_are_powers_of_two():
    for ho, wo, c in ((40, 40, 54), (20, 20, 108), (10, 10, 216), (5, 5, 432), (80, 80, 24)):
        th, tw, tc = tiles(ho, wo, c)
        assert all(v & (v - 1) == 0 for v in (th, tw, tc)) and tw >= wo and th * tw * tc <= max(2048, tw * tc)


def test_supported_shapes():
    assert pallas_supported((3, 3, 3), (1, 1, 1), "zeros") and pallas_supported((5, 1, 1), (1, 1, 1), "zeros")
    assert not pallas_supported((3, 3, 3), (1, 2, 2), "zeros")       # spatial stride: XLA path
    assert not pallas_supported((3, 3, 3), (1, 1, 1), "replicate")   # replicate fill: XLA path
    assert not pallas_supported((1, 3, 3), (1, 1, 1), "zeros")       # no temporal state


@pytest.mark.parametrize("kernel,strides,pads,fill", [
    ((3, 3, 3), 1, (1, 1, 1), "zeros"),
    ((5, 1, 1), 1, (2, 0, 0), "zeros"),
    ((3, 3, 3), (1, 2, 2), (1, 1, 1), "zeros"),      # falls back to the XLA step
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
    # clip mode and prefill do not use the kernel: identical to the shift path
    np.testing.assert_array_equal(np.asarray(pal.forward(p, x)), np.asarray(ref.forward(p, x)))


def test_cox3d_pallas_equals_xla_over_300_frames_with_validity_reset_and_chunks():
    kw = dict(image_size=32, depth_factor=0.6, num_classes=5)
    xla = co3d_jax.create_model("cox3d_s_13", **kw)
    pal = co3d_jax.create_model("cox3d_s_13", depthwise_impl="pallas", **kw)
    params = xla.init(jax.random.key(0))
    xla, fp = xla.fold_batchnorm(params)
    pal, _ = pal.fold_batchnorm(params)
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
    """X3D's default ``impl='fused'``: XLA only off NVIDIA GPUs (here), and on one (simulated) the
    step runs the Pallas kernels (interpreted here) and no library convolution, with the same outputs."""
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
    frames = jax.random.normal(jax.random.key(2), (2, 30, 32, 32, 3))
    _, a = xla.stream_fn()(params, xla.init_state(2), frames)
    _, b = fused.stream_fn()(params, fused.init_state(2), frames)
    v = np.asarray(a.valid)
    assert v.any() and (v == np.asarray(b.valid)).all()
    assert _rel(np.asarray(b.scores)[v], np.asarray(a.scores)[v]) <= 1e-5
    np.testing.assert_array_equal(np.asarray(fused.forward(params, frames[:, :13])),
                                  np.asarray(xla.forward(params, frames[:, :13])))  # clip mode: XLA either way


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
