"""Exactness of the fused/alternative step paths against the XLA default on the current device.

    python -m benchmarks.fused_parity --model cox3d_s_64 --variants "pd:dense_impl=shift,depthwise_impl=pallas"

For each variant (model options): fp32 at highest matmul precision, ``--batch`` streams of
``--frames`` random frames with validity gaps, a reset of stream 1 in the middle and the stream fed
in two chunks: the largest relative difference of the scores at every valid frame (relative to that
frame's largest score), validity identical, and the final state's largest relative difference.
In bf16 (params, state, frames): top-1 agreement of the variant with the default, and of each with
fp32. BN folded, random weights.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fused_parity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cox3d_s_64")
    ap.add_argument("--variants", default="pd:dense_impl=shift,depthwise_impl=pallas",
                    help="';'-separated 'label:key=value,...' model options (values parsed as JSON when they can be)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--bf16", action="store_true", help="also the bf16 top-1 agreement")
    ap.add_argument("--out", default="results/fused_parity.json")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    import co3d_jax
    from co3d_jax.benchmark import cast_tree

    jax.config.update("jax_default_matmul_precision", "highest")
    variants = [("default", {})]
    for v in filter(None, args.variants.split(";")):
        label, _, kvs = v.partition(":")
        opts = {}
        for kv in filter(None, kvs.split(",")):
            k, _, val = kv.partition("=")
            try:  # JSON values (false, 2) as in step_kernels; anything else is a string
                opts[k] = json.loads(val)
            except json.JSONDecodeError:
                opts[k] = val
        variants.append((label, opts))
    base = {"image_size": args.image_size} if args.image_size else {}
    t, b = args.frames, args.batch
    half = t // 2

    def run(opts, dtype):
        model = co3d_jax.create_model(args.model, **base, **opts)
        model, params = model.fold_batchnorm(model.init(jax.random.key(0)))
        params = cast_tree(params, dtype)
        frames = jax.random.normal(jax.random.key(1), (b, t, *model.frame_shape), dtype)
        valid = np.asarray(jax.random.uniform(jax.random.key(2), (b, t)) > 0.15)
        f = model.stream_fn()
        s, o1 = f(params, model.init_state(b, dtype), frames[:, :half], jnp.asarray(valid[:, :half]))
        s = model.reset(s, jnp.arange(b) == 1)
        s, o2 = f(params, s, frames[:, half:], jnp.asarray(valid[:, half:]))
        scores = np.concatenate([np.asarray(o1.scores, np.float32), np.asarray(o2.scores, np.float32)], 1)
        return s, scores, np.concatenate([np.asarray(o1.valid), np.asarray(o2.valid)], 1)

    env = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python -m benchmarks.fused_parity " + " ".join(sys.argv[1:])}
    rows = []
    ref_state, ref, ref_valid = run({}, jnp.float32)
    ref16 = run({}, jnp.bfloat16)[1] if args.bf16 else None
    for label, opts in variants[1:]:
        row = {"variant": label, "options": opts, "batch": b, "frames": t}
        try:
            s, y, v = run(opts, jnp.float32)
            row["valid_identical"] = bool((v == ref_valid).all())
            m = ref_valid
            per_frame = np.max(np.abs(y - ref), -1) / np.maximum(np.max(np.abs(ref), -1), 1e-30)
            row["valid_frames"] = int(m.sum())
            row["max_rel_score_diff_fp32"] = float(per_frame[m].max()) if m.any() else None
            row["max_rel_state_diff_fp32"] = max(
                float(jnp.max(jnp.abs(a.astype(jnp.float32) - c.astype(jnp.float32))))
                / max(float(jnp.max(jnp.abs(c.astype(jnp.float32)))), 1e-30)
                for a, c in zip(jax.tree.leaves(s), jax.tree.leaves(ref_state)) if a.size)
            if args.bf16:
                y16 = run(opts, jnp.bfloat16)[1]
                top = lambda a: a.argmax(-1)[m]  # noqa: E731
                row["bf16_top1_agreement_with_default_bf16"] = float((top(y16) == top(ref16)).mean())
                row["bf16_top1_agreement_with_fp32"] = float((top(y16) == top(ref)).mean())
                row["default_bf16_top1_agreement_with_fp32"] = float((top(ref16) == top(ref)).mean())
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
