"""R(2+1)D-18 clip baseline (co3d.md §2.4) and its torchvision porter (§3.5).

Reference: ``torchvision.models.video.r2plus1d_18`` (co3d's ``VideoResNet(BasicBlock,
[Conv2Plus1D] * 4, [2, 2, 2, 2], R2Plus1dStem)``) with random weights and random BN statistics,
eval mode, moved through :mod:`weight_port.r2plus1d`. CI runs 8 frames at 32 px (every temporal
stride still divides: 8 -> 4 -> 2 -> 1); the full 16 x 112 x 112 parity and the full-size ptflops
run are ``@pytest.mark.slow``.
"""

from __future__ import annotations

import copy
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
torch.set_num_threads(1)

import co3d_jax  # noqa: E402
from co3d_jax.flops import count_params, paper_macs  # noqa: E402
from co3d_jax.models.r2plus1d import midplanes
from co3d_jax.normalisation import IMAGENET as IMAGENET_NORMALISATION  # noqa: E402
from weight_port import CheckpointMismatchError, PortError  # noqa: E402
from co3d_jax.models.r2plus1d import jax_to_torchvision  # noqa: E402
from weight_port.r2plus1d import convert_file, convert_state_dict  # noqa: E402

from torch_utils import randomize_model_bn_  # noqa: E402
from helpers import rel_err  # noqa: E402

RTOL = 1e-5
SMALL = dict(image_size=32, clip_length=8)
PARAMS = 31_505_325
# paper_macs at 112 px (analytic); equals ptflops 0.7.5 on torchvision's model + 400 (softmax),
# see test_full_size_parity_and_ptflops
GMACS = {8: 20_384_452_364, 16: 40_768_699_128}


def make_torch_model(seed: int = 0, num_classes: int = 400):
    torch.manual_seed(seed)
    model = torchvision.models.video.r2plus1d_18(num_classes=num_classes)
    randomize_model_bn_(model, seed + 1)
    with torch.no_grad():
        # torchvision's fc init (std 0.01) gives tiny logits; make the comparison meaningful
        model.fc.weight.mul_(5.0)
    return model.eval()


def numpy_sd(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def torch_logits(model, clip: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(np.moveaxis(clip, -1, 1)))).numpy()


@pytest.fixture(scope="module")
def torch_model():
    model = make_torch_model()
    return model, numpy_sd(model)


@pytest.fixture(scope="module")
def ported(torch_model):
    return convert_state_dict(torch_model[1], "r2plus1d_18_8", **SMALL)


@pytest.fixture(scope="module")
def small_forward():
    """One jitted function giving (logits, softmax scores) of the reduced model."""
    logits = co3d_jax.create_model("r2plus1d_18_8", head_activation="identity", **SMALL)
    probs = co3d_jax.create_model("r2plus1d_18_8", **SMALL)
    return jax.jit(lambda p, x: (logits.forward(p, x), probs.forward(p, x)))


# ----------------------------------------------------------------------------- structure
def test_registry_and_metadata():
    for t in (8, 16):
        m = co3d_jax.create_model(f"r2plus1d_18_{t}")
        assert (m.name, m.image_size, m.clip_length, m.frame_rate) == (f"r2plus1d_18_{t}", 112, t, 1)
        assert m.num_classes == 400
        assert not m.continual and m.normalisation == IMAGENET_NORMALISATION
        assert m.config.head_activation == "softmax"
    assert co3d_jax.create_model("r2plus1d_18_8", clip_length=16).clip_length == 16
    with pytest.raises(TypeError, match="unknown R\\(2\\+1\\)D options"):
        co3d_jax.create_model("r2plus1d_18_8", window=4)


def test_parameter_count_and_widths(torch_model):
    model, _ = torch_model
    assert sum(p.numel() for p in model.parameters()) == PARAMS
    for t in (8, 16):
        m = co3d_jax.create_model(f"r2plus1d_18_{t}")
        assert count_params(jax.eval_shape(m.init, jax.random.key(0))) == PARAMS
    # midplanes are per block (from its in/out) and shared by conv1 and conv2
    shapes = jax.eval_shape(co3d_jax.create_model("r2plus1d_18_8").init, jax.random.key(0))
    for layer, c_in, c_out in ((1, 64, 64), (2, 64, 128), (3, 128, 256), (4, 256, 512)):
        for b in (0, 1):
            mid = midplanes(c_in if b == 0 else c_out, c_out)
            block = getattr(model, f"layer{layer}")[b]
            assert block.conv1[0][0].out_channels == block.conv2[0][0].out_channels == mid
            main = shapes[f"layer{layer}"][str(b)]["residual"]["main"]
            assert main["conv1"]["0"]["0"]["kernel"].shape[-1] == main["conv2"]["0"]["0"]["kernel"].shape[-1] == mid
    assert midplanes(64, 128) == 230 and midplanes(128, 128) == 288


