"""Input rates of fine-tuning and evaluation in one run: the compute bound, CPU decoding, NVDEC.

    python -m benchmarks.input_rates --out input_rates_h200.json [--codecs libx264,mpeg4] [--tiny]

Writes generated datasets on local disk (``--work``, default a temporary folder): per codec, 10 s
340x256 30-fps videos (``benchmarks.nvdec_speed.make_video``: moving gradients and a band of
noise), ``--distinct`` of them, each stored ``--copies`` times under other names, in the Kinetics
folder layout (4 classes). Then drives the real commands as subprocesses, so the rates are what a
user gets (their own JSON summaries: steady rates after the compiling first update or batch):

* fine-tuning (``experiments.finetune``, X3D-S from scratch, batch ``--batch``, ``--steps``
  updates): ``memory``: the first batch kept on the device and reused for every update (hidden
  ``--repeat-first-batch``: the same jitted step with no input behind it, the compute bound);
  ``cpu``: ``--decoder cpu --workers`` cores-2 Grain processes; ``nvdec``: ``--decoder nvdec
  --decoder-threads --threads``; ``nvdec_procs``: ``--decoder nvdec --decoder-procs --procs`` (NVDEC
  in worker processes, NV12 to the host, converted on the GPU); ``loader_only_*``: the same input
  pipeline alone (``BatchLoader``, each batch waited for, no train step), to tell the decoder's own
  rate from its contention with the step;
* evaluation (``experiments.evaluate``, X3D-M, random weights, 400 classes, ``--eval-videos``):
  ``cpu``, ``nvdec`` and ``nvdec_procs``, and whether the top-5 predictions of each NVDEC row equal
  the CPU row's on every video (``eval_top5``, ``eval_top5_procs``: count equal / total, and the
  largest difference of any class score, ``--save-scores``).

``--rows`` picks the measurements and their order (e.g. ``libx264:eval_nvdec_procs mpeg4:eval_cpu``),
so a short GPU slot can run the rows it needs; ``--distinct``/``--copies`` size the datasets and
``--gop`` their keyframe interval.

Each measurement is fail-soft (its error recorded, the rest go on) and has a time limit; the run
stops starting new ones after ``--budget-s`` seconds (recorded as skipped). Children share a JAX
compilation cache (``--work``/jax_cache), so only the first run of each model compiles. Per run,
the CPU seconds of the child and its workers (``getrusage``) and, on NVIDIA GPUs, ``nvidia-smi``'s
decoder and GPU utilisation are recorded: what bounds each rate. ``--tiny``: a CPU smoke run
(small videos, X3D-XS at 32 pixels, a few steps).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from .gpu_util import GpuUtil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("archery", "bowling", "capoeira", "dancing ballet")
T0 = time.time()


def log(msg: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
    print(f"[{now} +{time.time() - T0:6.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------- data
def _make_one(job):
    from benchmarks.nvdec_speed import make_video
    path, codec, seed, n, w, h, gop = job
    make_video(path, codec, seed=seed, n=n, w=w, h=h, gop=gop)
    return path


def make_data(root: str, codec: str, distinct: int, copies: int, n: int, w: int, h: int, gop: int | None = None) -> dict:
    """``distinct`` videos x ``copies`` files, Kinetics layout ``root/data/validate/{class}/``; ``gop``:
    the keyframe interval (None: the encoder's default)."""
    t0 = time.time()
    tmp = os.path.join(root, "distinct")
    os.makedirs(tmp, exist_ok=True)
    jobs = [(os.path.join(tmp, f"{i:05d}.mp4"), codec, i, n, w, h, gop) for i in range(distinct)]
    # spawned: a fork after JAX has started its threads can deadlock
    with ProcessPoolExecutor(max(1, os.cpu_count() or 1), mp_context=multiprocessing.get_context("spawn")) as ex:
        list(ex.map(_make_one, jobs))
    files = 0
    for i, job in enumerate(jobs):
        for c in range(copies):
            d = os.path.join(root, "data", "validate", CLASSES[(i + c) % len(CLASSES)])
            os.makedirs(d, exist_ok=True)
            shutil.copyfile(job[0], os.path.join(d, f"v{i:04d}c{c:02d}xxx_000000_000010.mp4"))
            files += 1
    shutil.rmtree(tmp)
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(root) for f in fs)
    return dict(codec=codec, gop=gop or "encoder default", distinct=distinct, copies=copies, files=files, frames=n,
                width=w, height=h, fps=30,
                bytes=size, seconds=round(time.time() - t0, 1))


