"""Weight porter, family ``resnet3d``: Slow / CoSlow and I3D / CoI3D checkpoints.

Checkpoints are generated here from random pytorchvideo ``create_resnet`` models (configured like
torch hub ``slow_r50`` / ``i3d_r50``, random BN statistics): pytorchvideo ``{'model_state': ...}``
files and a Caffe2 pickle (``{'blobs': ...}``, protocol 2, with momentum / lr / iteration blobs
and some 1x1x1 conv blobs lacking trailing dims, as Caffe2 files may) whose blob names are made
from the pytorchvideo names by an independent renaming written here. Nothing is downloaded.
Numerical parity uses the full-width networks at 64 px / 8 frames (the JAX forward is the one
compiled by ``test_resnet3d.py``); the rest is numpy-only or in-process CLI calls, plus two CLI
subprocesses for exit status and one-line errors.
"""

from __future__ import annotations

import functools
import http.server
import os
import pickle
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorchvideo.models.resnet")
torch.set_num_threads(1)

import co3d_jax  # noqa: E402
from co3d_jax.params import flatten  # noqa: E402
from test_resnet3d import jax_outputs, make_pytorchvideo_resnet, rel_err, torch_outputs  # noqa: E402
from weight_port import CheckpointMismatchError, PortError, cli  # noqa: E402
from weight_port.caffe2 import load_caffe2_blobs  # noqa: E402
from weight_port.convert import FAMILIES, convert_file, convert_state_dict, family_of, save_conversion  # noqa: E402
from weight_port.resnet3d import params_to_state_dict, verify  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES, SIZE = 8, 64
BN_C2 = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


# ----------------------------------------------------------------------------- helpers
def numpy_sd(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def tensors(sd: dict) -> dict:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}


def pytorchvideo_i3d_to_caffe2(sd: dict) -> dict:
    """Caffe2 blob names (video-nonlocal-net / PySlowFast) for a pytorchvideo I3D state dict:
    blocks.1 -> res2, blocks.2 is the pool, blocks.3..5 -> res3..res5, blocks.6.proj -> pred.
    Counters dropped; 1x1x1 ``branch2c`` blobs stored 4-D and ``branch1`` blobs 2-D (lacking
    trailing singleton dims); a momentum blob per parameter, ``lr`` and ``model_iter`` added."""
    out = {}
    for key, v in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        module, param = key.rsplit(".", 1)
        if module == "blocks.0.conv":
            name = "conv1_w"
        elif module == "blocks.0.norm":
            name = f"res_conv1_bn_{BN_C2[param]}"
        elif module == "blocks.6.proj":
            name = f"pred_{param[0]}"
        else:
            m = re.fullmatch(r"blocks\.(\d)\.res_blocks\.(\d+)\.(.+)", module)
            stage = {1: 2, 3: 3, 4: 4, 5: 5}[int(m[1])]
            sub = m[3]
            branch = {"branch1_conv": "branch1", "branch1_norm": "branch1_bn"}.get(sub) or \
                sub.replace("branch2.conv_", "branch2").replace("branch2.norm_", "branch2") + \
                ("_bn" if "norm_" in sub else "")
            name = f"res{stage}_{m[2]}_{branch}_" + (BN_C2[param] if branch.endswith("_bn") else "w")
        arr = np.asarray(v, np.float32)
        if re.fullmatch(r"res\d_\d+_branch2c_w", name):
            arr = arr.reshape(arr.shape[:4])
        elif re.fullmatch(r"res\d_\d+_branch1_w", name):
            arr = arr.reshape(arr.shape[:2])
        out[name] = arr
    for name in list(out):
        out[f"{name}_momentum"] = np.zeros_like(out[name])
    out["lr"] = np.array([0.01], np.float32)
    out["model_iter"] = np.array([196000], np.int64)
    return out