def test_clip_only():
    m = co3d_jax.create_model("r2plus1d_18_8", **SMALL)
    with pytest.raises(NotImplementedError, match="clip-only model"):
        m.init_state(1)
    with pytest.raises(NotImplementedError, match="clip-only model"):
        m.step({}, {}, jnp.zeros((1, 32, 32, 3)))


# ----------------------------------------------------------------------------- parity
def test_parity_with_torchvision(torch_model, ported, small_forward, capsys):
    model, _ = torch_model
    conv = ported
    assert conv.layout == "torchvision" and conv.arch == "r2plus1d_18_8"
    x = np.random.default_rng(0).standard_normal((2, 8, 32, 32, 3)).astype(np.float32)
    logits, probs = (np.asarray(a) for a in small_forward(jax.tree.map(jnp.asarray, conv.params), jnp.asarray(x)))
    ref = torch_logits(model, x)
    e = np.exp(ref.astype(np.float64) - ref.max(-1, keepdims=True))
    ref_probs = e / e.sum(-1, keepdims=True)
    e_logits, e_probs = rel_err(logits, ref), rel_err(probs, ref_probs)
    assert logits.shape == (2, 400) and e_logits <= RTOL and e_probs <= RTOL
    assert np.abs(ref).max() > 1.0 and ref_probs.max() > 10 / 400  # a meaningful comparison
    with capsys.disabled():
        print(f"\n[r2plus1d_18 8x32x32] rel err logits {e_logits:.2e} softmax {e_probs:.2e} "
              f"(max |logit| {np.abs(ref).max():.2f}, max p {ref_probs.max():.3f})")


def test_mapping_is_verbatim(torch_model, ported):
    _, sd = torch_model
    p = ported.params
    dhwio = (2, 3, 4, 1, 0)
    np.testing.assert_array_equal(p["stem"]["3"]["kernel"], sd["stem.3.weight"].transpose(dhwio))
    np.testing.assert_array_equal(p["layer3"]["0"]["residual"]["main"]["conv1"]["0"]["3"]["kernel"],
                                  sd["layer3.0.conv1.0.3.weight"].transpose(dhwio))
    np.testing.assert_array_equal(p["layer4"]["0"]["residual"]["downsample"]["1"]["var"],
                                  sd["layer4.0.downsample.1.running_var"])
    np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].T)
    assert jax_to_torchvision("layer2/1/residual/main/conv2/1/mean") == "layer2.1.conv2.1.running_mean"
    # every tensor used, the BN counters consumed: 31.5 M values + 4 BN stats per BN
    n_values = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert sum(a.size for a in jax.tree.leaves(p)) == n_values
    # the same weights serve T=16
    other = convert_state_dict(sd, "r2plus1d_18_16").params
    assert jax.tree.all(jax.tree.map(np.array_equal, other, p))


# ----------------------------------------------------------------------------- counting
def test_paper_macs_match_ptflops_small(torch_model):
    ptflops = pytest.importorskip("ptflops")
    model, _ = torch_model
    m = co3d_jax.create_model("r2plus1d_18_8", **SMALL)
    macs, params = ptflops.get_model_complexity_info(copy.deepcopy(model), (3, 8, 32, 32), as_strings=False,
                                                     print_per_layer_stat=False, backend="pytorch")
    assert params == PARAMS
    assert paper_macs(m, "clip") == macs + 400  # + F.softmax (1 per class); torchvision returns logits
    assert paper_macs(co3d_jax.create_model("r2plus1d_18_8", head_activation="identity", **SMALL), "clip") == macs
    for t, want in GMACS.items():
        assert paper_macs(co3d_jax.create_model(f"r2plus1d_18_{t}"), "clip") == want
    # the table (20.35 / 40.71) is within 0.2% (older ptflops: ReLU and pools counted once)
    assert abs(GMACS[8] / 1e9 - 20.35) < 0.04 and abs(GMACS[16] / 1e9 - 40.71) < 0.06


