"""The fused Pallas depthwise step (``co3d_jax.kernels.depthwise_step``) against its XLA twin.

    python -m benchmarks.pallas_depthwise --batch 1,64 --dtype fp32 --out results/pallas_depthwise.json

For CoX3D-S's stride-1 depthwise step shapes (stem 5x1x1 at 80x80x24; ``b`` 3x3x3 at 40x40x54,
20x20x108, 10x10x216, 5x5x432): µs per step of the XLA path (:func:`depthwise_step_reference`,
what ``Conv.step`` computes) and of the kernel at a few tile configurations, each timed as a
``lax.scan`` of ``--steps`` steps carrying ``acc`` (median of ``--repeats``), and the largest
relative difference of the outputs and the new partial sums. Off GPUs it runs the kernel
interpreted on tiny sizes (a smoke test).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

SHAPES = {  # name: (kernel, Ho, Wo, C)
    "stem_5x1x1_80x80x24": ((5, 1, 1), 80, 80, 24),
    "s2_b_40x40x54": ((3, 3, 3), 40, 40, 54),
    "s3_b_20x20x108": ((3, 3, 3), 20, 20, 108),
    "s4_b_10x10x216": ((3, 3, 3), 10, 10, 216),
    "s5_b_5x5x432": ((3, 3, 3), 5, 5, 432),
}
CONFIGS = ((2048, 64, 4), (1024, 64, 4), (4096, 64, 8), (2048, 32, 4), (1024, 128, 4), (512, 32, 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pallas_depthwise", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--configs", default="", help="';'-separated budget,max_tc,num_warps (default: a sweep)")
    ap.add_argument("--out", default="results/pallas_depthwise.json")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from jax import lax

    from co3d_jax.benchmark import median_time
    from co3d_jax.kernels import depthwise_step, depthwise_step_reference

    jax.config.update("jax_default_matmul_precision", "highest")
    gpu = jax.devices()[0].platform == "gpu"
    configs = [tuple(int(v) for v in c.split(",")) for c in args.configs.split(";") if c] or list(CONFIGS)
    if not gpu:
        configs = configs[:1]
    rows = []
    for dtype in args.dtype.split(","):
        dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
        for bsz in (int(b) for b in args.batch.split(",")):
            for name in args.shapes.split(","):
                (kt, kh, kw), ho, wo, c = SHAPES[name]
                if not gpu:  # interpreted: a tiny version of the shape
                    bsz, ho, wo = min(bsz, 2), min(ho, 6), min(wo, 6)
                ks = jax.random.split(jax.random.key(0), 4)
                xp = jax.random.normal(ks[0], (bsz, ho + kh - 1, wo + kw - 1, c), dt)
                acc0 = jax.random.normal(ks[1], (bsz, kt - 1, ho, wo, c), dt)
                k = jax.random.normal(ks[2], (kt, kh, kw, c), dt) * 0.2
                bias = jax.random.normal(ks[3], (c,), dt)
                valid = jnp.arange(bsz) % 5 != 3

                def looped(step):
                    def run(acc):
                        def body(a, _):
                            y, a = step(a)
                            return a, y[0, 0, 0, 0]
                        return lax.scan(body, acc, None, length=args.steps)
                    return jax.jit(run)

                def time_it(fn):
                    out = fn(acc0)
                    jax.block_until_ready(out)
                    return median_time(lambda: jax.block_until_ready(fn(acc0)), args.repeats) / args.steps * 1e6

                ref = looped(lambda a: depthwise_step_reference(xp, a, k, bias, valid))
                row = {"shape": name, "batch": bsz, "dtype": dtype, "xla_us": time_it(ref)}
                y_ref, acc_ref = jax.jit(depthwise_step_reference)(xp, acc0, k, bias, valid)
                row["pallas"] = []
                for budget, max_tc, warps in configs:
                    entry = {"budget": budget, "max_tc": max_tc, "num_warps": warps}
                    try:
                        def call(a, budget=budget, max_tc=max_tc, warps=warps):
                            return depthwise_step(xp, a, k, bias, valid, budget=budget, max_tc=max_tc,
                                                  num_warps=warps)
                        y, acc = jax.jit(call)(jnp.copy(acc0))
                        scale = lambda r: max(float(jnp.max(jnp.abs(r.astype(jnp.float32)))), 1e-30)  # noqa: E731
                        entry["max_rel_y"] = float(jnp.max(jnp.abs((y - y_ref).astype(jnp.float32)))) / scale(y_ref)
                        entry["max_rel_acc"] = float(jnp.max(jnp.abs((acc - acc_ref).astype(jnp.float32)))) / scale(acc_ref)
                        entry["us"] = time_it(looped(call))
                    except Exception as e:  # a configuration Triton rejects: report it, go on
                        entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    row["pallas"].append(entry)
                ok = [e for e in row["pallas"] if "us" in e]
                best = min(ok, key=lambda e: e["us"]) if ok else None
                row["best"] = best
                rows.append(row)
                print(f"{name:<22} b{bsz:<3} {dtype}: XLA {row['xla_us']:8.1f} µs | pallas best "
                      + (f"{best['us']:8.1f} µs ({best['budget']},{best['max_tc']},{best['num_warps']}) "
                         f"rel err y {best['max_rel_y']:.1e} acc {best['max_rel_acc']:.1e}" if best else "none")
                      + "".join(f" | {e['error'][:80]}" for e in row["pallas"] if "error" in e)[:300], flush=True)
                with open(args.out, "w") as f:
                    json.dump({"env": {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                       "command": "python -m benchmarks.pallas_depthwise " + " ".join(sys.argv[1:])},
                               "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    t0 = time.time()
    raise SystemExit(main())
