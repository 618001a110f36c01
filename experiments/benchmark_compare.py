"""Side-by-side benchmark: JAX (this package) vs the PyTorch reference on the same device.

    python -m experiments.benchmark_compare --out results/benchmark_h100

Runs :mod:`experiments.benchmark_torch` then :mod:`experiments.benchmark_jax` in separate
processes (so neither framework's allocator sees the other), merges both into
``OUT.json`` and writes ``OUT.md``: a table per model and dtype of JAX's default (fused) and XLA
steps and PyTorch's, the JAX/PyTorch ratio, the same for bulk steps (a whole chunk per layer:
``Model.stream``'s default, and continual-inference's ``forward_steps``), the project's targets on
one H200 with what was met or by how much it was missed (by the step and by bulk steps), and the
step rows' fraction of the memory roofline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from co3d_jax.extras import cli_main, require
from experiments._cli import atomic_write

# Issue 19's targets on one H200: frames/s (stream, at the paper batches), ms per batch-1 LiveStep
# call (latency), and the JAX/PyTorch clips/s ratio in fp32 (clip).
TARGETS = {
    ("stream", "cox3d_s_64", "fp32"): 35000, ("stream", "cox3d_s_64", "bf16"): 50000,
    ("stream", "cox3d_m_64", "fp32"): 20000, ("stream", "cox3d_m_64", "bf16"): 30000,
    ("stream", "cox3d_l_64", "fp32"): 5500, ("stream", "cox3d_l_64", "bf16"): 8000,
    ("latency", "cox3d_s_64", "fp32"): 0.5, ("latency", "cox3d_s_64", "bf16"): 0.5,
    ("clip", "x3d_s", "fp32"): 2.0, ("clip", "x3d_m", "fp32"): 2.0, ("clip", "x3d_l", "fp32"): 1.2,
}
UNITS = {"stream": "frames/s", "clip": "clips/s", "latency": "ms/call"}


def _run(module: str, out: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", module, "--out", out, *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(out) as f:
        return json.load(f)


def _key(r):
    return (r["kind"], r["model"], r["dtype"])


def _value(r):
    return {"stream": r.get("frames_per_s"), "clip": r.get("clips_per_s"), "latency": r.get("median_ms")}[r["kind"]]


def _impl(r) -> str | None:
    """``fused`` (the model's default step), ``bulk`` (its bulk steps), ``xla`` (the step with
    ``depthwise_impl=auto, dense_impl=auto``), or None (another variant: listed below the table)."""
    if r.get("unroll", 1) != 1 or r.get("depthwise", "auto") != "auto":
        return None
    opts = r.get("options") or {}
    if not opts:
        return "bulk" if r.get("bulk") else "fused"
    return "xla" if opts == {"depthwise_impl": "auto", "dense_impl": "auto"} and not r.get("bulk") else None


def target_status(kind: str, value: float | None, target: float | None, ratio: float | None) -> str:
    """"met" or by how much ``value`` misses ``target``: throughput short of it in %, a latency as a
    multiple of it, a clip ratio (``ratio`` = JAX/PyTorch) short of it in %; "" without a target."""
    if target is None:
        return ""
    if kind == "latency":
        return "" if value is None else ("met" if value <= target else f"missed: {value / target:.2f}x the target")
    got = ratio if kind == "clip" else value
    if got is None:
        return "not measured"
    return "met" if got >= target else f"missed by {100 * (1 - got / target):.0f}%"


def memory_roofline_fraction(model_name: str, dtype: str, fps: float, device: str) -> float | None:
    """``fps`` over the memory roofline of a continual step (state read and written once plus the
    frame, :func:`co3d_jax.benchmark.min_bytes`, at the device's HBM bandwidth); None off a known GPU."""
    import co3d_jax
    from co3d_jax.benchmark import hbm_bytes_per_s, min_bytes
    hbm = hbm_bytes_per_s(device)
    if not hbm:
        return None
    return fps * min_bytes(co3d_jax.create_model(model_name), dtype)[1] / hbm


def table(jax_res: dict, torch_res: dict) -> str:
    rows = {}
    for r in jax_res["results"]:
        impl = _impl(r) if "dtype" in r and r.get("kind") in UNITS else None
        if impl:
            rows.setdefault(_key(r), {})[impl] = r
    ref = {_key(r): r for r in torch_res["results"] if "dtype" in r and not r.get("bulk")}
    ref_bulk = {_key(r): r for r in torch_res["results"] if "dtype" in r and r.get("bulk")}
    je, te = jax_res["env"], torch_res["env"]
    lines = [f"JAX: {je['device']} · jax {je['jax']} · {je['date']} · `{je.get('command', '')}`",
             f"PyTorch: {te['device']} · torch {te['torch']} · continual-inference {te['continual_inference']} · "
             f"pytorchvideo {te.get('pytorchvideo', '?')} · {te['date']} · `{te.get('command', '')}`", "",
             "JAX fused: the models' defaults (X3D `depthwise_impl`/`dense_impl=\"fused\"`: the Pallas depthwise "
             "step and clip kernels on NVIDIA GPUs); JAX XLA: `depthwise_impl=auto, dense_impl=auto`; stream rows "
             "step frame by frame (JAX: a `lax.scan` of the step; PyTorch: `forward_step`). Bulk: each chunk as bulk "
             "steps once past the warm-up (JAX: `Model.stream`'s default; PyTorch: `forward_steps`), the same "
             "outputs. Targets: the project's on one H200 "
             "(stream frames/s, latency ms per batch-1 `LiveStep` call, clip the JAX/PyTorch ratio in fp32); "
             "status: by the fused step, and by bulk steps. "
             "Roofline: JAX fused step frames/s as a fraction of the memory roofline (state read and written once "
             "plus the frame, `benchmarks/roofline.py`; the goal: >= 35% for the CoX3D-S step).", "",
             "| kind | model | dtype | batch | JAX fused | JAX XLA | PyTorch | JAX/PyTorch | target | status | roofline "
             "| JAX bulk | PyTorch bulk | bulk JAX/PyTorch | bulk status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, impls in rows.items():
        r = impls.get("fused") or impls.get("xla") or impls.get("bulk")
        j = _value(impls["fused"]) if "fused" in impls else None
        x = _value(impls["xla"]) if "xla" in impls else None
        t = ref.get(k)
        p = _value(t) if t else None
        ratio = None if p is None or j is None else (p / j if k[0] == "latency" else j / p)
        ratio_s = "" if ratio is None else (f"{ratio:.1f}x faster" if k[0] == "latency" else f"{ratio:.2f}x")
        tgt = TARGETS.get(k)
        tgt_s = "" if tgt is None else (f"{tgt:g}x PyTorch" if k[0] == "clip" else f"{tgt:,g} {UNITS[k[0]]}")
        status = target_status(k[0], j, tgt, None if k[0] != "clip" else (j / p if p and j else None))
        roof = ""
        if k[0] == "stream" and j is not None:
            frac = memory_roofline_fraction(k[1], k[2], j, je["device"])
            roof = "" if frac is None else f"{100 * frac:.1f}%"
        fmt = (lambda v: "" if v is None else (f"{v:.3f}" if k[0] == "latency" else f"{v:,.0f}"))
        jb = _value(impls["bulk"]) if "bulk" in impls else None
        pb = _value(ref_bulk[k]) if k in ref_bulk else None
        bulk_ratio = "" if jb is None or pb is None else f"{jb / pb:.2f}x"
        bulk_status = "" if jb is None else target_status(k[0], jb, tgt, None)
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {r['batch']} | {fmt(j)} | {fmt(x)} | {fmt(p)} | {ratio_s} | "
                     f"{tgt_s} | {status} | {roof} | {fmt(jb)} | {fmt(pb)} | {bulk_ratio} | {bulk_status} |")
    extra = [r for r in jax_res["results"] if not ("dtype" in r and r.get("kind") in UNITS and _impl(r))]
    if extra:
        lines += ["", "Other JAX measurements:", ""] + [f"- `{json.dumps(r)}`" for r in extra]
    return "\n".join(lines)


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.benchmark_compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/benchmark")
    ap.add_argument("--jax-args", default="", help="extra arguments for benchmark_jax (quoted)")
    ap.add_argument("--torch-args", default="", help="extra arguments for benchmark_torch (quoted)")
    ap.add_argument("--table-only", action="store_true", help="only rebuild OUT.md from OUT_jax.json and OUT_torch.json")
    args = ap.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.table_only:
        with open(args.out + "_torch.json") as f:
            torch_res = json.load(f)
        with open(args.out + "_jax.json") as f:
            jax_res = json.load(f)
    else:
        for module in ("torch", "continual", "pytorchvideo"):  # before anything runs
            require(module, "bench", "the PyTorch side of benchmark_compare")
        torch_res = _run("experiments.benchmark_torch", args.out + "_torch.json", args.torch_args.split())
        jax_res = _run("experiments.benchmark_jax", args.out + "_jax.json", args.jax_args.split())
    atomic_write(args.out + ".json", json.dumps({"jax": jax_res, "torch": torch_res}, indent=1))
    md = table(jax_res, torch_res)
    atomic_write(args.out + ".md", md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