# ----------------------------------------------------------------------------- strictness
def test_strict_errors(torch_model):
    _, sd = torch_model
    bad = dict(sd)
    del bad["layer2.0.conv1.0.1.running_var"]
    bad["layer2.0.extra.weight"] = np.zeros(3, np.float32)
    bad["layer3.1.conv2.0.3.weight"] = np.zeros((256, 576, 5, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        convert_state_dict(bad, "r2plus1d_18_8")
    msg = str(e.value)
    assert e.value.missing == ["layer2.0.conv1.0.1.running_var"]
    assert e.value.unexpected == ["layer2.0.extra.weight"]
    assert e.value.misshaped == ["layer3.1.conv2.0.3.weight (256, 576, 5, 1, 1) != expected (256, 576, 3, 1, 1)"]
    assert "\n" not in msg and re.search(r"1 missing: .*; 1 unexpected: .*; 1 mis-shaped: ", msg)
    with pytest.raises(CheckpointMismatchError, match=r"fc\.weight \(400, 512\) != expected \(10, 512\).*"
                                                      r"pass num_classes=400"):
        convert_state_dict(sd, "r2plus1d_18_8", num_classes=10)
    # a 10-class checkpoint converts with num_classes=10
    ten = dict(sd, **{"fc.weight": sd["fc.weight"][:10], "fc.bias": sd["fc.bias"][:10]})
    conv = convert_state_dict(ten, "r2plus1d_18_16", num_classes=10)
    assert conv.params["fc"]["kernel"].shape == (512, 10) and conv.model_options == {"num_classes": 10}
    with pytest.raises(PortError, match="R\\(2\\+1\\)D porter handles"):
        convert_state_dict(sd, "x3d_s")
    with pytest.raises(PortError, match="unrecognised state dict layout"):
        convert_state_dict({"blocks.0.conv.weight": np.zeros(3, np.float32)}, "r2plus1d_18_8")
    with pytest.raises(PortError, match="unknown layout"):
        convert_state_dict(sd, "r2plus1d_18_8", layout="caffe2")
    with pytest.raises(CheckpointMismatchError, match="dtype int64"):
        convert_state_dict(dict(sd, **{"fc.bias": np.zeros(400, np.int64)}), "r2plus1d_18_8")


def test_files_and_prefixes(torch_model, ported, tmp_path):
    model, _ = torch_model
    path = tmp_path / "r2plus1d_18.pth"
    torch.save(model.state_dict(), path)  # torchvision's format: a plain OrderedDict of tensors
    conv = convert_file(str(path), "r2plus1d_18_8")
    assert conv.container == "bare" and jax.tree.all(jax.tree.map(np.array_equal, conv.params, ported.params))
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "wrapped.pt")
    conv = convert_file(str(tmp_path / "wrapped.pt"), "r2plus1d_18_16")
    assert conv.container == "state_dict" and conv.notes == ["stripped key prefix 'module.'"]
    assert jax.tree.all(jax.tree.map(np.array_equal, conv.params, ported.params))


# ----------------------------------------------------------------------------- slow: full size
@pytest.mark.slow
def test_full_size_parity_and_ptflops(capsys):
    ptflops = pytest.importorskip("ptflops")
    model = make_torch_model(seed=5)
    conv = convert_state_dict(numpy_sd(model), "r2plus1d_18_16", head_activation="identity")
    m = co3d_jax.create_model("r2plus1d_18_16", head_activation="identity")
    x = np.random.default_rng(3).standard_normal((1, 16, 112, 112, 3)).astype(np.float32)
    out = np.asarray(jax.jit(m.forward)(jax.tree.map(jnp.asarray, conv.params), jnp.asarray(x)))
    err = rel_err(out, torch_logits(model, x))
    assert err <= RTOL
    for t, want in GMACS.items():
        macs, _ = ptflops.get_model_complexity_info(model, (3, t, 112, 112), as_strings=False,
                                                    print_per_layer_stat=False, backend="pytorch")
        assert macs + 400 == want
    with capsys.disabled():
        print(f"\n[r2plus1d_18_16 16x112x112] rel err logits {err:.2e}; ptflops + softmax == paper_macs "
              f"({GMACS[8] / 1e9:.4f} / {GMACS[16] / 1e9:.4f} GMACs)")
