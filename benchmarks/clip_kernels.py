"""Where a clip forward of X3D spends its time: depthwise variants side by side, timed and traced.

    python -m benchmarks.clip_kernels --models x3d_s,x3d_m,x3d_l --dtype fp32,bf16 \\
        --variants "lax:clip_depthwise_impl=lax;shift:clip_depthwise_impl=shift;pallas:clip_depthwise_impl=pallas" \
        --out results/clip_kernels.json

For each model (paper batch: X3D-S/M 64, X3D-L 32, or ``--batch``), dtype and variant (model
options: ``clip_depthwise_impl`` ``lax`` grouped convolutions, ``shift`` shift-and-add, ``pallas``
the Pallas clip kernel, the default on NVIDIA GPUs) with random weights, BN folded, params and
clip in the dtype:

* everywhere (CPU too, at a small ``--image-size``): the optimised HLO's op counts outside fused
  computations (:func:`benchmarks.step_kernels.hlo_counts`) and every library convolution's
  layout (``dim_labels``: ``b012f`` is channels-last, ``bf012`` channels-first, so the transposes
  XLA adds around it), feature-group count and target;
* the scores' max difference (relative to the largest score) and top-1 agreement against the first
  variant of the same model and dtype (same weights and clip);
* on a GPU (or with ``--timing``): compile seconds, clips/s (median of ``--repeats`` calls after
  a warm-up), and a ``jax.profiler`` trace of ``--trace-calls`` calls parsed into kernels and GPU
  µs per call, the time per layer kind and per layer (:func:`benchmarks.step_kernels.parse_trace`),
  and the time per kernel name (the cuDNN/cuBLAS kernel a convolution chose, transposes, fusions).

The JSON (rewritten after every row) records device, versions, date and the command.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import tempfile
import time

from .step_kernels import environment as step_environment, hlo_counts, load_trace, parse_trace

PAPER_BATCH = {"x3d_xs": 64, "x3d_s": 64, "x3d_m": 64, "x3d_l": 32}
_LAYOUT = re.compile(r"dim_labels=([\w]+_[\w]+->[\w]+)")
_GROUPS = re.compile(r"feature_group_count=(\d+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def conv_layouts(text: str) -> dict:
    """Library convolutions of an optimised HLO module: count per ``(target, dim_labels, grouped)``,
    and how many are depthwise (``feature_group_count`` > 1) or dense."""
    out = collections.Counter()
    for line in text.splitlines():
        if " convolution(" not in line and "custom-call(" not in line:
            continue
        t = _TARGET.search(line)
        if "custom-call(" in line and not (t and "conv" in t.group(1).lower()):
            continue
        lab = _LAYOUT.search(line)
        g = _GROUPS.search(line)
        grouped = "grouped" if g and int(g.group(1)) > 1 else "dense"
        out[f"{t.group(1) if t else 'convolution'} {lab.group(1) if lab else '?'} {grouped}"] += 1
    return dict(out.most_common())


def kernel_names(trace_dir: str, calls: int, top: int = 25) -> list[dict]:
    """GPU kernels of a ``jax.profiler`` trace grouped by kernel name: calls and µs per forward."""
    loaded = load_trace(trace_dir)
    if loaded is None:
        return []
    _, events, pname, tname = loaded
    agg = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("ph") != "X" or "gpu" not in pname.get(e.get("pid"), "").lower():
            continue
        if not tname.get((e.get("pid"), e.get("tid")), "").startswith("Stream"):
            continue
        name = re.sub(r"_\d+$", "", e["name"])  # loop_fusion_12 -> loop_fusion
        agg[name][0] += 1
        agg[name][1] += float(e.get("dur", 0))
    rows = sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]
    return [{"kernel": k, "per_call": n / calls, "us_per_call": us / calls} for k, (n, us) in rows]


def environment() -> dict:
    """Device, versions, date and the command."""
    return step_environment("benchmarks.clip_kernels")


def measure(model_name: str, batch: int, dtype: str, *, options: dict, label: str, image_size: int | None,
            repeats: int, trace_calls: int, timing: bool | None = None, dump_dir: str | None = None) -> dict:
    """One row: HLO counts and conv layouts; on a GPU (or ``timing``) clips/s and the traced kernels."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import co3d_jax
    from co3d_jax.benchmark import cast_tree

    dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    opts = dict(options, **({"image_size": image_size} if image_size else {}))
    model = co3d_jax.create_model(model_name, **opts)
    model, params = model.fold_batchnorm(model.init(jax.random.key(0)))
    params = cast_tree(params, dt)
    clip = jax.random.normal(jax.random.key(1), (batch, model.clip_length, *model.frame_shape), dt)
    res = {"label": label, "model": model_name, "options": options, "batch": batch, "dtype": dtype,
           "image_size": model.image_size, "clip_length": model.clip_length}
    t0 = time.perf_counter()
    fn = jax.jit(model.forward).lower(params, clip).compile()
    res["compile_s"] = time.perf_counter() - t0
    text = fn.as_text()
    counts = hlo_counts(text)
    op_names = counts.pop("_op_names")
    res["hlo"] = counts
    res["conv_layouts"] = conv_layouts(text)
    if dump_dir:
        with open(os.path.join(dump_dir, f"hlo_clip_{model_name}_{label}_{dtype}.txt"), "w") as f:
            f.write(text)
    res["_scores"] = np.asarray(fn(params, clip), np.float32)  # for the agreement between variants
    if not (jax.devices()[0].platform != "cpu" if timing is None else timing):
        return res
    jax.block_until_ready(fn(params, clip))
    jax.block_until_ready(fn(params, clip))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, clip))
        ts.append(time.perf_counter() - t0)
    sec = float(np.median(ts))
    res["seconds_per_batch"] = sec
    res["clips_per_s"] = batch / sec
    if trace_calls <= 0:  # timing only (--trace-calls 0)
        return res
    tdir = tempfile.mkdtemp(prefix="clip_kernels_")
    with jax.profiler.trace(tdir, create_perfetto_trace=True):
        for _ in range(trace_calls):
            jax.block_until_ready(fn(params, clip))
    t = parse_trace(tdir, trace_calls, op_names)
    t.pop("sample_kernel_events", None)
    t.pop("sample_xla_op_events", None)
    res["trace_per_call"] = t
    res["kernels_by_name"] = kernel_names(tdir, trace_calls)
    return res


