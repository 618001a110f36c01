"""SlowFast-R50 8x8 / 4x16 clip baselines (co3d.md §2.4) and their porters (§3.5).

Reference: pytorchvideo ``create_slowfast`` configured like torch hub ``slowfast_r50`` (8x8:
fusion kernel 7, stride 4) and its 4x16 counterpart (kernel 5, stride 8), with head pool kernels
(T/alpha, S/32, S/32) and (T, S/32, S/32) as PySlowFast sets them; random weights and random BN
statistics, eval mode; the slow pathway is ``index_select(linspace(0, T-1, T//alpha).long())``.
Weights go through :mod:`weight_port.slowfast` in all three layouts: pytorchvideo names, and
PySlowFast torch names and Caffe2 blobs made here from the pytorchvideo names by independent
renamings. CI runs 64 px with 8 (8x8) / 16 (4x16) fast frames, i.e. two slow frames each; the
full 32 x 256 x 256 parity is ``@pytest.mark.slow``.
"""

from __future__ import annotations

import copy
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorchvideo.models.slowfast")
torch.set_num_threads(1)

import co3d_jax  # noqa: E402
from co3d_jax.flops import count_params, paper_macs  # noqa: E402
from co3d_jax.models.slowfast import slow_indices
from co3d_jax.normalisation import KINETICS as FEICHTENHOFER_NORMALISATION  # noqa: E402
from co3d_jax.params import flatten  # noqa: E402
from co3d_jax.train import logits_net  # noqa: E402
from weight_port import CheckpointMismatchError, PortError  # noqa: E402
from co3d_jax.models.slowfast import caffe2_to_slowfast, jax_to_slowfast, slowfast_to_caffe2  # noqa: E402
from weight_port.slowfast import convert_state_dict  # noqa: E402

from torch_utils import randomize_model_bn_  # noqa: E402
from helpers import rel_err  # noqa: E402

RTOL = 1e-5
# arch -> (alpha, fusion kernel, CI fast frames, parameters, paper_macs at 256 px / 32 frames)
ARCHS = {
    "slowfast_8x8_r50": (4, 7, 8, 34_566_488, 66_432_930_592),
    "slowfast_4x16_r50": (8, 5, 16, 34_480_216, 36_578_399_008),
}
SIZE = 64
DEPTHS = (3, 4, 6, 3)


