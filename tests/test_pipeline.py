"""The input pipeline shared by evaluation and fine-tuning (``co3d_jax.data.pipeline``): collation
onto a canvas, the device prefetcher's end, errors and shutdown, and the Grain reader's release of
its worker processes and shared memory on every exit path (normal end, exception, Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from co3d_jax.data.pipeline import DevicePrefetcher, collate_windows, stack_taps
from co3d_jax.data.transforms import CropTaps, center_crop_taps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_collate_pads_missing_rows_and_rounds_the_canvas():
    a = np.full((2, 20, 30, 3), 7, np.uint8)
    b = np.full((2, 40, 10, 3), 9, np.uint8)
    out = collate_windows([a, None, b], rows=4)
    assert out.shape == (4, 2, 64, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, :20, :30], a)
    np.testing.assert_array_equal(out[2, :, :40, :10], b)
    assert not out[1].any() and not out[3].any() and not out[0, :, 20:].any() and not out[0, :, :, 30:].any()
    assert collate_windows([a], canvas=(70, 0)).shape == (1, 2, 96, 32, 3)   # a canvas only grows
    assert collate_windows([None], rows=2, num_frames=5).shape == (2, 5, 32, 32, 3)
    with pytest.raises(ValueError):
        collate_windows([a, np.zeros((3, 20, 30, 3), np.uint8)])   # different clip lengths
    taps = stack_taps([center_crop_taps(20, 30, 16), None], rows=3)
    assert set(taps) == set(CropTaps._fields) and taps["r0"].shape == (3, 16) and taps["r0"].dtype == np.int32
    assert not taps["rw0"][1:].any() and not taps["c0"][1:].any() and taps["cw0"].dtype == np.float32


def _prefetcher(n, fail_at=None, closed=None):
    """A prefetcher over ``n`` host batches ``{"x": (2, 3) float32 of k}``; batch ``fail_at`` raises."""
    made = iter(range(n + 1))

    def produce():
        k = next(made)
        if k == fail_at:
            raise ValueError(f"bad batch {k}")
        if k == n:
            return None
        return {"x": np.full((2, 3), k, np.float32)}, f"meta {k}"

    return DevicePrefetcher(produce, transform=lambda t: t["x"] * 2,
                            close_source=lambda: closed.append(1) if closed is not None else None)


def test_prefetcher_hands_out_every_batch_then_ends():
    closed: list = []
    with _prefetcher(3, closed=closed) as p:
        got = [(np.asarray(x), meta) for x, meta in p]
    assert [m for _, m in got] == ["meta 0", "meta 1", "meta 2"]
    for k, (x, _) in enumerate(got):
        np.testing.assert_array_equal(x, np.full((2, 3), 2 * k, np.float32))
    assert len(closed) == 2 and p.stats["batches"] == 3   # by the thread at its end, by close()
    with pytest.raises(StopIteration):
        next(p)


def test_prefetcher_reraises_the_threads_error_and_closes_the_source():
    closed: list = []
    p = _prefetcher(5, fail_at=1, closed=closed)
    next(p)
    with pytest.raises(ValueError, match="bad batch 1"):
        next(p)
    p.close()
    assert len(closed) == 2


def test_prefetcher_closed_early_stops_its_thread():
    closed: list = []
    p = _prefetcher(1000, closed=closed)
    next(p)
    p.close()
    assert not p._thread.is_alive() and len(closed) == 2
    p.close()   # again: harmless (the source's close must tolerate repeats)
    with pytest.raises(StopIteration):
        next(p)


def test_device_frames_plug_in_at_the_prefetcher():
    """The seam for a GPU decoder: uint8 frames already on the device plus host taps, produced by
    the prefetcher's ``produce``, give what the host path gives (and the numpy reference)."""
    import jax
    from co3d_jax.data.device_augment import make_augment
    from co3d_jax.data.transforms import eval_transform
    from co3d_jax.mesh import data_mesh

    mean, std = (0.45, 0.4, 0.35), (0.225, 0.2, 0.25)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8) for h, w in ((48, 64), (40, 24))]
    host = collate_windows(frames)
    taps = stack_taps([center_crop_taps(f.shape[1], f.shape[2], 32) for f in frames])
    mesh = data_mesh()
    transform = make_augment(mesh, mean, std)
    outs = []
    for batch in (host, jax.device_put(host, jax.devices()[0])):
        made = iter([((batch, taps), None), None])
        with DevicePrefetcher(lambda: next(made), mesh, transform=lambda t: transform(*t)) as p:
            outs.append(np.asarray(next(p)[0]))
    np.testing.assert_array_equal(outs[0], outs[1])
    for f, o in zip(frames, outs[0]):
        np.testing.assert_allclose(o, eval_transform(f, 32, mean, std), rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------- Grain workers
READER = """
import faulthandler, os, signal, sys, time
faulthandler.dump_traceback_later(60, exit=True)  # a hang (seen once under a loaded CI box) dumps every thread's stack
import numpy as np
import grain
from co3d_jax.data.pipeline import GrainReader

class Big:   # 13 frames of 240x320: shared-memory blocks like real clips
    def __call__(self, i):
        return {"frames": np.full((13, 240, 320, 3), i % 251, np.uint8), "i": i}

if __name__ == "__main__":
    mode = sys.argv[1]
    reader = GrainReader(grain.MapDataset.range(24).map(Big()), workers=2, buffer=4)
    try:
        if mode == "end":
            got = reader.take(100)
            assert [e["i"] for e in got] == list(range(24)) and all(int(e["frames"][0, 0, 0, 0]) == e["i"] % 251 for e in got)
        elif mode == "error":
            got = reader.take(5)
            raise RuntimeError("boom")
        else:   # Ctrl-C: the whole process group gets SIGINT while the workers are busy
            got = reader.take(3)
            print("ready", flush=True)
            while True:   # the workers fill their queues and wait
                time.sleep(0.1)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    except RuntimeError as e:
        print(f"error {e}", flush=True)
    finally:
        del got           # every element dropped right before the process ends
        reader.close()
    sys.exit(0)
"""


@pytest.fixture(scope="module")
def reader_script(tmp_path_factory):
    pytest.importorskip("grain")
    path = tmp_path_factory.mktemp("reader") / "reader.py"
    path.write_text(READER)
    return str(path)


def _run_reader(script, mode):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    if mode != "sigint":
        return subprocess.run([sys.executable, script, mode], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
    proc = subprocess.Popen([sys.executable, script, mode], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.time()
        os.killpg(proc.pid, signal.SIGINT)   # as Ctrl-C in a terminal: main process and workers
        out, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(proc.args, proc.returncode, "ready\n" + out, err), time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _released(r):
    assert r.returncode == 0, r.stderr[-3000:]
    assert "leaked" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]


@pytest.mark.parametrize("mode", ["end", "error"])
def test_grain_reader_releases_workers_and_shared_memory(reader_script, mode):
    """Elements dropped right before exit, after reading them all or after an exception: no
    "leaked shared_memory objects" warning (Grain unlinks them in a background thread)."""
    r = _run_reader(reader_script, mode)
    _released(r)
    assert mode == "end" or "error boom" in r.stdout


def test_grain_reader_after_ctrl_c(reader_script):
    """SIGINT to the process group: the workers ignore it, the main process stops them at once
    (a worker killed by it would be waited for ~25 s) and nothing leaks."""
    r, seconds = _run_reader(reader_script, "sigint")
    _released(r)
    assert "interrupted" in r.stdout and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert seconds < 15, seconds


def test_open_reader_per_decoder(monkeypatch):
    """The CPU decoder reads through Grain processes, a device decoder through threads of this one
    process or (``nvdec-host``: ``--decoder-procs``) through Grain processes, and a device decoder
    in a multi-process run is refused in one line."""
    import grain
    import jax

    from co3d_jax.data.pipeline import GrainReader, ThreadReader, open_reader
    ds = grain.MapDataset.range(6)
    for decoder, kind in (("cpu", GrainReader), ("nvdec", ThreadReader), ("nvdec-host", GrainReader)):
        reader = open_reader(ds, decoder, workers=0, threads=2, ahead=4)
        try:
            assert isinstance(reader, kind) and reader.take(6) == list(range(6))
        finally:
            reader.close()
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for decoder in ("nvdec", "nvdec-host"):
        with pytest.raises(ValueError, match=rf"decoder='{decoder}' decodes for one process; this run has 2"):
            open_reader(ds, decoder)