def agreement(first: tuple, scores) -> dict:
    """How a variant's scores compare with the first variant's of the same model and dtype (same
    weights and clip): ``vs``, the max absolute difference relative to the largest score, and the
    fraction of clips whose top-1 class agrees."""
    import numpy as np
    label, ref = first
    return {"vs": label, "max_rel_diff": float(np.max(np.abs(scores - ref)) / max(float(np.max(np.abs(ref))), 1e-30)),
            "top1_agreement": float(np.mean(np.argmax(scores, -1) == np.argmax(ref, -1)))}


def summary(r: dict) -> str:
    """One line per row."""
    h = r["hlo"]
    line = (f"{r['model']:<6} {r['label']:<6} {r['dtype']} b{r['batch']} (vs {r['vs']}: max rel diff "
            f"{r['max_rel_diff']:.1e}, top-1 {r['top1_agreement']:.0%}): {h['kernel_like_ops']} kernel-like ops, "
            f"{h['convolutions']} convolutions, custom calls {h['custom_calls']}, {h['copies']} copies; convs "
            f"{r['conv_layouts']}")
    if "clips_per_s" in r:
        line += f" | {r['clips_per_s']:,.1f} clips/s, compile {r['compile_s']:.0f} s"
    if "trace_per_call" in r:
        t = r["trace_per_call"]
        top = ", ".join(f"{k['kernel'][:40]} {k['us_per_call']:.0f}" for k in r["kernels_by_name"][:4])
        line += (f" | trace {t.get('kernels_per_step', 0):.0f} kernels, {t.get('gpu_us_per_step', 0):,.0f} µs/call | top: {top}")
    return line


