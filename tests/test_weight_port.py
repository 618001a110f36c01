"""Weight porter: PyTorch X3D checkpoints (pytorchvideo / PySlowFast / bare) -> co3d_jax params.

Checkpoints are generated here with random weights *and random BN running statistics* in the
real layouts (pytorchvideo ``create_x3d`` state dicts, and PySlowFast names made from them by an
independent chained-substring renaming); nothing is downloaded. The fast tests use X3D-XS's
weights (= S/M's) at 64 px / 4 frames and a reduced-depth 32 px model; the full-size parity
checks are ``@pytest.mark.slow``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorchvideo.models.x3d")

import co3d_jax  # noqa: E402
from co3d_jax.params import ParamsError, flatten, read_npz  # noqa: E402
from weight_port import CheckpointMismatchError, PortError  # noqa: E402
from weight_port import cli  # noqa: E402
from weight_port.convert import convert_file, convert_state_dict, save_conversion  # noqa: E402
from weight_port.tensors import IDENTITY_BN_VAR  # noqa: E402
from weight_port.x3d import jax_forward_fn, jax_params_to_state_dict, verify  # noqa: E402

from torch_utils import randomize_bn_, randomize_model_bn_  # noqa: E402
from helpers import rel_err  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-5
SMALL = dict(frames=4, image_size=64)   # X3D-XS weights (= S/M weights), cheap input


# ----------------------------------------------------------------------------- helpers
def make_pytorchvideo_x3d(frames: int, image_size: int, seed: int = 0, **kwargs):
    """pytorchvideo X3D in eval mode with random weights and random BN statistics."""
    from pytorchvideo.models.x3d import create_x3d

    torch.manual_seed(seed)
    model = create_x3d(input_clip_length=frames, input_crop_size=image_size, **kwargs)
    randomize_model_bn_(model, 1234)
    return model.eval()


def pytorchvideo_to_slowfast(sd: dict) -> dict:
    """PySlowFast X3D names from pytorchvideo names by chained substring replacement (written
    independently of the X3D checkpoint table, in the style of co3d's Slow remap)."""
    out = {}
    for key, v in sd.items():
        k = key.replace("blocks.0.conv.conv_t.", "STEM_SPATIAL.").replace("blocks.0.conv.conv_xy.", "STEM_TEMPORAL.")
        k = k.replace("STEM_SPATIAL.", "s1.pathway0_stem.conv_xy.").replace("STEM_TEMPORAL.", "s1.pathway0_stem.conv.")
        k = k.replace("blocks.0.norm.", "s1.pathway0_stem.bn.")
        k = re.sub(r"^blocks\.([1-4])\.res_blocks\.(\d+)\.", lambda m: f"s{int(m[1]) + 1}.pathway0_res{m[2]}.", k)
        k = k.replace("branch1_conv.", "branch1.").replace("branch1_norm.", "branch1_bn.")
        k = k.replace("norm_b.1.block.0.", "se.fc1.").replace("norm_b.1.block.2.", "se.fc2.")
        k = k.replace("norm_b.0.", "b_bn.")
        for x in "abc":
            k = k.replace(f"conv_{x}.", f"{x}.").replace(f"norm_{x}.", f"{x}_bn.")
        k = k.replace("blocks.5.pool.pre_conv.", "head.conv_5.").replace("blocks.5.pool.pre_norm.", "head.conv_5_bn.")
        k = k.replace("blocks.5.pool.post_conv.", "head.lin_5.").replace("blocks.5.proj.", "head.projection.")
        out[k] = v
    return out


def add_slowfast_shortcut_bn(model) -> None:
    """Give pytorchvideo's stage-2 block 0 the shortcut BN PySlowFast has (random stats)."""
    block = model.blocks[1].res_blocks[0]
    assert block.branch1_norm is None and block.branch1_conv is not None
    block.branch1_norm = torch.nn.BatchNorm3d(block.branch1_conv.out_channels)
    randomize_bn_(block.branch1_norm, torch.Generator().manual_seed(99), mean_std=0.5).eval()


def numpy_sd(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def torch_outputs(model, x) -> tuple[np.ndarray, np.ndarray]:
    """(softmax scores, logits) of a pytorchvideo X3D (softmax head removed for the logits)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        probs = model(x).numpy()
        head = model.blocks[-1]
        act, head.activation = head.activation, None
        logits = model(x).numpy()
        head.activation = act
    return probs, logits


def jax_outputs(params, x, arch: str, frames: int, image_size: int, **options):
    fn = jax_forward_fn(arch, tuple(sorted({**options, "image_size": image_size, "window": frames}.items())))
    clip = jnp.asarray(x.permute(0, 2, 3, 4, 1).numpy())
    with jax.default_matmul_precision("highest"):
        return tuple(np.asarray(a) for a in fn(jax.tree.map(jnp.asarray, params), clip))


def assert_parity(params, model, arch, frames, image_size, seed=0, **options) -> tuple[float, float]:
    x = torch.randn(1, 3, frames, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    probs_ref, logits_ref = torch_outputs(model, x)
    probs, logits = jax_outputs(params, x, arch, frames, image_size, **options)
    assert probs.shape == probs_ref.shape and logits.shape == logits_ref.shape
    errs = rel_err(probs, probs_ref), rel_err(logits, logits_ref)
    assert max(errs) <= RTOL, errs
    # the comparison must be meaningful: probabilities far from uniform, logits O(1)
    assert probs_ref.max() > 2.0 / probs_ref.shape[1] and np.abs(logits_ref).max() > 0.1
    return errs


def save_ckpt(path, obj) -> str:
    torch.save(obj, path)
    return str(path)


def tensors(sd: dict) -> dict:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pv_small():
    """X3D-XS/S/M-shaped pytorchvideo model (64 px, 4 frames) and its state dict."""
    model = make_pytorchvideo_x3d(**SMALL)
    return model, numpy_sd(model)


@pytest.fixture(scope="module")
def sf_small():
    """The same weights as ``pv_small`` as a PySlowFast state dict, plus the stage-2 shortcut BN,
    and the matching torch reference (pytorchvideo + that BN)."""
    model = make_pytorchvideo_x3d(**SMALL)   # same seed -> same weights
    add_slowfast_shortcut_bn(model)
    sf = pytorchvideo_to_slowfast(numpy_sd(model))
    return model, sf


@pytest.fixture(scope="module")
def files(tmp_path_factory, pv_small, sf_small):
    """Checkpoint files in all layouts and broken variants."""
    d = tmp_path_factory.mktemp("ckpts")
    _, pv = pv_small
    _, sf = sf_small
    f = {}
    f["pv"] = save_ckpt(d / "X3D_S_pv.pyth", {"model_state": tensors(pv)})
    f["sf"] = save_ckpt(d / "x3d_s_sf.pyth", {"epoch": 300, "model_state": tensors(sf), "cfg": "TRAIN: ..."})
    f["bare_module"] = save_ckpt(d / "bare.pt", {f"module.{k}": v for k, v in tensors(sf).items()})
    f["state_dict_model"] = save_ckpt(d / "sd.pt", {"state_dict": {f"model.{k}": v for k, v in tensors(pv).items()}})
    missing = tensors(sf)
    del missing["s3.pathway0_res1.branch2.b.weight"]
    f["missing"] = save_ckpt(d / "missing.pyth", {"model_state": missing})
    unexpected = tensors(sf)
    unexpected["s2.pathway0_res0.branch2.extra.weight"] = torch.zeros(3)
    f["unexpected"] = save_ckpt(d / "unexpected.pyth", {"model_state": unexpected})
    misshaped = tensors(sf)
    misshaped["s4.pathway0_res2.branch2.a.weight"] = torch.zeros(216, 96, 3, 1, 1)
    f["misshaped"] = save_ckpt(d / "misshaped.pyth", {"model_state": misshaped})
    raw = open(f["sf"], "rb").read()
    (d / "truncated.pyth").write_bytes(raw[: len(raw) // 2])
    f["truncated"] = str(d / "truncated.pyth")
    (d / "notes.txt").write_text("this is not a checkpoint\n")
    f["text"] = str(d / "notes.txt")
    f["list"] = save_ckpt(d / "list.pt", [torch.zeros(3)])
    large = make_pytorchvideo_x3d(4, 64, depth_factor=5.0)
    f["large"] = save_ckpt(d / "x3d_l.pyth", {"model_state": large.state_dict()})
    # reduced-depth, 10-class model for the CLI --verify run
    tiny = make_pytorchvideo_x3d(4, 32, depth_factor=1.0, model_num_class=10, seed=3)
    f["tiny"] = save_ckpt(d / "tiny.pyth", {"model_state": tiny.state_dict()})
    f["dir"] = str(d)
    return f


# ----------------------------------------------------------------------------- (a) pytorchvideo
def test_pytorchvideo_small_parity(pv_small, tmp_path, capsys):
    model, sd = pv_small
    conv = convert_state_dict(sd, "x3d_xs")
    assert conv.layout == "pytorchvideo"
    errs = assert_parity(conv.params, model, "x3d_xs", **SMALL)
    # the library's --verify path gives the same verdict
    res = verify(conv, **SMALL)
    assert res.worst_rel <= RTOL and res.clip_shape == (1, 4, 64, 64, 3)
    with capsys.disabled():
        print(f"\n[x3d_xs weights, pytorchvideo layout, 4x64x64] rel err probs {errs[0]:.2e} logits {errs[1]:.2e}")


def test_pytorchvideo_mapping_details(pv_small):
    _, sd = pv_small
    conv = convert_state_dict(sd, "x3d_s")
    p = conv.params
    # stem names are swapped in pytorchvideo: conv_t (24,3,1,3,3) is the spatial conv_xy
    dhwio = (2, 3, 4, 1, 0)
    np.testing.assert_array_equal(p["s1"]["conv_xy"]["kernel"], sd["blocks.0.conv.conv_t.weight"].transpose(dhwio))
    np.testing.assert_array_equal(p["s1"]["conv"]["kernel"], sd["blocks.0.conv.conv_xy.weight"].transpose(dhwio))
    # SE inside norm_b; dense kernels transposed
    se = p["s3"]["res2"]["residual"]["branch2"]["se"]["gate"]
    fc2 = sd["blocks.2.res_blocks.2.branch2.norm_b.1.block.2.weight"]
    np.testing.assert_array_equal(se["fc2"]["kernel"], fc2[:, :, 0, 0, 0].T)
    np.testing.assert_array_equal(p["head"]["projection"]["kernel"], sd["blocks.5.proj.weight"].T)
    # the identity BN on s2/res0's shortcut: exact identity in float32
    bn = p["s2"]["res0"]["residual"]["skip"]["branch1_bn"]
    assert (bn["scale"] == 1).all() and (bn["bias"] == 0).all() and (bn["mean"] == 0).all()
    assert (bn["var"] == IDENTITY_BN_VAR).all() and (np.float32(1) / np.sqrt(bn["var"] + np.float32(1e-5)) == 1).all()
    assert any("identity BN" in n for n in conv.notes)
    # pytorchvideo's parameter count is the SlowFast one minus that BN's 48 affine parameters
    n_trainable = sum(v.size for k, v in sd.items() if not re.search(r"running_|num_batches", k))
    assert n_trainable == 3_794_274
    # XS/S/M and CoX3D share the weights
    for arch in ("x3d_m", "cox3d_s_13", "cox3d_xs"):
        other = convert_state_dict(sd, arch).params
        assert jax.tree.all(jax.tree.map(np.array_equal, other, p))


# ----------------------------------------------------------------------------- (b) PySlowFast
def test_slowfast_small_parity(sf_small, capsys):
    model, sf = sf_small
    conv = convert_state_dict(sf, "x3d_xs")
    assert conv.layout == "slowfast" and not any("identity" in n for n in conv.notes)
    n_trainable = sum(v.size for k, v in sf.items() if not re.search(r"running_|num_batches", k))
    assert n_trainable == 3_794_322 and len(sf) == 568  # reference §3.2: 568 entries for S
    errs = assert_parity(conv.params, model, "x3d_xs", **SMALL)
    res = verify(conv, **SMALL)   # reference built by weight_port from the slowfast names
    assert res.worst_rel <= RTOL
    with capsys.disabled():
        print(f"\n[x3d_xs weights, slowfast layout, 4x64x64] rel err probs {errs[0]:.2e} logits {errs[1]:.2e}")


def test_slowfast_round_trip_from_jax_names(sf_small):
    _, sf = sf_small
    conv = convert_state_dict(sf, "x3d_s")
    back = jax_params_to_state_dict(flatten(conv.params), "slowfast", counters=False)
    expect = {k: v for k, v in sf.items() if not k.endswith("num_batches_tracked")}
    assert sorted(back) == sorted(expect)
    for k in expect:
        np.testing.assert_array_equal(back[k], expect[k], err_msg=k)


# ----------------------------------------------------------------------------- (c) containers
@pytest.mark.parametrize("which", ["pv", "sf", "bare_module", "state_dict_model"])
def test_containers_and_prefixes(files, pv_small, sf_small, which):
    conv = convert_file(files[which], "x3d_s")
    want = convert_state_dict(sf_small[1] if which in ("sf", "bare_module") else pv_small[1], "x3d_s")
    assert jax.tree.all(jax.tree.map(np.array_equal, conv.params, want.params))
    assert conv.container == {"pv": "model_state", "sf": "model_state", "bare_module": "bare",
                              "state_dict_model": "state_dict"}[which]


def test_errors_in_process(files, pv_small):
    with pytest.raises(CheckpointMismatchError) as e:
        convert_file(files["missing"], "x3d_s")
    assert e.value.missing == ["s3.pathway0_res1.branch2.b.weight"] and not e.value.unexpected
    with pytest.raises(CheckpointMismatchError) as e:
        convert_state_dict({**pv_small[1], "blocks.1.res_blocks.0.branch1_norm.weight": np.ones(24, np.float32)},
                           "x3d_s")
    # a partial shortcut BN is not silently replaced by the identity
    assert "blocks.1.res_blocks.0.branch1_norm.running_mean" in e.value.missing
    with pytest.raises(PortError, match="unrecognised state dict layout"):
        convert_state_dict({"fc.weight": np.zeros((2, 2), np.float32)}, "x3d_s")
    with pytest.raises(PortError, match="X3D/CoX3D"):
        convert_file(files["sf"], "slow_8x8")
    with pytest.raises(PortError, match="unknown model"):
        convert_file(files["sf"], "x3d_xxl")
    with pytest.raises(PortError, match="top-level object is a list"):
        convert_file(files["list"], "x3d_s")
    d = files["dir"]
    torch.save({"model_state": tensors(pv_small[1]), "args": argparse.Namespace(lr=0.1)}, f"{d}/pickled.pyth")
    with pytest.raises(PortError, match="refusing to unpickle"):
        convert_file(f"{d}/pickled.pyth", "x3d_s")
    open(f"{d}/empty.pyth", "wb").close()
    with pytest.raises(PortError, match="empty file"):
        convert_file(f"{d}/empty.pyth", "x3d_s")
    with pytest.raises(PortError, match="no such file"):
        convert_file(f"{d}/absent.pyth", "x3d_s")
    with pytest.raises(CheckpointMismatchError, match=r"head\.projection\.weight \(400, 2048\) != expected "
                       r"\(10, 2048\).*pass --num-classes 400"):
        convert_file(files["sf"], "x3d_s", num_classes=10)


def test_cli_verification_failure_writes_nothing(files, capsys):
    out = f"{files['dir']}/strict.npz"
    args = ["convert", files["pv"], "--arch", "x3d_xs", "--out", out, "--verify", "--verify-image-size", "64",
            "--verify-frames", "4"]   # same JAX configuration as the parity test: compiled once
    assert cli.main([*args, "--tolerance", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: verification failed: relative error") and len(err.splitlines()) == 1
    assert not os.path.exists(out)


def test_one_message_lists_all_problems(sf_small, capsys, tmp_path):
    sd = tensors(sf_small[1])
    del sd["s1.pathway0_stem.bn.running_var"]
    sd["head.extra.weight"] = torch.zeros(1)
    sd["s5.pathway0_res6.branch2.c.weight"] = torch.zeros(192, 432, 3, 1, 1)
    torch.save({"model_state": sd}, tmp_path / "bad.pyth")
    assert cli.main(["convert", str(tmp_path / "bad.pyth"), "--arch", "x3d_m", "--out", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.npz").exists()
    assert re.search(r"1 missing: s1\.pathway0_stem\.bn\.running_var; 1 unexpected: head\.extra\.weight; "
                     r"1 mis-shaped: s5\.pathway0_res6\.branch2\.c\.weight \(192, 432, 3, 1, 1\)", err), err


def test_cli_non_checkpoint_inputs_say_what_the_file_is(files, sf_small, capsys, tmp_path):
    """An already converted .npz, another .npz, another zip, random bytes (with and without a
    pickle-like first byte), an empty file and a truncated zip: one line each saying what the file
    is (or is not), never torch's internals (hasRecord("version"), PytorchStreamReader)."""
    import zipfile

    converted = str(tmp_path / "x3d_s.npz")
    save_conversion(convert_state_dict(sf_small[1], "x3d_s"), converted, "x3d_s.pyth")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with zipfile.ZipFile(tmp_path / "docs.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    rng = np.random.default_rng(0)
    (tmp_path / "random.pyth").write_bytes(b"\x13" + rng.bytes(4095))
    (tmp_path / "random_pickle.pyth").write_bytes(b"\x80" + rng.bytes(4095))     # byte 2 is no protocol
    (tmp_path / "random_pickle2.pyth").write_bytes(b"\x80\x02" + rng.bytes(4094))  # protocol 2, then junk
    (tmp_path / "empty.pyth").write_bytes(b"")
    raw = open(files["sf"], "rb").read()
    (tmp_path / "cut.pyth").write_bytes(raw[: len(raw) // 3])
    cases = {
        converted: r"x3d_s\.npz: this is already a converted co3d_jax params file for x3d_s \(\.npz\), not a "
                   r"PyTorch checkpoint: load it with co3d_jax\.load_params",
        str(tmp_path / "other.npz"): r"a numpy \.npz archive \(1 arrays\), not a PyTorch checkpoint",
        str(tmp_path / "docs.zip"): r"a zip archive but not a torch\.save file",
        str(tmp_path / "random.pyth"): r"not a PyTorch checkpoint \(neither a torch\.save zip archive nor a pickle",
        str(tmp_path / "random_pickle.pyth"): r"random_pickle\.pyth: not a PyTorch checkpoint \(its first byte",
        str(tmp_path / "random_pickle2.pyth"): r"random_pickle2\.pyth: not a readable PyTorch checkpoint, truncated "
                                               r"or corrupt\? \(the pickle does not parse",
        str(tmp_path / "empty.pyth"): r"empty file, not a PyTorch checkpoint",
        str(tmp_path / "cut.pyth"): r"cut\.pyth: not a readable PyTorch checkpoint, truncated or corrupt\?",
    }
    for src, pattern in cases.items():
        out = tmp_path / "out.npz"
        assert cli.main(["convert", src, "--arch", "x3d_s", "--out", str(out)]) == 2, src
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
        assert re.search(pattern, lines[0]), lines[0]
        assert "hasRecord" not in err and "PytorchStreamReader" not in err, err
        assert not out.exists()


# PySlowFast's checkpoint["cfg"] is cfg.dump(): yacs YAML, keys sorted, lists as block items
PYSLOWFAST_CFG = """\
DATA:
  DECODING_BACKEND: pyav
  INPUT_CHANNEL_NUM:
  - 3
  MEAN:
  - 0.45
  - 0.45
  - 0.45
  NUM_FRAMES: {frames}
  PATH_LABEL_SEPARATOR: ' '
  SAMPLING_RATE: {rate}
  TEST_CROP_SIZE: {crop}
  TRAIN_CROP_SIZE: {crop}
  TRAIN_JITTER_SCALES:
  - 182
  - 228
MODEL:
  ARCH: {arch}
  MODEL_NAME: X3D
  NUM_CLASSES: 400
TRAIN:
  CHECKPOINT_PERIOD: 10
X3D:
  BN_LIN5: false
  BOTTLENECK_FACTOR: 2.25
  CHANNELWISE_3x3x3: true
  DEPTH_FACTOR: 2.2
  DIM_C1: 12
  DIM_C5: 2048
  WIDTH_FACTOR: 2.0
"""


def test_recorded_config_of_another_size_warns(sf_small, tmp_path, capsys):
    """X3D-S and X3D-M weights have the same shapes: a PySlowFast checkpoint whose recorded cfg
    (cfg.dump(), or a dict) describes X3D-M converts for --arch x3d_s with a one-line warning on
    stderr; the matching arch converts silently."""
    from weight_port.checkpoint import parse_config_text
    from weight_port.pipeline import RecordedConfigWarning

    m_cfg = PYSLOWFAST_CFG.format(frames=16, rate=5, crop=224, arch="x3d")
    parsed = parse_config_text(m_cfg)
    assert parsed["DATA"]["NUM_FRAMES"] == 16 and parsed["X3D"]["DEPTH_FACTOR"] == 2.2
    assert parsed["MODEL"]["ARCH"] == "x3d" and parsed["DATA"]["PATH_LABEL_SEPARATOR"] == " "
    sd = tensors(sf_small[1])
    m_file = save_ckpt(tmp_path / "x3d_m.pyth", {"epoch": 300, "model_state": sd, "optimizer_state": {},
                                                 "cfg": m_cfg})
    assert cli.main(["convert", m_file, "--arch", "x3d_s", "--out", str(tmp_path / "s.npz")]) == 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: "), err
    assert re.search(r"recorded config \(DATA\.NUM_FRAMES 16, DATA\.SAMPLING_RATE 5, DATA\.TRAIN_CROP_SIZE 224, "
                     r"X3D\.DEPTH_FACTOR 2\.2\) describes X3D-M, but --arch x3d_s is X3D-S \(13 frames", lines[0])
    assert "for X3D-M weights: x3d_m" in lines[0] and "wrote" in out and (tmp_path / "s.npz").exists()
    for arch in ("x3d_m", "cox3d_m_64"):  # the size the config describes: no warning
        assert cli.main(["convert", m_file, "--arch", arch, "--out", str(tmp_path / f"{arch}.npz")]) == 0
        assert "warning" not in capsys.readouterr().err
    # a cfg stored as a dict, a continual arch, and the Python API (a RecordedConfigWarning)
    d_file = save_ckpt(tmp_path / "dict.pyth", {"model_state": sd, "cfg": parsed})
    with pytest.warns(RecordedConfigWarning, match=r"describes X3D-M, but --arch cox3d_s_64 is X3D-S.*cox3d_m_\*"):
        conv = convert_file(d_file, "cox3d_s_64")
    assert len(conv.warnings) == 1
    # another MODEL.ARCH; and a cfg that describes no size (e.g. "TRAIN: ...") says nothing
    a_file = save_ckpt(tmp_path / "slow.pyth", {"model_state": sd, "cfg": PYSLOWFAST_CFG.format(
        frames=13, rate=6, crop=160, arch="slow")})
    assert cli.main(["convert", a_file, "--arch", "x3d_s", "--out", str(tmp_path / "a.npz")]) == 0
    assert "names MODEL.ARCH 'slow', but --arch x3d_s is X3D" in capsys.readouterr().err
    for cfg in ("TRAIN: ...", "not yaml at all", PYSLOWFAST_CFG.format(frames=8, rate=6, crop=160, arch="x3d")):
        q_file = save_ckpt(tmp_path / "q.pyth", {"model_state": sd, "cfg": cfg})
        assert cli.main(["convert", q_file, "--arch", "x3d_s", "--out", str(tmp_path / "q.npz")]) == 0
        assert "warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- (d) CLI, subprocesses
def _run_cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", "weight_port", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def cli_runs(files):
    """All CLI subprocesses of this module, run concurrently (each pays torch + JAX start-up)."""
    d = files["dir"]
    jobs = {case: ["convert", files[src], "--arch", "x3d_s", "--out", f"{d}/out_{case}.npz"]
            for case, src in (("missing", "missing"), ("unexpected", "unexpected"), ("misshaped", "misshaped"),
                              ("truncated", "truncated"), ("text", "text"), ("wrong_arch", "large"))}
    jobs.update({
        "verify": ["convert", files["tiny"], "--arch", "x3d_xs", "--depth-factor", "1", "--num-classes", "10",
                   "--out", f"{d}/tiny.npz", "--verify", "--verify-image-size", "32", "--tolerance", "1e-5"],
    })
    with ThreadPoolExecutor(4) as pool:  # 2 cores; bounded memory
        futures = {k: pool.submit(_run_cli, v) for k, v in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


ERROR_CASES = {
    "missing": r"1 missing: s3\.pathway0_res1\.branch2\.b\.weight",
    "unexpected": r"1 unexpected: s2\.pathway0_res0\.branch2\.extra\.weight",
    "misshaped": r"1 mis-shaped: s4\.pathway0_res2\.branch2\.a\.weight \(216, 96, 3, 1, 1\) "
                 r"!= expected \(216, 96, 1, 1, 1\)",
    "truncated": r"truncated\.pyth: not a readable PyTorch checkpoint, truncated or corrupt\?",
    "text": r"notes\.txt: not a (readable )?PyTorch checkpoint",
    "wrong_arch": r"does not match --arch x3d_s: .*unexpected: .*hint: the checkpoint has stage depths "
                  r"\[5, 10, 25, 15\] like x3d_l",
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_cli_errors(cli_runs, files, case):
    r = cli_runs[case]
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert re.search(ERROR_CASES[case], lines[0]), lines[0]
    assert not os.path.exists(f"{files['dir']}/out_{case}.npz")


def test_cli_convert_verify_reduced(cli_runs, files, capsys):
    r = cli_runs["verify"]
    assert r.returncode == 0, r.stderr
    errs = [float(x) for x in re.findall(r"relative ([0-9.e+-]+)", r.stdout)]
    assert len(errs) == 2 and max(errs) <= RTOL, r.stdout
    assert "identity BN" in r.stdout and "wrote" in r.stdout
    with capsys.disabled():
        print(f"\n[depth 1.0, 10 classes, 4x32x32, CLI --verify] rel err probs {errs[0]:.2e} logits {errs[1]:.2e}")
    # (f) the file loads for the matching model only; a registry name is built with the options
    # recorded in the file, a model object must match them
    path = f"{files['dir']}/tiny.npz"
    _, meta = read_npz(path)
    assert meta["arch"] == "x3d_xs" and '"num_classes": 10' in meta["model_options"]
    params = co3d_jax.load_params(path, co3d_jax.create_model("x3d_xs", depth_factor=1.0, num_classes=10))
    assert params["head"]["projection"]["kernel"].shape == (2048, 10)
    by_name = co3d_jax.load_params(path, "x3d_xs")
    assert by_name["head"]["projection"]["kernel"].shape == (2048, 10)
    with pytest.raises(ParamsError, match="missing"):
        co3d_jax.load_params(path, co3d_jax.create_model("x3d_xs"))


def test_cli_help():
    assert cli.main(["list"]) == 0
    for args in (["--help"], ["convert", "--help"], ["download", "--help"], ["list", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        assert e.value.code == 0


# ----------------------------------------------------------------------------- (f) load_params
def test_load_params_round_trip(pv_small, tmp_path):
    conv = convert_state_dict(pv_small[1], "x3d_s")
    out = str(tmp_path / "x3d_s.npz")
    save_conversion(conv, out, "X3D_S.pyth")
    flat, meta = read_npz(out)
    assert meta["arch"] == "x3d_s" and meta["layout"] == "pytorchvideo" and meta["source"] == "X3D_S.pyth"
    assert all(v.dtype == np.float32 for v in flat.values())
    for name in ("x3d_s", "cox3d_s_13"):
        params = co3d_jax.load_params(out, name)
        assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), params, conv.params))
    with pytest.raises(ParamsError, match="missing"):
        co3d_jax.load_params(out, "x3d_l")
    with pytest.raises(ParamsError, match="mis-shaped"):
        co3d_jax.load_params(out, co3d_jax.create_model("x3d_s", num_classes=10))
    with pytest.raises(PortError, match=r"\.npz"):
        save_conversion(conv, str(tmp_path / "x3d_s.pkl"))


# ----------------------------------------------------------------------------- (e) download
class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes) with HTTP Range support; logs requests."""

    def do_GET(self):  # noqa: N802
        name = self.path.lstrip("/")
        data = self.server.files.get(name)
        self.server.log.append((name, self.headers.get("Range")))
        if data is None:
            self.send_error(404)
            return
        start = 0
        m = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if m:
            start = int(m[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = self.server.cut_after.pop(name, None)   # simulate a dropped connection
        self.wfile.write(data[start:] if cut is None else data[start:start + cut])

    def log_message(self, *args):
        pass


@pytest.fixture()
def http_server(files):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.files = {"x3d_s.pyth": open(files["sf"], "rb").read(), "junk.pyth": b"\x00" * 1000}
    server.log = []
    server.cut_after = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_resume_and_convert(http_server, tmp_path, sf_small, monkeypatch, capsys):
    server, base = http_server
    data = server.files["x3d_s.pyth"]
    out = tmp_path / "w"
    monkeypatch.setenv("WEIGHT_PORT_MIRROR", base)
    digest = hashlib.sha256(data).hexdigest()
    # the connection drops after 12345 bytes: error, the part is kept for resuming
    server.cut_after["x3d_s.pyth"] = 12345
    assert cli.main(["download", "x3d_s", "--out", str(out), "--sha256", digest, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search("incomplete|interrupted", err) and "kept" in err and len(err.strip().splitlines()) == 1
    assert (out / "x3d_s.pyth.part").stat().st_size == 12345 and not (out / "x3d_s.pyth").exists()
    # the next run resumes from byte 12345 (HTTP Range), verifies the digest and converts
    assert cli.main(["download", "x3d_s", "--out", str(out), "--sha256", digest, "--no-progress",
                     "--arch", "cox3d_s_13"]) == 0
    assert server.log == [("x3d_s.pyth", None), ("x3d_s.pyth", "bytes=12345-")]
    assert (out / "x3d_s.pyth").read_bytes() == data and not (out / "x3d_s.pyth.part").exists()
    params = co3d_jax.load_params(str(out / "cox3d_s_13.npz"), "cox3d_s_13")
    want = convert_state_dict(sf_small[1], "x3d_s").params
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), params, want))
    # a second run reuses the verified file (no request)
    assert cli.main(["download", "x3d_s", "--out", str(out), "--no-progress"]) == 0
    assert len(server.log) == 2 and (out / "x3d_s.npz").exists()


def test_download_failures_leave_no_partial(http_server, tmp_path, capsys):
    server, base = http_server
    out = tmp_path / "w"
    # sha256 mismatch: error, no .part, no file, no .npz
    assert cli.main(["download", "x3d_s", "--out", str(out), "--url", f"{base}/x3d_s.pyth",
                     "--sha256", "0" * 64, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "sha256 mismatch" in err and len(err.splitlines()) == 1
    assert sorted(os.listdir(out)) == []
    # no digest pinned and the file is not a checkpoint: structure check fails, file removed
    assert cli.main(["download", "x3d_s", "--out", str(out), "--url", f"{base}/junk.pyth", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not the expected slowfast-layout x3d_s checkpoint" in err and sorted(os.listdir(out)) == []
    # HTTP error
    assert cli.main(["download", "x3d_m", "--out", str(out), "--url", f"{base}/nope.pyth", "--no-progress"]) == 2
    assert "HTTP 404" in capsys.readouterr().err and sorted(os.listdir(out)) == []


def test_download_offline_leaves_no_folder(tmp_path, capsys):
    """Connection refused, or a server that closes without answering: one error line, and the
    output folder (which did not exist) is not created."""
    import socket
    import socketserver

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        refused = s.getsockname()[1]

    class _Close(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.close()

    closer = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Close)
    threading.Thread(target=closer.serve_forever, daemon=True).start()
    try:
        for url in (f"http://127.0.0.1:{refused}/x3d_s.pyth", f"http://127.0.0.1:{closer.server_address[1]}/x3d_s.pyth"):
            out = tmp_path / "weights"
            assert cli.main(["download", "x3d_s", "--out", str(out), "--url", url, "--no-progress"]) == 2
            err = capsys.readouterr().err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: download of {url} failed"), err
            assert not out.exists(), url
    finally:
        closer.shutdown()
        closer.server_close()


def test_list_has_a_header(capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"NAME\s+LAYOUT\s+DEFAULT ARCH\s+URL\s+SHA256$", lines[0]), lines[0]
    assert lines[1].startswith("x3d_xs ") and "weights.lock.json" in lines[-1]


def test_download_lock_file_records_then_verifies(http_server, tmp_path, files, capsys):
    """No row pins a digest: the first verified download records its sha256 in DIR/weights.lock.json;
    later downloads (here: a committed lock in a fresh folder, and a reused file) must match it."""
    import json
    import shutil

    server, base = http_server
    data = server.files["x3d_s.pyth"]
    sd = torch.load(files["sf"], weights_only=True)
    other = tmp_path / "other.pyth"
    torch.save({**sd, "epoch": 301}, other)  # loads and converts like the first, other bytes
    server.files["other.pyth"] = other.read_bytes()
    out = tmp_path / "w"
    assert cli.main(["download", "x3d_s", "--out", str(out), "--url", f"{base}/x3d_s.pyth", "--no-progress"]) == 0
    assert "recorded sha256" in capsys.readouterr().out
    lock = json.loads((out / "weights.lock.json").read_text())
    entry = lock["files"]["x3d_s"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
    assert entry["file"] == "x3d_s.pyth" and lock["version"] == 1
    # the lock committed and used in a fresh folder: other bytes are refused and removed
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(out / "weights.lock.json", fresh / "weights.lock.json")
    assert cli.main(["download", "x3d_s", "--out", str(fresh), "--url", f"{base}/other.pyth", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sha256 mismatch" in err and "recorded in" in err, err
    assert "weights.lock.json" in err and sorted(os.listdir(fresh)) == ["weights.lock.json"]
    # the same bytes pass, and say so
    assert cli.main(["download", "x3d_s", "--out", str(fresh), "--url", f"{base}/x3d_s.pyth", "--no-progress"]) == 0
    assert "sha256 matches" in capsys.readouterr().out
    # a reused file that changed on disk is refused
    (fresh / "x3d_s.pyth").write_bytes(server.files["other.pyth"])
    assert cli.main(["download", "x3d_s", "--out", str(fresh), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "exists but its sha256 does not match" in err and "recorded in" in err
    # --sha256 contradicting the recorded digest; an unreadable lock: one line each
    assert cli.main(["download", "x3d_s", "--out", str(out), "--sha256", "a" * 64, "--no-progress"]) == 2
    assert "contradicts the digest" in capsys.readouterr().err
    (fresh / "weights.lock.json").write_text("{not json")
    assert cli.main(["download", "x3d_s", "--out", str(fresh), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lock file" in err and "unreadable" in err
    # --lock PATH: the lock lives where the user says (e.g. in the repository), not in DIR
    mine = tmp_path / "repo" / "weights.lock.json"
    assert cli.main(["download", "x3d_s", "--out", str(tmp_path / "w2"), "--url", f"{base}/x3d_s.pyth",
                     "--lock", str(mine), "--no-progress"]) == 0
    assert json.loads(mine.read_text())["files"]["x3d_s"]["sha256"] == entry["sha256"]
    assert not (tmp_path / "w2" / "weights.lock.json").exists()
    # --no-lock: neither read nor written
    assert cli.main(["download", "x3d_s", "--out", str(tmp_path / "w3"), "--url", f"{base}/other.pyth",
                     "--no-lock", "--no-progress"]) == 0
    assert not (tmp_path / "w3" / "weights.lock.json").exists()


def test_download_warns_on_a_recorded_config_of_another_size(http_server, sf_small, tmp_path, capsys):
    server, base = http_server
    m_file = save_ckpt(tmp_path / "x3d_m.pyth", {"model_state": tensors(sf_small[1]),
                                                 "cfg": PYSLOWFAST_CFG.format(frames=16, rate=5, crop=224, arch="x3d")})
    server.files["m.pyth"] = open(m_file, "rb").read()
    assert cli.main(["download", "x3d_s", "--out", str(tmp_path / "w"), "--url", f"{base}/m.pyth",
                     "--no-progress"]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("warning: ") and "describes X3D-M" in err, err


# ----------------------------------------------------------------------------- slow: full sizes
FULL = {"x3d_s": dict(frames=13, image_size=160), "x3d_m": dict(frames=16, image_size=224),
        "x3d_l": dict(frames=16, image_size=312, depth_factor=5.0)}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(FULL))
def test_full_size_parity(arch, capsys):
    cfg = dict(FULL[arch])
    frames, size = cfg.pop("frames"), cfg.pop("image_size")
    model = make_pytorchvideo_x3d(frames, size, seed=7, **cfg)
    conv = convert_state_dict(numpy_sd(model), arch)
    errs = assert_parity(conv.params, model, arch, frames, size, seed=1)
    # the same weights plus a shortcut BN in PySlowFast naming
    add_slowfast_shortcut_bn(model)
    sf_conv = convert_state_dict(pytorchvideo_to_slowfast(numpy_sd(model)), arch)
    sf_errs = assert_parity(sf_conv.params, model, arch, frames, size, seed=2)
    res = verify(sf_conv)  # the library's --verify reference (model defaults: same frames and size)
    assert res.worst_rel <= RTOL and res.clip_shape == (1, frames, size, size, 3)
    with capsys.disabled():
        print(f"\n[{arch} {frames}x{size}x{size}] pytorchvideo rel err probs {errs[0]:.2e} logits {errs[1]:.2e}; "
              f"slowfast probs {sf_errs[0]:.2e} logits {sf_errs[1]:.2e}; verify() {res.prob_rel:.2e} / "
              f"{res.logit_rel:.2e}")
