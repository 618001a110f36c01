"""Side-by-side benchmark: JAX (this package) vs the PyTorch reference on the same device.

    python -m experiments.benchmark_compare --out results/benchmark_h100

Runs :mod:`experiments.benchmark_torch` then :mod:`experiments.benchmark_jax` in separate
processes (so neither framework's allocator sees the other), merges both into
``OUT.json`` and writes ``OUT.md``: a table of throughput per model and dtype with the JAX/torch
ratio, and the project's throughput targets on one H100 (frames/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from co3d_jax.extras import cli_main, require
from experiments._cli import atomic_write

TARGETS = {  # the project's throughput targets on one H100 (frames/s)
    ("stream", "cox3d_s_64", "fp32"): 30000, ("stream", "cox3d_m_64", "fp32"): 15000,
    ("stream", "cox3d_l_64", "fp32"): 4500,
}


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


def table(jax_res: dict, torch_res: dict) -> str:
    base = {_key(r): r for r in jax_res["results"]
            if "dtype" in r and r.get("depthwise", "auto") == "auto" and r.get("unroll", 1) == 1}
    ref = {_key(r): r for r in torch_res["results"] if "dtype" in r}
    lines = [f"JAX: {jax_res['env']['device']} · jax {jax_res['env']['jax']} · {jax_res['env']['date']}",
             f"torch: {torch_res['env']['device']} · torch {torch_res['env']['torch']} · continual-inference "
             f"{torch_res['env']['continual_inference']}", "",
             "| kind | model | dtype | batch | JAX | PyTorch | JAX/PyTorch | target |", "|---|---|---|---|---|---|---|---|"]
    units = {"stream": "frames/s", "clip": "clips/s", "latency": "ms/step"}
    for k, r in base.items():
        if k[0] not in units:
            continue
        t = ref.get(k)
        j, p = _value(r), (_value(t) if t else None)
        ratio = "" if p is None else (f"{p / j:.1f}x faster" if k[0] == "latency" else f"{j / p:.1f}x")
        tgt = TARGETS.get(k, "")
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {r['batch']} | {j:,.1f} {units[k[0]]} | "
                     f"{'' if p is None else f'{p:,.1f}'} | {ratio} | {tgt} |")
    extra = [r for r in jax_res["results"] if "dtype" not in r or r.get("unroll", 1) != 1
             or r.get("depthwise", "auto") != "auto"]
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
