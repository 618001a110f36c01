"""Prefill vs stepping: the time to bring a fresh stream through ``T`` frames.

For each model, times the jitted ``Model.prefill(params, frames)`` (one clip-mode pass per layer)
against the jitted ``Model.stream(params, init_state, frames)`` (``T`` scanned steps) on the same
random frames and random weights, after compiling both; reports the median of ``--repeats`` runs,
the speed-up, the largest relative difference of the scores (they must agree) and, for scale, the
clip-mode ``Model.forward`` of the same frames (the work prefill cannot go below). Writes a JSON
with the device, the JAX version, the date and the command.

    python -m benchmarks.prefill_speed --image-size 64 --out results/prefill_speed_cpu.json   # CPU
    python -m benchmarks.prefill_speed --batch 8 --out results/prefill_speed_h200.json         # GPU

``--frames`` defaults to each model's ``delay + 1`` (the init-frame evaluation's warm-up).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import jax
import jaxlib
import jax.numpy as jnp
import numpy as np

import co3d_jax


def random_params(model, seed: int = 0):
    """Random weights with the model's exact tree (numpy; BN near identity so deep nets stay finite)."""
    rng = np.random.default_rng(seed)

    def leaf(path, sd):
        name = jax.tree_util.keystr(path)
        if name.endswith("['var']") or name.endswith("['scale']"):
            v = rng.uniform(0.5, 1.5, sd.shape) * (0.1 if "c_bn" in name and name.endswith("['scale']") else 1.0)
        elif name.endswith("['mean']") or name.endswith("['bias']"):
            v = rng.normal(0.0, 0.1, sd.shape)
        else:
            v = rng.normal(0.0, np.sqrt(2.0 / max(int(np.prod(sd.shape[:-1])), 1)), sd.shape)
        return jnp.asarray(v, sd.dtype)

    return jax.tree_util.tree_map_with_path(leaf, jax.eval_shape(model.init, jax.random.key(0)))


def timed(fns: dict, repeats: int) -> dict:
    """Compile every ``fns[k]()`` (first call), then time them in turn ``repeats`` times
    (interleaved, so background load hits all alike). Returns ``{k: (out, compile_s, median_s, min_s)}``."""
    out, compile_s, times = {}, {}, {k: [] for k in fns}
    for k, fn in fns.items():
        t0 = time.perf_counter()
        out[k] = jax.block_until_ready(fn())
        compile_s[k] = time.perf_counter() - t0
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t0)
    return {k: (out[k], compile_s[k], statistics.median(times[k]), min(times[k])) for k in fns}


def bench(name: str, args) -> dict:
    options = {"image_size": args.image_size} if args.image_size else {}
    model = co3d_jax.create_model(name, **options)
    params = random_params(model)
    t = args.frames or model.delay + 1
    frames = jnp.asarray(np.random.default_rng(1).standard_normal((args.batch, t, *model.frame_shape)), jnp.float32)
    state0 = model.init_state(args.batch)
    prefill, stream, forward = jax.jit(model.prefill), jax.jit(model.stream), jax.jit(model.forward)
    r = timed({"prefill": lambda: prefill(params, frames), "stream": lambda: stream(params, state0, frames),
               "clip_forward": lambda: forward(params, frames)}, args.repeats)
    pre, ref = r["prefill"][0][1], r["stream"][0][1]
    scale = float(jnp.max(jnp.abs(ref.scores))) or 1.0
    row = dict(model=name, frames=t, batch=args.batch, image_size=model.image_size, delay=model.delay,
               repeats=args.repeats, **{f"{k}_ms": 1e3 * v[2] for k, v in r.items()},
               **{f"{k}_min_ms": 1e3 * v[3] for k, v in r.items()},
               **{f"{k}_compile_s": v[1] for k, v in r.items()},
               speedup=r["stream"][2] / r["prefill"][2], speedup_min=r["stream"][3] / r["prefill"][3],
               max_rel_diff=float(jnp.max(jnp.abs(pre.scores - ref.scores))) / scale,
               same_validity=bool(jnp.all(pre.valid == ref.valid)))
    print(f"{name:12s} T={t:4d} B={args.batch} {model.image_size}px  median (min) ms: prefill {row['prefill_ms']:.1f} "
          f"({row['prefill_min_ms']:.1f})  stream {row['stream_ms']:.1f} ({row['stream_min_ms']:.1f})  clip forward "
          f"{row['clip_forward_ms']:.1f} ({row['clip_forward_min_ms']:.1f})  speed-up {row['speedup']:.2f}x "
          f"({row['speedup_min']:.2f}x)  max rel diff {row['max_rel_diff']:.1e}, validity "
          f"{'same' if row['same_validity'] else 'DIFFERS'}", flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cox3d_s_13,coslow_8,coi3d_8", help="comma-separated registry names")
    p.add_argument("--frames", type=int, default=None, help="frames T (default: each model's delay + 1)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--image-size", type=int, default=None, help="crop side (default: the model's)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs after compiling (median reported)")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    dev = jax.devices()[0]
    print(f"device: {dev.platform} {dev.device_kind}; jax {jax.__version__}", flush=True)
    rows = [bench(n.strip(), args) for n in args.models.split(",") if n.strip()]
    result = dict(device=f"{dev.platform} {dev.device_kind}", num_devices=jax.device_count(),
                  host=platform.node(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  command=" ".join([sys.executable, *sys.argv]),
                  matmul_precision=str(jax.config.jax_default_matmul_precision), results=rows)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
