"""Fine-tune (or train from scratch) an X3D clip model on a Kinetics-style video folder, with
Orbax checkpoints, exact resume and an ``.npz`` export usable as the continual CoX3D.

    python -m experiments.finetune --model x3d_s --weights W.npz --data DIR --num-classes N \\
        --steps S --batch-size B --out RUN_DIR [--optimizer sgd|adamw] [--lr LR] [--warmup W] \\
        [--bf16] [--save-every K] [--keep N]

Data: ``{DIR}/data/{split}/{label}/{name}.mp4`` (``co3d_jax.data.kinetics_folder``; ``--split``
defaults to ``train``), or with ``--source tfds`` the ``co3d_kinetics400`` TFDS dataset in ``DIR``
(``co3d_jax.data.tfds``); class index = sorted label names. Each sample is a random temporal window
of ``--num-frames`` frames at ``--sampling-rate`` (default: the model's clip), short-side scale
jitter, random crop, horizontal flip (``--no-flip`` for direction-sensitive labels).

Outputs in ``--out``: ``config.json`` (the run), ``metrics.jsonl`` (one line per update: step,
loss, accuracy, grad_norm, lr, epoch; deterministic values only), ``checkpoints/`` (Orbax
``CheckpointManager``: every ``--save-every`` updates and at the end, keeping ``--keep``),
``params.npz`` (the trained params, metadata ``arch`` and ``model_options`` incl.
``num_classes``) and ``summary.json``. Re-running the same command resumes from the latest
checkpoint and continues exactly as an uninterrupted run (bit-identical on CPU: the data order
and all augmentation/dropout randomness are functions of (seed, sample/step number), and the
checkpoint holds params, optimizer state, step and data position). A checkpoint restores onto any
device count (abstract target, then resharded). Ctrl-C / SIGTERM save a checkpoint and stop.

Use the result as the continual model: ``co3d_jax.load_params("RUN_DIR/params.npz", "cox3d_s_13")``;
``python -m experiments.evaluate --model cox3d_s_13 --weights RUN_DIR/params.npz --model-arg
num_classes=N ...``. See docs/finetuning.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import time

import numpy as np

from co3d_jax.extras import cli_main, require
from experiments._cli import (CliError, Interrupted, atomic_write, compile_responsive, dumps, exit_process,
                              file_sha256, make_out_dir, model_args, read_run_config)

METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
EXPORT = "params.npz"
BROKEN = "checkpoints.damaged"   # damaged checkpoint steps are moved here, not deleted
# options that do not change the training trajectory: they may differ between a run and its
# resumption (precise_bn only changes the export, so a finished run can be re-exported with it)
NON_SEMANTIC = {"out", "workers", "prefetch", "no_progress", "stop_after", "overwrite", "save_every", "keep",
                "log_every", "precise_bn", "decoder_threads", "decoder_procs"}


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from co3d_jax.models import names_help

    p = argparse.ArgumentParser(prog="python -m experiments.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", required=True, help=f"registry name of the clip model to train ({names_help()})")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="initial params (.npz); a projection of another class count is replaced")
    src.add_argument("--from-scratch", action="store_true", help="PySlowFast X3D initialisation")
    m.add_argument("--num-classes", type=int, help="classes of the new head (default: the classes in the data)")
    m.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra create_model option (repeatable), e.g. image_size=112, depth_factor=1.0")
    m.add_argument("--se-clip-pool", choices=["global", "frame"], default="global",
                   help="SE pool while training: global (X3D) or frame (what CoX3D computes per frame)")
    m.add_argument("--no-zero-init-final-bn", action="store_true",
                   help="--from-scratch: do not zero-init each residual branch's last BN (X3D recipe does)")
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True,
                   help="Kinetics-style root: {DIR}/data/{split}/{label}/*.mp4, or a TFDS data_dir with --source tfds")
    d.add_argument("--source", default="files", choices=["files", "tfds"],
                   help="files (default) or co3d_kinetics400 built by python -m co3d_jax.data.tfds")
    d.add_argument("--split", default="train")
    d.add_argument("--classes", default="dataset", choices=["dataset", "shipped"])
    d.add_argument("--num-frames", type=int, help="frames per clip (default: the model's clip length)")
    d.add_argument("--sampling-rate", type=int, help="30-fps frames between samples (default: the model's)")
    d.add_argument("--jitter", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="short-side scale jitter (default: X3D's ratios, [182, 228] for 160)")
    d.add_argument("--no-flip", action="store_true", help="no random horizontal flip")
    d.add_argument("--skip-padded", action="store_true",
                   help="fail a video shorter than the clip window instead of repeating its last frame "
                        "(padded samples are used and counted by default)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, required=True, help="number of updates")
    o.add_argument("--batch-size", type=int, default=8, help="global batch (a multiple of the device count)")
    o.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    o.add_argument("--lr", type=float, help="peak lr (default: sgd 0.1*B/128 as the X3D recipe, adamw 1e-3)")
    o.add_argument("--warmup", type=int, help="linear warmup steps (default: steps // 10)")
    o.add_argument("--warmup-start-lr", type=float, default=0.0)
    o.add_argument("--end-lr", type=float, default=0.0, help="cosine decay target")
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--no-nesterov", action="store_true")
    o.add_argument("--weight-decay", type=float, help="on kernels only (default: sgd 5e-5, adamw 0.05)")
    o.add_argument("--grad-clip", type=float, default=0.0, help="global-norm clip (0: off)")
    o.add_argument("--label-smoothing", type=float, default=0.0)
    o.add_argument("--dropout", type=float, default=0.5, help="before the projection (X3D: 0.5)")
    o.add_argument("--bf16", action="store_true", help="bf16 compute (params/optimizer/BN stats stay f32)")
    o.add_argument("--seed", type=int, default=0, help="data order, augmentation, dropout and init")
    o.add_argument("--precise-bn", type=int, default=0, metavar="N",
                   help="before export, recompute BN statistics over N training batches (PySlowFast precise BN)")
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, help="run folder (resumed if it holds the same run)")
    r.add_argument("--save-every", type=int, default=500, help="checkpoint period in updates")
    r.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    r.add_argument("--log-every", type=int, default=10, help="metrics fetched/written every N updates")
    r.add_argument("--workers", type=int, default=None, help="Grain decoding processes (0: in the main process)")
    r.add_argument("--prefetch", type=int, default=2, help="batches decoded ahead by the workers")
    r.add_argument("--decoder", default="cpu", choices=["cpu", "nvdec", "auto"],
                   help="cpu (default): Grain worker processes decode; nvdec: NVIDIA's hardware decoder in "
                        "--decoder-threads threads of this process, frames straight to the GPU, or in --decoder-procs "
                        "worker processes (one JAX process); "
                        "auto: nvdec where available, else cpu with a one-line notice")
    r.add_argument("--decoder-threads", type=int, default=4, help="--decoder nvdec: decoding threads (default 4)")
    r.add_argument("--decoder-procs", type=int, default=0,
                   help="--decoder nvdec/auto: decode in this many worker processes instead of threads (each its own "
                        "NVDEC decoder; frames to the host as NV12, converted on the GPU); 0 (default): threads")
    r.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    r.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    r.add_argument("--repeat-first-batch", action="store_true", help=argparse.SUPPRESS)  # benchmarks: compute bound
    r.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests: stop as if killed after N updates
    return p


def model_options(args) -> dict:
    opts = model_args(args.model_arg)
    for k in ("num_classes", "head_activation", "se_clip_pool"):
        if k in opts:
            raise SystemExit(f"--model-arg {k}=... is set by finetune itself (use --num-classes / --se-clip-pool)")
    return opts


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- metrics
def read_metrics(path: str, upto: int) -> list[str]:
    """Lines of ``metrics.jsonl`` for steps <= ``upto`` (a torn last line is dropped)."""
    if not os.path.exists(path):
        return []
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            if rec.get("step", 0) <= upto:
                keep.append(line if line.endswith("\n") else line + "\n")
    return keep


# ----------------------------------------------------------------------------- main
@cli_main
def main(argv=None) -> int:
    # Ctrl-C / SIGTERM only ask the run to stop (it stops at the next safe point: during the first
    # compile at once, later after the update under way, with a checkpoint)
    stop = {"signal": None}

    def _stop(signum, frame):
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _main(argv, stop)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)


def _main(argv, stop: dict) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.save_every < 1 or args.keep < 1 or args.log_every < 1:
        _log("--steps, --batch-size, --save-every, --keep and --log-every must be >= 1")
        return 2
    from co3d_jax.data.video import resolve_backend
    resolve_backend()   # missing optional packages are one line before any work (cli_main)
    if args.decoder_threads < 1 or args.decoder_procs < 0:
        _log("--decoder-threads must be >= 1 and --decoder-procs >= 0")
        return 2
    if args.source == "tfds":
        require("tensorflow_datasets", "tfds", "--source tfds")

    import jax

    video_decoder = args.decoder
    if video_decoder != "cpu":
        if jax.process_count() > 1:
            _log(f"--decoder {video_decoder} decodes in one process; this run has {jax.process_count()} "
                 "(use --decoder cpu)")
            return 2
        from co3d_jax.data.nvdec import resolve_decoder
        video_decoder = resolve_decoder(video_decoder)   # nvdec unavailable: one line; auto: cpu + notice

    import co3d_jax
    from co3d_jax import train as T
    from co3d_jax.data import augment as A
    from co3d_jax.checkpoint import CheckpointError, make_manager, restore_latest, save_checkpoint, set_aside
    from co3d_jax.data import open_dataset
    from co3d_jax.data.pipeline import default_workers
    from co3d_jax.data.train_loader import BatchLoader
    from co3d_jax.params import ParamsError, save_params

    # ---------------- data
    try:
        index = open_dataset("kinetics400", args.data, args.split, classes=args.classes, source=args.source)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        _log(str(e))
        return 2
    records = [r for r in index.records if r.label is not None]
    if not records:
        _log(f"no labelled videos in {args.data} split {index.split}")
        return 2
    num_classes = args.num_classes or len(index.classes)
    if max(r.label for r in records) >= num_classes:
        _log(f"--num-classes {num_classes} but the data has {len(index.classes)} classes")
        return 2

    # ---------------- model
    opts = model_options(args)
    opts["num_classes"] = num_classes
    train_opts = dict(opts, se_clip_pool="frame") if args.se_clip_pool == "frame" else dict(opts)
    try:
        model = co3d_jax.create_model(args.model, **train_opts)
    except (ValueError, TypeError) as e:
        _log(str(e))
        return 2
    mesh = T.data_mesh()
    ndev = mesh.devices.size
    if args.batch_size % ndev:
        _log(f"--batch-size {args.batch_size} is not a multiple of the {ndev} devices")
        return 2
    lr = args.lr if args.lr is not None else (0.1 * args.batch_size / 128 if args.optimizer == "sgd" else 1e-3)
    wd = args.weight_decay if args.weight_decay is not None else (5e-5 if args.optimizer == "sgd" else 0.05)
    warmup = args.warmup if args.warmup is not None else args.steps // 10
    try:
        cfg = T.TrainConfig(total_steps=args.steps, optimizer=args.optimizer, lr=lr,
                            warmup_steps=min(warmup, args.steps),
                            warmup_start_lr=args.warmup_start_lr, end_lr=args.end_lr, momentum=args.momentum,
                            nesterov=not args.no_nesterov, weight_decay=wd, grad_clip=args.grad_clip,
                            label_smoothing=args.label_smoothing, dropout=args.dropout,
                            compute_dtype="bfloat16" if args.bf16 else "float32", seed=args.seed)
    except ValueError as e:
        _log(str(e))
        return 2
    jitter = tuple(args.jitter) if args.jitter else A.TrainClipSpec.default_jitter(model.image_size)
    spec = A.TrainClipSpec(num_frames=args.num_frames or model.clip_length,
                           sampling_rate=args.sampling_rate or model.frame_rate, image_size=model.image_size,
                           jitter=jitter,
                           flip=not args.no_flip, mean=tuple(model.normalisation[0]), std=tuple(model.normalisation[1]))

    shapes = jax.eval_shape(model.init, jax.random.key(0))
    try:
        T.check_clip(model.net, shapes, spec.num_frames, model.image_size, args.model)
    except ValueError as e:
        _log(str(e))
        return 2

    # ---------------- run folder
    try:
        out = make_out_dir(args.out)
        old = read_run_config(os.path.join(out, "config.json")) if not args.overwrite else None
    except CliError as e:
        _log(str(e))
        return 2
    cfg_path, metrics_path = os.path.join(out, "config.json"), os.path.join(out, METRICS)
    ckpt_dir = os.path.join(out, CHECKPOINTS)
    if args.overwrite:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        for f in (cfg_path, metrics_path, os.path.join(out, EXPORT), os.path.join(out, "summary.json")):
            if os.path.exists(f):
                os.remove(f)
    signature = {k: v for k, v in sorted(vars(args).items()) if k not in NON_SEMANTIC}
    signature["weights_sha256"] = file_sha256(args.weights) if args.weights else None
    if signature.get("decoder") == "cpu":   # runs from before --decoder resume unchanged
        del signature["decoder"]
    config = dict(args=signature, model=args.model, model_options=opts, num_classes=num_classes,
                  classes=list(index.classes), num_videos=len(records), train=dataclasses.asdict(cfg),
                  clip=dataclasses.asdict(spec))
    config = json.loads(json.dumps(config))
    if old is not None:
        if old != config:
            diff = sorted(k for k in set(old.get("args", {})) | set(config["args"])
                          if old.get("args", {}).get(k) != config["args"].get(k)) or sorted(
                k for k in set(old) | set(config) if old.get(k) != config.get(k))
            _log(f"{out} holds a different run (differs in {', '.join(diff)}); use another --out or --overwrite")
            return 2
    atomic_write(cfg_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def stopped_before_training(where: str) -> bool:
        if stop["signal"] is None:
            return False
        _log(f"stopped by signal {stop['signal']} {where}; nothing to save (checkpoints untouched); re-run to resume")
        return True

    if stopped_before_training("before restoring the run"):
        return 130

    # ---------------- state: resume or initialise
    mngr = make_manager(ckpt_dir, args.keep)
    opt_shapes = jax.eval_shape(lambda p: T.init_opt_state(p, cfg), shapes)
    try:
        restored = restore_latest(mngr, shapes, opt_shapes, mesh)
    except CheckpointError as e:
        _log(f"{e}; pass --overwrite to start afresh")
        return 2
    seen = {}   # failed/padded videos of the updates done before the restored step
    if restored is not None:
        latest, params, opt_state, meta, broken = restored
        for bad, why in broken:
            moved = set_aside(mngr, bad, os.path.join(out, BROKEN))
            _log(f"warning: checkpoint step {bad} is damaged ({why}); moved to {moved}, using step {latest}")
        start = int(meta["step"])
        if start != latest or meta.get("seed") != args.seed:
            _log(f"checkpoint {latest} does not belong to this run (meta {meta})")
            return 2
        seen = dict(failed=meta.get("failed_videos", {}), padded=meta.get("padded_videos", {}))
        _log(f"resumed from step {start} (saved on {meta.get('num_devices')} device(s), now {ndev})")
    else:
        start = 0
        if args.from_scratch:
            params = T.init_for_training(model, args.seed, zero_init_final_bn=not args.no_zero_init_final_bn)
        else:
            try:
                params, info = T.load_pretrained(args.weights, model, args.seed)
            except ParamsError as e:
                _log(str(e))
                return 2
            if info["replaced_head"]:
                _log(f"new head: {info['checkpoint_classes']} -> {num_classes} classes (fresh projection)")
        params = T.replicate(params, mesh)
        opt_state = T.replicate(T.init_opt_state(params, cfg), mesh)
    lines = read_metrics(metrics_path, start)
    atomic_write(metrics_path, "".join(lines))

    if stopped_before_training("before training"):
        return 130

    # ---------------- train
    train_step = T.make_train_step(model.net, cfg, mesh, head=model.family.head)
    workers = default_workers() if args.workers is None else args.workers
    stop_at = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    dec = dict(decoder=video_decoder, decoder_threads=args.decoder_threads, decoder_procs=args.decoder_procs)
    # --repeat-first-batch (benchmarks.input_rates): the first batch, kept on the devices, for every
    # update: the same jitted step with no input pipeline behind it (the compute bound)
    loader = BatchLoader(records, spec, args.seed, args.batch_size, start, workers, args.prefetch,
                         allow_padding=not args.skip_padded, mesh=mesh,
                         stop=min(stop_at, start + 1) if args.repeat_first_batch else stop_at, **seen, **dec)
    held = None
    try:
        from tqdm import tqdm
    except ImportError:  # progress is optional
        tqdm = None
    bar = tqdm(total=args.steps, initial=start, disable=args.no_progress or tqdm is None, dynamic_ncols=True,
               desc="finetune") if tqdm else None
    pending: list = []
    t0, n_done = time.time(), 0
    last = {}
    diverged: dict = {}   # the first update whose loss, gradient or new params are not finite

    def flush():
        """Write the pending metrics; note the first non-finite update (checked before every save)."""
        if not pending:
            return
        host = jax.device_get([m for _, m in pending])
        with open(metrics_path, "a", encoding="utf-8") as f:
            for (s, _), m in zip(pending, host):
                bad = T.nonfinite(m)
                if bad and not diverged:
                    diverged.update(step=s, what=bad, loss=float(m["loss"]), grad_norm=float(m["grad_norm"]))
                rec = {"step": s, **{k: float(v) for k, v in sorted(m.items()) if k != "params_finite"},
                       "epoch": s * args.batch_size / len(records)}
                f.write(dumps(rec) + "\n")
                last.update(rec)
        pending.clear()
        if bar is not None and not diverged:
            bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['accuracy']:.3f}", lr=f"{last['lr']:.3g}")

    def meta_for(step):
        epoch, pos = divmod(step * args.batch_size, len(records))
        return dict(step=step, seed=args.seed, samples_seen=step * args.batch_size, epoch=epoch, epoch_position=pos,
                    num_videos=len(records), data_order="permutation(default_rng([seed, 1, epoch]))",
                    sample_rng="default_rng([seed, 2, sample])", dropout_rng="fold_in(key(seed), step)",
                    num_devices=ndev, failed_videos=dict(loader.failed), padded_videos=dict(loader.padded))

    step = start
    save_s = 0.0   # checkpoint saves inside the loop: not part of the steady update rate
    interrupted = False
    compiled = None
    try:
        while step < stop_at:
            if held is not None:
                xb, yb = held
            else:
                xb, yb = loader.next()   # on the mesh, augmented there
                if args.repeat_first_batch:
                    held = (xb, yb)
            if compiled is None:   # compiled aside, so a signal during the (long) first compile acts at once
                compiled = compile_responsive(train_step, params, opt_state, xb, yb, np.int32(step),
                                              stop=lambda: stop["signal"] is not None)
            params, opt_state, m = compiled(params, opt_state, xb, yb, np.int32(step))
            step += 1
            n_done += 1
            if n_done == 1:  # the first update includes compilation: steady rates start after it
                jax.block_until_ready(m)
                t_first = time.time()
            pending.append((step, m))
            save = step % args.save_every == 0 or step == args.steps
            signalled = stop["signal"] is not None
            if save or signalled or step % args.log_every == 0 or step == stop_at:
                flush()
            if bar is not None:
                bar.update(1)
            if diverged:
                break
            if save:
                t_s = time.time()
                save_checkpoint(mngr, step, params, opt_state, meta_for(step))
                save_s += time.time() - t_s
            if signalled:
                if not save:
                    save_checkpoint(mngr, step, params, opt_state, meta_for(step))
                _log(f"stopped by signal {stop['signal']} at step {step}; checkpoint saved, re-run to resume")
                interrupted = True
                break
    except Interrupted:
        kept = f"checkpoint of step {start} kept" if start else "no update was done, nothing to save"
        _log(f"stopped by signal {stop['signal']} while compiling the first update; {kept}; re-run to resume")
        interrupted = True
    finally:
        t_loop = time.time()
        flush()
        mngr.wait_until_finished()
        loader.close()
        if bar is not None:
            bar.close()
    t_end = time.time()
    elapsed = t_end - t0
    if diverged:
        good = mngr.latest_step()
        mngr.close()
        _log(f"stopped: update {diverged['step']} is not finite ({', '.join(diverged['what'])}; loss "
             f"{diverged['loss']}, grad_norm {diverged['grad_norm']}); "
             + (f"the last good checkpoint is step {good}" if good is not None else "no checkpoint was saved")
             + "; nothing exported. Lower --lr, set --grad-clip or check the data, then re-run "
             "(with --overwrite to restart, or a new --out)")
        return 3
    if interrupted:
        return 130
    if step < args.steps:  # --stop-after: as if killed (no final checkpoint, no export)
        mngr.close()
        return 0

    # ---------------- export
    if mngr.latest_step() != args.steps:
        save_checkpoint(mngr, step, params, opt_state, meta_for(step))
        mngr.wait_until_finished()
    mngr.close()
    if args.precise_bn > 0:   # batches after the training ones: deterministic, also on a re-export
        bn_loader = BatchLoader(records, spec, args.seed, args.batch_size, args.steps, workers, args.prefetch,
                                allow_padding=not args.skip_padded, mesh=mesh, stop=args.steps + args.precise_bn,
                                **dec)
        try:
            params = T.precise_bn(model.net, params, (bn_loader.next() for _ in range(args.precise_bn)), mesh)
        finally:
            bn_loader.close()
        loader.failed.update(bn_loader.failed)
        for rid, n in bn_loader.padded.items():
            loader.padded[rid] = loader.padded.get(rid, 0) + n
    host = jax.tree.map(np.asarray, jax.device_get(params))
    export_opts = {k: v for k, v in opts.items() if k not in ("window",)}
    meta = {"arch": args.model, "model_options": json.dumps(export_opts, sort_keys=True),
            "classes": json.dumps(list(index.classes)), "steps": args.steps, "source": "experiments.finetune"}
    save_params(os.path.join(out, EXPORT), host, metadata=meta)
    lines = read_metrics(metrics_path, args.steps)
    tail = [json.loads(line) for line in lines[-max(args.log_every, 1):]]
    summary = dict(steps=args.steps, resumed_from=start if start else None, devices=ndev,
                   final_loss=float(np.mean([r["loss"] for r in tail])) if tail else None,
                   final_accuracy=float(np.mean([r["accuracy"] for r in tail])) if tail else None,
                   seconds=elapsed, steps_per_s=n_done / elapsed if elapsed > 0 else None,
                   clips_per_s=n_done * args.batch_size / elapsed if elapsed > 0 else None,
                   steady_steps_per_s=(n_done - 1) / (t_loop - t_first - save_s) if n_done > 1 else None,
                   steady_from=t_first if n_done > 1 else None,   # time.time(): the steady phase's start
                   checkpoint_seconds=save_s + (t_end - t_loop),
                   loader_seconds={k: v for k, v in loader.stats.items() if k != "batches"},
                   decoder=video_decoder, workers=workers if video_decoder == "cpu" else 0,
                   decoder_threads=args.decoder_threads if video_decoder != "cpu" else None,
                   decoder_procs=args.decoder_procs if video_decoder != "cpu" else None,
                   failed_videos=loader.failed, padded_videos=loader.padded,
                   padded_samples=sum(loader.padded.values()), skipped_files=list(index.skipped),
                   export=os.path.join(out, EXPORT))
    atomic_write(os.path.join(out, "summary.json"), dumps(summary, indent=2, sort_keys=True) + "\n")
    _log(f"done: {args.steps} steps, final loss {summary['final_loss']}, params -> {summary['export']}")
    return 0


if __name__ == "__main__":
    exit_process(main())
