"""A missing optional package is one line naming it and the extra that installs it, exit code 2,
from every command (``co3d_jax.extras``: ``require`` and ``cli_main``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from co3d_jax.extras import EXTRA_OF, MissingExtra, cli_main, require

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _without(monkeypatch, *modules):
    """Make ``import m`` fail with ModuleNotFoundError for each of ``modules`` (as if not installed)."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def _one_error_line(err: str, package: str, extra: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert repr(package) in lines[0] and f".[{extra}]" in lines[0], lines[0]
    return lines[0]


def test_require_names_the_package_and_the_extra(monkeypatch):
    assert require("json", "data").__name__ == "json"
    _without(monkeypatch, "cv2")
    with pytest.raises(MissingExtra) as e:
        require("cv2", "data", "decoding video")
    msg = str(e.value)
    assert "\n" not in msg and "'opencv-python-headless'" in msg and "pip install -e '.[data]'" in msg
    assert msg.startswith("decoding video needs")
    assert isinstance(e.value, ImportError) and e.value.extra == "data"


def test_cli_main_turns_any_known_missing_module_into_one_line(monkeypatch, capsys):
    @cli_main
    def main(argv=None):
        import torch  # noqa: F401  (a lazy import deep in a command)
        return 0

    _without(monkeypatch, "torch")
    assert main([]) == 2
    _one_error_line(capsys.readouterr().err, "torch", EXTRA_OF["torch"])

    @cli_main
    def other(argv=None):
        import not_a_package_of_ours  # noqa: F401  (not an optional dependency: a real bug)

    with pytest.raises(ModuleNotFoundError):
        other([])


def test_evaluate_without_a_decoder(monkeypatch, capsys, tmp_path):
    from experiments import evaluate
    _without(monkeypatch, "av", "cv2")
    rc = evaluate.main(["--model", "x3d_xs", "--random-weights", "--dataset", "kinetics400",
                        "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "av", "data")
    assert not os.path.exists(tmp_path / "out")  # checked before any work


def test_evaluate_without_grain(monkeypatch, capsys, tmp_path):
    """Evaluation's input pipeline is Grain's (worker processes or, with --workers 0, inline)."""
    from experiments import evaluate
    _without(monkeypatch, "grain")
    rc = evaluate.main(["--model", "x3d_xs", "--random-weights", "--dataset", "kinetics400", "--workers", "0",
                        "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "grain", "data")
    assert not os.path.exists(tmp_path / "out")  # checked before any work


def test_stream_without_a_decoder(monkeypatch, capsys, tmp_path):
    from experiments import stream
    video = tmp_path / "a.mp4"
    video.write_bytes(b"not decoded")
    _without(monkeypatch, "av", "cv2")
    rc = stream.main(["--model", "cox3d_xs", "--video", str(video), "--image-size", "32"])
    assert rc == 2
    err = capsys.readouterr().err
    assert _one_error_line(err, "av", "data")


def test_finetune_without_a_decoder(monkeypatch, capsys, tmp_path):
    from experiments import finetune
    _without(monkeypatch, "av", "cv2")
    rc = finetune.main(["--model", "x3d_xs", "--from-scratch", "--data", str(tmp_path), "--steps", "1",
                        "--out", str(tmp_path / "run")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "av", "data")
    assert not os.path.exists(tmp_path / "run")


def test_tfds_build_without_tfds(monkeypatch, capsys, tmp_path):
    from co3d_jax.data.tfds.__main__ import main
    _without(monkeypatch, "tensorflow_datasets")
    rc = main(["--dataset", "kinetics400", "--manual-dir", str(tmp_path), "--data-dir", str(tmp_path / "tfds")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "tensorflow-datasets", "tfds")


def test_evaluate_from_tfds_without_tfds(monkeypatch, capsys, tmp_path):
    from experiments import evaluate
    _without(monkeypatch, "tensorflow_datasets")
    rc = evaluate.main(["--model", "x3d_xs", "--random-weights", "--dataset", "kinetics400", "--source", "tfds",
                        "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "tensorflow-datasets", "tfds")


def test_benchmark_compare_without_torch(monkeypatch, capsys, tmp_path):
    from experiments import benchmark_compare
    _without(monkeypatch, "torch")
    assert benchmark_compare.main(["--out", str(tmp_path / "b")]) == 2
    _one_error_line(capsys.readouterr().err, "torch", "bench")


def test_python_m_exits_2_with_one_line(tmp_path):
    """What the user runs: ``python -m experiments.evaluate`` without PyAV and OpenCV."""
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    code = ("import sys, runpy; sys.modules.update(av=None, cv2=None); "
            "sys.argv = ['evaluate'] + sys.argv[1:]; runpy.run_module('experiments.evaluate', run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code, "--model", "x3d_xs", "--random-weights", "--dataset",
                        "kinetics400", "--root", str(tmp_path), "--out", str(tmp_path / "o")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    _one_error_line(p.stderr, "av", "data")


def _zip_file(path) -> str:
    """A file laid out as a torch.save zip archive (``archive/data.pkl``), written without torch."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("archive/version", "3\n")
    return str(path)


def test_weight_port_convert_without_torch(monkeypatch, capsys, tmp_path):
    from weight_port import cli
    src = _zip_file(tmp_path / "x3d_s.pyth")
    _without(monkeypatch, "torch")
    rc = cli.main(["convert", src, "--arch", "x3d_s", "--out", str(tmp_path / "x3d_s.npz")])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, "torch", "port")
    assert "x3d_s.pyth" in line
    assert not (tmp_path / "x3d_s.npz").exists()


@pytest.mark.parametrize("arch, package", [("x3d_s", "pytorchvideo"), ("slow_8x8_r50", "pytorchvideo"),
                                           ("r2plus1d_18_16", "torchvision")])
def test_weight_port_verify_without_its_reference(monkeypatch, capsys, tmp_path, arch, package):
    """--verify names the package of the family's reference and the [port] extra, before any work
    (the source is not even read)."""
    from weight_port import cli
    _without(monkeypatch, package)
    rc = cli.main(["convert", str(tmp_path / "absent.pyth"), "--arch", arch, "--out", str(tmp_path / "o.npz"),
                   "--verify"])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, package, "port")
    assert line.startswith(f"error: --verify for {arch} needs")


def test_python_m_weight_port_without_torch(tmp_path):
    """What the user runs: ``python -m weight_port convert ...`` on a machine without torch."""
    src = _zip_file(tmp_path / "x3d_s.pyth")
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    code = ("import sys, runpy; sys.modules.update(torch=None); "
            "sys.argv = ['weight_port'] + sys.argv[1:]; runpy.run_module('weight_port', run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code, "convert", src, "--arch", "x3d_s", "--out",
                        str(tmp_path / "o.npz")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    _one_error_line(p.stderr, "torch", "port")