# ----------------------------------------------------------------------------- children
def child_env(work: str, tiny: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(work, "jax_cache")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if tiny:
        env["JAX_PLATFORMS"] = "cpu"
    return env


def run_child_code(code: str, argv: list, env: dict, logfile: str, timeout: float) -> dict:
    return run_child("-c", [code, *argv], env, logfile, timeout, what="loader-only child")


def run_child(module: str, argv: list, env: dict, logfile: str, timeout: float, what: str | None = None) -> dict:
    """``python -m module argv``; its wall time, CPU seconds (with its reaped workers), the
    utilisation seen meanwhile; raises with the log's tail on failure."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    with open(logfile, "w") as f, GpuUtil() as util:
        try:
            cmd = [sys.executable, *(["-c"] if module == "-c" else ["-m", module]), *argv]
            p = subprocess.run(cmd, env=env, cwd=REPO, stdout=f,
                               stderr=subprocess.STDOUT, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if rc != 0:
        with open(logfile) as f:
            tail = f.read()[-1500:]
        said = [ln for ln in tail.splitlines() if ln.startswith("error:")]
        raise RuntimeError(f"{what or module} {'timed out after %.0fs' % timeout if rc == 'timeout' else 'exit %s' % rc}"
                           + (f": {said[-1]}" if said else "") + f"\n...{tail}")
    return dict(wall_s=round(wall, 1), cpu_s=round(cpu, 1), cores_busy_mean=round(cpu / wall, 2) if wall else None,
                util=util.summary(), log=os.path.basename(logfile))


def soft(fn, *a, **k):
    try:
        return fn(*a, **k)
    except Exception as e:  # noqa: BLE001 (recorded: one failure must not lose the rest)
        msg = f"{type(e).__name__}: {e}"
        log(f"  ! {msg.splitlines()[0][:300]}")
        return {"error": msg[:2000]} if isinstance(e, RuntimeError) else {
            "error": msg[:2000], "where": traceback.format_exc().strip().splitlines()[-4:-1]}


# ----------------------------------------------------------------------------- measurements
MODES = ("cpu", "nvdec", "nvdec_procs")
"""How a row decodes: ``cpu`` (Grain processes, ``--workers``), ``nvdec`` (``--threads`` threads of the
main process, frames on the GPU), ``nvdec_procs`` (``--procs`` worker processes with NVDEC, NV12 to the
host, converted on the GPU)."""

ROWS = ("finetune_memory", *(f"{k}_{m}" for k in ("finetune", "eval", "loader_only") for m in MODES))


def decoder_argv(args, mode: str) -> list:
    """A command's decoder options for ``mode`` (:data:`MODES`)."""
    if mode == "cpu":
        return ["--decoder", "cpu", "--workers", str(args.workers)]
    if mode == "nvdec":
        return ["--decoder", "nvdec", "--decoder-threads", str(args.threads)]
    return ["--decoder", "nvdec", "--decoder-procs", str(args.procs)]


def finetune(args, env, data, work, tag, mode, timeout):
    out = os.path.join(work, f"ft_{tag}")
    steps = args.memory_steps if mode == "memory" and args.memory_steps else args.steps
    argv = [*args.train_model, "--from-scratch", "--data", data, "--split", "validate", "--steps", str(steps),
            "--batch-size", str(args.batch), "--out", out, "--overwrite", "--no-progress", "--seed", "0",
            "--save-every", str(steps), "--log-every", str(steps)]
    if mode == "memory":
        argv += ["--repeat-first-batch", "--workers", str(args.workers)]
    else:
        argv += decoder_argv(args, mode)
    run = run_child("experiments.finetune", argv, env, os.path.join(work, f"ft_{tag}.log"), timeout)
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    sps = s.get("steady_steps_per_s")
    return dict(mode=mode, command="python -m experiments.finetune " + " ".join(argv), **run,
                steady_updates_per_s=sps, steady_clips_per_s=sps * args.batch if sps else None,
                batch=args.batch, steps=steps, seconds=s.get("seconds"), loader_seconds=s.get("loader_seconds"),
                failed_videos=len(s.get("failed_videos", {})), decoder=s.get("decoder"), workers=s.get("workers"),
                decoder_threads=s.get("decoder_threads"), decoder_procs=s.get("decoder_procs"),
                final_loss=s.get("final_loss"))


def evaluate(args, env, data, work, tag, mode, timeout):
    out = os.path.join(work, f"ev_{tag}")
    argv = [*args.eval_model, "--random-weights", "--seed", "0", "--root", data, "--split", "validate",
            "--out", out, "--overwrite", "--no-progress", "--save-scores", "--batch-size", str(args.eval_batch),
            "--limit", str(args.eval_videos)]
    argv += decoder_argv(args, mode)
    run = run_child("experiments.evaluate", argv, env, os.path.join(work, f"ev_{tag}.log"), timeout)
    with open(os.path.join(out, "timing.json")) as f:
        t = json.load(f)
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    return dict(mode=mode, command="python -m experiments.evaluate " + " ".join(argv), **run,
                steady_videos_per_s=t.get("steady_videos_per_s"), elapsed_s=t.get("elapsed_s"),
                videos=t.get("videos_this_run"), batch=t.get("batch"), evaluated=s.get("num_evaluated"),
                failed=s.get("num_failed"), predictions=os.path.join(out, "predictions.jsonl"))


LOADER_ONLY = r"""
import json, sys, time
import jax, numpy as np
import co3d_jax
from co3d_jax.data import open_dataset
from co3d_jax.data.augment import TrainClipSpec
from co3d_jax.data.nvdec import resolve_decoder
from co3d_jax.data.train_loader import BatchLoader
from co3d_jax.train import data_mesh
a = json.loads(sys.argv[1])
model = co3d_jax.create_model(a["model"], **a["opts"])
spec = TrainClipSpec(num_frames=a["frames"] or model.clip_length, sampling_rate=model.frame_rate,
                     image_size=model.image_size, jitter=TrainClipSpec.default_jitter(model.image_size),
                     mean=tuple(model.normalisation[0]), std=tuple(model.normalisation[1]))
records = [r for r in open_dataset("kinetics400", a["data"], "validate").records if r.label is not None]
try:
    dec = resolve_decoder(a["decoder"])
except Exception as e:
    print(f"error: {e}", flush=True)
    sys.exit(2)
loader = BatchLoader(records, spec, 0, a["batch"], 0, a["workers"], 2, mesh=data_mesh(), stop=a["batches"],
                     decoder=dec, decoder_threads=a["threads"], decoder_procs=a["procs"])
times = []
try:
    for _ in range(a["batches"]):
        x, y = loader.next()
        jax.block_until_ready(x)
        times.append(time.perf_counter())
finally:
    loader.close()
steady = (len(times) - 1) * a["batch"] / (times[-1] - times[0]) if len(times) > 1 else None
print(json.dumps(dict(steady_clips_per_s=steady, batches=len(times), decoder=dec, stats=loader.stats)))
"""


def loader_only(args, env, data, work, tag, mode, timeout):
    """The fine-tuning input pipeline alone (BatchLoader, each batch waited for, no train step):
    what it feeds with the GPU otherwise idle."""
    spec = dict(model=args.train_model[1], opts=args.train_opts, frames=args.train_frames, data=data, batch=args.batch, batches=args.loader_batches,
                workers=args.workers, decoder="cpu" if mode == "cpu" else "nvdec", threads=args.threads,
                procs=args.procs if mode == "nvdec_procs" else 0)
    logfile = os.path.join(work, f"lo_{tag}.log")
    run = run_child_code(LOADER_ONLY, [json.dumps(spec)], env, logfile, timeout)
    with open(logfile) as f:
        got = json.loads([ln for ln in f.read().splitlines() if ln.startswith("{")][-1])
    return dict(mode=mode, **run, **got, batch=args.batch)


def compare_predictions(a: str, b: str) -> dict:
    def read(p):
        with open(p) as f:
            return {r["id"]: r for r in map(json.loads, f)}
    ra, rb = read(a), read(b)
    ids = sorted(set(ra) | set(rb))
    equal, diff, both = 0, 0.0, 0
    unequal = []
    for k in ids:
        x, y = ra.get(k), rb.get(k)
        if x is None or y is None or "pred" not in x or "pred" not in y:
            if x is not None and y is not None and x.get("error") and y.get("error"):
                equal += 1      # failed on both
            else:
                unequal.append(k)
            continue
        both += 1
        if x["pred"] == y["pred"]:
            equal += 1
        else:
            unequal.append(k)
        diff = max(diff, float(np.max(np.abs(np.asarray(x["scores"]) - np.asarray(y["scores"])))))
    return dict(videos=len(ids), top5_equal=equal, compared=both, max_score_diff=diff, unequal=unequal[:20])


# ----------------------------------------------------------------------------- environment
PROBE = r"""
import json, platform, os, sys
import importlib.metadata as md
import jax
from co3d_jax.data import nvdec
d = jax.devices()
v = {}
for p in ("jax", "jaxlib", "jax-cuda12-plugin", "numpy", "av", "grain", "PyNvVideoCodec", "pynvvideocodec"):
    try:
        v[p] = md.version(p)
    except Exception:
        pass
print(json.dumps(dict(platform=d[0].platform, device_kind=d[0].device_kind, devices=len(d), python=platform.python_version(),
                      versions=v, nvdec_available=nvdec.available(), nvdec_unavailable=nvdec.unavailable_reason())))
"""


def environment(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-1500:])
    info = json.loads(out.stdout.strip().splitlines()[-1])
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                             "--format=csv,noheader"], capture_output=True, text=True,
                                            timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        info["nvidia_smi"] = None
    info["cpu_cores"] = os.cpu_count()
    info["host"] = platform.node()
    return info


