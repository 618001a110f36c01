"""``python -m weight_port convert ... --verify`` for R(2+1)D (torchvision reference) and SlowFast
(pytorchvideo reference).

Checkpoints are torch models with random weights and random BN statistics
(``torch_utils.randomize_model_bn_``), saved as files here (nothing is downloaded), converted
through the CLI's ``main(argv)`` in process and verified at small sizes (R(2+1)D 8 frames x 32 px,
SlowFast-8x8 8 fast frames x 32 px). The negative cases corrupt the conversion with realistic
porting bugs that the shape checks cannot see: a kernel with kH and kW swapped, handed to the
CLI, which must refuse it with one ``error:`` line, exit status 2 and no ``.npz``; and a Caffe2
``riv`` blob read as an inverse variance, which ``verify`` must catch.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("pytorchvideo.models.slowfast")
torch.set_num_threads(1)  # small clips on a shared machine: extra intra-op threads only add overhead

import co3d_jax  # noqa: E402
from co3d_jax.params import flatten, unflatten  # noqa: E402
import weight_port  # noqa: E402
from weight_port import PortError, cli  # noqa: E402
from weight_port import convert as convert_module  # noqa: E402
from weight_port.convert import convert_state_dict, verify_fn  # noqa: E402
from co3d_jax.models.slowfast import jax_to_slowfast, slowfast_to_caffe2, slowfast_to_pytorchvideo  # noqa: E402

from torch_utils import randomize_model_bn_  # noqa: E402

TOLERANCE = 1e-5  # measured errors are ~1e-6 (float32 with different summation orders)
R21 = dict(arch="r2plus1d_18_8", frames=8, size=32, classes=10)
SF = dict(arch="slowfast_8x8_r50", frames=8, size=32)  # 2 slow frames, 1x1 at the head


def numpy_state(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def r2plus1d(tmp_path_factory):
    """A 10-class torchvision R(2+1)D-18 saved the way torchvision ships it (a plain state dict)."""
    torch.manual_seed(0)
    model = randomize_model_bn_(torchvision.models.video.r2plus1d_18(num_classes=R21["classes"]), 1).eval()
    with torch.no_grad():
        model.fc.weight.mul_(20.0)  # torchvision's fc init (std 0.01) gives near-uniform scores
    path = tmp_path_factory.mktemp("r2plus1d") / "r2plus1d_18.pth"
    torch.save(model.state_dict(), path)
    return str(path), numpy_state(model)


@pytest.fixture(scope="module")
def slowfast(tmp_path_factory):
    """pytorchvideo SlowFast-R50 8x8 (torch hub ``slowfast_r50``'s structure) in a
    ``{'model_state': ...}`` file."""
    from pytorchvideo.models.slowfast import create_slowfast

    torch.manual_seed(2)
    model = randomize_model_bn_(create_slowfast(model_depth=50), 3).eval()
    path = tmp_path_factory.mktemp("slowfast") / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": model.state_dict()}, path)
    return str(path), numpy_state(model)


def verify_argv(src: str, out: str, cfg: dict, *extra: str) -> list[str]:
    return ["convert", src, "--arch", cfg["arch"], "--out", out, "--verify", "--verify-image-size", str(cfg["size"]),
            "--verify-frames", str(cfg["frames"]), "--tolerance", str(TOLERANCE), *extra]


def reported_errors(stdout: str) -> tuple[list[float], float]:
    """The relative errors (softmax scores, logits) and max |logit| the --verify report prints."""
    rel = [float(x) for x in re.findall(r"relative ([0-9.e+-]+)", stdout)]
    scale = re.search(r"max \|logit\| ([0-9.e+-]+)", stdout)
    assert len(rel) == 2 and scale, stdout
    return rel, float(scale[1])


# ----------------------------------------------------------------------------- passing runs
def test_r2plus1d_cli_verify(r2plus1d, tmp_path, capsys):
    src, sd = r2plus1d
    out = str(tmp_path / "r2plus1d_18_8.npz")
    assert cli.main(verify_argv(src, out, R21, "--num-classes", str(R21["classes"]))) == 0
    stdout = capsys.readouterr().out
    rel, scale = reported_errors(stdout)
    assert max(rel) <= TOLERANCE and scale > 1.0, stdout
    assert f"1x{R21['frames']}x{R21['size']}x{R21['size']}x3" in stdout and "ok (tolerance 1e-05)" in stdout
    params = co3d_jax.load_params(out, R21["arch"])  # 10 classes, from the file's model_options
    np.testing.assert_array_equal(np.asarray(params["fc"]["kernel"]), sd["fc.weight"].T)
    with capsys.disabled():
        print(f"\n[--verify r2plus1d_18_8 {R21['frames']}x{R21['size']}px] rel err softmax {rel[0]:.2e} "
              f"logits {rel[1]:.2e} (max |logit| {scale:.3g})")


def test_slowfast_cli_verify(slowfast, tmp_path, capsys):
    src, sd = slowfast
    out = str(tmp_path / "slowfast_8x8_r50.npz")
    assert cli.main(verify_argv(src, out, SF)) == 0
    stdout = capsys.readouterr().out
    rel, scale = reported_errors(stdout)
    assert max(rel) <= TOLERANCE and scale > 1.0, stdout
    assert "pytorchvideo layout (model_state)" in stdout and "ok (tolerance 1e-05)" in stdout
    params = co3d_jax.load_params(out, SF["arch"])
    np.testing.assert_array_equal(np.asarray(params["head"]["projection"]["bias"]), sd["blocks.6.proj.bias"])
    with capsys.disabled():
        print(f"\n[--verify slowfast_8x8_r50 {SF['frames']}x{SF['size']}px] rel err softmax {rel[0]:.2e} "
              f"logits {rel[1]:.2e} (max |logit| {scale:.3g})")


def test_slowfast_verify_caffe2_blobs_and_a_porting_bug(slowfast):
    """The reference renames Caffe2 blobs (PySlowFast's rules, then pytorchvideo's names); an
    inverse-variance misreading of one ``riv`` blob in the JAX params is caught. Same JAX
    configuration as the CLI test: compiled once."""
    _, sd = slowfast
    pv = convert_state_dict(sd, SF["arch"])
    blob = {slowfast_to_pytorchvideo(jax_to_slowfast(p)): slowfast_to_caffe2(jax_to_slowfast(p))
            for p in flatten(pv.params)}
    conv = convert_state_dict({blob[k]: v for k, v in sd.items() if k in blob}, SF["arch"])
    assert conv.layout == "caffe2"
    verify = weight_port.verify   # the package-level entry dispatches on conv.arch's family
    assert verify_fn(SF["arch"]).__module__ == "weight_port.slowfast"
    res = verify(conv, image_size=SF["size"], frames=SF["frames"])
    assert res.worst_rel <= TOLERANCE and res.clip_shape == (1, SF["frames"], SF["size"], SF["size"], 3)
    flat = {k: np.array(v) for k, v in flatten(conv.params).items()}
    var = "s3/pathway1/res1/residual/branch2/b_bn/var"  # blob t_res3_1_branch2b_bn_riv
    flat[var] = 1.0 / flat[var]
    conv.params = unflatten(flat)
    bad = verify(conv, image_size=SF["size"], frames=SF["frames"])
    assert bad.worst_rel > 1e-3, bad.report()


# ----------------------------------------------------------------------------- failing runs
def corrupting(monkeypatch, corrupt) -> None:
    """Make the CLI's conversion pass through ``corrupt(flat params)`` (a porting bug)."""
    real = convert_module.convert_file

    def convert_file(*args, **kwargs):
        conv = real(*args, **kwargs)
        flat = {k: np.array(v) for k, v in flatten(conv.params).items()}
        corrupt(flat)
        conv.params = unflatten(flat)
        return conv
    monkeypatch.setattr(convert_module, "convert_file", convert_file)


def assert_refused(argv: list[str], out: str, capsys) -> float:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    m = re.fullmatch(r"error: verification failed: relative error ([0-9.e+-]+) > tolerance 1e-05; .* not written", err)
    assert m and len(err.splitlines()) == 1, err
    assert not os.path.exists(out)
    return float(m[1])


def test_r2plus1d_verify_catches_a_transposed_kernel(r2plus1d, tmp_path, monkeypatch, capsys):
    def swap_hw(flat):  # the stem's 1x7x7 spatial kernel with kH and kW swapped: same shape
        k = flat["stem/0/kernel"]
        flat["stem/0/kernel"] = np.ascontiguousarray(k.transpose(0, 2, 1, 3, 4))
    corrupting(monkeypatch, swap_hw)
    out = str(tmp_path / "bad.npz")
    err = assert_refused(verify_argv(r2plus1d[0], out, R21, "--num-classes", str(R21["classes"])), out, capsys)
    assert err > 1e-2


def test_reference_refuses_weights_it_cannot_hold(r2plus1d, slowfast):
    conv = convert_state_dict(r2plus1d[1], R21["arch"], num_classes=R21["classes"])
    conv.source["layer1.0.extra"] = conv.source.pop("layer1.0.conv1.1.running_var")
    with pytest.raises(PortError, match=r"^verify: the source weights do not load into the torchvision reference: "
                                        r"missing layer1\.0\.conv1\.1\.running_var; unexpected layer1\.0\.extra$"):
        verify_fn(R21["arch"])(conv, image_size=R21["size"], frames=R21["frames"])
    conv = convert_state_dict(slowfast[1], SF["arch"])
    with pytest.raises(PortError, match=r"^verify: a 2-frame 32px clip is too small for slowfast_8x8_r50$"):
        verify_fn(SF["arch"])(conv, image_size=SF["size"], frames=2)
