"""Where does a CoX3D step spend its time? Per-stage and per-variant timings (GPU work notes).

    python -m benchmarks.perf_probe --model cox3d_s_64 --batch 64 --out results/perf_probe.json

Times (median of repeats, one jitted ``lax.scan`` over ``--chunk`` frames, BN folded):
prefixes of the network (stem, +s2, +s3, ...) so that differences give each stage's cost; the
step with state gating disabled (to price the ``where`` selects); grouped vs shift-and-add
depthwise; and at batch 1 the per-call latency with params passed as arguments vs closed over,
against the per-frame time inside a scan (dispatch overhead).
"""

from __future__ import annotations

import argparse
import json
from unittest import mock



def _time(fn, repeats):
    """Median seconds of ``fn()`` after two warm-up calls."""
    import jax

    from co3d_jax.benchmark import median_time
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
    return median_time(lambda: jax.block_until_ready(fn()), repeats)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cox3d_s_64")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--out", default="results/perf_probe.json")
    ap.add_argument("--quick-impl", action="store_true", help="only the default depthwise algorithm")
    args = ap.parse_args(argv)


    import jax
    import jax.numpy as jnp

    import co3d_jax
    import co3d_jax.layers.base as base
    from co3d_jax.layers import Sequential
    from co3d_jax.stream import scan_stream
    from co3d_jax.benchmark import cast_tree

    dt = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    res = {"device": jax.devices()[0].device_kind, "model": args.model, "batch": args.batch, "dtype": args.dtype}

    def stream_time(model, params, batch, chunk, net=None):
        net = net or model.net
        x = jax.random.normal(jax.random.key(1), (batch, chunk, *model.frame_shape), dt)
        st = net.init_state(batch, model.frame_shape, dt)
        f = jax.jit(lambda p, s, x: scan_stream(net.step, p, s, x)[1].y)
        return _time(lambda: f(params, st, x), args.repeats)

    ap_impls = ("auto",) if args.quick_impl else ("auto", "lax")
    for impl in ap_impls:
        model = co3d_jax.create_model(args.model, depthwise_impl=impl)
        model, params = model.fold_batchnorm(model.init(jax.random.key(0)))
        params = cast_tree(params, dt)
        names = [n for n, _ in model.net.children]
        prefix = {}
        for k in range(1, len(names) + 1):
            sub = Sequential(model.net.children[:k])
            p = {n: params[n] for n in names[:k] if n in params}
            t = stream_time(model, p, args.batch, args.chunk, sub)
            prefix["+".join(names[:k]) if k < 3 else f"..{names[k - 1]}"] = t / args.chunk * 1e3
        res[f"prefix_ms_per_step[{impl}]"] = prefix
        print(impl, json.dumps(prefix), flush=True)
        if impl == "auto":
            with mock.patch.object(base, "gate", lambda valid, new, old: new):
                import co3d_jax.layers.conv as conv_mod
                import co3d_jax.layers.pool as pool_mod
                import co3d_jax.layers.simple as simple_mod
                with mock.patch.object(conv_mod, "gate", lambda v, n, o: n), \
                        mock.patch.object(pool_mod, "gate", lambda v, n, o: n), \
                        mock.patch.object(simple_mod, "gate", lambda v, n, o: n):
                    t = stream_time(model, params, args.batch, args.chunk)
            res["no_gate_ms_per_step"] = t / args.chunk * 1e3
            print("no gate", res["no_gate_ms_per_step"], flush=True)
            # batch-1 latency variants
            m1 = model
            x1 = jax.random.normal(jax.random.key(2), (1, *m1.frame_shape), dt)
            st = m1.init_state(1, dt)
            step_args = jax.jit(m1.step)
            res["b1_call_params_as_args_ms"] = _time(lambda: step_args(params, st, x1)[1].scores, 50) * 1e3
            step_closed = jax.jit(lambda s, x: m1.step(params, s, x))
            res["b1_call_params_closed_ms"] = _time(lambda: step_closed(st, x1)[1].scores, 50) * 1e3
            res["b1_in_scan_ms_per_step"] = stream_time(m1, params, 1, 32) / 32 * 1e3
            from co3d_jax.live import LiveStep
            live = LiveStep(m1, params, 1, dt)
            holder = {"s": live.init()}

            def live_call():
                holder["s"], out = live(holder["s"], x1)
                return out.scores
            res["b1_live_packed_ms"] = _time(live_call, 100) * 1e3
            print({k: v for k, v in res.items() if k.startswith("b1")}, flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
