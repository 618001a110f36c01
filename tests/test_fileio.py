"""Results and weights written atomically get the permissions any other file the user writes
gets (the umask), not ``mkstemp``'s owner-only 0600."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from co3d_jax.fileio import atomic_write
from co3d_jax.params import read_npz, save_params


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_respects_the_umask(tmp_path, umask):
    atomic_write(str(tmp_path / "a" / "x.json"), "{}\n")
    assert _mode(tmp_path / "a" / "x.json") == 0o644
    assert (tmp_path / "a" / "x.json").read_text() == "{}\n"
    os.umask(0o027)
    atomic_write(str(tmp_path / "y.bin"), b"\x00\x01")
    assert _mode(tmp_path / "y.bin") == 0o640 and (tmp_path / "y.bin").read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path, umask):
    path = tmp_path / "shared.json"
    path.write_text("old")
    os.chmod(path, 0o664)
    atomic_write(str(path), "new")
    assert _mode(path) == 0o664 and path.read_text() == "new"


def test_saved_weights_are_readable_by_the_group(tmp_path, umask):
    path = str(tmp_path / "w.npz")
    save_params(path, {"a": {"w": np.ones((2, 3), np.float32)}}, {"arch": "test"})
    assert _mode(path) == 0o644
    flat, meta = read_npz(path)
    assert flat["a/w"].shape == (2, 3) and meta == {"arch": "test"}
