"""What a new user meets first: short videos that never predict, misleading parameter-file
messages, duplicated warnings, user-facing help, the main job's output folder."""

from __future__ import annotations

import os
import signal
import subprocess
import warnings

import jax
import numpy as np
import pytest

import co3d_jax
from co3d_jax.params import ParamsError, load_params, save_params
from experiments import stream as S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--model", "cox3d_xs", "--image-size", "32", "--option", "num_classes=5"]


# ----------------------------------------------------------------------------- short videos
def test_stream_help_says_how_many_frames_the_default_model_needs(capsys):
    with pytest.raises(SystemExit):
        S.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    model = co3d_jax.create_model("cox3d_s_13")
    source = model.delay * model.frame_rate + 1
    assert f"delay {model.delay}" in text and f"one frame in {model.frame_rate}" in text
    assert f"{model.delay + 1} sampled frames = {source} frames of a 30 fps video ({source / 30:.1f} s)" in text
    assert "--top TOP classes printed" in text and "--seed SEED seed of the random weights" in text


def test_a_stream_that_never_predicts_is_warned_about(capsys):
    model = co3d_jax.create_model("cox3d_xs")
    assert S.main(SMALL + ["--frames", str(model.delay)]) == 0   # one frame short of the first prediction
    out, err = capsys.readouterr()
    assert "(warming up)" in out
    warning = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1, err
    assert "stream [0] <generated> produced no prediction" in warning[0]
    assert f"gave {model.delay} sampled frames" in warning[0] and f"needs {model.delay + 1}" in warning[0]

    assert S.main(SMALL + ["--frames", str(model.delay + 1)]) == 0  # exactly enough: no warning
    assert "warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- parameter files
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("params")
    rng = np.random.default_rng(0)
    (d / "random.npz").write_bytes(rng.bytes(4096))
    save_params(str(d / "good.npz"), {"a": np.ones((64, 64), np.float32)})
    good = (d / "good.npz").read_bytes()
    (d / "truncated.npz").write_bytes(good[: len(good) // 2])
    np.save(d / "one.npy", np.ones(3))
    np.savez(d / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    import zipfile
    with zipfile.ZipFile(d / "x3d_s.pyth", "w") as z:   # the layout of torch.save's zip format
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("archive/version", b"3\n")
    return d


@pytest.mark.parametrize("name, says", [
    ("random.npz", "not a params file (it starts with bytes"),
    ("truncated.npz", "truncated or damaged .npz"),
    ("one.npy", "a single NumPy array (.npy)"),
    ("objects.npz", "object (pickled) arrays, which are never loaded"),
    ("x3d_s.pyth", "a PyTorch checkpoint, not a params file: convert it first with python -m weight_port convert"),
])
def test_load_params_says_what_the_file_is(files, name, says):
    with pytest.raises(ParamsError) as e:
        load_params(str(files / name), "cox3d_xs")
    msg = str(e.value)
    assert says in msg and "\n" not in msg
    assert "allow_pickle" not in msg and "unsafely" not in msg and "not a zip file" not in msg


def test_stream_with_random_bytes_as_weights(files, capsys):
    assert S.main(SMALL + ["--weights", str(files / "random.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "random.npz: not a params file" in err and "allow_pickle" not in err
    assert S.main(SMALL + ["--weights", str(files / "truncated.npz")]) == 2
    assert "truncated or damaged .npz" in capsys.readouterr().err


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_says_the_class_count_warning_once_and_restores_sigterm(tmp_path, capsys):
    pytest.importorskip("av")
    from experiments import evaluate as E
    from helpers import write_video
    (tmp_path / "data" / "validate" / "archery").mkdir(parents=True)
    write_video(str(tmp_path / "data" / "validate" / "archery" / "aaaaaaaaaaa_000000_000010.mp4"), 40)
    before = signal.getsignal(signal.SIGTERM)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = E.main(["--model", "x3d_xs", "--random-weights", "--model-arg", "image_size=32", "--model-arg",
                     "num_classes=5", "--dataset", "kinetics400", "--root", str(tmp_path), "--out",
                     str(tmp_path / "out"), "--workers", "0", "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.count("classes present") == 1, err
    assert not [w for w in caught if "classes" in str(w.message)]
    # the SIGTERM handler (stop cleanly) is evaluate's only while it runs: a later SIGTERM to the
    # process (e.g. a test worker being shut down) must not raise KeyboardInterrupt somewhere else
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------- leftovers
def test_user_facing_help_names_no_issue(capsys):
    from experiments import benchmark_compare
    with pytest.raises(SystemExit):
        benchmark_compare.main(["--help"])
    assert "issue" not in capsys.readouterr().out.lower()


def test_the_main_jobs_output_is_git_ignored():
    r = subprocess.run(["git", "check-ignore", "-q", "results/profile/profile.json"], cwd=REPO)
    assert r.returncode == 0
    r = subprocess.run(["git", "check-ignore", "-q", "results/profile_h100/profile.json"], cwd=REPO)
    assert r.returncode == 1   # the committed results stay tracked
