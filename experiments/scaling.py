"""Multi-device scaling: sharded evaluation and data-parallel fine-tuning on 1 and on N devices.

    python -m experiments.scaling --out results/scaling_h100x2 [--videos 128] [--data DIR]

1. Unless ``--data`` is given, writes a generated Kinetics-style dataset (``--videos`` mpeg4
   clips of moving patterns in 4 classes, ``{DIR}/data/validate/{class}/*.mp4``) on local disk.
2. Evaluates each of ``--eval-models`` (random weights, 4 classes) with ``experiments.evaluate`` on
   1 device and on all N devices, each in its own process: the predictions must be equal (scores
   to ``--rtol``) and the steady evaluation rate (videos/s after the first batch, which includes
   compilation) is compared.
3. Fine-tunes ``--train-model`` from scratch for ``--steps`` updates with ``experiments.finetune``
   on 1 and N devices with the same seed and global batch: the loss curves must agree to
   ``--loss-rtol`` (float rounding differs with the reduction order) and steps/s are compared.

One device is ``CUDA_VISIBLE_DEVICES=<first>`` on GPUs; on CPU (``--cpu-devices N``) the devices
are forced host devices, for trying the script without accelerators. Writes ``scaling.json``
(environment, every run, the comparisons) and ``scaling.md`` in ``--out``; exits 1 if a
comparison fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from co3d_jax.extras import cli_main
from experiments._cli import atomic_write

CLASSES = ("archery", "bowling", "capoeira", "dancing ballet")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_dataset(root: str, videos: int, frames: int = 90, size: tuple = (240, 320), seed: int = 0) -> None:
    """``videos`` generated clips in the Kinetics folder layout below ``root`` (PyAV, mpeg4)."""
    from co3d_jax.data.video import encode_video
    from co3d_jax.data.synthetic import moving_pattern

    h, w = size
    for i in range(videos):
        label = CLASSES[i % len(CLASSES)]
        d = os.path.join(root, "data", "validate", label)
        os.makedirs(d, exist_ok=True)
        pattern = moving_pattern(frames, max(h, w), seed=seed + i)[:, :h, :w]
        encode_video(os.path.join(d, f"vid{i:05d}xxx_000000_000010.mp4"), np.ascontiguousarray(pattern))


def device_env(n: int | None, cpu_devices: int) -> dict:
    """Environment for a child that sees ``n`` devices (None: all)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    if cpu_devices:
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n or cpu_devices}")
    elif n is not None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        env["CUDA_VISIBLE_DEVICES"] = ",".join((visible.split(",") if visible else [str(i) for i in range(n)])[:n])
    return env


def probe(env: dict) -> dict:
    """Device count, kind and versions as a child process sees them (the parent never imports jax,
    so it holds no accelerator memory)."""
    code = ("import json, platform, jax; d = jax.devices(); print(json.dumps(dict(platform=d[0].platform, "
            "device=d[0].device_kind, devices=len(d), jax=jax.__version__, python=platform.python_version())))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(module: str, argv: list, env: dict, log: str) -> float:
    """``python -m module argv`` with ``env``; stderr to ``log``; returns wall seconds, raises on failure."""
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, "-m", module, *argv], env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        with open(log) as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{module} failed (exit {p.returncode}); log {log}:\n{tail}")
    return time.time() - t0




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
    return dict(equal=bool(worst <= rtol), videos=len(a) - len(failed), failed=len(failed),
                max_rel_score_diff=worst, same_top5=top5)


def evaluate(model: str, data: str, out: str, n: int | None, args) -> dict:
    from co3d_jax.predictions import read_predictions
    tag = f"{model}_{'all' if n is None else n}dev"
    d = os.path.join(out, "runs", f"eval_{tag}")
    argv = ["--model", model, "--random-weights", "--seed", "0", "--model-arg", f"num_classes={len(CLASSES)}",
            "--root", data, "--out", d, "--overwrite", "--batch-size", str(args.eval_batch), "--no-progress",
            "--save-scores", "--workers", str(args.workers)]
    wall = run("experiments.evaluate", argv, device_env(n, args.cpu_devices), os.path.join(out, "runs", f"eval_{tag}.log"))
    with open(os.path.join(d, "timing.json")) as f:
        timing = json.load(f)
    return dict(kind="eval", model=model, devices=timing["devices"], batch=timing["batch"], wall_s=wall,
                elapsed_s=timing["elapsed_s"], steady_videos_per_s=timing.get("steady_videos_per_s"),
                videos=timing["videos_this_run"], predictions=read_predictions(d))