def layer_table(rows: list[dict], top: int = 12) -> str:
    """Markdown: GPU µs per clip by layer kind (the ``top`` kinds by the rows' largest time), one
    column per traced row (model/label/dtype), plus kernels and total µs per clip."""
    rows = [r for r in rows if "trace_per_call" in r]
    if not rows:
        return ""
    cols = [f"{r['model']}/{r['label']}/{r['dtype']}" for r in rows]
    per = [{k: v["us_per_step"] / r["batch"] for k, v in r["trace_per_call"].get("by_layer_kind", {}).items()}
           for r in rows]
    kinds = sorted({k for p in per for k in p}, key=lambda k: -max(p.get(k, 0.0) for p in per))[:top]
    lines = ["| layer kind (µs per clip) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(f"{p.get(k, 0.0):.1f}" for p in per) + " |" for k in kinds]
    lines.append("| all (GPU µs per clip) | " + " | ".join(
        f"{r['trace_per_call'].get('gpu_us_per_step', 0.0) / r['batch']:.1f}" for r in rows) + " |")
    lines.append("| kernels per call | " + " | ".join(
        f"{r['trace_per_call'].get('kernels_per_step', 0.0):.0f}" for r in rows) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.clip_kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="x3d_s,x3d_m,x3d_l")
    ap.add_argument("--dtype", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--variants", default="lax:clip_depthwise_impl=lax;shift:clip_depthwise_impl=shift;"
                    "pallas:clip_depthwise_impl=pallas",
                    help="';'-separated 'label:key=value,...' model options (values parsed as JSON when they can be)")
    ap.add_argument("--only", default="", help="';'-separated model/label/dtype triples to run (default: all), "
                    "e.g. 'x3d_l/lax/fp32;x3d_m/lax/fp32'")
    ap.add_argument("--batch", type=int, default=None, help="override the paper batch sizes")
    ap.add_argument("--image-size", type=int, default=None, help="smaller frames for a quick CPU run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trace-calls", type=int, default=2, help="calls traced with jax.profiler (0: timing only)")
    ap.add_argument("--timing", action="store_true", help="time and trace off GPUs too (tests the GPU path)")
    ap.add_argument("--dump", default=None, help="folder for the optimised HLO texts")
    ap.add_argument("--out", default="results/clip_kernels.json")
    ap.add_argument("--table", default=None, help="only print the layer table of an earlier results JSON")
    args = ap.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(layer_table(json.load(f)["rows"]))
        return 0

    variants = []
    for v in filter(None, args.variants.split(";")):
        label, _, kvs = v.partition(":")
        opts = {}
        for kv in filter(None, kvs.split(",")):
            k, _, val = kv.partition("=")
            try:
                opts[k] = json.loads(val)
            except json.JSONDecodeError:
                opts[k] = val
        variants.append((label, opts))
    only = set(filter(None, args.only.split(";")))
    first = {}  # (model, dtype) -> (label, scores) of the first variant run
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    env = environment()
    rows = []
    for name in args.models.split(","):
        for dtype in args.dtype.split(","):
            for label, opts in variants:
                if only and f"{name}/{label}/{dtype}" not in only:
                    continue
                batch = args.batch or PAPER_BATCH.get(name, 32)
                try:
                    r = measure(name, batch, dtype, options=opts, label=label, image_size=args.image_size,
                                repeats=args.repeats, trace_calls=args.trace_calls,
                                timing=True if args.timing else None, dump_dir=args.dump)
                    r.update(agreement(first.setdefault((name, dtype), (label, r["_scores"])), r.pop("_scores")))
                    print(summary(r), flush=True)
                except Exception as e:  # a variant that fails: recorded, the others still run
                    r = {"label": label, "model": name, "options": opts, "batch": batch, "dtype": dtype,
                         "error": f"{type(e).__name__}: {str(e)[:2000]}"}
                    print(f"{name} {label} {dtype}: FAILED {r['error'][:300]}", flush=True)
                rows.append(r)
                if os.path.dirname(args.out):
                    os.makedirs(os.path.dirname(args.out), exist_ok=True)
                with open(args.out, "w") as f:  # after every row: a cut-off run keeps what it measured
                    json.dump({"env": env, "rows": rows}, f, indent=1)
    print(layer_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
