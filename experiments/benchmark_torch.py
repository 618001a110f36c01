"""PyTorch reference throughput: co3d-style CoX3D (continual-inference) and pytorchvideo X3D.

    python -m experiments.benchmark_torch --out results/bench_torch.json

Mirrors :mod:`experiments.benchmark_jax`: CoX3D-S/M/L_64 stepped frame-wise the way co3d runs
them (``call_mode = "forward_steps"``, one ``(B, 3, 1, H, W)`` frame per call, timed after the
state is warmed past the delay by ``forward_steps`` over 16-frame chunks, which leaves the same
state as stepping and takes seconds instead of a minute for CoX3D-L), and in ``--stream-modes bulk``
the same warmed state fed whole ``--frames``-frame chunks by ``forward_steps`` (continual-inference's
counterpart of ``Model.stream``'s bulk steps), clip X3D-S/M/L from pytorchvideo; fp32 and bf16 (``torch.autocast``); inputs
already on the device; median of repeated timings after warm-up, synchronised.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import numpy as np

from co3d_jax.extras import cli_main, require
from experiments._cli import ResultsFile, add_benchmark_args
from experiments.benchmark_jax import CLIP, CONTINUAL

SIZES = {"cox3d_s_64": ("s", 160, 64, 2.2), "cox3d_m_64": ("m", 224, 64, 2.2), "cox3d_l_64": ("l", 312, 64, 5.0)}


def _sync(torch, dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


WARM_CHUNK = 16  # frames per forward_steps call while warming the state up


def bench_stream(name, batch, dtype, frames, repeats, dev, image_size=None, bulk=False):
    import torch

    from co3d_jax.models.x3d import X3DConfig
    from experiments.torch_reference import build_torch_cox3d
    _, size, window, depth = SIZES[name]
    size = image_size or size
    model = build_torch_cox3d(X3DConfig(image_size=size, window=window, depth_factor=depth)).to(dev)
    model.call_mode = "forward_steps"
    x = torch.randn(batch, 3, 1, size, size, device=dev)
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast(dev.type, enabled=False)
    with torch.no_grad(), ctx:
        warm = x.expand(-1, -1, WARM_CHUNK, -1, -1).contiguous()
        for _ in range(-(-(model.delay + 2) // WARM_CHUNK)):  # past the delay (co3d's warm_up feeds D frames)
            model.forward_steps(warm, pad_end=False, update_state=True)
        for _ in range(2):  # the frame-wise path itself
            y = model(x)
        _sync(torch, dev)
        assert y is not None, "still inside the delay after the warm-up"
        chunk = x.expand(-1, -1, frames, -1, -1).contiguous()
        if bulk:
            y = model.forward_steps(chunk, pad_end=False, update_state=True)  # warm-up of this call shape
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            if bulk:
                y = model.forward_steps(chunk, pad_end=False, update_state=True)
            else:
                for _ in range(frames):
                    y = model(x)
            _sync(torch, dev)
            times.append(time.perf_counter() - t0)
    assert y is not None
    sec = float(np.median(times))
    return {"kind": "stream", "model": name, "batch": batch, "dtype": dtype, "chunk": frames, "bulk": bulk,
            "seconds_per_chunk": sec, "frames_per_s": batch * frames / sec}


def bench_latency(name, dtype, steps, dev, image_size=None):
    r = bench_stream(name, 1, dtype, 1, steps, dev, image_size)
    return {"kind": "latency", "model": name, "batch": 1, "dtype": dtype, "median_ms": r["seconds_per_chunk"] * 1e3}


def bench_clip(name, batch, dtype, repeats, dev, image_size=None):
    import torch

    from experiments.torch_reference import X3D_HUB, build_x3d_pytorchvideo
    size = name.split("_")[1]
    clip, crop, _ = X3D_HUB[size]
    crop = image_size or crop
    model = build_x3d_pytorchvideo(size, crop=crop).to(dev)
    x = torch.randn(batch, 3, clip, crop, crop, device=dev)
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast(dev.type, enabled=False)
    with torch.no_grad(), ctx:
        for _ in range(3):
            model(x)
        _sync(torch, dev)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            _sync(torch, dev)
            times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    return {"kind": "clip", "model": name, "batch": batch, "dtype": dtype, "seconds_per_batch": sec,
            "clips_per_s": batch / sec}


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.benchmark_torch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_args(ap, "results/bench_torch.json", 5, "stream,latency,clip")
    ap.add_argument("--frames", type=int, default=32, help="frames per timed repeat (stream)")
    ap.add_argument("--stream-modes", default="step,bulk",
                    help="stream rows: step (one forward_step call per frame) and/or bulk (forward_steps per chunk)")
    ap.add_argument("--latency-steps", type=int, default=50, help="timed batch-1 steps (latency)")
    ap.add_argument("--image-size", type=int, default=None, help="override every model's frame size (smoke runs)")
    ap.add_argument("--batch", type=int, default=None, help="override the paper batch sizes (smoke runs)")
    args = ap.parse_args(argv)

    torch = require("torch", "bench", "the PyTorch benchmark")
    continual = require("continual", "bench", "the PyTorch benchmark")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name() if dev.type == "cuda" else (platform.processor() or platform.machine()),
           "torch": torch.__version__, "continual_inference": continual.__version__,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn": torch.backends.cudnn.version(),
           "pytorchvideo": require("pytorchvideo", "bench", "the PyTorch benchmark").__version__, "python": platform.python_version(),
           "command": " ".join(sys.argv)}

    record = ResultsFile(args.out, env).record

    sections = set(args.sections.split(","))
    keep = set(args.models.split(",")) if args.models else None
    co_models = [(n, args.batch or b) for n, b in CONTINUAL if keep is None or n in keep]
    clip_models = [(n, args.batch or b) for n, b in CLIP if keep is None or n in keep]
    dtypes = args.dtypes.split(",")
    modes = args.stream_modes.split(",")
    if unknown := set(modes) - {"step", "bulk"}:
        ap.error(f"--stream-modes: unknown mode(s) {sorted(unknown)}; choose from step, bulk")
    if "stream" in sections:
        for name, batch in co_models:
            for dt in dtypes:
                for mode in modes:
                    record(bench_stream(name, batch, dt, args.frames, args.repeats, dev, args.image_size,
                                        bulk=mode == "bulk"))
    if "latency" in sections:
        for dt in dtypes:
            record(bench_latency("cox3d_s_64", dt, args.latency_steps, dev, args.image_size))
    if "clip" in sections:
        for name, batch in clip_models:
            for dt in dtypes:
                record(bench_clip(name, batch, dt, args.repeats, dev, args.image_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
