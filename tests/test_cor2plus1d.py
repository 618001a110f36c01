"""CoR(2+1)D-18: the continual torchvision R(2+1)D-18 (co3d_jax.models.r2plus1d, issue #21).

* metadata: delay 54 / 62 (T = 8 / 16), stride 8, so it emits at t = D, D + 8, ...; receptive
  field and padding; the params tree and count equal the clip model's (the same weights load);
* per-step GMACs in the paper's convention (emitting step, skipped step, average over the
  stride-8 period);
* step == clip (co3d.md §1.8): a random-weight, random-BN-statistics torchvision ``r2plus1d_18``
  moved through :mod:`weight_port.r2plus1d`, run as a clip over the whole stream (zero temporal
  padding at its start, as the continual convs' zero fill reproduces), its ``layer4`` features
  averaged over the head window of each emitting frame and classified by its ``fc``: equal to the
  continual output at every emitting frame, over a stream of 3 x RF frames at 32 px.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import co3d_jax
from co3d_jax.flops import count_params, paper_macs, paper_step_macs

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
torch.set_num_threads(1)

from test_r2plus1d import make_torch_model, numpy_sd  # noqa: E402
from weight_port import verify  # noqa: E402
from weight_port.r2plus1d import convert_state_dict  # noqa: E402
from helpers import param_shapes, rel_err  # noqa: E402

RTOL = 1e-5
PARAMS = 31_505_325
SIZE = 32
# name -> (window T, delay, receptive field, padding, stride)
META = {"cor2plus1d_18_8": (8, 54, 109, 54, 8), "cor2plus1d_18_16": (16, 62, 117, 54, 8)}


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("name", sorted(META))
def test_metadata(name):
    window, delay, rf, pad, stride = META[name]
    m = co3d_jax.create_model(name)
    assert m.continual and (m.clip_length, m.image_size, m.frame_rate) == (window, 112, 1)
    assert (m.delay, m.receptive_field, m.padding, m.stride) == (delay, rf, pad, stride)
    assert m.delay == 54 + 8 * (window // 8 - 1)  # the head window adds (T/8 - 1) layer-4 steps
    assert name in co3d_jax.list_models()


def test_same_weights_as_the_clip_model():
    for t in (8, 16):
        assert param_shapes(f"cor2plus1d_18_{t}") == param_shapes(f"r2plus1d_18_{t}") == param_shapes("r2plus1d_18_8")
        m = co3d_jax.create_model(f"cor2plus1d_18_{t}")
        assert count_params(jax.eval_shape(m.init, jax.random.key(0))) == PARAMS
    assert co3d_jax.create_model("cor2plus1d_18_32").delay == 54 + 8 * 3
    with pytest.raises(ValueError, match="multiple of 8"):
        co3d_jax.create_model("cor2plus1d_18_12")


def test_step_macs():
    """Paper convention (ptflops 0.7.5 on a continual step, BN 4 / ReLU 3 per element, the
    projection quirk): emitting step (every layer runs), skipped step (stem and layer 1 and the
    strided convs' stores) and the average per frame over the stride-8 period."""
    for t in (8, 16):
        m = co3d_jax.create_model(f"cor2plus1d_18_{t}")
        c = paper_step_macs(m)
        assert c["emit"] == paper_macs(m, "step")
        assert round(c["emit"] / 1e9, 3) == 4.923 and c["skip"] == 1_636_955_936
        assert round(c["average"] / 1e9, 3) == 2.627
    # a clip model over 8 frames costs 20.38 GMACs, 2.55 per frame: the continual model gives a
    # T=16 prediction every 8 frames for the per-frame cost of an 8-frame clip model
    assert paper_macs(co3d_jax.create_model("r2plus1d_18_16"), "clip") / 16 < c["average"]


# ----------------------------------------------------------------------------- step == clip
def _torch_layer4(model, frames: np.ndarray) -> np.ndarray:
    """torchvision stem .. layer4 on the whole stream (one clip): (B, T/8, h, w, 512)."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(frames, -1, 1)))
    with torch.no_grad():
        for part in (model.stem, model.layer1, model.layer2, model.layer3, model.layer4):
            x = part(x)
    return np.moveaxis(x.numpy(), 1, -1)


def _stream_in_chunks(m, params, frames, chunks: int):
    """``m.stream`` over ``frames`` in equal chunks (one compiled scan), the state carried across;
    (scores, valid) of the whole stream."""
    n = frames.shape[1] // chunks
    assert n * chunks == frames.shape[1]
    stream, state, outs = m.stream_fn(), m.init_state(frames.shape[0]), []
    for c in range(chunks):
        state, out = stream(params, state, jnp.asarray(frames[:, c * n:(c + 1) * n]))
        outs.append(out)
    return (np.concatenate([np.asarray(o.scores) for o in outs], 1),
            np.concatenate([np.asarray(o.valid) for o in outs], 1))


@pytest.fixture(scope="module")
def stream_case():
    """One random torchvision model, one stream of 3 x RF(_16) frames at 32 px, its layer-4
    features, and the ported weights."""
    model = make_torch_model(seed=2)
    conv = convert_state_dict(numpy_sd(model), "r2plus1d_18_8", image_size=SIZE)
    length = 3 * META["cor2plus1d_18_16"][2]  # 351 = 3 chunks of 117, each ending off the stride's phase
    frames = np.random.default_rng(4).standard_normal((1, length, SIZE, SIZE, 3)).astype(np.float32)
    return dict(model=model, params=jax.tree.map(jnp.asarray, conv.params), frames=frames,
                layer4=_torch_layer4(model, frames))


# the 16-frame model differs from the 8-frame one only in its head window (test_metadata pins its delay):
# slow, outside CI
@pytest.mark.parametrize("name", ["cor2plus1d_18_8", pytest.param("cor2plus1d_18_16", marks=pytest.mark.slow)])
def test_step_equals_torchvision_clip(stream_case, name, capsys):
    window, delay, rf, _, stride = META[name]
    m = co3d_jax.create_model(name, image_size=SIZE, head_activation="identity")
    frames = stream_case["frames"]
    length = frames.shape[1]
    assert length >= 3 * rf
    scores, valid = _stream_in_chunks(m, stream_case["params"], frames, chunks=3)
    ts = np.nonzero(valid[0])[0]
    assert list(ts) == list(range(delay, length, stride))
    # reference: torchvision's features of the whole stream, averaged over the window ending at
    # each emitting frame (layer-4 outputs k .. k + T/8 - 1 for output k = (t - D) / 8), then fc
    w = window // 8
    feats = stream_case["layer4"].mean(axis=(2, 3))  # (1, T', 512)
    ks = (ts - delay) // stride
    pooled = np.stack([feats[:, k:k + w].mean(1) for k in ks], 1)
    fc = stream_case["model"].fc
    ref = pooled @ fc.weight.detach().numpy().T + fc.bias.detach().numpy()
    err = rel_err(scores[:, ts], ref)
    probs = jax.nn.softmax(jnp.asarray(scores[:, ts]), -1)
    e = np.exp(ref - ref.max(-1, keepdims=True))
    err_p = rel_err(probs, e / e.sum(-1, keepdims=True))
    with capsys.disabled():
        print(f"\n[{name} {SIZE}px, {length} frames] {len(ts)} outputs at t = {ts[0]}, {ts[1]}, ...; "
              f"max rel err logits {err:.2e}, softmax {err_p:.2e} (max |logit| {np.abs(ref).max():.2f})")
    assert err <= RTOL and err_p <= RTOL and np.abs(ref).max() > 1.0


def test_porter_takes_the_continual_names(stream_case, capsys):
    """The family's checkpoint spec ports the same torchvision tensors for ``cor2plus1d_18_<T>``
    (the same params) and ``--verify`` compares the continual model's clip forward with
    torchvision's on a T-frame clip."""
    sd = numpy_sd(stream_case["model"])
    for t in (8, 16):
        conv = convert_state_dict(sd, f"cor2plus1d_18_{t}", image_size=SIZE)
        assert conv.arch == f"cor2plus1d_18_{t}"
        assert jax.tree.all(jax.tree.map(np.array_equal, conv.params, jax.tree.map(np.asarray, stream_case["params"])))
    res = verify(conv, frames=16)
    with capsys.disabled():
        print(f"\n[cor2plus1d_18_16 --verify] {res.report()}")
    assert res.worst_rel <= RTOL


# ----------------------------------------------------------------------------- slow: full size
@pytest.mark.slow
def test_full_size_step_equals_torchvision_clip(capsys):
    name = "cor2plus1d_18_16"
    window, delay, rf, _, stride = META[name]
    model = make_torch_model(seed=6)
    m = co3d_jax.create_model(name, head_activation="identity")
    params = jax.tree.map(jnp.asarray, convert_state_dict(numpy_sd(model), "r2plus1d_18_16").params)
    frames = np.random.default_rng(8).standard_normal((1, 3 * rf, 112, 112, 3)).astype(np.float32)
    scores, valid = _stream_in_chunks(m, params, frames, chunks=3)
    ts = np.nonzero(valid[0])[0]
    assert list(ts) == list(range(delay, frames.shape[1], stride))
    feats = _torch_layer4(model, frames).mean(axis=(2, 3))
    w = window // 8
    pooled = np.stack([feats[:, k:k + w].mean(1) for k in (ts - delay) // stride], 1)
    ref = pooled @ model.fc.weight.detach().numpy().T + model.fc.bias.detach().numpy()
    err = rel_err(scores[:, ts], ref)
    with capsys.disabled():
        print(f"\n[{name} 112px, {frames.shape[1]} frames] {len(ts)} outputs, max rel err logits {err:.2e}")
    assert err <= RTOL