def make_pytorchvideo(arch: str, frames: int, size: int, seed: int = 0):
    from pytorchvideo.models.slowfast import create_slowfast

    alpha, k = ARCHS[arch][:2]
    torch.manual_seed(seed)
    model = create_slowfast(model_depth=50, slowfast_fusion_conv_kernel_size=(k, 1, 1),
                            slowfast_fusion_conv_stride=(alpha, 1, 1),
                            head_pool_kernel_sizes=((frames // alpha, size // 32, size // 32),
                                                    (frames, size // 32, size // 32)))
    randomize_model_bn_(model, seed + 1)
    with torch.no_grad():
        # random BN statistics inflate the features: keep the logits O(10) so that the softmax
        # comparison (errors ~ logit error) stays well inside the tolerance
        model.blocks[-1].proj.weight.mul_(0.25)
    return model.eval()


def pack(x: torch.Tensor, alpha: int) -> list:
    """pytorchvideo hub ``PackPathway`` / co3d ``pack_slowfast_pathways`` on (B, C, T, H, W)."""
    t = x.shape[2]
    return [torch.index_select(x, 2, torch.linspace(0, t - 1, t // alpha).long()), x]


def torch_logits(model, clip: np.ndarray, alpha: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(clip, -1, 1)))
    with torch.no_grad():
        return model(pack(x, alpha)).numpy()


def numpy_sd(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- independent renamings
_BN_C2 = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


def pytorchvideo_to_caffe2(sd: dict) -> dict:
    """PySlowFast Caffe2 blob names (video-nonlocal-net convention, ``t_`` = fast pathway) from
    pytorchvideo names, written independently of weight_port.slowfast."""
    out = {}
    for key, v in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        module, param = key.rsplit(".", 1)
        bn = "bn_" + _BN_C2[param]  # used for BN modules only
        w = {"weight": "w", "bias": "b"}.get(param)  # used for convs / the FC only
        if m := re.fullmatch(r"blocks\.0\.multipathway_blocks\.(\d)\.(conv|norm)", module):
            t = "t_" if m[1] == "1" else ""
            name = f"{t}conv1_{w}" if m[2] == "conv" else f"{t}res_conv1_{bn}"
        elif m := re.fullmatch(r"blocks\.(\d)\.multipathway_fusion\.(conv_fast_to_slow|norm)", module):
            n = int(m[1]) + 1
            base = "t_pool1_subsample" if n == 1 else f"t_res{n}_{DEPTHS[n - 2] - 1}_branch2c_bn_subsample"
            name = f"{base}_{w}" if m[2] == "conv_fast_to_slow" else f"{base}_{bn}"
        elif m := re.fullmatch(r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.(.+)", module):
            t = "t_" if m[2] == "1" else ""
            prefix = f"{t}res{int(m[1]) + 1}_{m[3]}_"
            sub = m[4]
            if sub == "branch1_conv":
                name = prefix + f"branch1_{w}"
            elif sub == "branch1_norm":
                name = prefix + f"branch1_{bn}"
            elif s := re.fullmatch(r"branch2\.conv_([abc])", sub):
                name = prefix + f"branch2{s[1]}_{w}"
            elif s := re.fullmatch(r"branch2\.norm_([abc])", sub):
                name = prefix + f"branch2{s[1]}_{bn}"
            else:
                raise AssertionError(key)
        elif module == "blocks.6.proj":
            name = f"pred_{w}"
        else:
            raise AssertionError(key)
        assert name not in out, (key, name)
        out[name] = v
    return out


def pytorchvideo_to_slowfast(sd: dict) -> dict:
    """PySlowFast torch names from pytorchvideo names by chained substring replacement."""
    out = {}
    for key, v in sd.items():
        k = re.sub(r"^blocks\.0\.multipathway_blocks\.(\d)\.", r"s1.pathway\1_stem.", key)
        k = re.sub(r"^blocks\.(\d)\.multipathway_fusion\.", lambda m: f"s{int(m[1]) + 1}_fuse.", k)
        k = re.sub(r"^blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.",
                   lambda m: f"s{int(m[1]) + 1}.pathway{m[2]}_res{m[3]}.", k)
        k = k.replace("conv_fast_to_slow.", "conv_f2s.").replace("_stem.norm.", "_stem.bn.").replace(
            "_fuse.norm.", "_fuse.bn.")
        k = k.replace("branch1_conv.", "branch1.").replace("branch1_norm.", "branch1_bn.")
        for x in "abc":
            k = k.replace(f"branch2.conv_{x}.", f"branch2.{x}.").replace(f"branch2.norm_{x}.", f"branch2.{x}_bn.")
        k = k.replace("blocks.6.proj.", "head.projection.")
        out[k] = v
    return out


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def torch_models():
    return {arch: make_pytorchvideo(arch, ARCHS[arch][2], SIZE) for arch in ARCHS}


@pytest.fixture(scope="module")
def state_dicts(torch_models):
    return {arch: numpy_sd(m) for arch, m in torch_models.items()}


def small_options(arch: str, **extra) -> dict:
    return dict(image_size=SIZE, clip_length=ARCHS[arch][2], **extra)


@pytest.fixture(scope="module")
def ported(state_dicts):
    return {arch: convert_state_dict(sd, arch) for arch, sd in state_dicts.items()}


# ----------------------------------------------------------------------------- structure
def test_slow_indices_match_torch_linspace():
    for t in range(1, 257):
        for alpha in (2, 4, 8, 16):
            if t // alpha:
                want = torch.linspace(0, t - 1, t // alpha, dtype=torch.long).numpy()
                np.testing.assert_array_equal(slow_indices(t, alpha), want, err_msg=f"T={t} alpha={alpha}")
    assert slow_indices(32, 4).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert slow_indices(32, 8).tolist() == [0, 10, 20, 31]


def test_registry_metadata_and_params(torch_models):
    for arch, (alpha, k, _, n_params, _) in ARCHS.items():
        m = co3d_jax.create_model(arch)
        assert (m.image_size, m.clip_length, m.frame_rate, m.num_classes) == (256, 32, 2, 400)
        assert not m.continual and m.normalisation == FEICHTENHOFER_NORMALISATION
        cfg = m.config
        assert (cfg.alpha, cfg.fusion_kernel_size, cfg.beta_inv, cfg.fusion_conv_channel_ratio) == (alpha, k, 8, 2)
        assert cfg.head_pool_kernels == ((32 // alpha, 8, 8), (32, 8, 8))
        shapes = jax.eval_shape(m.init, jax.random.key(0))
        assert count_params(shapes) == n_params == sum(p.numel() for p in torch_models[arch].parameters())
        assert shapes["s1_fuse"]["conv_f2s"]["kernel"].shape == (k, 1, 1, 8, 16)
        assert shapes["head"]["projection"]["kernel"].shape == (2304, 400)
    with pytest.raises(TypeError, match="unknown SlowFast options"):
        co3d_jax.create_model("slowfast_8x8_r50", window=8)
    with pytest.raises(ValueError, match="too small"):
        co3d_jax.create_model("slowfast_4x16_r50", clip_length=4)


def test_clip_only():
    m = co3d_jax.create_model("slowfast_8x8_r50", **small_options("slowfast_8x8_r50"))
    with pytest.raises(NotImplementedError, match="clip-only model"):
        m.init_state(1)
    with pytest.raises(NotImplementedError, match="clip-only model"):
        m.step({}, {}, jnp.zeros((1, SIZE, SIZE, 3)))
    with pytest.raises(NotImplementedError, match="clip-only model"):
        paper_macs(m, "step")


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_parity_with_pytorchvideo(arch, torch_models, ported, capsys):
    alpha, _, frames = ARCHS[arch][:3]
    conv = ported[arch]
    assert conv.layout == "pytorchvideo"
    logits_m = co3d_jax.create_model(arch, **small_options(arch, head_activation="identity"))
    probs_m = co3d_jax.create_model(arch, **small_options(arch))
    train_net = logits_net(probs_m.net)   # what fine-tuning differentiates: the head's softmax removed

    def outputs(p, x):
        y = train_net.forward(p, x)
        return logits_m.forward(p, x), probs_m.forward(p, x), jnp.mean(y, axis=tuple(range(1, y.ndim - 1)))

    x = np.random.default_rng(0).standard_normal((1, frames, SIZE, SIZE, 3)).astype(np.float32)
    logits, probs, train_logits = (np.asarray(a) for a in jax.jit(outputs)(jax.tree.map(jnp.asarray, conv.params),
                                                                          jnp.asarray(x)))
    np.testing.assert_allclose(train_logits, logits, rtol=1e-6, atol=1e-6)
    ref = torch_logits(torch_models[arch], x, alpha)
    e = np.exp(ref.astype(np.float64) - ref.max(-1, keepdims=True))
    ref_probs = e / e.sum(-1, keepdims=True)
    e_logits, e_probs = rel_err(logits, ref), rel_err(probs, ref_probs)
    assert logits.shape == (1, 400) and e_logits <= RTOL and e_probs <= RTOL
    assert ref_probs.max() > 10 / 400  # far from uniform: a meaningful comparison
    with capsys.disabled():
        print(f"\n[{arch} {frames}x{SIZE}x{SIZE}] rel err logits {e_logits:.2e} softmax {e_probs:.2e} "
              f"(max |logit| {np.abs(ref).max():.2f})")


# ----------------------------------------------------------------------------- BN folding, training mode
FUSIONS = ("s1_fuse", "s2_fuse", "s3_fuse", "s4_fuse")
# Training-mode BN re-normalises every layer with this batch's statistics (16 values per channel
# in s5's slow pathway here), which amplifies float32 rounding down the network: on this input
# pytorchvideo in float32 differs from itself in float64 by 3e-5 (logits) and 2e-5 (running
# statistics), measured; the eval-mode RTOL would test rounding, not the computation.
TRAIN_RTOL = 1e-4


def bn_stat_paths(params) -> list:
    """``flatten`` paths of every BN running statistic (``.../mean``, ``.../var``) in ``params``."""
    return [k for k in flatten(params) if k.endswith(("/mean", "/var"))]


def test_fold_batchnorm_folds_the_fusions(ported, capsys):
    """``Model.fold_batchnorm`` merges every conv -> BN, the fusions' ``conv_f2s`` -> ``bn``
    included: no BN layer or statistic remains and the logits are unchanged (8x8 at 64 px with
    the ported random BN statistics)."""
    arch = "slowfast_8x8_r50"
    frames = ARCHS[arch][2]
    m = co3d_jax.create_model(arch, **small_options(arch, head_activation="identity"))
    params = jax.tree.map(jnp.asarray, ported[arch].params)
    assert all(set(params[n]) == {"conv_f2s", "bn"} for n in FUSIONS)
    folded = {}

    def run(p, x):  # one program: folding eagerly dispatches ~700 small ops, slower than compiling them
        folded["model"], fp = m.fold_batchnorm(p)  # the layer tree is static: kept from the trace
        return m.forward(p, x), folded["model"].forward(fp, x), fp

    x = np.random.default_rng(3).standard_normal((1, frames, SIZE, SIZE, 3)).astype(np.float32)
    out, out_folded, fparams = (jax.tree.map(np.asarray, a) for a in jax.jit(run)(params, jnp.asarray(x)))
    net = folded["model"].net
    for n in FUSIONS:
        assert sorted(flatten(fparams[n])) == ["conv_f2s/bias", "conv_f2s/kernel"]
        assert [type(c).__name__ for _, c in net[n].path.children] == ["Conv", "Activation", "Activation"]
        assert np.abs(fparams[n]["conv_f2s"]["bias"]).max() > 0.1  # the BN's shift moved into the conv
    assert bn_stat_paths(fparams) == [] and len(bn_stat_paths(params)) == 2 * 110
    err = rel_err(out_folded, out)
    assert err <= RTOL and np.abs(out).max() > 1
    with capsys.disabled():
        print(f"\n[{arch} {frames}x{SIZE}x{SIZE}] folded vs unfolded logits: rel err {err:.2e}")


def test_forward_train_equals_pytorchvideo_train_mode(torch_models, ported, capsys):
    """``forward_train`` (batch-statistics BN; running statistics updated with momentum 0.1 and
    the unbiased batch variance) against pytorchvideo's ``.train()`` forward, dropout off: the
    logits, and every BN's running statistics after the step mapped back through the porter, the
    fusions' (which then differ from their inference values) included. Weights stay unchanged."""
    arch = "slowfast_8x8_r50"
    alpha, _, frames = ARCHS[arch][:3]
    model = copy.deepcopy(torch_models[arch]).train()
    model.blocks[-1].dropout.eval()
    x = np.random.default_rng(1).standard_normal((2, frames, SIZE, SIZE, 3)).astype(np.float32)
    ref = torch_logits(model, x, alpha)  # updates the model's running statistics
    want = flatten(convert_state_dict(numpy_sd(model), arch).params)
    m = co3d_jax.create_model(arch, **small_options(arch, head_activation="identity"))

    def train_logits(p, x):
        y, new = m.net.forward_train(p, x)
        return jnp.mean(y, axis=(1, 2, 3)), new

    before = flatten(ported[arch].params)
    logits, new = jax.jit(train_logits)(jax.tree.map(jnp.asarray, ported[arch].params), jnp.asarray(x))
    got = {k: np.asarray(v) for k, v in flatten(new).items()}
    assert sorted(got) == sorted(want) == sorted(before)
    stats = bn_stat_paths(new)
    assert all(np.array_equal(got[k], before[k]) for k in got if k not in stats)
    errs = {k: rel_err(got[k], want[k]) for k in stats}
    e_logits, worst = rel_err(logits, ref), max(errs, key=errs.get)
    assert e_logits <= TRAIN_RTOL and errs[worst] <= TRAIN_RTOL, (e_logits, worst, errs[worst])
    for n in FUSIONS:
        for s in ("mean", "var"):
            assert rel_err(want[f"{n}/bn/{s}"], before[f"{n}/bn/{s}"]) > 1e-2  # the step moved them
    assert np.abs(ref).max() > 0.1
    fuse = max(errs[f"{n}/bn/{s}"] for n in FUSIONS for s in ("mean", "var"))
    with capsys.disabled():
        print(f"\n[{arch} 2x{frames}x{SIZE}x{SIZE} train mode] rel err logits {e_logits:.2e}, running stats "
              f"{errs[worst]:.2e} (worst {worst}), fusion BNs {fuse:.2e}")


# ----------------------------------------------------------------------------- layouts
def test_caffe2_and_slowfast_layouts_give_the_same_params(state_dicts, ported):
    arch = "slowfast_8x8_r50"
    pv = state_dicts[arch]
    want = flatten(ported[arch].params)
    blobs = pytorchvideo_to_caffe2(pv)
    blobs["pred_w"] = blobs["pred_w"].reshape(400, 2304, 1, 1, 1)  # an FC stored as a conv: accepted
    solver = {f"{b}_momentum": np.zeros_like(v) for b, v in list(blobs.items())[:5]}
    blobs.update(solver, lr=np.asarray(0.1, np.float32), model_iter=np.asarray(196000, np.int64))
    conv = convert_state_dict(blobs, arch)
    assert conv.layout == "caffe2" and any("skipped 7 Caffe2 solver blobs" in n for n in conv.notes)
    got = flatten(conv.params)
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    # blob names the porter derives for missing blobs invert PySlowFast's renaming
    for path in want:
        sf = jax_to_slowfast(path)
        assert caffe2_to_slowfast(slowfast_to_caffe2(sf)) == sf
        assert slowfast_to_caffe2(sf) in blobs, sf
    assert caffe2_to_slowfast("t_res4_5_branch2c_bn_subsample_bn_rm") == "s4_fuse.bn.running_mean"
    assert caffe2_to_slowfast("t_res3_1_branch2b_bn_riv") == "s3.pathway1_res1.branch2.b_bn.running_var"
    # PySlowFast torch names (co3d's model), with a checkpoint prefix
    sf = {f"module.{k}": v for k, v in pytorchvideo_to_slowfast(pv).items()}
    conv = convert_state_dict(sf, arch)
    assert conv.layout == "slowfast" and conv.notes == ["stripped key prefix 'module.'"]
    got = flatten(conv.params)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_caffe2_file(state_dicts, ported, tmp_path):
    caffe2 = pytest.importorskip("weight_port.caffe2", reason="weight_port.caffe2 (load_caffe2_blobs) not written yet")
    from weight_port.slowfast import convert_file
    arch = "slowfast_4x16_r50"
    blobs = pytorchvideo_to_caffe2(state_dicts[arch])
    path = tmp_path / "SLOWFAST_4x16_R50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {**blobs, "model_iter": np.asarray(1)}}, f, protocol=2)
    assert set(caffe2.load_caffe2_blobs(str(path))) >= set(blobs)
    conv = convert_file(str(path), arch)
    assert conv.layout == "caffe2"
    assert jax.tree.all(jax.tree.map(np.array_equal, conv.params, ported[arch].params))


# ----------------------------------------------------------------------------- strictness
def test_strict_errors(state_dicts):
    pv8, pv4 = state_dicts["slowfast_8x8_r50"], state_dicts["slowfast_4x16_r50"]
    blobs = pytorchvideo_to_caffe2(pv8)
    del blobs["t_res3_1_branch2a_bn_riv"]
    blobs["t_res3_1_branch2d_w"] = np.zeros(3, np.float32)
    blobs["res4_0_branch1_w"] = np.zeros((1024, 640, 3, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        convert_state_dict(blobs, "slowfast_8x8_r50")
    assert e.value.missing == ["t_res3_1_branch2a_bn_riv"] and e.value.unexpected == ["t_res3_1_branch2d_w"]
    assert e.value.misshaped == ["res4_0_branch1_w (1024, 640, 3, 1, 1) != expected (1024, 640, 1, 1, 1)"]
    assert "caffe2 layout" in str(e.value) and "\n" not in str(e.value)
    # a missing fusion blob is named as the Caffe2 files name it
    blobs = pytorchvideo_to_caffe2(pv8)
    del blobs["t_res4_5_branch2c_bn_subsample_w"]
    with pytest.raises(CheckpointMismatchError) as e:
        convert_state_dict(blobs, "slowfast_8x8_r50")
    assert e.value.missing == ["t_res4_5_branch2c_bn_subsample_w"]
    # 4x16 weights into the 8x8 model: four fusion kernels mis-shaped, with a hint
    with pytest.raises(CheckpointMismatchError, match=r"4 mis-shaped: blocks\.0\.multipathway_fusion\."
                       r"conv_fast_to_slow\.weight \(16, 8, 5, 1, 1\) != expected \(16, 8, 7, 1, 1\).*"
                       r"hint: the checkpoint's fusion kernel is 5 like slowfast_4x16_r50"):
        convert_state_dict(pv4, "slowfast_8x8_r50")
    bad = dict(pv8)
    del bad["blocks.2.multipathway_blocks.0.res_blocks.1.branch2.norm_b.running_mean"]
    bad["blocks.5.extra"] = np.zeros(1, np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        convert_state_dict(bad, "slowfast_8x8_r50", num_classes=10)
    assert e.value.missing == ["blocks.2.multipathway_blocks.0.res_blocks.1.branch2.norm_b.running_mean"]
    assert e.value.unexpected == ["blocks.5.extra"]
    assert "pass num_classes=400" in str(e.value)
    with pytest.raises(PortError, match="SlowFast porter handles"):
        convert_state_dict(pv8, "r2plus1d_18_8")
    with pytest.raises(PortError, match="unrecognised SlowFast checkpoint layout"):
        convert_state_dict({"fc.weight": np.zeros(1, np.float32)}, "slowfast_8x8_r50")
    with pytest.raises(PortError, match="unknown layout"):
        convert_state_dict(pv8, "slowfast_8x8_r50", layout="torchvision")


# ----------------------------------------------------------------------------- counting
def ptflops_pyslowfast(model, arch: str, frames: int, size: int) -> int:
    """ptflops 0.7.5 MACs of ``model`` (pytorchvideo) with PySlowFast's identity 1x1x1 max pools
    between s2 and s3 added: co3d's model has them, pytorchvideo's not, and ptflops counts them."""
    ptflops = pytest.importorskip("ptflops")
    alpha = ARCHS[arch][0]
    model = copy.deepcopy(model)
    fusion = model.blocks[1].multipathway_fusion
    pools = torch.nn.ModuleList([torch.nn.MaxPool3d(1), torch.nn.MaxPool3d(1)])

    class FuseThenPool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fusion, self.pools = fusion, pools

        def forward(self, x):
            return [p(y) for p, y in zip(self.pools, self.fusion(x))]

    model.blocks[1].multipathway_fusion = FuseThenPool()

    def inputs(shape):
        return {"x": pack(torch.zeros(1, *shape), alpha)}

    macs, _ = ptflops.get_model_complexity_info(model, (3, frames, size, size), input_constructor=inputs,
                                                as_strings=False, print_per_layer_stat=False, backend="pytorch")
    return macs


def test_paper_macs(torch_models):
    for arch, (alpha, _, frames, _, full) in ARCHS.items():
        assert paper_macs(co3d_jax.create_model(arch), "clip") == full
        macs = ptflops_pyslowfast(torch_models[arch], arch, frames, SIZE)
        ours = paper_macs(co3d_jax.create_model(arch, **small_options(arch)), "clip")
        # ours has the softmax (+400, PySlowFast's head), not pytorchvideo's AdaptiveAvgPool3d on the logits (-800)
        assert ours == macs + 400 - 800
    # the table: 66.25 / 36.46 (older ptflops); see co3d_jax.models.slowfast
    assert abs(ARCHS["slowfast_8x8_r50"][4] / 1e9 - 66.25) < 0.2
    assert abs(ARCHS["slowfast_4x16_r50"][4] / 1e9 - 36.46) < 0.2


# ----------------------------------------------------------------------------- slow: full size
@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_full_size_parity(arch, capsys):
    alpha = ARCHS[arch][0]
    model = make_pytorchvideo(arch, 32, 256, seed=3)
    blobs = pytorchvideo_to_caffe2(numpy_sd(model))  # co3d's weights are Caffe2 blobs
    conv = convert_state_dict(blobs, arch, head_activation="identity")
    m = co3d_jax.create_model(arch, head_activation="identity")
    x = np.random.default_rng(1).standard_normal((1, 32, 256, 256, 3)).astype(np.float32)
    out = np.asarray(jax.jit(m.forward)(jax.tree.map(jnp.asarray, conv.params), jnp.asarray(x)))
    err = rel_err(out, torch_logits(model, x, alpha))
    assert err <= RTOL
    macs = ptflops_pyslowfast(model, arch, 32, 256)
    assert paper_macs(co3d_jax.create_model(arch), "clip") == macs + 400 - 800 == ARCHS[arch][4]
    with capsys.disabled():
        print(f"\n[{arch} 32x256x256, Caffe2 layout] rel err logits {err:.2e}; paper_macs {ARCHS[arch][4] / 1e9:.4f} "
              f"GMACs == ptflops 0.7.5 (+ identity pools + softmax - output pool)")
