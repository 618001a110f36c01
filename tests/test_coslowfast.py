"""CoSlowFast-R50 8x8 / 4x16: the continual SlowFast (co3d_jax.models.slowfast, issue #21).

The correspondence tested. The clip SlowFast samples its slow frames by ``linspace(0, T-1,
T/alpha)`` (0, 4, 8, 13, ... for T = 32), which no causal stream can do; the continual slow
pathway takes every alpha-th frame of the stream (0, alpha, 2 alpha, ...). So the reference is
pytorchvideo's ``create_slowfast`` (random weights, random BN statistics, moved through
:mod:`weight_port.slowfast`) with the pathway inputs ``[x[:, :, ::alpha], x]``, run as one clip
over the whole stream (zero temporal padding at its start, as the continual convs' zero fill
reproduces); its ``s5`` features of both pathways are averaged over the head window of each
emitting frame (slow outputs ``q .. q + T/alpha - 1``, fast outputs ``alpha q .. alpha q + T - 1``
for output ``q = (t - D) / alpha``, i.e. the last T frames) and classified by its projection.
On a T-frame clip this is exactly pytorchvideo's SlowFast with uniform slow sampling.

CI: 32 px, full width, T = 16 (8x8) / 32 (4x16), over 3 x RF frames; the full-size version is
``@pytest.mark.slow``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import co3d_jax
from co3d_jax.flops import count_params, paper_macs, paper_step_macs

torch = pytest.importorskip("torch")
pytest.importorskip("pytorchvideo.models.slowfast")
torch.set_num_threads(1)

from test_slowfast import ARCHS, make_pytorchvideo, numpy_sd  # noqa: E402
from weight_port import verify  # noqa: E402
from weight_port.slowfast import convert_state_dict  # noqa: E402
from helpers import param_shapes, rel_err  # noqa: E402

RTOL = 1e-5
SIZE = 32
# name -> (clip arch, alpha, default window, delay, receptive field, padding) at the default window 32
META = {"coslowfast_8x8_r50": ("slowfast_8x8_r50", 4, 32, 76, 125, 48),
        "coslowfast_4x16_r50": ("slowfast_4x16_r50", 8, 32, 112, 196, 83)}
CI_WINDOW = {"coslowfast_8x8_r50": 16, "coslowfast_4x16_r50": 32}


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("name", sorted(META))
def test_metadata_and_weights(name):
    arch, alpha, window, delay, rf, pad = META[name]
    m = co3d_jax.create_model(name)
    assert m.continual and (m.clip_length, m.image_size, m.frame_rate, m.config.window) == (32, 256, 2, window)
    assert (m.delay, m.receptive_field, m.padding, m.stride) == (delay, rf, pad, alpha)
    assert name in co3d_jax.list_models()
    assert param_shapes(name) == param_shapes(arch)
    assert count_params(jax.eval_shape(m.init, jax.random.key(0))) == ARCHS[arch][3]
    # a longer head window only delays the output (T - 32 more frames)
    assert co3d_jax.create_model(f"{name}_64").delay == delay + 32 == co3d_jax.create_model(name, window=64).delay
    with pytest.raises(ValueError, match="multiple of alpha"):
        co3d_jax.create_model(name, window=alpha * 4 + 1)


def test_step_macs():
    """Paper convention: the emitting step runs everything; the average per frame counts the slow
    pathway and the fusions' outputs on every alpha-th frame only."""
    got = {}
    for name in META:
        m = co3d_jax.create_model(name)
        c = paper_step_macs(m)
        assert c["emit"] == paper_macs(m, "step") and c["skip"] < c["average"] < c["emit"]
        got[name] = tuple(round(c[k] / 1e9, 3) for k in ("emit", "skip", "average"))
    assert got == {"coslowfast_8x8_r50": (7.692, 0.409, 2.229), "coslowfast_4x16_r50": (7.64, 0.357, 1.268)}, got
    # a 32-frame clip of the clip models costs 66.43 / 36.58 GMACs: 2.08 / 1.14 per frame
    assert paper_macs(co3d_jax.create_model("slowfast_8x8_r50"), "clip") / 32 < got["coslowfast_8x8_r50"][2] * 1e9


