"""Multi-device scaling: data-parallel fine-tuning and sharded evaluation on 1 and on N devices.

    python -m experiments.scaling --out DIR [--data ROOT] [--train-modes memory,cpu,nvdec]
        [--eval-models x3d_m,cox3d_m_64] [--eval-decoders cpu,nvdec] [--warm] [--budget-s S]

1. Unless ``--data`` is given, writes a generated Kinetics-style dataset below ``DIR/data``: ``--videos``
   distinct 10 s clips (``--frames`` at 30 fps, ``--size`` WxH, ``--codec``; moving gradients and a
   band of noise, :func:`co3d_jax.data.synthetic.gradient_noise_video`, the videos of
   ``benchmarks.input_rates``), each stored ``--copies`` times, in 4 classes.
2. ``--warm``: fills a JAX compilation cache shared by every run (``--cache``, default ``DIR/jax_cache``)
   by running each command once per device count, the two device counts at the same time (the
   one-device runs on the last GPU, the N-device runs on all, each limited to 45% of GPU memory):
   the measured runs then load their programs instead of compiling them.
3. Fine-tunes ``--train-model`` from scratch for ``--steps`` updates (global ``--train-batch``,
   ``experiments.finetune``) on 1 and on N devices, once per ``--train-modes`` entry: ``memory`` (the
   first batch kept on the devices and reused for every update, finetune's hidden
   ``--repeat-first-batch``: the train step with no input behind it, the compute bound), ``cpu``
   (``--decoder cpu``, ``--workers`` Grain processes), ``nvdec`` (``--decoder nvdec``,
   ``--decoder-threads``). Same seed and global batch: the loss curves (every update) must agree to
   ``--loss-rtol``.
4. Evaluates each of ``--eval-models`` (random weights, 4 classes, ``experiments.evaluate``, first
   ``--eval-videos`` videos) on 1 and N devices with each of ``--eval-decoders``: the predictions must
   be equal (same top-5 everywhere, scores to ``--rtol`` relative to the largest).

Every run is its own process (the parent never imports JAX); rates are the commands' steady rates
(after the first, compiling update or batch). While a run works, ``nvidia-smi`` is sampled
(:class:`co3d_jax.gpu_util.GpuUtil`) and the GPU busy fraction is averaged over the run's steady
phase on the GPUs it uses. A run that fails is recorded (``error``) and the rest go on; no run
starts after ``--budget-s`` seconds (recorded as skipped). One device is
``CUDA_VISIBLE_DEVICES=<first>`` on GPUs; ``--cpu-devices N`` forces N host devices to try the
command without accelerators (both share the same cores: no scaling numbers). Writes
``scaling.json`` (environment with versions, date and command, every run, the comparisons) and
``scaling.md`` in ``--out``; exits 1 if a comparison failed or a run failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from co3d_jax.extras import cli_main
from co3d_jax.gpu_util import GpuUtil
from experiments._cli import atomic_write

CLASSES = ("archery", "bowling", "capoeira", "dancing ballet")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())} +{time.time() - T0:6.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------- data
def _encode_one(job) -> str:
    from co3d_jax.data.synthetic import gradient_noise_video
    from co3d_jax.data.video import encode_video

    path, codec, seed, frames, w, h = job
    encode_video(path, gradient_noise_video(frames, h, w, seed), 30, codec)
    return path


def make_dataset(root: str, videos: int, copies: int = 1, frames: int = 300, size: tuple = (340, 256),
                 codec: str = "libx264", procs: int | None = None) -> dict:
    """``videos`` distinct generated clips (``frames`` at 30 fps, ``size`` = (W, H), ``codec``),
    each stored ``copies`` times, in the Kinetics layout ``root/data/validate/{class}/*.mp4``
    (copy ``c`` of video ``i`` in class ``(i + c) % 4``). Returns what was written."""
    t0 = time.time()
    w, h = size
    tmp = os.path.join(root, "distinct")
    os.makedirs(tmp, exist_ok=True)
    jobs = [(os.path.join(tmp, f"{i:05d}.mp4"), codec, i, frames, w, h) for i in range(videos)]
    # spawned: a fork after JAX has started its threads can deadlock
    with ProcessPoolExecutor(max(1, min(len(jobs), procs or os.cpu_count() or 1)),
                             mp_context=multiprocessing.get_context("spawn")) as ex:
        list(ex.map(_encode_one, jobs))
    for i, job in enumerate(jobs):
        for c in range(copies):
            d = os.path.join(root, "data", "validate", CLASSES[(i + c) % len(CLASSES)])
            os.makedirs(d, exist_ok=True)
            shutil.copyfile(job[0], os.path.join(d, f"v{i:05d}c{c:02d}xxx_000000_000010.mp4"))
    shutil.rmtree(tmp)
    size_b = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(root) for f in fs)
    return dict(codec=codec, distinct=videos, copies=copies, files=videos * copies, frames=frames, width=w,
                height=h, fps=30, bytes=size_b, seconds=round(time.time() - t0, 1))


# ----------------------------------------------------------------------------- children
def device_env(n: int | None, cpu_devices: int, last: bool = False) -> dict:
    """Environment for a child that sees ``n`` devices (None: all); ``last``: the last ``n``
    GPUs instead of the first (the warm-up's one-device runs, beside an all-device run)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if cpu_devices:
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n or cpu_devices}")
    else:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"   # CUDA's device numbers are nvidia-smi's
        if n is not None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            ids = visible.split(",") if visible else None
            if ids is None:
                ids = [str(i) for i in range(gpu_count() or n)]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[-n:] if last else ids[:n])
    return env


def gpu_count() -> int:
    """GPUs ``nvidia-smi`` lists (0 without it)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return len(out.stdout.split()) if out.returncode == 0 else 0
    except (OSError, subprocess.SubprocessError):
        return 0


def used_gpus(env: dict) -> list[int]:
    """``nvidia-smi`` indices of the GPUs a child with ``env`` uses (none on CPU)."""
    if env.get("JAX_PLATFORMS") == "cpu":
        return []
    visible = env.get("CUDA_VISIBLE_DEVICES")
    return [int(i) for i in visible.split(",")] if visible else list(range(gpu_count()))


PROBE = r"""
import json, platform, importlib.metadata as md, jax
d = jax.devices()
v = {}
for p in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "numpy", "av", "grain", "PyNvVideoCodec", "pynvvideocodec"):
    try:
        v[p] = md.version(p)
    except Exception:
        pass
try:
    from co3d_jax.data import nvdec
    nv = nvdec.available()
except Exception as e:
    nv = f"{type(e).__name__}: {e}"
print(json.dumps(dict(platform=d[0].platform, device=d[0].device_kind, devices=len(d), jax=jax.__version__,
                      python=platform.python_version(), versions=v, nvdec_available=nv)))
"""


def probe(env: dict) -> dict:
    """Devices, kind and versions as a child process sees them, the host's cores and GPUs."""
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"the device probe failed:\n{out.stderr[-1500:]}")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip().splitlines() if smi.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    info["cpu_cores"] = os.cpu_count()
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                        timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def run(module: str, argv: list, env: dict, log_path: str, timeout: float) -> dict:
    """``python -m module argv`` with ``env`` (output to ``log_path``), ``nvidia-smi`` sampled
    meanwhile. Returns ``wall_s`` and the sampler; raises ``RuntimeError`` with the log's tail on
    failure or timeout."""
    t0 = time.time()
    with open(log_path, "w") as f, GpuUtil(gpus=range(max(gpu_count(), 1))) as util:
        try:
            rc = subprocess.run([sys.executable, "-m", module, *argv], env=env, cwd=REPO, stdout=f,
                                stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = f"timeout after {timeout:.0f}s"
    if rc != 0:
        with open(log_path) as f:
            tail = f.read()[-1500:]
        said = [ln for ln in tail.splitlines() if ln.strip()]
        raise RuntimeError(f"{module} failed (exit {rc}): {said[-1] if said else ''}; log {log_path}")
    return dict(wall_s=round(time.time() - t0, 1), util=util)


def _util(util: GpuUtil, env: dict, since: float | None, until: float | None) -> dict | None:
    gpus = used_gpus(env)
    return util.summary(since, until, gpus) if gpus else None


# ----------------------------------------------------------------------------- the runs
def finetune(args, data: str, out: str, mode: str, n: int | None, env: dict, timeout: float, tag: str = "") -> dict:
    """One ``experiments.finetune`` run (``mode``: memory / cpu / nvdec) on ``n`` devices (None: all)."""
    name = f"train_{args.train_model}_{mode}_{'all' if n is None else n}dev{tag}"
    d = os.path.join(out, "runs", name)
    argv = ["--model", args.train_model, "--from-scratch", "--data", data, "--split", "validate",
            "--steps", str(args.steps), "--batch-size", str(args.train_batch), "--out", d, "--overwrite",
            "--no-progress", "--seed", "0", "--save-every", str(args.steps), "--log-every", str(args.steps),
            *args.train_extra]
    # --log-every = steps: metrics.jsonl still has every update (written at the end), but the loop
    # never waits for the devices to write them
    if mode == "memory":
        argv += ["--repeat-first-batch", "--workers", str(args.workers)]
    elif mode == "cpu":
        argv += ["--decoder", "cpu", "--workers", str(args.workers)]
    else:
        argv += ["--decoder", mode, "--decoder-threads", str(args.decoder_threads)]
    r = run("experiments.finetune", argv, env, os.path.join(out, "runs", name + ".log"), timeout)
    with open(os.path.join(d, "summary.json")) as f:
        s = json.load(f)
    with open(os.path.join(d, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f]
    sps = s.get("steady_steps_per_s")
    since = s.get("steady_from")
    until = since + (s["steps"] - 1) / sps if since and sps else None
    return dict(kind="train", mode=mode, model=args.train_model, devices=s["devices"], batch=args.train_batch,
                command="python -m experiments.finetune " + " ".join(argv), wall_s=r["wall_s"],
                steady_steps_per_s=sps, steady_clips_per_s=sps * args.train_batch if sps else None,
                loader_seconds=s.get("loader_seconds"), seconds=s.get("seconds"), decoder=s.get("decoder"),
                checkpoint_seconds=s.get("checkpoint_seconds"),
                failed_videos=len(s.get("failed_videos") or {}), util=_util(r["util"], env, since, until),
                losses=losses)


def evaluate(args, data: str, out: str, model: str, decoder: str, n: int | None, env: dict, timeout: float,
             tag: str = "", limit: int | None = None) -> dict:
    """One ``experiments.evaluate`` run of ``model`` with ``decoder`` on ``n`` devices (None: all)."""
    name = f"eval_{model}_{decoder}_{'all' if n is None else n}dev{tag}"
    d = os.path.join(out, "runs", name)
    argv = ["--model", model, "--random-weights", "--seed", "0", "--model-arg", f"num_classes={len(CLASSES)}",
            *args.eval_extra, "--root", data, "--split", "validate", "--out", d, "--overwrite",
            "--batch-size", str(args.eval_batch), "--no-progress", "--save-scores", "--decoder", decoder]
    argv += ["--workers", str(args.workers)] if decoder == "cpu" else ["--decoder-threads", str(args.decoder_threads)]
    limit = limit if limit is not None else args.eval_videos
    if limit:
        argv += ["--limit", str(limit)]
    r = run("experiments.evaluate", argv, env, os.path.join(out, "runs", name + ".log"), timeout)
    tpath = os.path.join(d, "timing.json")
    with open(tpath) as f:
        t = json.load(f)
    from co3d_jax.predictions import read_predictions
    rate = t.get("steady_videos_per_s")
    # the steady phase: from the end of the first batch to the end of the loop (timing.json is
    # written right after it)
    until = os.path.getmtime(tpath)
    since = until - (t["videos_this_run"] - t["batch"]) / rate if rate else None
    return dict(kind="eval", model=model, decoder=decoder, devices=t["devices"], batch=t["batch"],
                command="python -m experiments.evaluate " + " ".join(argv), wall_s=r["wall_s"],
                elapsed_s=t["elapsed_s"], steady_videos_per_s=rate, videos=t["videos_this_run"],
                util=_util(r["util"], env, since, until), predictions=read_predictions(d))


def compare_predictions(a: dict, b: dict, rtol: float) -> dict:
    """Same videos, the same ones failed, same top-5, scores equal to ``rtol`` (relative to the
    largest score). A run in which no video was evaluated is never equal."""
    if a.keys() != b.keys():
        return dict(equal=False, reason=f"different videos ({len(a)} vs {len(b)})")
    failed = sorted(k for k in a if "error" in a[k])
    if failed != sorted(k for k in b if "error" in b[k]):
        return dict(equal=False, reason="different videos failed")
    if len(failed) == len(a):
        return dict(equal=False, reason=f"every video failed, e.g. {a[failed[0]]['error']}" if failed else "no video")
    worst, top5 = 0.0, 0
    for k in (k for k in a if "error" not in a[k]):
        sa, sb = np.asarray(a[k]["scores"]), np.asarray(b[k]["scores"])
        worst = max(worst, float(np.abs(sa - sb).max() / max(np.abs(sa).max(), 1e-30)))
        top5 += a[k]["pred"] == b[k]["pred"]
    videos = len(a) - len(failed)
    return dict(equal=bool(worst <= rtol and top5 == videos), videos=videos, failed=len(failed),
                max_rel_score_diff=worst, same_top5=top5)


def compare_losses(a: list, b: list, rtol: float) -> dict:
    """Two loss curves (one value per update): equal length and every value to ``rtol`` (relative)."""
    if len(a) != len(b) or not a:
        return dict(equal=False, steps=(len(a), len(b)), max_rel_diff=None)
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12)))
    return dict(equal=bool(np.isfinite(diff) and diff <= rtol), steps=len(a), max_rel_diff=diff)


def _ratio(a, b):
    return None if not a or not b else b / a


# ----------------------------------------------------------------------------- CLI
def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size wants WxH, e.g. 340x256 (got {text!r})") from None
    if w < 2 or h < 2 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"--size needs even sides >= 2 (got {text!r})")
    return w, h


def _names(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.scaling", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="results folder (scaling.json, scaling.md, runs/)")
    g = ap.add_argument_group("data")
    g.add_argument("--data", help="Kinetics-style root (its validate split) instead of generating one")
    g.add_argument("--videos", type=int, default=64, help="distinct generated videos (default 64)")
    g.add_argument("--copies", type=int, default=8, help="files per generated video (default 8)")
    g.add_argument("--frames", type=int, default=300, help="frames per generated video, 30 fps (default 300)")
    g.add_argument("--size", type=_size, default=(340, 256), help="generated video size WxH (default 340x256)")
    g.add_argument("--codec", default="libx264", help="generated videos' encoder (default libx264; mpeg4)")
    g = ap.add_argument_group("runs")
    g.add_argument("--train-model", default="x3d_s", help="'' to skip fine-tuning")
    g.add_argument("--train-modes", type=_names, default=["memory", "cpu", "nvdec"],
                   help="comma-separated: memory (data in device memory), cpu, nvdec (default all three)")
    g.add_argument("--train-batch", type=int, default=64, help="global batch (a multiple of the devices)")
    g.add_argument("--steps", type=int, default=20, help="updates per fine-tuning run (all modes: one program)")
    g.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                   help="extra experiments.finetune argument (repeatable; e.g. --train-arg=--num-frames=4)")
    g.add_argument("--eval-models", type=_names, default=["x3d_m", "cox3d_m_64"], help="'' to skip evaluation")
    g.add_argument("--eval-decoders", type=_names, default=["cpu", "nvdec"], help="comma-separated: cpu, nvdec")
    g.add_argument("--eval-batch", type=int, default=32, help="global evaluation batch")
    g.add_argument("--eval-videos", type=int, default=0, help="evaluate the first N videos (0: all)")
    g.add_argument("--eval-arg", action="append", default=[], metavar="ARG",
                   help="extra experiments.evaluate argument (repeatable; e.g. --eval-arg=--model-arg=image_size=32)")
    g.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 3) - 2),
                   help="CPU decoding processes per run (default cores - 2)")
    g.add_argument("--decoder-threads", type=int, default=4, help="NVDEC decoding threads per run (default 4)")
    g = ap.add_argument_group("execution")
    g.add_argument("--warm", action="store_true",
                   help="first fill the compilation cache, both device counts at once (see above)")
    g.add_argument("--cache", help="JAX compilation cache folder shared by the runs (default OUT/jax_cache)")
    g.add_argument("--budget-s", type=float, default=0.0, help="start no run after this many seconds (0: no limit)")
    g.add_argument("--timeout-s", type=float, default=600.0, help="limit of one run (default 600)")
    g.add_argument("--rtol", type=float, default=None,
                   help="predictions: max score difference / max score (default 1e-4 at --precision highest, "
                        "else 2e-3: TF32 rounding depends on the per-device batch)")
    g.add_argument("--loss-rtol", type=float, default=1e-3, help="fine-tuning: loss curves' relative difference")
    g.add_argument("--cpu-devices", type=int, default=0, help="try on CPU with this many forced host devices")
    g.add_argument("--precision", default="default", choices=["default", "high", "highest"],
                   help="jax_default_matmul_precision of every run (GPU default: TF32 convolutions)")
    return ap


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.train_extra, args.eval_extra = list(args.train_arg), list(args.eval_arg)
    bad = [m for m in args.train_modes if m not in ("memory", "cpu", "nvdec")] + \
          [d for d in args.eval_decoders if d not in ("cpu", "nvdec")]
    if bad:
        print(f"error: unknown mode or decoder {bad[0]!r} (memory, cpu, nvdec)", file=sys.stderr)
        return 2
    if args.rtol is None:
        args.rtol = 1e-4 if args.precision == "highest" else 2e-3
    if args.precision != "default":
        os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = args.precision   # inherited by every child run
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(args.cache or os.path.join(out, "jax_cache"))
    log(f"probing the devices ({'%d forced CPU devices' % args.cpu_devices if args.cpu_devices else 'GPUs'})")
    env_all = probe(device_env(None, args.cpu_devices))
    if env_all["devices"] < 2:
        print(f"error: {env_all['devices']} device(s) visible; scaling needs at least 2", file=sys.stderr)
        return 2
    log(f"environment: {json.dumps(env_all)}")
    results = dict(env=dict(env_all, precision=args.precision, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            command=" ".join(["python", "-m", "experiments.scaling",
                                              *(sys.argv[1:] if argv is None else argv)])),
                   settings={k: v for k, v in vars(args).items() if k not in ("train_extra", "eval_extra")},
                   data=None, warm=[], train=[], eval=[], skipped=[])

    def save():
        results["seconds"] = round(time.time() - T0, 1)
        atomic_write(os.path.join(out, "scaling.json"), json.dumps(results, indent=1))

    if args.data:
        data = os.path.abspath(args.data)
        results["data"] = dict(root=data)
    else:
        data = os.path.join(out, "data")
        if not os.path.isdir(os.path.join(data, "data")):
            log(f"generating {args.videos} x {args.copies} {args.codec} videos ({args.size[0]}x{args.size[1]}, "
                f"{args.frames} frames)")
            results["data"] = make_dataset(data, args.videos, args.copies, args.frames, args.size, args.codec)
        else:
            results["data"] = dict(root=data, reused=True)
    log(f"data: {results['data']}")
    save()
    budget_end = T0 + args.budget_s if args.budget_s else None

    def left() -> float:
        return args.timeout_s if budget_end is None else min(args.timeout_s, max(30.0, budget_end + 30 - time.time()))

    def soft(what: str, fn, *a, **k) -> dict:
        if budget_end is not None and time.time() > budget_end:
            log(f"{what}: skipped (budget of {args.budget_s:.0f}s spent)")
            results["skipped"].append(what)
            return dict(skipped=True)
        log(f"{what} ...")
        try:
            r = fn(*a, **k)
        except (RuntimeError, OSError, KeyError, ValueError, json.JSONDecodeError) as e:
            log(f"{what}: {type(e).__name__}: {str(e)[:400]}")
            return dict(error=f"{type(e).__name__}: {e}"[:2000])
        rate = r.get("steady_steps_per_s") or r.get("steady_videos_per_s")
        log(f"{what}: {'%.2f/s' % rate if rate else 'no steady rate'}, wall {r['wall_s']}s, util {r.get('util')}")
        return r

    counts = (1, None)
    if args.warm:   # one program per (command, device count) into the cache; both device counts at once
        log("warm-up: filling the compilation cache")

        def warm(n):
            env = device_env(n, args.cpu_devices, last=n == 1)
            env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")   # two processes share a GPU
            recs = []
            tag = "_warm"
            if args.train_model and args.train_modes:
                recs.append(soft(f"warm train {n or 'all'}", finetune, args, data, out, "memory", n, env, left(), tag))
            for model in args.eval_models:
                dec = args.eval_decoders[0] if args.eval_decoders else "cpu"
                recs.append(soft(f"warm eval {model} {n or 'all'}", evaluate, args, data, out, model, dec, n, env,
                                 left(), tag, limit=2 * args.eval_batch))
            results["warm"].extend(dict(devices=n or "all", **{k: v for k, v in r.items()
                                                              if k in ("kind", "model", "wall_s", "error")})
                                   for r in recs)

        threads = [threading.Thread(target=warm, args=(n,)) for n in counts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        save()

    def pair(what, fn, *a):
        return [soft(f"{what} on {n or 'all'} device(s)", fn, *a, n, device_env(n, args.cpu_devices), left())
                for n in counts]

    ok = True
    # the compute bound first, then the pipelines; evaluation of each model with each decoder
    plan = [("train", m) for m in args.train_modes if args.train_model]
    plan += [("eval", (model, dec)) for model in args.eval_models for dec in args.eval_decoders]
    plan.sort(key=lambda p: ({"memory": 0, "cpu": 1}.get(p[1], 3) if p[0] == "train" else
                             2 + (p[1][1] == "nvdec") + 2 * args.eval_models.index(p[1][0])))
    for kind, what in plan:
        if kind == "train":
            one, many = pair(f"train {args.train_model} {what}", finetune, args, data, out, what)
            row = dict(model=args.train_model, mode=what, one=one, all=many)
            if "losses" in one and "losses" in many:
                row["losses"] = compare_losses(one["losses"], many["losses"], args.loss_rtol)
                row["speedup"] = _ratio(one["steady_steps_per_s"], many["steady_steps_per_s"])
                ok &= row["losses"]["equal"]
            results["train"].append(row)
        else:
            model, dec = what
            one, many = pair(f"eval {model} {dec}", evaluate, args, data, out, model, dec)
            row = dict(model=model, decoder=dec, one=one, all=many)
            if "predictions" in one and "predictions" in many:
                row["predictions"] = compare_predictions(one.pop("predictions"), many.pop("predictions"), args.rtol)
                row["speedup"] = _ratio(one["steady_videos_per_s"], many["steady_videos_per_s"])
                ok &= row["predictions"]["equal"]
            one.pop("predictions", None)
            many.pop("predictions", None)
            results["eval"].append(row)
        ok &= not any("error" in r for r in (row["one"], row["all"]))
        save()
    memory = {r["one"].get("devices"): r["one"] for r in results["train"] if r["mode"] == "memory"}
    memory.update({r["all"].get("devices"): r["all"] for r in results["train"] if r["mode"] == "memory"})
    for row in results["train"]:   # each pipeline's rate as a fraction of the compute bound
        for side in ("one", "all"):
            r, m = row[side], memory.get(row[side].get("devices"), {})
            if r.get("steady_steps_per_s") and m.get("steady_steps_per_s"):
                r["of_compute_bound"] = r["steady_steps_per_s"] / m["steady_steps_per_s"]
    save()
    text = markdown(results)
    atomic_write(os.path.join(out, "scaling.md"), text)
    print(text, flush=True)
    return 0 if ok else 1


# ----------------------------------------------------------------------------- report
def _busy(r: dict) -> str:
    u = r.get("util")
    if not u:
        return "-"
    per = u.get("gpu_util_per_gpu") or {}
    return f"{u['gpu_util_mean']:.0f}%" + (f" ({'/'.join('%.0f' % v for v in per.values())})" if len(per) > 1 else "")


def _rate(r: dict, key: str, fmt: str) -> str:
    if "skipped" in r:
        return "skipped"
    if "error" in r:
        return "error"
    return fmt % r[key] if r.get(key) else "-"


def markdown(results: dict) -> str:
    e = results["env"]
    d = results["data"] or {}
    data = (f"{d['distinct']} distinct generated {d['codec']} videos x {d['copies']} copies ({d['files']} files), "
            f"{d['frames']} frames at 30 fps, {d['width']}x{d['height']}" if "distinct" in d else f"{d.get('root')}")
    v = e.get("versions") or {}
    lines = [f"# Scaling on {e['devices']} x {e['device']} ({e['platform']}), {e['date']}", "",
             f"`{e['command']}`", "",
             f"jax {e['jax']}, python {e['python']}, " + ", ".join(f"{k} {x}" for k, x in v.items() if k != "jax")
             + f"; {e.get('cpu_cores')} host cores; matmul precision {e.get('precision', 'default')}; commit "
             f"{(e.get('commit') or '?')[:12]}; data: {data}", "",
             "Rates are steady (after the first, compiling update or batch). GPU busy: `nvidia-smi`'s utilisation "
             "over the steady phase, mean of the GPUs used (per GPU in brackets). Of bound: the rate over the "
             "data-in-memory rate on as many devices.", "",
             "| run | model | input | batch | 1 device | all devices | speedup | GPU busy 1 / all | of bound 1 / all "
             "| equal |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["train"]:
        one, many = r["one"], r["all"]
        eq = r.get("losses")
        eqs = (f"{eq['equal']} (max rel. loss diff {eq['max_rel_diff']:.1e}, {eq['steps']} updates)"
               if eq and eq.get("max_rel_diff") is not None else "-")
        bound = " / ".join(f"{x['of_compute_bound']:.0%}" if x.get("of_compute_bound") else "-" for x in (one, many))
        lines.append(f"| fine-tuning (updates/s) | {r['model']} | {r['mode']} | {one.get('batch', many.get('batch', '-'))} | "
                     f"{_rate(one, 'steady_steps_per_s', '%.2f')} | {_rate(many, 'steady_steps_per_s', '%.2f')} | "
                     f"{'%.2fx' % r['speedup'] if r.get('speedup') else '-'} | {_busy(one)} / {_busy(many)} | "
                     f"{bound if r['mode'] != 'memory' else 'bound'} | {eqs} |")
    for r in results["eval"]:
        one, many = r["one"], r["all"]
        p = r.get("predictions")
        eqs = (f"{p['equal']} (top-5 same {p['same_top5']}/{p['videos']}, max rel. score diff "
               f"{p['max_rel_score_diff']:.1e})" if p and "same_top5" in p else (p or {}).get("reason", "-"))
        lines.append(f"| evaluation (videos/s) | {r['model']} | {r['decoder']} | {one.get('batch', many.get('batch', '-'))} | "
                     f"{_rate(one, 'steady_videos_per_s', '%.1f')} | {_rate(many, 'steady_videos_per_s', '%.1f')} | "
                     f"{'%.2fx' % r['speedup'] if r.get('speedup') else '-'} | {_busy(one)} / {_busy(many)} | - | {eqs} |")
    for r in results["train"] + results["eval"]:
        for side in ("one", "all"):
            if "error" in r[side]:
                lines.append(f"\nerror ({r['model']} {r.get('mode') or r.get('decoder')}, {side}): "
                             f"{r[side]['error'].splitlines()[0][:300]}")
    loaders = [(r, s) for r in results["train"] for s in ("one", "all") if r[s].get("loader_seconds")]
    if loaders:
        lines += ["", "Fine-tuning loader seconds over the whole run (first batch included): wait = the loop "
                  "waiting in `next()`, host = reading and collating, put = host-to-device placement; checkpoint = "
                  "the final save (outside the steady rate).", "",
                  "| input | devices | wait s | host s | put s | loop s | checkpoint s |", "|---|---|---|---|---|---|---|"]
        for r, s in loaders:
            ls = r[s]["loader_seconds"]
            lines.append(f"| {r['mode']} | {r[s]['devices']} | {ls.get('wait_s', 0):.2f} | {ls.get('host_s', 0):.2f} | "
                         f"{ls.get('put_s', 0):.2f} | {r[s].get('seconds') or 0:.1f} | {r[s].get('checkpoint_seconds') or 0:.2f} |")
    if results.get("skipped"):
        lines += ["", "Skipped (time budget): " + ", ".join(results["skipped"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
