"""The paper's profiling table for every registry model, on the current device.

    python -m experiments.profile --out results/profile            # quick default (CPU: minutes)
    python -m experiments.profile --models cox3d_m_64,x3d_m --batch paper --dtype fp32,bf16

For every model: parameters, GMACs per clip (clip models) or per frame (continual models) in the
paper's ptflops convention beside XLA's count of our jitted function (valid taps only, 2 flops
per MAC, elementwise ops included), delay and receptive field, and the paper's reported accuracy
and FLOPs (labelled as reported). For the models selected for measurement (``--measure``; by
default a quick subset on CPU, all models on an accelerator): peak memory at batch 1 and
throughput (clips/s or frames/s) at the paper's batch sizes, fp32 and bf16. Writes
``OUT/profile.json``, ``OUT/profile.csv`` and ``OUT/accuracy_vs_flops.png``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import sys
import time

from co3d_jax.extras import cli_main
from experiments._cli import atomic_write

def paper_batch(name: str) -> int:
    """Batch size of the paper's profiling scripts for ``name`` (its family spec's; reference §5.5)."""
    from co3d_jax.models import family_of
    return family_of(name).paper_batch(name)


def static_row(name: str) -> dict:
    import jax

    import co3d_jax
    from co3d_jax.flops import count_params, model_xla_flops, paper_macs, paper_step_macs
    model = co3d_jax.create_model(name)
    params = jax.eval_shape(model.init, jax.random.key(0))
    mode = "step" if model.continual else "clip"
    t0 = time.perf_counter()
    xla = model_xla_flops(model, params, mode, compiled=False)
    reported = model.family.reported.get(name)  # the paper's table (co3d README; reference co3d.md §6)
    acc, flops = (reported.top1, reported.gflops) if reported else (None, None)
    avg = paper_step_macs(model)["average"] if model.continual else paper_macs(model, mode)
    s = model.image_size
    return {
        "model": name, "kind": "continual" if model.continual else "clip",
        "input": f"1x{s}x{s}" if model.continual else f"{model.clip_length}x{s}x{s}",
        "params": count_params(params), "gmacs_paper": paper_macs(model, mode) / 1e9,
        "gmacs_paper_avg": avg / 1e9,  # continual: mean over a temporal-stride period (CoI3D)
        "gflops_xla": xla / 1e9, "per": "frame" if model.continual else "clip",
        "delay": model.delay if model.continual else None, "receptive_field": model.receptive_field,
        "reported_top1": acc, "reported_gflops": flops, "xla_count_s": round(time.perf_counter() - t0, 2),
    }


def measure(name: str, batch: int, dtypes: list[str], chunk: int, repeats: int) -> dict:
    """Throughput per dtype at ``batch`` and peak memory at batch 1 (bytes)."""
    import jax

    import co3d_jax
    from co3d_jax.benchmark import bench_clip, bench_stream, cast_tree
    model = co3d_jax.create_model(name)
    out = {"batch": batch}
    for dt in dtypes:
        if model.continual:
            r = bench_stream(name, batch, dt, chunk, repeats)
            out[f"throughput_{dt}"] = r["frames_per_s"]
        else:
            r = bench_clip(name, batch, dt, repeats)
            out[f"throughput_{dt}"] = r["clips_per_s"]
    out["throughput_unit"] = "frames/s" if model.continual else "clips/s"
    # peak memory at batch 1: weights + state + the compiled step/forward's temporaries
    params = model.init(jax.random.key(0))
    model_f, params_f = model.fold_batchnorm(params)
    params_f = cast_tree(params_f, "float32")
    if model.continual:
        state = model_f.init_state(1)
        x = jax.numpy.zeros((1, *model.frame_shape))
        comp = jax.jit(model_f.step).lower(params_f, state, x).compile()
    else:
        x = jax.numpy.zeros((1, model.clip_length, *model.frame_shape))
        comp = jax.jit(model_f.forward).lower(params_f, x).compile()
    mem = comp.memory_analysis()
    if mem is not None:
        out["memory_mb"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                            - getattr(mem, "alias_size_in_bytes", 0)) / 2 ** 20
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_mb_session"] = stats["peak_bytes_in_use"] / 2 ** 20
    return out


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        if r.get("reported_top1") is None:
            continue
        cont = r["kind"] == "continual"
        ax.scatter(r["gmacs_paper"], r["reported_top1"], marker="o" if cont else "s",
                   color="tab:red" if cont else "tab:blue", s=40)
        label = r["model"]
        tp = r.get("throughput_fp32")
        if tp:
            label += f"\n{tp:,.0f} {r.get('throughput_unit', '')}"
        ax.annotate(label, (r["gmacs_paper"], r["reported_top1"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("GMACs per clip (clip models) / per frame (continual), ptflops convention, measured here")
    ax.set_ylabel("Kinetics-400 top-1 % (as reported in the paper)")
    ax.set_title("Accuracy (reported) vs FLOPs (counted) — throughput measured on " + rows[0].get("device", ""))
    ax.scatter([], [], marker="s", color="tab:blue", label="clip model")
    ax.scatter([], [], marker="o", color="tab:red", label="continual model (per frame)")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_tables(rows: list[dict], env: dict, dtypes: list[str], out: str) -> None:
    """``profile.csv`` and ``accuracy_vs_flops.png`` in ``out`` from ``rows``; prints the table."""
    cols = ["model", "kind", "input", "params", "gmacs_paper", "gmacs_paper_avg", "gflops_xla", "per", "delay", "receptive_field",
            "memory_mb", "batch"] + [f"throughput_{d}" for d in dtypes] + ["throughput_unit", "reported_top1",
                                                                           "reported_gflops"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(os.path.join(out, "profile.csv"), buf.getvalue())
    plot(rows, os.path.join(out, "accuracy_vs_flops.png"))

    print(f"\n{env['device']} · jax {env['jax']} · {env['date']}")
    print(f"{'model':<21} {'params':>11} {'GMACs':>8} {'avg':>6} {'XLA GFLOPs':>10} {'per':>5} {'delay':>5} {'RF':>4} "
          f"{'mem MB':>7} {'batch':>5} " + " ".join(f"{d + ' /s':>11}" for d in dtypes) + f" {'reported':>8}")
    for r in rows:
        tp = " ".join(f"{r[f'throughput_{d}']:>11,.1f}" if f"throughput_{d}" in r else f"{'-':>11}" for d in dtypes)
        mem = f"{r['memory_mb']:7.1f}" if "memory_mb" in r else f"{'-':>7}"
        rep = "" if r["reported_top1"] is None else f"{r['reported_top1']:.2f}%"
        print(f"{r['model']:<21} {r['params']:>11,} {r['gmacs_paper']:>8.3f} {r['gmacs_paper_avg']:>6.2f} {r['gflops_xla']:>10.3f} {r['per']:>5} "
              f"{'' if r['delay'] is None else r['delay']:>5} {r['receptive_field']:>4} {mem} {r.get('batch', ''):>5} "
              f"{tp} {rep:>8}")
    print(f"\nwrote {out}/profile.json, profile.csv, accuracy_vs_flops.png (GMACs: per clip, or per "
          "emitting step for continual models; avg: per frame over a temporal-stride period; throughput: "
          "clips/s for clip models, frames/s for continual models)")


def merge(paths: list[str], out: str) -> int:
    """Combine the ``profile.json`` of several runs (e.g. model subsets measured in separate
    calls on one device) into one table in ``out``; a model measured twice keeps its last row."""
    rows, envs = {}, []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            part = json.load(f)
        envs.extend(part["env"] if isinstance(part["env"], list) else [part["env"]])
        rows.update({r["model"]: r for r in part["rows"]})
    devices = {e.get("device") for e in envs}
    if len(devices) != 1:
        print(f"error: the runs come from different devices {sorted(map(str, devices))}", file=sys.stderr)
        return 2
    merged = sorted(rows.values(), key=lambda r: r["model"])
    dtypes = [d for d in ("fp32", "bf16") if any(f"throughput_{d}" in r for r in merged)]
    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, "profile.json"), json.dumps({"env": envs, "rows": merged}, indent=1))
    write_tables(merged, envs[0], dtypes, out)
    return 0


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/profile", help="output directory")
    ap.add_argument("--models", default="", help="comma-separated registry names (default: all)")
    ap.add_argument("--measure", default="auto",
                    help="models to time: 'auto' (CPU: cox3d_s_13,x3d_xs; accelerators: all), 'all', 'none' or a list")
    ap.add_argument("--batch", default="auto", help="'paper', 'auto' (paper on accelerators, 2 on CPU) or an int")
    ap.add_argument("--dtype", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--chunk", type=int, default=0, help="frames per timed scan (default: 32, CPU 4)")
    ap.add_argument("--repeats", type=int, default=0, help="timed repeats (default: 5, CPU 2)")
    ap.add_argument("--merge", nargs="+", metavar="PROFILE_JSON",
                    help="only combine the profile.json of earlier runs (one device) into one table in --out")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)

    import jax
    from tqdm import tqdm

    import co3d_jax
    names = [n for n in args.models.split(",") if n] or co3d_jax.list_models()
    unknown = [n for n in names if n not in co3d_jax.list_models()]
    if unknown:
        print(f"error: unknown model(s) {unknown}; known: {co3d_jax.list_models()}", file=sys.stderr)
        return 2
    dtypes = [d for d in args.dtype.split(",") if d]
    if any(d not in ("fp32", "bf16") for d in dtypes):
        print(f"error: --dtype takes fp32 and/or bf16, got {args.dtype!r}", file=sys.stderr)
        return 2
    dev = jax.devices()[0]
    cpu = dev.platform == "cpu"
    if args.measure == "auto":
        measured = [n for n in ("cox3d_s_13", "x3d_xs") if n in names] if cpu else names
    elif args.measure == "all":
        measured = names
    elif args.measure == "none":
        measured = []
    else:
        measured = [n for n in args.measure.split(",") if n]
    chunk = args.chunk or (4 if cpu else 32)
    repeats = args.repeats or (2 if cpu else 5)
    os.makedirs(args.out, exist_ok=True)
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": getattr(dev, "device_kind", dev.platform), "platform": dev.platform, "jax": jax.__version__,
           "co3d_jax": co3d_jax.__version__, "python": platform.python_version(), "command": " ".join(sys.argv)}
    rows = []
    for name in tqdm(names, desc="profile", unit="model"):
        row = static_row(name)
        row["device"] = env["device"]
        if name in measured:
            if args.batch == "auto":
                batch = 2 if cpu else paper_batch(name)
            elif args.batch == "paper":
                batch = paper_batch(name)
            else:
                batch = int(args.batch)
            row.update(measure(name, batch, dtypes, chunk, repeats))
        rows.append(row)
        atomic_write(os.path.join(args.out, "profile.json"), json.dumps({"env": env, "rows": rows}, indent=1))
    write_tables(rows, env, dtypes, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
