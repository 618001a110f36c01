"""JAX throughput benchmark for continual (frames/s) and clip (clips/s) models.

    python -m experiments.benchmark_jax --out results/bench_jax.json
    python -m experiments.benchmark_jax --quick            # tiny CPU smoke run

Continual models run one jitted ``Model.stream`` call per chunk of ``--chunk`` frames for a batch
of streams, with BN folded and the state donated between chunks, timed once the streams are past
their warm-up, in two modes (``--stream-modes``): ``step``, a ``lax.scan`` of the continual step,
and ``bulk``, bulk steps (each layer over the whole chunk from its state: ``Model.stream``'s
default where the model allows it); clip models run one jitted forward
per batch. Every figure is the median of ``--repeats`` timed calls after a warm-up call
(compilation excluded), synchronised with ``block_until_ready``. The models run their defaults
(X3D: ``depthwise_impl``/``dense_impl="fused"``, the Pallas step and clip kernels on NVIDIA GPUs); section ``xla``
adds stream rows on the XLA path (``depthwise_impl=auto, dense_impl=auto``). Also measured:
batch-1 latency of a :class:`co3d_jax.live.LiveStep` call (as a live stream runs), the depthwise
algorithm (shift-and-add vs grouped convolution), scan unroll, and bf16 vs fp32 output error.
Results: JSON with device, versions, date and command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np

from co3d_jax.extras import cli_main
from experiments._cli import ResultsFile, add_benchmark_args

# paper batch sizes (reference §5.5)
CONTINUAL = [("cox3d_s_64", 64), ("cox3d_m_64", 64), ("cox3d_l_64", 32)]
CLIP = [("x3d_s", 64), ("x3d_m", 64), ("x3d_l", 32)]


def bench_latency(name: str, dtype: str, steps: int, options: dict | None = None,
                  image_size: int | None = None) -> dict:
    """Batch-1 latency of :class:`co3d_jax.live.LiveStep` (what a live stream calls per frame:
    weights baked in, packed state donated): the median and p90 of ``steps`` blocking calls, and
    the wall time per call of ``steps`` calls dispatched back to back (pipelined)."""
    import jax
    import jax.numpy as jnp

    from co3d_jax.benchmark import bench_model, cast_tree
    from co3d_jax.live import LiveStep

    model = bench_model(name, **({"image_size": image_size} if image_size else {}), **(options or {}))
    model, params = model.fold_batchnorm(model.init(jax.random.key(0)))
    dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    live = LiveStep(model, cast_tree(params, dt), 1, dt)
    frame = jax.random.normal(jax.random.key(1), (1, *model.frame_shape), dt)
    state = live.init()
    t0 = time.perf_counter()
    for _ in range(3):
        state, out = live(state, frame)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, out = live(state, frame)
        jax.block_until_ready(out.scores)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, out = live(state, frame)
    jax.block_until_ready(out)
    pipelined = (time.perf_counter() - t0) / steps
    return {"kind": "latency", "model": name, "batch": 1, "dtype": dtype, "api": "LiveStep",
            **({"options": options} if options else {}), "median_ms": float(np.median(times) * 1e3),
            "p90_ms": float(np.percentile(times, 90) * 1e3), "pipelined_ms_per_call": pipelined * 1e3,
            "steps": steps, "compile_s": compile_s}


def bf16_error(name: str, frames: int = 96, batch: int = 4) -> dict:
    """Max/mean abs difference of bf16 vs fp32 softmax scores over a stream (valid frames)."""
    import jax
    import jax.numpy as jnp

    import co3d_jax
    from co3d_jax.benchmark import cast_tree
    model = co3d_jax.create_model(name)
    params = model.init(jax.random.key(0))
    model, params = model.fold_batchnorm(params)
    x = jax.random.normal(jax.random.key(1), (batch, frames, *model.frame_shape))
    fn = jax.jit(model.stream)
    _, o32 = fn(params, model.init_state(batch), x)
    _, o16 = fn(cast_tree(params, jnp.bfloat16), model.init_state(batch, jnp.bfloat16), x.astype(jnp.bfloat16))
    v = np.asarray(o32.valid)
    a, b = np.asarray(o32.scores)[v], np.asarray(o16.scores, np.float32)[v]
    top1 = float(np.mean(a.argmax(-1) == b.argmax(-1)))
    return {"kind": "bf16_error", "model": name, "max_abs": float(np.abs(a - b).max()),
            "mean_abs": float(np.abs(a - b).mean()), "top1_agreement": top1, "valid_frames": int(v.sum())}


def environment() -> dict:
    import jax
    dev = jax.devices()[0]
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": getattr(dev, "device_kind", str(dev)), "platform": dev.platform,
            "jax": jax.__version__, "python": platform.python_version(), "command": " ".join(sys.argv),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


XLA = {"depthwise_impl": "auto", "dense_impl": "auto"}  # the XLA-only step (no Pallas kernel, library convs)


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.benchmark_jax", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_args(ap, "results/bench_jax.json", 10, "stream,latency,clip,xla,depthwise,unroll,bf16err")
    ap.add_argument("--chunk", type=int, default=64, help="frames per jitted stream call")
    ap.add_argument("--stream-modes", default="step,bulk",
                    help="stream rows: step (a lax.scan of steps) and/or bulk (Model.stream's bulk steps)")
    ap.add_argument("--latency-steps", type=int, default=200, help="timed LiveStep calls (latency)")
    ap.add_argument("--xla-models", default="cox3d_s_64,cox3d_m_64",
                    help="continual models also run on the XLA path (section xla: depthwise_impl=auto, "
                         "dense_impl=auto) for stream, and cox3d_s_64's latency in fp32")
    ap.add_argument("--clip-dtypes", default=None, help="dtypes of the clip section (default: --dtypes)")
    ap.add_argument("--image-size", type=int, default=None, help="override every model's frame size (smoke runs)")
    ap.add_argument("--batch", type=int, default=None, help="override the paper batch sizes (smoke runs)")
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke run (small images, batch 2)")
    args = ap.parse_args(argv)

    dtypes = args.dtypes.split(",")
    sections = set(args.sections.split(","))
    keep = set(args.models.split(",")) if args.models else None
    co_models = [(n, args.batch or b) for n, b in CONTINUAL if keep is None or n in keep]
    clip_models = [(n, args.batch or b) for n, b in CLIP if keep is None or n in keep]
    size = {"image_size": args.image_size} if args.image_size else {}

    from co3d_jax.benchmark import bench_clip, bench_stream

    record = ResultsFile(args.out, environment()).record

    if args.quick:
        record(bench_stream("cox3d_s_13", 2, "fp32", 8, 2, image_size=64))
        record(bench_stream("cox3d_s_13", 2, "fp32", 8, 2, image_size=64, bulk=True))
        record(bench_clip("x3d_xs", 2, "fp32", 2))
        return 0
    modes = args.stream_modes.split(",")
    if unknown := set(modes) - {"step", "bulk"}:
        ap.error(f"--stream-modes: unknown mode(s) {sorted(unknown)}; choose from step, bulk")
    if "stream" in sections:
        for name, batch in co_models:
            for dt in dtypes:
                for mode in modes:
                    record(bench_stream(name, batch, dt, args.chunk, args.repeats, bulk=mode == "bulk", **size))
    if "latency" in sections:
        for dt in dtypes:
            record(bench_latency("cox3d_s_64", dt, args.latency_steps, **size))
        if "xla" in sections and "cox3d_s_64" in args.xla_models.split(","):
            record(bench_latency("cox3d_s_64", "fp32", args.latency_steps, options=XLA, **size))
    if "clip" in sections:
        for name, batch in clip_models:
            for dt in (args.clip_dtypes or args.dtypes).split(","):
                record(bench_clip(name, batch, dt, args.repeats, **size))
    if "xla" in sections:
        for name, batch in co_models:
            if name in args.xla_models.split(","):
                for dt in dtypes:
                    record(bench_stream(name, batch, dt, args.chunk, args.repeats, options=XLA, **size))
    if "depthwise" in sections:
        record(bench_stream("cox3d_s_64", 64, "fp32", args.chunk, args.repeats, depthwise="lax"))
        record(bench_stream("cox3d_s_64", 64, "bf16", args.chunk, args.repeats, depthwise="lax"))
        record(bench_latency("cox3d_s_64", "fp32", 100, options={"depthwise_impl": "lax"}))
        record(bench_clip("x3d_s", 64, "fp32", args.repeats, depthwise="lax"))
    if "unroll" in sections:
        for u in (2, 4):
            record(bench_stream("cox3d_s_64", 64, "fp32", args.chunk, args.repeats, unroll=u))
    if "bf16err" in sections:
        record(bf16_error("cox3d_s_64"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