class _Evil:
    """Unpickling this runs ``os.system(cmd)`` under a plain ``pickle.load``."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pv_slow():
    model = make_pytorchvideo_resnet("slow", FRAMES, SIZE, seed=20)
    return model, numpy_sd(model)


@pytest.fixture(scope="module")
def pv_i3d():
    model = make_pytorchvideo_resnet("i3d", FRAMES, SIZE, seed=30)
    return model, numpy_sd(model)


@pytest.fixture(scope="module")
def blobs(pv_i3d):
    return pytorchvideo_i3d_to_caffe2(pv_i3d[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory, pv_slow, pv_i3d, blobs):
    d = tmp_path_factory.mktemp("r3d")
    f = {"dir": str(d)}
    f["slow"] = str(d / "SLOW_8x8_R50.pyth")
    torch.save({"model_state": tensors(pv_slow[1])}, f["slow"])
    f["i3d_pv"] = str(d / "I3D_8x8_R50.pyth")
    torch.save({"model_state": tensors(pv_i3d[1])}, f["i3d_pv"])
    f["pkl"] = str(d / "I3D_8x8_R50.pkl")
    with open(f["pkl"], "wb") as fh:
        pickle.dump({"blobs": blobs}, fh, protocol=2)
    raw = open(f["pkl"], "rb").read()
    f["truncated"] = str(d / "truncated.pkl")
    open(f["truncated"], "wb").write(raw[: len(raw) // 3])
    f["marker"] = str(d / "PWNED")
    f["evil"] = str(d / "evil.pkl")
    with open(f["evil"], "wb") as fh:
        pickle.dump({"blobs": {"conv1_w": _Evil(f"touch {f['marker']}")}}, fh, protocol=2)
    return f


# ----------------------------------------------------------------------------- conversion and parity
def test_pytorchvideo_slow_and_i3d_mapping(pv_slow, pv_i3d):
    conv = convert_state_dict(pv_slow[1], "coslow_8")
    sd = pv_slow[1]
    p = conv.params
    np.testing.assert_array_equal(p["s1"]["conv"]["kernel"], sd["blocks.0.conv.weight"].transpose(2, 3, 4, 1, 0))
    np.testing.assert_array_equal(p["s4"]["res0"]["residual"]["branch2"]["a"]["kernel"],
                                  sd["blocks.3.res_blocks.0.branch2.conv_a.weight"].transpose(2, 3, 4, 1, 0))
    np.testing.assert_array_equal(p["s3"]["res0"]["residual"]["skip"]["branch1_bn"]["var"],
                                  sd["blocks.2.res_blocks.0.branch1_norm.running_var"])
    np.testing.assert_array_equal(p["head"]["projection"]["kernel"], sd["blocks.5.proj.weight"].T)
    # the CoSlow params are the Slow params; CoI3D's the I3D's (pool-shifted pytorchvideo numbering)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(flatten(a).values(), flatten(b).values()))  # noqa
    assert same(convert_state_dict(pv_slow[1], "slow_8x8_r50").params, p)
    i3d = convert_state_dict(pv_i3d[1], "i3d_r50")
    assert any("blocks.2" in n for n in i3d.notes)
    np.testing.assert_array_equal(i3d.params["head"]["projection"]["bias"], pv_i3d[1]["blocks.6.proj.bias"])
    np.testing.assert_array_equal(i3d.params["s5"]["res1"]["residual"]["branch2"]["a"]["kernel"],
                                  pv_i3d[1]["blocks.5.res_blocks.1.branch2.conv_a.weight"].transpose(2, 3, 4, 1, 0))
    assert same(convert_state_dict(pv_i3d[1], "coi3d_64").params, i3d.params)


def test_caffe2_pickle_parity(files, pv_i3d, blobs, capsys):
    loaded = load_caffe2_blobs(files["pkl"])
    assert sorted(loaded) == sorted(blobs) and loaded["conv1_w"].shape == (64, 3, 5, 7, 7)
    conv = convert_state_dict(loaded, "i3d_r50", container="caffe2")
    assert conv.layout == "caffe2"
    n_params = sum(not (k.endswith("_momentum") or k in ("lr", "model_iter")) for k in blobs)
    assert f"ignored {len(blobs) - n_params} non-parameter Caffe2 blobs" in " ".join(conv.notes)
    assert "reshaped 20 Caffe2 blobs" in " ".join(conv.notes)  # 16 branch2c + 4 branch1
    # same params as the pytorchvideo file of the same network; _riv is the running variance as is
    want = convert_state_dict(pv_i3d[1], "i3d_r50").params
    for (k, a), (k2, b) in zip(sorted(flatten(conv.params).items()), sorted(flatten(want).items())):
        assert k == k2 and np.array_equal(a, b), k
    np.testing.assert_array_equal(conv.params["s2"]["res1"]["residual"]["branch2"]["b_bn"]["var"],
                                  blobs["res2_1_branch2b_bn_riv"])
    # numerical parity with the torch network, and the library's --verify on the Caffe2 conversion
    model = pv_i3d[0]
    x = torch.randn(1, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    probs_ref, logits_ref = torch_outputs(model, x)
    probs, logits = jax_outputs(conv, x, FRAMES, SIZE)
    errs = rel_err(probs, probs_ref), rel_err(logits, logits_ref)
    assert max(errs) <= 1e-5, errs
    res = verify(conv, image_size=SIZE, frames=FRAMES)
    assert res.worst_rel <= 1e-5 and res.clip_shape == (1, FRAMES, SIZE, SIZE, 3)
    with capsys.disabled():
        print(f"\n[i3d_r50 Caffe2 pickle, 8x64x64] rel err probs {errs[0]:.2e} logits {errs[1]:.2e}; verify() "
              f"{res.prob_rel:.2e} / {res.logit_rel:.2e}")


def test_slowfast_layout_and_prefixes(pv_slow):
    conv = convert_state_dict(pv_slow[1], "slow_8x8_r50")
    sf = params_to_state_dict(flatten(conv.params), "slowfast")
    assert "s4.pathway0_res0.branch2.a.weight" in sf and "s1.pathway0_stem.bn.num_batches_tracked" in sf
    back = convert_state_dict({f"module.{k}": v for k, v in sf.items()}, "coslow_64")
    assert back.layout == "slowfast" and back.notes == ["stripped key prefix 'module.'"]
    for k, v in flatten(conv.params).items():
        np.testing.assert_array_equal(flatten(back.params)[k], v)
    # contiguous pytorchvideo numbering (head blocks.5) is accepted for I3D too
    i3d = co3d_jax.create_model("i3d_r50")
    flat = {k: np.zeros(v.shape, np.float32) for k, v in flatten(jax.eval_shape(i3d.init, jax.random.key(0))).items()}
    pv = params_to_state_dict(flat, "pytorchvideo")
    assert "blocks.5.proj.weight" in pv and convert_state_dict(pv, "coi3d_8").layout == "pytorchvideo"


# ----------------------------------------------------------------------------- strictness
def test_strict_errors(blobs, pv_slow):
    b = dict(blobs)
    del b["res4_2_branch2a_w"]
    b["res2_0_branch2d_w"] = np.zeros(3, np.float32)
    b["lr_scale"] = np.zeros(1, np.float32)   # only lr / model_iter / *_momentum are ignored
    b["res3_1_branch2b_w"] = np.zeros((128, 128, 3, 3, 3), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        convert_state_dict(b, "i3d_r50")
    assert e.value.missing == ["res4_2_branch2a_w"]
    assert e.value.unexpected == ["lr_scale", "res2_0_branch2d_w"]
    assert e.value.misshaped == ["res3_1_branch2b_w (128, 128, 3, 3, 3) != expected (128, 128, 1, 3, 3)"]
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("checkpoint: checkpoint (caffe2 layout) does not match --arch i3d_r50")
    # a non-float parameter
    with pytest.raises(CheckpointMismatchError, match=r"pred_b dtype int64"):
        convert_state_dict({**blobs, "pred_b": np.zeros(400, np.int64)}, "i3d_r50")
    # wrong arch: I3D blobs for a Slow model -> hint from the stem kernel
    with pytest.raises(CheckpointMismatchError, match=r"stem has temporal kernel 5 like I3D \(i3d_r50, coi3d_\*\), "
                       r"--arch coslow_8 has 1"):
        convert_state_dict(blobs, "coslow_8")
    # Charades: 157 classes
    sd = dict(pv_slow[1])
    sd["blocks.5.proj.weight"] = np.zeros((157, 2048), np.float32)
    sd["blocks.5.proj.bias"] = np.zeros(157, np.float32)
    with pytest.raises(CheckpointMismatchError, match=r"pass --num-classes 157 or use a \*_charades arch"):
        convert_state_dict(sd, "slow_8x8_r50")
    for arch, opts in (("slow_8x8_r50_charades", {}), ("coslow_64", {"num_classes": 157})):
        assert convert_state_dict(sd, arch, **opts).params["head"]["projection"]["kernel"].shape == (2048, 157)
    with pytest.raises(PortError, match="unrecognised state dict layout"):
        convert_state_dict({"fc.weight": np.zeros((2, 2), np.float32)}, "i3d_r50")
    with pytest.raises(PortError, match=r"the porter handles X3D/CoX3D .*Slow/CoSlow/I3D/CoI3D"):
        convert_state_dict(blobs, "resnet50")


def test_restricted_unpickler(files, tmp_path):
    with pytest.raises(PortError, match=r"refusing to unpickle global '(posix|os|nt)\.system'") as e:
        load_caffe2_blobs(files["evil"])
    assert "\n" not in str(e.value) and not os.path.exists(files["marker"])
    with pytest.raises(PortError, match=r"truncated\.pkl: not a readable Caffe2 pickle, truncated or corrupt\?"):
        load_caffe2_blobs(files["truncated"])
    # other gadgets: a builtin callable, a class from the standard library
    for obj, name in ((functools.partial(print, 1), "functools.partial"),
                      (threading.Lock, "_thread.allocate_lock")):
        path = tmp_path / "g.pkl"
        path.write_bytes(pickle.dumps({"blobs": {"x": obj}}, protocol=2))
        with pytest.raises(PortError, match=rf"refusing to unpickle global '{re.escape(name)}'"):
            load_caffe2_blobs(str(path))
    # plain containers and numpy arrays load at any protocol; a bare blob dict is accepted
    for proto in (0, 2, 4, 5):
        path = tmp_path / f"p{proto}.pkl"
        path.write_bytes(pickle.dumps({"conv1_w": np.arange(6.0).reshape(2, 3), "model_iter": np.int64(3)},
                                      protocol=proto))
        out = load_caffe2_blobs(str(path))
        assert out["conv1_w"].sum() == 15 and int(out["model_iter"]) == 3
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(PortError, match="top-level object is a list"):
        load_caffe2_blobs(str(path))
    path.write_bytes(pickle.dumps({"blobs": {"a": "text"}}, protocol=2))
    with pytest.raises(PortError, match=r"non-array blobs a \(str\)"):
        load_caffe2_blobs(str(path))
    with pytest.raises(PortError, match="zip archive"):
        load_caffe2_blobs(files["slow"])
    with pytest.raises(PortError, match="no such file"):
        load_caffe2_blobs(str(tmp_path / "absent.pkl"))


# ----------------------------------------------------------------------------- CLI
def test_cli_convert_and_verify_in_process(files, pv_i3d, capsys):
    out = f"{files['dir']}/i3d.npz"
    # --verify with the parity tests' configuration (i3d_r50, 64 px, 8 frames: compiled once)
    assert cli.main(["convert", files["pkl"], "--arch", "i3d_r50", "--out", out, "--verify", "--verify-image-size",
                     str(SIZE), "--verify-frames", str(FRAMES), "--tolerance", "1e-5"]) == 0
    stdout = capsys.readouterr().out
    assert "caffe2 layout (caffe2)" in stdout and "ignored" in stdout and "ok (tolerance 1e-05)" in stdout
    errs = [float(x) for x in re.findall(r"relative ([0-9.e+-]+)", stdout)]
    assert len(errs) == 2 and max(errs) <= 1e-5
    params = co3d_jax.load_params(out, "coi3d_64")  # CoI3D loads the I3D file
    want = convert_state_dict(pv_i3d[1], "i3d_r50").params
    np.testing.assert_array_equal(np.asarray(params["s1"]["conv"]["kernel"]), want["s1"]["conv"]["kernel"])
    # pytorchvideo Slow file for CoSlow_64, saved through save_conversion
    out2 = f"{files['dir']}/coslow_64.npz"
    assert cli.main(["convert", files["slow"], "--arch", "coslow_64", "--out", out2]) == 0
    assert "pytorchvideo layout (model_state)" in capsys.readouterr().out
    co3d_jax.load_params(out2, "coslow_64")
    conv = convert_file(files["i3d_pv"], "coi3d_8")
    save_conversion(conv, f"{files['dir']}/coi3d_8.npz", files["i3d_pv"])
    co3d_jax.load_params(f"{files['dir']}/coi3d_8.npz", "coi3d_8")


@pytest.mark.parametrize("args, pattern", [
    (["{pkl}", "--arch", "coslow_8"], r"I3D_8x8_R50\.pkl: checkpoint \(caffe2 layout\) does not match --arch "
                                      r"coslow_8: .*hint: the checkpoint's stem has temporal kernel 5"),
    (["{slow}", "--arch", "coi3d_8"], r"does not match --arch coi3d_8: .*stem has temporal kernel 1 like Slow"),
    (["{slow}", "--arch", "x3d_s"], r"does not match --arch x3d_s"),
    (["{pkl}", "--arch", "resnet50"], r"--arch 'resnet50': the porter handles X3D/CoX3D"),
    (["{truncated}", "--arch", "i3d_r50"], r"truncated\.pkl: not a readable Caffe2 pickle, truncated or corrupt"),
    (["{evil}", "--arch", "coi3d_8"], r"refusing to unpickle global '(posix|os)\.system'"),
    (["{slow}", "--arch", "i3d_r50", "--layout", "caffe2"], r"zip archive"),
], ids=["pkl-for-slow", "slow-for-i3d", "slow-for-x3d", "unknown-arch", "truncated", "forbidden-global",
        "torch-file-as-caffe2"])
def test_cli_errors_in_process(files, args, pattern, capsys):
    out = f"{files['dir']}/never.npz"
    argv = ["convert", *[a.format(**files) for a in args], "--out", out]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and re.search(pattern, err), err
    assert not os.path.exists(out) and not os.path.exists(files["marker"])


def _run_cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", "weight_port", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)


def test_cli_subprocess_exit_status(files):
    jobs = {"evil": ["convert", files["evil"], "--arch", "i3d_r50", "--out", f"{files['dir']}/e.npz"],
            "ok": ["convert", files["pkl"], "--arch", "coi3d_8", "--out", f"{files['dir']}/ok.npz"]}
    with ThreadPoolExecutor(2) as pool:
        res = dict(zip(jobs, pool.map(_run_cli, jobs.values())))
    r = res["evil"]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "refusing to unpickle global" in r.stderr
    assert not os.path.exists(files["marker"])
    r = res["ok"]
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and os.path.exists(f"{files['dir']}/ok.npz")


def test_families_and_list(capsys):
    assert [f.name for f in FAMILIES][:2] == ["x3d", "resnet3d"]
    assert family_of("coi3d_64").name == "resnet3d" and family_of("cox3d_s_13").name == "x3d"
    assert cli.main(["list"]) == 0
    table = capsys.readouterr().out
    for row in ("slow_8x8_r50 ", "slow_8x8_r50_charades", "i3d_r50 ", "pytorchvideo_i3d_r50"):
        assert row in table
    assert "model_zoo/kinetics400/I3D_8x8_R50.pkl" in table and "model_zoo/charades/SLOW_8x8_R50.pyth" in table


def test_download_caffe2_row(files, tmp_path, pv_i3d, capsys):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=files["dir"])
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/I3D_8x8_R50.pkl"
        out = tmp_path / "w"
        assert cli.main(["download", "i3d_r50", "--out", str(out), "--url", url, "--no-progress",
                         "--arch", "coi3d_8"]) == 0
        assert (out / "I3D_8x8_R50.pkl").exists() and not (out / "I3D_8x8_R50.pkl.part").exists()
        params = co3d_jax.load_params(str(out / "coi3d_8.npz"), "coi3d_8")
        np.testing.assert_array_equal(np.asarray(params["head"]["projection"]["bias"]), pv_i3d[1]["blocks.6.proj.bias"])
        # a file that is not the expected checkpoint is removed
        url = f"http://127.0.0.1:{server.server_address[1]}/SLOW_8x8_R50.pyth"
        assert cli.main(["download", "i3d_r50", "--out", str(tmp_path / "x"), "--url", url, "--no-progress"]) == 2
        assert "not the expected caffe2-layout i3d_r50 checkpoint" in capsys.readouterr().err
        assert os.listdir(tmp_path / "x") == []
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- slow: full size
@pytest.mark.slow
def test_full_size_caffe2_parity(tmp_path, capsys):
    model = make_pytorchvideo_resnet("i3d", 8, 224, seed=40)
    path = tmp_path / "I3D_8x8_R50.pkl"
    path.write_bytes(pickle.dumps({"blobs": pytorchvideo_i3d_to_caffe2(numpy_sd(model))}, protocol=2))
    conv = convert_file(str(path), "coi3d_8")
    x = torch.randn(1, 3, 8, 224, 224, generator=torch.Generator().manual_seed(5))
    probs_ref, logits_ref = torch_outputs(model, x)
    probs, logits = jax_outputs(conv, x, 8, 224)
    errs = rel_err(probs, probs_ref), rel_err(logits, logits_ref)
    with capsys.disabled():
        print(f"\n[I3D Caffe2 pickle full size 8x224x224] rel err probs {errs[0]:.2e} logits {errs[1]:.2e}")
    assert max(errs) <= 1e-5
