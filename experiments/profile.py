"""The paper's profiling table for every registry model, on the current device.

    python -m experiments.profile --out results/profile            # every model; CPU: a few minutes
    python -m experiments.profile --models cox3d_m_64,x3d_m --size model --batch paper --dtype fp32,bf16

For every model: parameters, GMACs per clip (clip models) or per frame (continual models) in the
paper's ptflops convention beside XLA's count of our jitted function (valid taps only, 2 flops
per MAC, elementwise ops included), delay and receptive field, and the paper's reported accuracy
and FLOPs (labelled as reported); these are always at the model's own input size. Every model
(``--measure``) is also timed on this device: memory at batch 1 and throughput (clips/s or
frames/s). On an accelerator the timing uses the model's input size, the paper's batch sizes,
fp32 and bf16; on a CPU, so that every model is timed within minutes, a small input
(``--size 64``: 64x64 pixels, the model's own clip length), batch 1 and fp32. The table, the CSV
(``measured_size``, ``batch``) and ``profile.json`` (``env.measurement``) say which settings the
timings used. Writes ``OUT/profile.json``, ``OUT/profile.csv`` and ``OUT/accuracy_vs_flops.png``.
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


def measure(name: str, batch: int, dtypes: list[str], chunk: int, repeats: int, size: int | None = None) -> dict:
    """Throughput per dtype at ``batch`` and memory at batch 1 (MiB), at input ``size`` (None: the
    model's). At batch 1 the fp32 timed executable's memory is reported (no second compilation)."""
    import jax

    import co3d_jax
    from co3d_jax.benchmark import bench_clip, bench_stream, cast_tree, memory_mb
    opts = {"image_size": size} if size else {}
    model = co3d_jax.create_model(name, **opts)
    out = {"batch": batch, "measured_size": model.image_size}
    for dt in dtypes:
        if model.continual:
            r = bench_stream(name, batch, dt, chunk, repeats, image_size=size)
            out[f"throughput_{dt}"] = r["frames_per_s"]
        else:
            r = bench_clip(name, batch, dt, repeats, image_size=size)
            out[f"throughput_{dt}"] = r["clips_per_s"]
        if batch == 1 and dt == "fp32" and r.get("memory_mb") is not None:
            out["memory_mb"] = r["memory_mb"]
    out["throughput_unit"] = "frames/s" if model.continual else "clips/s"
    if "memory_mb" not in out:
        # memory at batch 1: weights + state + the compiled step/forward's temporaries
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
        mem = memory_mb(comp)
        if mem is not None:
            out["memory_mb"] = mem
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_mb_session"] = stats["peak_bytes_in_use"] / 2 ** 20
    return out


def _place_labels(ax, points, labels, fontsize=7) -> None:
    """Annotate each point with its label at the first of a few offsets whose box overlaps no
    label placed before it (nor leaves the axes), so that labels stay legible."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    offsets = [(4, 3), (4, -10), (-4, 3), (-4, -10), (4, 12), (4, -20), (-4, 12), (-4, -20), (4, 22), (4, -30)]
    placed = []
    order = sorted(range(len(points)), key=lambda i: -points[i][1])
    for i in order:
        best = None
        for dx, dy in offsets:
            t = ax.annotate(labels[i], points[i], fontsize=fontsize, xytext=(dx, dy), textcoords="offset points",
                            ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top")
            box = t.get_window_extent(renderer)
            inside = (box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1 and box.y0 >= axes_box.y0
                      and box.y1 <= axes_box.y1)
            if inside and not any(box.overlaps(b) for b in placed):
                best = (t, box)
                break
            t.remove()
        if best is None:  # nothing free: the first offset
            t = ax.annotate(labels[i], points[i], fontsize=fontsize, xytext=offsets[0], textcoords="offset points")
            best = (t, t.get_window_extent(renderer))
        placed.append(best[1])


def plot(rows: list[dict], path: str, settings: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [r for r in rows if r.get("reported_top1") is not None]
    omitted = [r["model"] for r in rows if r.get("reported_top1") is None]
    fig, ax = plt.subplots(figsize=(10, 6.5))
    points, labels = [], []
    for r in shown:
        cont = r["kind"] == "continual"
        ax.scatter(r["gmacs_paper"], r["reported_top1"], marker="o" if cont else "s",
                   color="tab:red" if cont else "tab:blue", s=40)
        label = r["model"]
        tp = r.get("throughput_fp32")
        if tp:
            label += f"\n{tp:,.0f}" if tp >= 10 else f"\n{tp:.2g}"
            label += f" {r.get('throughput_unit', '')}"
        points.append((r["gmacs_paper"], r["reported_top1"]))
        labels.append(label)
    ax.set_xscale("log")
    if points:  # room for the labels of the outermost points
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.set_xlim(min(xs) / 1.6, max(xs) * 3.0)
        ax.set_ylim(min(ys) - 2.0, max(ys) + 2.0)
    ax.set_xlabel("GMACs per clip (clip models) / per frame (continual), ptflops convention, counted here")
    ax.set_ylabel("Kinetics-400 top-1 % (as reported in the paper)")
    ax.set_title("Accuracy (reported) vs FLOPs (counted); fp32 throughput measured on " + rows[0].get("device", ""),
                 fontsize=10)
    ax.scatter([], [], marker="s", color="tab:blue", label="clip model")
    ax.scatter([], [], marker="o", color="tab:red", label="continual model (per frame)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    caption = []
    if settings:
        caption.append(f"Throughput: {settings}.")
    if omitted:
        caption.append(f"Not shown (no Kinetics-400 accuracy reported): {', '.join(omitted)}.")
    import textwrap
    text = "\n".join(textwrap.fill(c, 150) for c in caption)
    fig.tight_layout(rect=(0, 0.03 + 0.025 * text.count("\n"), 1, 1) if text else None)
    if text:
        fig.text(0.01, 0.01, text, fontsize=7, va="bottom", ha="left")
    _place_labels(ax, points, labels)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def settings_text(m: dict | None) -> str:
    """The measurement settings of ``env["measurement"]`` in words (``""`` for older results)."""
    if not m:
        return ""
    size = "each model's input size" if m["size"] == "model" else f"{m['size']}x{m['size']} px input (each model's clip length)"
    batch = "the paper's batch sizes" if m["batch"] == "paper" else f"batch {m['batch']}"
    return (f"{size}, {batch}, {'/'.join(m['dtypes'])}, {m['chunk']}-frame calls for continual models, "
            f"median of {m['repeats']}; memory at batch 1, fp32")


def write_tables(rows: list[dict], env: dict, dtypes: list[str], out: str) -> None:
    """``profile.csv`` and ``accuracy_vs_flops.png`` in ``out`` from ``rows``; prints the table."""
    cols = ["model", "kind", "input", "params", "gmacs_paper", "gmacs_paper_avg", "gflops_xla", "per", "delay", "receptive_field",
            "memory_mb", "measured_size", "batch"] + [f"throughput_{d}" for d in dtypes] + [
            "throughput_unit", "reported_top1", "reported_gflops", "measure_error"]
    settings = settings_text(env.get("measurement"))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(os.path.join(out, "profile.csv"), buf.getvalue())
    plot(rows, os.path.join(out, "accuracy_vs_flops.png"), settings)

    print(f"\n{env['device']} · jax {env['jax']} · {env['date']}" + (f"\ntimed at {settings}" if settings else ""))
    print(f"{'model':<21} {'params':>11} {'GMACs':>8} {'avg':>6} {'XLA GFLOPs':>10} {'per':>5} {'delay':>5} {'RF':>4} "
          f"{'mem MB':>7} {'size':>4} {'batch':>5} " + " ".join(f"{d + ' /s':>11}" for d in dtypes) + f" {'reported':>8}")
    for r in rows:
        tp = " ".join(f"{r[f'throughput_{d}']:>11,.1f}" if f"throughput_{d}" in r else f"{'-':>11}" for d in dtypes)
        mem = f"{r['memory_mb']:7.1f}" if "memory_mb" in r else f"{'-':>7}"
        rep = "" if r["reported_top1"] is None else f"{r['reported_top1']:.2f}%"
        print(f"{r['model']:<21} {r['params']:>11,} {r['gmacs_paper']:>8.3f} {r['gmacs_paper_avg']:>6.2f} {r['gflops_xla']:>10.3f} {r['per']:>5} "
              f"{'' if r['delay'] is None else r['delay']:>5} {r['receptive_field']:>4} {mem} "
              f"{r.get('measured_size', ''):>4} {r.get('batch', ''):>5} {tp} {rep:>8}")
    print("\nGMACs: per clip, or per emitting step for continual models, at the model's input size; avg: per frame "
          "over a temporal-stride period; mem, size, batch, throughput: measured here (clips/s for clip models, "
          "frames/s for continual models)" + (f", at {settings}" if settings else ""))
    failed = {r["model"]: r["measure_error"] for r in rows if r.get("measure_error")}
    unmeasured = [r["model"] for r in rows if not any(f"throughput_{d}" in r for d in dtypes) and r["model"] not in failed]
    if unmeasured:
        print(f"-: not timed (--measure left out {', '.join(unmeasured)})")
    for name, err in failed.items():
        print(f"-: {name} could not be timed: {err}")
    print(f"wrote {out}/profile.json, profile.csv, accuracy_vs_flops.png")


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
    settings = {json.dumps(e.get("measurement"), sort_keys=True) for e in envs if e.get("measurement")}
    if len(settings) > 1:
        print(f"error: the runs were timed with different settings {sorted(settings)}", file=sys.stderr)
        return 2
    merged = sorted(rows.values(), key=lambda r: r["model"])
    dtypes = [d for d in ("fp32", "bf16") if any(f"throughput_{d}" in r for r in merged)]
    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, "profile.json"), json.dumps({"env": envs, "rows": merged}, indent=1))
    write_tables(merged, next((e for e in envs if e.get("measurement")), envs[0]), dtypes, out)
    return 0


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/profile", help="output directory")
    ap.add_argument("--models", default="", help="comma-separated registry names (default: all)")
    ap.add_argument("--measure", default="all", help="models to time: 'all' (default), 'none' or a list")
    ap.add_argument("--size", default="auto",
                    help="input size for the timings: 'auto' (CPU: 64; accelerators: the model's), 'model' or an int")
    ap.add_argument("--batch", default="auto", help="'paper', 'auto' (paper on accelerators, 1 on CPU) or an int")
    ap.add_argument("--dtype", default="auto", help="comma-separated fp32, bf16 (default: both; CPU: fp32)")
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
    dev = jax.devices()[0]
    cpu = dev.platform == "cpu"
    dtypes = (["fp32"] if cpu else ["fp32", "bf16"]) if args.dtype == "auto" else [d for d in args.dtype.split(",") if d]
    if not dtypes or any(d not in ("fp32", "bf16") for d in dtypes):
        print(f"error: --dtype takes fp32 and/or bf16, got {args.dtype!r}", file=sys.stderr)
        return 2
    if args.measure in ("all", "auto"):
        measured = names
    elif args.measure == "none":
        measured = []
    else:
        measured = [n for n in args.measure.split(",") if n]
    size = (64 if cpu else None) if args.size == "auto" else None if args.size == "model" else args.size
    batch_opt = (1 if cpu else "paper") if args.batch == "auto" else args.batch
    try:
        size = None if size is None else int(size)
        batch_opt = batch_opt if batch_opt == "paper" else int(batch_opt)
    except ValueError:
        print(f"error: --size and --batch take an int or their keywords, got {args.size!r}, {args.batch!r}",
              file=sys.stderr)
        return 2
    chunk = args.chunk or (4 if cpu else 32)
    repeats = args.repeats or (2 if cpu else 5)
    os.makedirs(args.out, exist_ok=True)
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": getattr(dev, "device_kind", dev.platform), "platform": dev.platform, "jax": jax.__version__,
           "co3d_jax": co3d_jax.__version__, "python": platform.python_version(), "command": " ".join(sys.argv),
           "measurement": {"size": size or "model", "batch": batch_opt, "dtypes": dtypes, "chunk": chunk,
                           "repeats": repeats} if measured else None}
    rows = []
    bar = tqdm(names, desc="profile", unit="model", dynamic_ncols=True)
    for name in bar:
        bar.set_postfix_str(f"{name}: counting FLOPs")
        row = static_row(name)
        row["device"] = env["device"]
        if name in measured:
            bar.set_postfix_str(f"{name}: compiling and timing")
            batch = paper_batch(name) if batch_opt == "paper" else batch_opt
            try:
                row.update(measure(name, batch, dtypes, chunk, repeats, size))
            except Exception as e:  # e.g. out of memory at the paper's batch: the row says why, the rest go on
                row["measure_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        rows.append(row)
        atomic_write(os.path.join(args.out, "profile.json"), json.dumps({"env": env, "rows": rows}, indent=1))
    write_tables(rows, env, dtypes, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
