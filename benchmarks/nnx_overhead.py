"""Cost of the Flax NNX front end (co3d_jax.nnx) against the functional API, in one run.

* Batch-1 step latency (median seconds per call, output ready): the functional
  :class:`co3d_jax.live.LiveStep` (weights baked in, packed donated state), ``jax.jit(model.step)``
  (params and state as arguments), and the NNX module's ``step`` under ``nnx.jit``, under
  ``nnx.cached_partial`` (Flax's way to skip the per-call graph traversal) and through the
  module's fast path ``m.step_fn()`` (:class:`co3d_jax.nnx.FastCall`).
* Batch-``B`` throughput (frames/s over ``--frames`` frames per stream, one ``lax.scan``):
  ``model.stream_fn()`` against ``nnx.jit(lambda m, f: m.stream(f))`` and ``m.stream_fn()``.

Random weights (timing does not depend on them). Writes JSON with the device, versions, date and
command line.

    python benchmarks/nnx_overhead.py --model cox3d_s_13 --batch 64 --frames 64 --out nnx_overhead.json
    python benchmarks/nnx_overhead.py --image-size 32 --batch 2 --frames 4 --steps 5 \\
        --option depth_factor=0.3 --option conv5_dim=32          # a quick CPU check
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import platform
import sys

import jax
from flax import nnx

import co3d_jax
import co3d_jax.nnx as cnx
from co3d_jax.benchmark import median_time
from co3d_jax.live import LiveStep


def environment() -> dict:
    import flax
    import jaxlib
    dev = jax.devices()[0]
    return {"device": getattr(dev, "device_kind", str(dev)), "platform": dev.platform,
            "device_count": jax.device_count(),
            "versions": {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                         "flax": flax.__version__, "co3d_jax": co3d_jax.__version__}}


def median_call(fn, n: int, warmup: int) -> float:
    """Median wall seconds of ``fn()`` (which must return something to block on), after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    return median_time(lambda: jax.block_until_ready(fn()), n)


def parse_option(text: str):
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cox3d_s_13")
    ap.add_argument("--batch", type=int, default=64, help="streams for the throughput measurement")
    ap.add_argument("--frames", type=int, default=64, help="frames per stream in the throughput measurement")
    ap.add_argument("--image-size", type=int, default=None, help="crop side (default: the model's)")
    ap.add_argument("--steps", type=int, default=200, help="timed batch-1 steps per variant")
    ap.add_argument("--repeats", type=int, default=5, help="timed throughput runs per variant")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--option", action="append", default=[], help="extra model option key=value (repeatable)")
    ap.add_argument("--out", default="nnx_overhead.json")
    args = ap.parse_args(argv)

    options = dict(parse_option(o) for o in args.option)
    if args.image_size:
        options["image_size"] = args.image_size
    model = co3d_jax.create_model(args.model, **options)
    params = model.init(jax.random.key(0))
    m = cnx.from_params(model, params)
    key = jax.random.key(1)
    frame = jax.random.normal(key, (1, *model.frame_shape))

    # ---------------------------------------------------------------- batch-1 latency
    latency = {}
    live = LiveStep(model, params, batch_size=1)
    live_state = [live.init()]

    def live_call():
        live_state[0], out = live(live_state[0], frame)
        return out.scores
    latency["functional_livestep"] = median_call(live_call, args.steps, args.warmup)

    jit_step = jax.jit(model.step)
    fstate = [model.init_state(1)]

    def jit_call():
        fstate[0], out = jit_step(params, fstate[0], frame)
        return out.scores
    latency["functional_jit_step"] = median_call(jit_call, args.steps, args.warmup)

    m.init_stream(1)
    nnx_step = nnx.jit(lambda m, x: m.step(x))
    latency["nnx_jit_step"] = median_call(lambda: nnx_step(m, frame).scores, args.steps, args.warmup)

    m.init_stream(1)
    cached = nnx.cached_partial(nnx_step, m)
    latency["nnx_cached_partial_step"] = median_call(lambda: cached(frame).scores, args.steps, args.warmup)

    m.init_stream(1)
    fast_step = m.step_fn()
    latency["nnx_step_fn"] = median_call(lambda: fast_step(frame).scores, args.steps, args.warmup)

    # ---------------------------------------------------------------- batch-B throughput
    frames = jax.random.normal(key, (args.batch, args.frames, *model.frame_shape))
    n = args.batch * args.frames
    throughput = {}
    stream_fn = model.stream_fn()
    state0 = model.init_state(args.batch)
    throughput["functional_stream_fn"] = n / median_call(lambda: stream_fn(params, state0, frames)[1].scores,
                                                         args.repeats, 1)
    m.init_stream(args.batch)
    nnx_stream = nnx.jit(lambda m, f: m.stream(f))
    throughput["nnx_jit_stream"] = n / median_call(lambda: nnx_stream(m, frames).scores, args.repeats, 1)
    m.init_stream(args.batch)
    fast_stream = m.stream_fn()
    throughput["nnx_stream_fn"] = n / median_call(lambda: fast_stream(frames).scores, args.repeats, 1)

    result = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **environment(),
        "model": model.name, "image_size": model.image_size, "options": options,
        "batch1_step_latency_s_median": latency, "steps": args.steps,
        "throughput_frames_per_s": throughput, "batch": args.batch, "frames": args.frames, "repeats": args.repeats,
        "nnx_over_functional": {
            "latency_jit": latency["nnx_jit_step"] / latency["functional_jit_step"],
            "latency_cached_partial_vs_livestep": latency["nnx_cached_partial_step"] / latency["functional_livestep"],
            "latency_step_fn_vs_jit": latency["nnx_step_fn"] / latency["functional_jit_step"],
            "latency_step_fn_vs_livestep": latency["nnx_step_fn"] / latency["functional_livestep"],
            "throughput": throughput["nnx_jit_stream"] / throughput["functional_stream_fn"],
            "throughput_stream_fn": throughput["nnx_stream_fn"] / throughput["functional_stream_fn"],
        },
        "nnx_jit_step_overhead_us": 1e6 * (latency["nnx_jit_step"] - latency["functional_jit_step"]),
        "nnx_step_fn_overhead_us": 1e6 * (latency["nnx_step_fn"] - latency["functional_jit_step"]),
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
