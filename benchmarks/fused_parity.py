"""Exactness of the fused/alternative step paths against the XLA default on the current device.

    python -m benchmarks.fused_parity --model cox3d_s_64 --variants "pd:dense_impl=shift,depthwise_impl=pallas"

For each variant (model options): fp32 at highest matmul precision, ``--batch`` streams of
``--frames`` random frames with validity gaps, a reset of stream 1 in the middle and the stream fed
in two chunks: the largest relative difference of the scores at every valid frame (relative to that
frame's largest score), validity identical, and the final state's largest relative difference.
In bf16 (params, state, frames): top-1 agreement of the variant with the default, and of each with
fp32. BN folded, random weights.

``--bf16`` also runs the default and every variant with ``head_activation="identity"`` (logits) in
fp32 and bf16 over the same frames and reports, over every valid frame (:func:`bf16_agreement`): the
logits' top-1 agreement and max abs difference, the fp32 top-1/top-2 logit margin against that
difference, the same for the logits less their fp32 mean over the frames (the frame-dependent
part), and the softmax scores as the model outputs them in bf16 (``jax.nn.softmax`` of the bf16
logits, in bf16), once with the random head as initialised and once with the projection scaled by a
power of 2 (exact in bf16) so the fp32 logits spread over ``--spread-std`` across classes. Random
initialisation gives near-flat logits (std ~0.05 over 400 classes), so its softmax scores sit near
1/400 where one bf16 step (2^-16 ~ 1.5e-5) is as large as the gap between the top two scores: ties
and flips there come from rounding the output, not from the network's bf16 arithmetic.
``--bf16-only`` skips the fp32 parity part.

The stream runs as a ``lax.scan`` of steps unless a variant sets ``bulk=true`` (``Model.stream``'s
bulk steps). ``--chunk N`` feeds it in ``N``-frame calls instead of two halves, with the validity
gaps only in every third chunk and the reset at the chunk boundary nearest the middle, so that the
other chunks past the warm-up run as bulk steps; each row counts those chunks (``bulk_chunks``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys


def _top2_margin(a):
    import numpy as np
    srt = np.sort(a, -1)
    return srt[:, -1] - srt[:, -2]


def softmax_agreement(logits32, logits16) -> dict:
    """Top-1 agreement, max abs difference and tied-top fraction of softmax scores: fp32 scores from
    the fp32 logits, bf16 scores as the model's bf16 head computes them (softmax of bf16 logits in bf16)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    s32 = np.asarray(jax.nn.softmax(jnp.asarray(logits32, jnp.float32), axis=-1))
    s16 = np.asarray(jax.nn.softmax(jnp.asarray(logits16).astype(jnp.bfloat16), axis=-1).astype(jnp.float32))
    return {"top1_agreement": float((s32.argmax(-1) == s16.argmax(-1)).mean()),
            "max_abs_diff": float(np.abs(s32 - s16).max()),
            "bf16_tied_top_fraction": float(np.mean((s16 == s16.max(-1, keepdims=True)).sum(-1) > 1)),
            "fp32_top2_margin_median": float(np.median(_top2_margin(s32))),
            "fp32_top_score_median": float(np.median(s32.max(-1)))}


def logit_agreement(a, b) -> dict:
    """Top-1 agreement of ``(N, K)`` logits ``b`` with ``a``: max abs difference, the fp32 logits' std
    over classes (median over frames), how many distinct classes win in ``a``, the top-1/top-2 margin's
    quantiles, the frames whose margin exceeds twice the max abs difference (there the top-1 cannot
    flip) and the agreement on the others."""
    import numpy as np
    agree = a.argmax(-1) == b.argmax(-1)
    err = float(np.abs(a - b).max())
    margin = _top2_margin(a)
    decided = margin > 2 * err
    return {"top1_agreement": float(agree.mean()), "max_abs_diff": err, "fp32_std_median": float(np.median(a.std(-1))),
            "fp32_distinct_top1": int(len(set(a.argmax(-1).tolist()))),
            "fp32_top2_margin_quantiles": {q: float(np.quantile(margin, p)) for q, p in
                                           (("min", 0.0), ("p10", 0.1), ("p50", 0.5))},
            "frames_margin_gt_2x_max_diff": int(decided.sum()),
            "top1_agreement_on_the_rest": float(agree[~decided].mean()) if (~decided).any() else None}