# ----------------------------------------------------------------------------- step == clip
def _torch_features(model, frames: np.ndarray, alpha: int):
    """pytorchvideo's stem .. s5 (blocks 0-4) on [x[::alpha], x] of the whole stream: the slow and
    fast features (B, T', h, w, C)."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(frames, -1, 1)))
    xs = [x[:, :, ::alpha].contiguous(), x]
    with torch.no_grad():
        for block in model.blocks[:5]:
            xs = block(xs)
    return [np.moveaxis(a.numpy(), 1, -1) for a in xs]


def _reference(model, feats, ts, delay, alpha, window):
    slow, fast = (f.mean(axis=(2, 3)) for f in feats)
    qs = (ts - delay) // alpha
    pooled = np.stack([np.concatenate([slow[:, q:q + window // alpha].mean(1), fast[:, alpha * q:alpha * q + window].mean(1)],
                                      -1) for q in qs], 1)
    proj = model.blocks[-1].proj
    return pooled @ proj.weight.detach().numpy().T + proj.bias.detach().numpy()


def _stream_in_chunks(m, params, frames, chunks: int):
    n = frames.shape[1] // chunks
    assert n * chunks == frames.shape[1]
    stream, state, outs = m.stream_fn(), m.init_state(frames.shape[0]), []
    for c in range(chunks):
        state, out = stream(params, state, jnp.asarray(frames[:, c * n:(c + 1) * n]))
        outs.append(out)
    return (np.concatenate([np.asarray(o.scores) for o in outs], 1),
            np.concatenate([np.asarray(o.valid) for o in outs], 1))


def check_stream(name, window, size, seed, chunks=3):
    arch, alpha = META[name][:2]
    model = make_pytorchvideo(arch, window, size, seed=seed)
    conv = convert_state_dict(numpy_sd(model), arch, image_size=size, clip_length=window)
    m = co3d_jax.create_model(name, image_size=size, window=window, head_activation="identity")
    assert param_shapes(name, image_size=size, window=window) == jax.tree.map(np.shape, conv.params)
    delay, rf = m.delay, m.receptive_field
    length = -(-3 * rf // (chunks * alpha)) * chunks * alpha  # >= 3 x RF, chunks a multiple of alpha
    frames = np.random.default_rng(seed + 1).standard_normal((1, length, size, size, 3)).astype(np.float32)
    scores, valid = _stream_in_chunks(m, jax.tree.map(jnp.asarray, conv.params), frames, chunks)
    ts = np.nonzero(valid[0])[0]
    assert list(ts) == list(range(delay, length, alpha))
    ref = _reference(model, _torch_features(model, frames, alpha), ts, delay, alpha, window)
    err = rel_err(scores[:, ts], ref)
    return dict(err=err, ts=ts, length=length, ref=ref, delay=delay, rf=rf)


@pytest.mark.parametrize("name", sorted(META))
def test_step_equals_pytorchvideo_clip(name, capsys):
    r = check_stream(name, CI_WINDOW[name], SIZE, seed=2)
    with capsys.disabled():
        print(f"\n[{name} T={CI_WINDOW[name]} {SIZE}px, {r['length']} frames, D {r['delay']}, RF {r['rf']}] "
              f"{len(r['ts'])} outputs at t = {r['ts'][0]}, {r['ts'][1]}, ...; max rel err logits {r['err']:.2e} "
              f"(max |logit| {np.abs(r['ref']).max():.2f})")
    assert r["err"] <= RTOL and np.abs(r["ref"]).max() > 1.0


def test_porter_takes_the_continual_names(capsys):
    """The family's checkpoint spec ports pytorchvideo tensors for the continual names (the same
    params as the clip arch), and ``--verify`` packs the slow pathway uniformly for them."""
    arch = "slowfast_4x16_r50"
    sd = numpy_sd(make_pytorchvideo(arch, 16, SIZE, seed=4))
    clip = convert_state_dict(sd, arch, image_size=SIZE, clip_length=16)
    conv = convert_state_dict(sd, "coslowfast_4x16_r50", image_size=SIZE, window=16)
    assert conv.arch == "coslowfast_4x16_r50"
    assert jax.tree.all(jax.tree.map(np.array_equal, conv.params, clip.params))
    res = verify(conv)
    with capsys.disabled():
        print(f"\n[coslowfast_4x16_r50 --verify, 16 frames {SIZE}px] {res.report()}")
    assert res.worst_rel <= RTOL


# ----------------------------------------------------------------------------- slow: full size
@pytest.mark.slow
def test_full_size_step_equals_pytorchvideo_clip(capsys):
    name = "coslowfast_8x8_r50"
    r = check_stream(name, 32, 256, seed=5)
    with capsys.disabled():
        print(f"\n[{name} 256px, {r['length']} frames] {len(r['ts'])} outputs, max rel err logits {r['err']:.2e}")
    assert r["err"] <= RTOL