# ----------------------------------------------------------------------------- main
def table(res: dict) -> str:
    lines = ["", "codec    measurement           rate                         cores busy  NVDEC util  GPU util"]

    def util(r, k):
        u = r.get("util") or {}
        return f"{u[k]:.0f}%" if k in u else "-"

    for codec, rows in res["results"].items():
        for name, r in rows.items():
            if name.startswith("eval_top5"):
                if "error" in r:
                    rate = "error"
                else:
                    rate = f"top-5 equal {r['top5_equal']}/{r['videos']}, max score diff {r['max_score_diff']:.3g}"
                lines.append(f"{codec:8s} {name:21s} {rate}")
                continue
            if "error" in r or "skipped" in r:
                rate = ("skipped: " + r["skipped"]) if "skipped" in r else ("error: " + r["error"].splitlines()[0][:60])
                lines.append(f"{codec:8s} {name:21s} {rate}")
                continue
            if "steady_updates_per_s" in r:
                rate = (f"{r['steady_updates_per_s']:.2f} upd/s = {r['steady_clips_per_s']:.0f} clips/s"
                        if r["steady_clips_per_s"] else "n/a")
            elif "steady_clips_per_s" in r:
                rate = f"{r['steady_clips_per_s']:.0f} clips/s (no step)" if r["steady_clips_per_s"] else "n/a"
            else:
                rate = f"{r['steady_videos_per_s']:.0f} videos/s" if r.get("steady_videos_per_s") else "n/a"
            lines.append(f"{codec:8s} {name:21s} {rate:28s} {r.get('cores_busy_mean', '-'):>10} "
                         f"{util(r, 'decoder_util_mean'):>10} {util(r, 'gpu_util_mean'):>9}")
    return "\n".join(lines)


