"""CoX3D exactness: metadata (co3d.md §2.1.6), step == clip alignment (§1.8), stream API.

Reference check (b) of co3d.md §4: the continual step at frame ``t >= D`` equals output index
``t - D`` of the clip forward over the whole stream, when the clip reference uses per-frame SE
(``se_clip_pool='frame'``, §2.1.4) and the stream emulates left-only padding. With
``temporal_fill='replicate'`` the clip reference replaces every temporal conv's *left* zero
padding by copies of the first frame of that conv's own input (§1.8 item 3), written below as a
layer walker.

CI cost: one reduced config (32 px, depth factor 0.6 = [1, 2, 3, 2] blocks, so identity blocks
with and without SE appear), random weights and broad random BN statistics, 2 streams x 150
frames; every compiled function is built once per module (fixtures below).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from co3d_jax import create_model
from helpers import random_params, rel_err  # noqa: E402
from co3d_jax.layers import BroadcastReduce, Conv, GlobalAvgPool, Pool, Reduce, Sequential

# ----------------------------------------------------------------------------- metadata (no compute)

# name -> (T_w, RF, P, D): co3d.md §2.1.6 [verified against continual-inference].
DELAY_TABLE = {
    "cox3d_xs": (4, 60, 28, 31),
    "cox3d_s_13": (13, 69, 28, 40),
    "cox3d_s_64": (64, 120, 28, 91),
    "cox3d_m_16": (16, 72, 28, 43),
    "cox3d_m_64": (64, 120, 28, 91),
    "cox3d_l_16": (16, 130, 57, 72),
    "cox3d_l_64": (64, 178, 57, 120),
}


@pytest.mark.parametrize("name", sorted(DELAY_TABLE))
def test_delay_receptive_field_padding(name):
    window, rf, pad, delay = DELAY_TABLE[name]
    m = create_model(name)
    assert m.config.window == window
    assert (m.receptive_field, m.padding, m.delay, m.stride) == (rf, pad, delay, 1)
    assert m.delay == m.receptive_field - 1 - m.padding


def test_clip_scope_se_delay():
    # 15 SE blocks each add T_w - 1 = 12 frames: 40 + 15 * 12 = 220 (co3d.md §2.1.4).
    assert create_model("cox3d_s_13", se_scope="clip").delay == 220
    assert create_model("cox3d_s_13", se_scope="frame").delay == 40


def test_any_window():
    m = create_model("cox3d_s_32")
    assert m.config.window == 32 and m.continual
    assert (m.receptive_field, m.padding, m.delay) == (57 + 31, 28, 28 + 31)
    assert create_model("cox3d_l_100").delay == 57 + 99
    with pytest.raises(ValueError, match="unknown model"):
        create_model("cox3d_q_13")


def test_sizes_and_parameter_counts():
    """Stage depths/widths (§2.1.2) and trainable parameter counts (BN mean/var are buffers)."""
    def count(m):
        shapes = jax.eval_shape(m.init, jax.random.key(0))
        flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
        return sum(math.prod(a.shape) for p, a in flat if p[-1].key not in ("mean", "var"))

    s = create_model("cox3d_s_13")
    assert s.config.stage_depths == [3, 5, 11, 7] and s.config.stage_dims == [24, 48, 96, 192]
    assert create_model("x3d_l").config.stage_depths == [5, 10, 25, 15]
    assert count(s) == 3_794_322
    assert count(create_model("x3d_l")) == 6_153_432
    # XS, S and M share weights; the window changes no parameter shape.
    shapes = [jax.tree.map(lambda a: a.shape, jax.eval_shape(create_model(n).init, jax.random.key(0)))
              for n in ("x3d_xs", "x3d_s", "cox3d_m_16", "cox3d_s_64")]
    assert all(sh == shapes[0] for sh in shapes[1:])


# ----------------------------------------------------------------------------- shared CI setup

CI = dict(image_size=32, depth_factor=0.6, head_activation="identity")
B, T, CHUNK = 2, 150, 50


def clip_reference_replicate(layer, params, x):
    """Clip forward where every temporal conv's left padding repeats the first frame of that
    conv's own input (right padding stays zero). Walks the layer tree; no temporal pool in X3D
    has padding, Delay is the identity in clip mode."""
    if isinstance(layer, Sequential):
        params = params or {}
        for name, child in layer.children:
            x = clip_reference_replicate(child, params.get(name), x)
        return x
    if isinstance(layer, BroadcastReduce):
        params = params or {}
        ys = tuple(clip_reference_replicate(b, params.get(n), x) for n, b in layer.branches)
        return Reduce(layer.op).apply(None, ys)
    if isinstance(layer, Conv) and layer.padding:
        p = layer.padding
        x = jnp.concatenate([jnp.repeat(x[:, :1], p, axis=1), x, jnp.zeros_like(x[:, :p])], axis=1)
        return dataclasses.replace(layer, pads=(0, *layer.pads[1:])).forward(params, x)
    if isinstance(layer, (Pool, GlobalAvgPool)):
        assert layer.padding == 0
    return layer.forward(params, x)


@pytest.fixture(scope="module")
def frames():
    size = CI["image_size"]
    return jnp.asarray(np.random.default_rng(2).standard_normal((B, T, size, size, 3)), jnp.float32)


@pytest.fixture(scope="module")
def zeros_model():
    m = create_model("cox3d_s_13", **CI)
    return m, random_params(m)


@pytest.fixture(scope="module")
def one_shot(zeros_model, frames):
    """The whole 150-frame stream in one jitted scan."""
    m, params = zeros_model
    _, out = m.stream_fn()(params, m.init_state(B), frames)
    return np.asarray(out.scores), np.asarray(out.valid)


@pytest.fixture(scope="module")
def chunk_fn(zeros_model):
    """Jitted 50-frame stream with an explicit validity mask (one compile for several tests)."""
    m, _ = zeros_model
    return m.stream_fn()


def _ones(b=B, t=CHUNK):
    return jnp.ones((b, t), bool)


# ----------------------------------------------------------------------------- step == clip (zeros)


def test_step_equals_clip_with_frame_se(zeros_model, one_shot, frames):
    m, params = zeros_model
    d = m.delay
    assert d == 2 + sum(m.config.stage_depths) + m.config.window - 1
    scores, valid = one_shot
    # Validity: nothing before D, every frame from D on (stride 1).
    assert not valid[:, :d].any() and valid[:, d:].all()
    # Clip reference: same params, per-frame SE pool, zero padding; index t - D <-> step t.
    ref_model = create_model("cox3d_s_13", **CI, se_clip_pool="frame")
    clip = jax.jit(ref_model.net.forward)(params, frames)
    assert clip.shape == (B, T + 2 * m.padding - m.receptive_field + 1, 1, 1, m.num_classes)
    clip = np.asarray(clip).reshape(B, -1, m.num_classes)[:, : T - d]
    err = rel_err(scores[:, d:], clip)
    print(f"\n[zeros] step vs clip(frame SE): {T - d} valid frames x {B} streams, max rel err {err:.2e}")
    assert err <= 1e-5
    # Per-frame check too (no frame hides behind a large neighbour).
    per_frame = [rel_err(scores[:, t], clip[:, t - d]) for t in range(d, T)]
    assert max(per_frame) <= 1e-4


def test_chunked_equals_one_shot(zeros_model, one_shot, chunk_fn, frames):
    m, params = zeros_model
    state = m.init_state(B)
    scores, valid = [], []
    for c in range(T // CHUNK):
        state, out = chunk_fn(params, state, frames[:, c * CHUNK:(c + 1) * CHUNK], _ones())
        scores.append(np.asarray(out.scores))
        valid.append(np.asarray(out.valid))
    scores, valid = np.concatenate(scores, 1), np.concatenate(valid, 1)
    np.testing.assert_array_equal(valid, one_shot[1])
    v = one_shot[1]
    np.testing.assert_allclose(scores[v], one_shot[0][v], rtol=1e-6, atol=1e-6 * np.abs(one_shot[0][v]).max())


def test_reset_by_mask(zeros_model, one_shot, chunk_fn, frames):
    m, params = zeros_model
    state, first = chunk_fn(params, m.init_state(B), frames[:, :CHUNK], _ones())
    state = m.reset(state, jnp.array([True, False]))
    # Stream 0 restarts on its first chunk again; stream 1 continues with its second chunk.
    x = jnp.stack([frames[0, :CHUNK], frames[1, CHUNK:2 * CHUNK]])
    _, out = chunk_fn(params, state, x, _ones())
    np.testing.assert_array_equal(np.asarray(out.valid[0]), np.asarray(first.valid[0]))
    np.testing.assert_allclose(np.asarray(out.scores[0]), np.asarray(first.scores[0]), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(out.valid[1]), one_shot[1][1, CHUNK:2 * CHUNK])
    np.testing.assert_allclose(np.asarray(out.scores[1]), one_shot[0][1, CHUNK:2 * CHUNK], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="cox3d_s_13"):
        m.reset(state, jnp.array([1, 0]))


def test_missing_frames_leave_state_untouched(zeros_model, one_shot, chunk_fn, frames):
    """Stream 1 gets garbage frames flagged invalid: its valid outputs equal a stream of only its
    real frames; stream 0 is unaffected."""
    m, params = zeros_model
    rng = np.random.default_rng(0)
    gaps = np.zeros(T, bool)
    gaps[rng.choice(np.arange(5, T), 40, replace=False)] = True
    n_real = int((~gaps).sum())
    x1 = np.full(frames.shape[1:], 0.0, np.float32)
    x1[~gaps] = np.asarray(frames[1, :n_real])
    x1[gaps] = 1e3 * rng.standard_normal(x1[gaps].shape)
    x = jnp.stack([frames[0], jnp.asarray(x1)])
    v = jnp.asarray(np.stack([np.ones(T, bool), ~gaps]))
    state, scores, valid = m.init_state(B), [], []
    for c in range(T // CHUNK):
        sl = slice(c * CHUNK, (c + 1) * CHUNK)
        state, out = chunk_fn(params, state, x[:, sl], v[:, sl])
        scores.append(np.asarray(out.scores))
        valid.append(np.asarray(out.valid))
    scores, valid = np.concatenate(scores, 1), np.concatenate(valid, 1)
    np.testing.assert_array_equal(valid[0], one_shot[1][0])
    assert not valid[1, gaps].any()
    np.testing.assert_array_equal(valid[1, ~gaps], one_shot[1][1, :n_real])
    ok = valid[1]
    np.testing.assert_allclose(scores[1, ok], one_shot[0][1, :n_real][one_shot[1][1, :n_real]], rtol=1e-5,
                               atol=1e-6)


def test_fold_batchnorm_same_outputs(zeros_model, one_shot, frames):
    m, params = zeros_model
    folded, fparams = m.fold_batchnorm(params)
    assert not any("bn" in str(p[-2].key) for p, _ in jax.tree_util.tree_flatten_with_path(fparams)[0])
    assert (folded.delay, folded.receptive_field, folded.padding) == (m.delay, m.receptive_field, m.padding)
    _, out = folded.stream_fn()(fparams, folded.init_state(B), frames[:, :CHUNK], _ones())
    np.testing.assert_array_equal(np.asarray(out.valid), one_shot[1][:, :CHUNK])
    v = one_shot[1][:, :CHUNK]
    err = rel_err(np.asarray(out.scores)[v], one_shot[0][:, :CHUNK][v])
    print(f"\n[fold_batchnorm] max rel err {err:.2e}")
    assert err <= 1e-5


# ----------------------------------------------------------------------------- replicate fill


def test_replicate_step_equals_replicate_clip_reference(zeros_model, one_shot, frames):
    _, params = zeros_model
    m = create_model("cox3d_s_13", **CI, temporal_fill="replicate")
    ref_model = create_model("cox3d_s_13", **CI, temporal_fill="replicate", se_clip_pool="frame")
    d = m.delay
    _, out = m.stream_fn()(params, m.init_state(B), frames)
    scores, valid = np.asarray(out.scores), np.asarray(out.valid)
    assert not valid[:, :d].any() and valid[:, d:].all()
    clip = jax.jit(lambda p, x: clip_reference_replicate(ref_model.net, p, x))(params, frames)
    clip = np.asarray(clip).reshape(B, -1, m.num_classes)[:, : T - d]
    err = rel_err(scores[:, d:], clip)
    rf = m.receptive_field
    err_early = rel_err(scores[:, d:rf - 1], clip[:, : rf - 1 - d])  # windows reaching before frame 0
    print(f"\n[replicate] step vs per-layer-replicate clip reference: max rel err {err:.2e} "
          f"(frames {d}..{rf - 2}, which see the fill: {err_early:.2e})")
    assert err <= 1e-5 and err_early <= 1e-5
    # Replicate only changes outputs whose window reaches before frame 0 (t < RF - 1).
    assert rel_err(scores[:, d], one_shot[0][:, d]) > 1e-3
    np.testing.assert_allclose(scores[:, rf - 1:], one_shot[0][:, rf - 1:], rtol=1e-5,
                               atol=1e-6 * np.abs(one_shot[0]).max())


# ----------------------------------------------------------------------------- input checks


def test_wrong_frame_shape_and_dtype_errors(zeros_model):
    m, params = zeros_model
    state = m.init_state(B)
    want = r"\(32, 32, 3\)"
    with pytest.raises(ValueError, match=rf"cox3d_s_13.*{want}"):
        m.step(params, state, jnp.zeros((B, 16, 16, 3)))
    with pytest.raises(ValueError, match=rf"cox3d_s_13.*{want}"):
        m.step(params, state, jnp.zeros((B, 32, 32)))
    with pytest.raises(ValueError, match=rf"cox3d_s_13.*{want}"):
        m.step(params, state, jnp.zeros((B, 1, 32, 32, 3)))
    with pytest.raises(TypeError, match="cox3d_s_13.*dtype"):
        m.step(params, state, jnp.zeros((B, 32, 32, 3), jnp.int32))
    with pytest.raises(ValueError, match=rf"cox3d_s_13.*{want}"):
        m.stream(params, state, jnp.zeros((B, 32, 32, 3)))
    with pytest.raises(ValueError, match=rf"cox3d_s_13.*{want}"):
        m.forward(params, jnp.zeros((B, 4, 64, 64, 3)))
    with pytest.raises(ValueError, match="cox3d_s_13.*valid"):
        m.step(params, state, jnp.zeros((B, 32, 32, 3)), valid=jnp.ones((B,), jnp.int32))


def test_dense_impl_shift_equals_library_convs():
    """``dense_impl="shift"`` (stem conv_xy and projection shortcuts without a library convolution,
    what the GPU step uses to avoid fp32 layout transposes) gives the same clip and stream outputs and
    the same MACs."""
    from co3d_jax.flops import paper_macs
    kw = dict(image_size=32, depth_factor=0.3, num_classes=5)
    ref, alt = create_model("cox3d_s_13", **kw), create_model("cox3d_s_13", dense_impl="shift", **kw)
    params = random_params(ref, seed=3)
    frames = jax.random.normal(jax.random.key(1), (2, 20, 32, 32, 3))
    valid = jnp.asarray(np.random.default_rng(0).random((2, 20)) > 0.2)
    _, a = ref.stream_fn()(params, ref.init_state(2), frames, valid)
    _, b = alt.stream_fn()(params, alt.init_state(2), frames, valid)
    np.testing.assert_array_equal(np.asarray(a.valid), np.asarray(b.valid))
    v = np.asarray(a.valid)
    assert rel_err(np.asarray(b.scores)[v], np.asarray(a.scores)[v]) <= 1e-5
    clip = jax.random.normal(jax.random.key(2), (1, 13, 32, 32, 3))
    assert rel_err(np.asarray(alt.forward(params, clip)), np.asarray(ref.forward(params, clip))) <= 1e-5
    for mode in ("step", "clip"):
        assert paper_macs(alt, mode) == paper_macs(ref, mode)