def finetune(model: str, data: str, out: str, n: int | None, args) -> dict:
    tag = f"{model}_{'all' if n is None else n}dev"
    d = os.path.join(out, "runs", f"train_{tag}")
    argv = ["--model", model, "--from-scratch", "--data", data, "--split", "validate", "--steps", str(args.steps),
            "--batch-size", str(args.train_batch), "--out", d, "--overwrite", "--no-progress", "--seed", "0",
            "--workers", str(args.workers), "--save-every", str(args.steps), "--log-every", "1"]
    wall = run("experiments.finetune", argv, device_env(n, args.cpu_devices), os.path.join(out, "runs", f"train_{tag}.log"))
    with open(os.path.join(d, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(d, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f]
    return dict(kind="train", model=model, devices=summary["devices"], batch=args.train_batch, wall_s=wall,
                steps_per_s=summary["steps_per_s"], steady_steps_per_s=summary.get("steady_steps_per_s"),
                losses=losses)


def _ratio(a, b):
    return None if not a or not b else b / a


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.scaling", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="results folder (scaling.json, scaling.md, runs/)")
    ap.add_argument("--data", help="Kinetics-style root to use instead of generating one")
    ap.add_argument("--videos", type=int, default=128, help="generated videos (default 128)")
    ap.add_argument("--eval-models", default="x3d_m,cox3d_m_64")
    ap.add_argument("--eval-batch", type=int, default=32, help="global evaluation batch")
    ap.add_argument("--train-model", default="x3d_s", help="'' to skip fine-tuning")
    ap.add_argument("--train-batch", type=int, default=16, help="global batch (a multiple of the devices)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)),
                    help="decoding processes per run")
    ap.add_argument("--rtol", type=float, default=1e-4, help="predictions: max score difference / max score")
    ap.add_argument("--loss-rtol", type=float, default=1e-3, help="fine-tuning: loss curves' relative difference")
    ap.add_argument("--cpu-devices", type=int, default=0, help="try on CPU with this many forced host devices")
    ap.add_argument("--precision", default="default", choices=["default", "high", "highest"],
                    help="jax_default_matmul_precision of every run (GPU default: TF32 convolutions, whose "
                         "rounding differs between batch shapes by ~1e-3; 'highest' for equality checks)")
    return ap


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.precision != "default":
        os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = args.precision   # inherited by every child run
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    env_all = probe(device_env(None, args.cpu_devices))
    if env_all["devices"] < 2:
        print(f"error: {env_all['devices']} device(s) visible; scaling needs at least 2", file=sys.stderr)
        return 2
    data = args.data or os.path.join(out, "data")
    if not args.data and not os.path.isdir(os.path.join(data, "data")):
        make_dataset(data, args.videos)
    results = dict(env=dict(env_all, precision=args.precision, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            command=" ".join([os.path.basename(sys.executable), "-m", "experiments.scaling", *(argv or sys.argv[1:])])),
                   data=data if args.data else f"generated: {args.videos} videos, 90 frames, 240x320, mpeg4",
                   eval=[], train=[])
    ok = True

    def save():
        atomic_write(os.path.join(out, "scaling.json"), json.dumps(results, indent=1))

    for model in filter(None, args.eval_models.split(",")):
        one, many = (evaluate(model, data, out, n, args) for n in (1, None))
        cmp = compare_predictions(one.pop("predictions"), many.pop("predictions"), args.rtol)
        ok &= cmp["equal"]
        results["eval"].append(dict(model=model, one=one, all=many, predictions=cmp,
                                    speedup=_ratio(one["steady_videos_per_s"], many["steady_videos_per_s"])))
        print(json.dumps(results["eval"][-1]), flush=True)
        save()
    if args.train_model:
        one, many = (finetune(args.train_model, data, out, n, args) for n in (1, None))
        a, b = np.asarray(one["losses"]), np.asarray(many["losses"])
        diff = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12))) if a.shape == b.shape else None
        equal = diff is not None and diff <= args.loss_rtol
        ok &= equal
        results["train"].append(dict(model=args.train_model, one=one, all=many,
                                     losses=dict(equal=equal, max_rel_diff=diff, steps=len(a)),
                                     speedup=_ratio(one["steady_steps_per_s"], many["steady_steps_per_s"])))
        print(json.dumps(results["train"][-1]), flush=True)
    save()
    atomic_write(os.path.join(out, "scaling.md"), markdown(results))
    print(markdown(results))
    return 0 if ok else 1


def markdown(results: dict) -> str:
    e = results["env"]
    lines = [f"# Scaling on {e['devices']} x {e['device']} ({e['platform']}), jax {e['jax']}, {e['date']}, "
             f"matmul precision {e.get('precision', 'default')}", "",
             f"`{e['command']}`; data: {results['data']}", "",
             "| run | model | batch | 1 device | all devices | speedup | equal |", "|---|---|---|---|---|---|---|"]
    for r in results["eval"]:
        lines.append(f"| evaluation (videos/s, steady) | {r['model']} | {r['all']['batch']} | "
                     f"{r['one']['steady_videos_per_s'] or 0:.1f} | {r['all']['steady_videos_per_s'] or 0:.1f} | "
                     f"{r['speedup'] or 0:.2f}x | {r['predictions']['equal']} (max rel. score diff "
                     f"{r['predictions'].get('max_rel_score_diff', float('nan')):.1e}) |")
    for r in results["train"]:
        lines.append(f"| fine-tuning (steps/s, steady) | {r['model']} | {r['one']['batch']} | "
                     f"{r['one']['steady_steps_per_s'] or 0:.2f} | {r['all']['steady_steps_per_s'] or 0:.2f} | "
                     f"{r['speedup'] or 0:.2f}x | {r['losses']['equal']} (max rel. loss diff "
                     f"{r['losses']['max_rel_diff'] if r['losses']['max_rel_diff'] is not None else float('nan'):.1e}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