def plan_rows(rows: list | None, codecs: list) -> list:
    """``--rows`` -> ``[(codec, row), ...]`` in order (see ``--help``)."""
    if not codecs:
        return []
    if rows is None:
        first = codecs[0]
        out = [(first, "finetune_memory")]
        for c in codecs:
            out += [(c, f"{k}_{m}") for k in ("finetune", "eval") for m in MODES]
        return out + [(first, f"loader_only_{m}") for m in MODES]
    out = []
    for item in rows:
        codec, _, row = item.rpartition(":")
        if row not in ROWS:
            raise SystemExit(f"error: unknown row {row!r} (one of {', '.join(ROWS)})")
        if codec and codec not in codecs:
            raise SystemExit(f"error: row {item!r}: codec {codec!r} is not in --codecs")
        out += [(codec, row)] if codec else [(c, row) for c in codecs]
    return out


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--work", help="datasets and run folders (default: a temporary folder, removed)")
    p.add_argument("--codecs", default="libx264,mpeg4", help="comma-separated encoders (libx264, mpeg4)")
    p.add_argument("--distinct", type=int, help="distinct videos per codec (default libx264 96, mpeg4 192)")
    p.add_argument("--copies", type=int, help="files per distinct video (default libx264 6, mpeg4 3)")
    p.add_argument("--gop", type=int, default=None,
                   help="keyframe interval of the generated videos (default: the encoder's; libx264 here: about 100-160 "
                        "frames); a clip decodes from the keyframe before it, so a shorter GOP costs NVDEC less per clip")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--memory-steps", type=int, default=None,
                   help="updates of the data-in-memory run (default --steps: the same learning-rate schedule, so "
                        "the same compiled step, which the later runs then find in the compilation cache)")
    p.add_argument("--loader-batches", type=int, default=10, help="batches of the loader-only runs")
    p.add_argument("--eval-videos", type=int, default=480)
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 3) - 2), help="CPU decoding processes")
    p.add_argument("--threads", type=int, default=4, help="--decoder-threads for NVDEC")
    p.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 3) - 4),
                   help="--decoder-procs for the nvdec_procs rows (NVDEC worker processes)")
    p.add_argument("--rows", nargs="+", default=None,
                   help=f"the measurements, in order: ROW (for every codec in turn) or CODEC:ROW; ROW one of "
                        f"{', '.join(ROWS)} (default: the first codec's finetune_memory, each codec's "
                        "finetune/eval rows for cpu, nvdec and nvdec_procs, then the first codec's loader_only rows). "
                        "eval_top5 compares eval_cpu with each NVDEC eval row of a codec once both ran")
    p.add_argument("--budget-s", type=float, default=330.0, help="start no measurement after this many seconds")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny videos and models")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    codecs = [c for c in args.codecs.split(",") if c]
    if args.tiny:
        size = dict(n=40, w=96, h=64)
        args.batch, args.steps = min(args.batch, 4), min(args.steps, 3)
        args.loader_batches = min(args.loader_batches, 3)
        args.eval_videos, args.eval_batch = min(args.eval_videos, 8), min(args.eval_batch, 4)
        args.workers, args.procs = min(args.workers, 1), min(args.procs, 1)
        args.train_model = ["--model", "x3d_xs", "--model-arg", "image_size=32", "--model-arg", "depth_factor=0.3",
                            "--num-frames", "4"]
        args.eval_model = ["--model", "x3d_xs", "--model-arg", "image_size=32", "--model-arg", "depth_factor=0.3"]
        args.train_opts, args.train_frames = dict(image_size=32, depth_factor=0.3), 4
    else:
        size = dict(n=300, w=340, h=256)
        args.train_model = ["--model", "x3d_s"]
        args.train_opts, args.train_frames = {}, 0
        args.eval_model = ["--model", "x3d_m"]
    work = args.work or tempfile.mkdtemp(prefix="input_rates_")
    os.makedirs(work, exist_ok=True)
    env = child_env(work, args.tiny)
    res = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               command="python -m benchmarks.input_rates " + " ".join(argv if argv is not None else sys.argv[1:]),
               commit=subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
               settings=dict(batch=args.batch, steps=args.steps, eval_videos=args.eval_videos, eval_batch=args.eval_batch,
                             workers=args.workers, threads=args.threads, procs=args.procs, rows=args.rows, gop=args.gop,
                             budget_s=args.budget_s, tiny=args.tiny,
                             train_model=args.train_model, eval_model=args.eval_model, **size),
               datasets={}, results={})

    def save():
        res["seconds"] = round(time.time() - T0, 1)
        with open(args.out + ".tmp", "w") as f:
            json.dump(res, f, indent=2)
        os.replace(args.out + ".tmp", args.out)

    log(f"work folder {work}")
    res["environment"] = soft(environment, env)
    log(f"environment: {json.dumps(res['environment'])[:400]}")
    save()

    roots = {}
    for codec in codecs:
        distinct = args.distinct or (4 if args.tiny else 96 if codec == "libx264" else 192)
        copies = args.copies or (2 if args.tiny else 6 if codec == "libx264" else 3)
        roots[codec] = os.path.join(work, f"data_{codec}")
        log(f"generating {distinct} x {copies} {codec} videos ({size['w']}x{size['h']}, {size['n']} frames)")
        res["datasets"][codec] = soft(make_data, roots[codec], codec, distinct, copies, **size, gop=args.gop)
        log(f"  {res['datasets'][codec]}")
        save()

    hard_end = T0 + args.budget_s + 25.0   # a child running past the budget is stopped here

    def measure(codec, name, fn, *a):
        rows = res["results"].setdefault(codec, {})
        left = args.budget_s - (time.time() - T0)
        if left <= 0:
            rows[name] = {"skipped": f"time budget ({args.budget_s:.0f}s) spent"}
            log(f"{codec} {name}: skipped (time budget)")
        else:
            log(f"{codec} {name} ...")
            rows[name] = soft(fn, *a, max(20.0, hard_end - time.time()))
            r = rows[name]
            rate = r.get("steady_clips_per_s") or r.get("steady_videos_per_s")
            log(f"{codec} {name}: " + (f"{rate:.1f}/s, wall {r['wall_s']}s, cores busy {r['cores_busy_mean']}, "
                                      f"util {r['util']}" if rate else str(r)[:300]))
        save()
        return rows[name]

    for codec, row in plan_rows(args.rows, codecs):
        data = roots[codec]
        if "error" in res["datasets"][codec]:
            continue
        kind, mode = ("finetune", "memory") if row == "finetune_memory" else row.rsplit("_", 1)
        if row.endswith("nvdec_procs"):
            kind, mode = row[:-len("_nvdec_procs")], "nvdec_procs"
        fn = dict(finetune=finetune, eval=evaluate, loader_only=loader_only)[kind]
        measure(codec, row, fn, args, env, data, work, f"{codec}_{mode}", mode)
        rows = res["results"][codec]
        if kind == "eval" and "predictions" in rows.get("eval_cpu", {}):   # the CPU path's top-5 against NVDEC's
            for other in ("eval_nvdec", "eval_nvdec_procs"):
                key = "eval_top5" + other[len("eval_nvdec"):]
                if key not in rows and "predictions" in rows.get(other, {}):
                    rows[key] = soft(compare_predictions, rows["eval_cpu"]["predictions"], rows[other]["predictions"])
                    log(f"{codec} {key} (eval_cpu vs {other}): {rows[key]}")
        save()
    text = table(res)
    res["table"] = text.splitlines()
    save()
    print(text, flush=True)
    log(f"done: {args.out}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