def bf16_agreement(logits32, logits16, spread_std: float = 2.0) -> dict:
    """bf16 against fp32 over ``(N, K)`` logits of the valid frames (``logits16`` as computed in bf16).

    * ``logits``: :func:`logit_agreement` (the network's own bf16 arithmetic);
    * ``logits_centered``: the same after subtracting the fp32 logits' mean over the frames from both
      (a head whose bias is ``b - mean``): random weights on noise frames give nearly the same logits at
      every frame (one class wins everywhere), and this keeps only the frame-dependent part, where bf16
      error is largest relative to what it must decide;
    * ``softmax``: :func:`softmax_agreement` of the raw logits (the model's bf16 output, random head);
    * ``softmax_spread``: the same with both logits multiplied by ``scale``, the power of 2 nearest to
      ``spread_std`` / the fp32 logits' std (the projection's kernel and bias scaled by it; exact in bf16)."""
    import numpy as np
    a = np.asarray(logits32, np.float32)
    b = np.asarray(logits16, np.float32)
    raw = logit_agreement(a, b)
    mean = a.mean(0, keepdims=True)
    std = raw["fp32_std_median"]
    scale = float(2.0 ** round(np.log2(spread_std / max(std, 1e-30))))
    return {
        "valid_frames": int(a.shape[0]), "logits": raw, "logits_centered": logit_agreement(a - mean, b - mean),
        "softmax": softmax_agreement(a, b),
        "softmax_spread": {"scale": scale, "fp32_std_median": std * scale, **softmax_agreement(a * scale, b * scale)},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fused_parity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cox3d_s_64")
    ap.add_argument("--variants", default="pd:dense_impl=shift,depthwise_impl=pallas",
                    help="';'-separated 'label:key=value,...' model options (values parsed as JSON when they can be)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--bf16", action="store_true", help="also the bf16 top-1 agreement (and bf16_agreement rows)")
    ap.add_argument("--bf16-only", action="store_true", help="only the bf16_agreement rows (no fp32 parity)")
    ap.add_argument("--spread-std", type=float, default=2.0, help="target fp32 logit std of the spread head")
    ap.add_argument("--chunk", type=int, default=None,
                    help="frames per stream call (default: two halves); gaps only in every third chunk")
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

    chunk = args.chunk or half
    bounds = list(range(0, t, chunk)) + [t]
    reset_at = min(bounds[1:-1], key=lambda x: abs(x - half)) if len(bounds) > 2 else t
    present = np.array(jax.random.uniform(jax.random.key(2), (b, t)) > 0.15)  # False: a missing frame
    if args.chunk:
        present[:, [i for i in range(t) if (i // chunk) % 3 != 1]] = True
    counts = {}

    def run(opts, dtype, head=None):
        opts = dict(opts)
        bulk = bool(opts.pop("bulk", False))
        model = co3d_jax.create_model(args.model, **base, **opts, **({"head_activation": head} if head else {}))
        model, params = model.fold_batchnorm(model.init(jax.random.key(0)))
        params = cast_tree(params, dtype)
        frames = jax.random.normal(jax.random.key(1), (b, t, *model.frame_shape), dtype)
        f = model.stream_fn(bulk=bulk)
        s, outs, n_bulk = model.init_state(b, dtype), [], 0
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if lo == reset_at:
                s = model.reset(s, jnp.arange(b) == 1)
            v = jnp.asarray(present[:, lo:hi])
            n_bulk += bool(bulk and present[:, lo:hi].all() and jnp.all(jnp.asarray(model.net.steady(s))))
            s, o = f(params, s, frames[:, lo:hi], v)
            outs.append(o)
        counts["bulk_chunks"] = n_bulk
        scores = np.concatenate([np.asarray(o.scores, np.float32) for o in outs], 1)
        return s, scores, np.concatenate([np.asarray(o.valid) for o in outs], 1)

    env = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python -m benchmarks.fused_parity " + " ".join(sys.argv[1:])}
    rows = []

    def save():
        with open(args.out, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)

    if args.bf16 or args.bf16_only:
        for label, opts in variants:
            row = {"variant": label, "kind": "bf16_agreement", "options": opts, "batch": b, "frames": t,
                   "spread_std": args.spread_std}
            try:
                _, l32, v32 = run(opts, jnp.float32, "identity")
                _, l16, v16 = run(opts, jnp.bfloat16, "identity")
                row["valid_identical"] = bool((v32 == v16).all())
                row.update(bf16_agreement(l32[v32], l16[v32], args.spread_std))
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
            save()
        if args.bf16_only:
            return 0
    ref_state, ref, ref_valid = run({}, jnp.float32)
    ref16 = run({}, jnp.bfloat16)[1] if args.bf16 else None
    for label, opts in variants[1:]:
        row = {"variant": label, "options": opts, "batch": b, "frames": t}
        try:
            s, y, v = run(opts, jnp.float32)
            row["chunk"], row["bulk_chunks"] = chunk, counts["bulk_chunks"]
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
        save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
