"""Evaluate a clip or continual model on Kinetics-400 or Charades with the reference protocols.

    python -m experiments.evaluate --model cox3d_s_64 --weights W.npz --dataset kinetics400 \\
        --root DIR --split validate --out RESULTS_DIR [--limit N] [--batch-size B] [--workers N]

Protocols (reference §5.2-5.3):

* clip models (``x3d_*``): one centred clip of ``model.clip_length`` frames at ``model.frame_rate``
  -> ``forward``. ``--frame-delay n`` samples ``T+n`` frames and drops the first ``n``.
* continual models (``cox3d_*``), ``init_frame``: a fresh state, ``num_init + F`` frames sampled at
  the clip model's rate with ``num_init = max(D, frame_delay-1)`` (``D = model.delay``, ``F =
  --num-forward-frames``), the first ``num_init`` consumed by ``Model.prefill`` and the rest stepped
  (``Model.prefill_stream``, equal to stepping them all); the prediction is the mean of the valid
  step outputs at frames ``num_init .. num_init+F-1`` (by default the output at frame ``D``).

Outputs in ``--out``: ``config.json`` (what was run), ``predictions.jsonl`` (one line per video,
appended as batches finish; failed videos too), ``summary.json`` and ``summary.csv`` (written
atomically at the end). Re-running the same command resumes: videos already in the predictions
file are skipped, and the summary is recomputed from the file, so it equals an uninterrupted run's.
The batch is sharded over all devices (``NamedSharding`` over a 1-D ``data`` mesh). Videos are read
through the input pipeline fine-tuning shares (``co3d_jax.data.eval_loader.EvalLoader``: Grain worker
processes decode, the devices resize, crop and normalise, one batch ahead); ``--decoder nvdec``
decodes on the GPU instead (threads of this process, the same samples); see docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import os
import signal
import sys
import time
import warnings

import numpy as np

from co3d_jax.extras import cli_main, require
from experiments._cli import (CliError, atomic_write, compile_responsive, dumps, exit_process, file_sha256,
                              make_out_dir, model_args, read_run_config)


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from co3d_jax.models import names_help

    p = argparse.ArgumentParser(prog="python -m experiments.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", required=True, help=f"registry name ({names_help()})")
    m.add_argument("--weights", help="parameter file (.npz from weight_port / co3d_jax.save_params)")
    m.add_argument("--random-weights", action="store_true",
                   help="evaluate random parameters (smoke runs; never the default)")
    m.add_argument("--seed", type=int, default=0, help="PRNG seed for --random-weights")
    m.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra create_model option (repeatable), e.g. image_size=32, num_classes=3")
    m.add_argument("--window", type=int, help="continual head window: builds cox3d_<size>_<window>")
    m.add_argument("--temporal-fill", choices=["zeros", "replicate"], help="continual padding fill (model option)")
    m.add_argument("--num-forward-frames", type=int, default=1, help="continual: outputs averaged per video (default 1)")
    m.add_argument("--frame-delay", type=int, default=None,
                   help="continual: co3d_forward_frame_delay (num_init = max(D, n-1)); clip: sample T+n frames, drop n")
    m.add_argument("--sampling-rate", type=int, help="override the model's frame rate (30-fps frames between samples)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="kinetics400", choices=["kinetics400", "charades"])
    d.add_argument("--root", required=True,
                   help="dataset root (folder layout), clips folder (with --annotations) or TFDS data_dir (--source tfds)")
    d.add_argument("--source", default="files", choices=["files", "tfds"],
                   help="files (default) or a TFDS dataset built by python -m co3d_jax.data.tfds (needs tensorflow-datasets)")
    d.add_argument("--split", default="validate", help="validate (val) or test; Charades: val")
    d.add_argument("--annotations", help="Kinetics official CSV (label,youtube_id,time_start,time_end,split)")
    d.add_argument("--classes", default="dataset", choices=["dataset", "shipped"],
                   help="class index: sorted labels present (reference) or the shipped 400 Kinetics names")
    d.add_argument("--limit", type=int, help="evaluate only the first N videos (dataset order)")
    d.add_argument("--decoder", default="cpu", choices=["cpu", "nvdec", "auto", "pyav", "opencv"],
                   help="cpu (default): Grain worker processes decode with --cpu-decoder; nvdec: NVIDIA's hardware "
                        "decoder in --decoder-threads threads of this process, frames straight to the GPU, or in "
                        "--decoder-procs worker processes (one JAX process); auto: nvdec where available, else cpu with a one-line notice. pyav/opencv: "
                        "cpu with that --cpu-decoder (the option's former meaning)")
    d.add_argument("--cpu-decoder", default="auto", choices=["auto", "pyav", "opencv"],
                   help="the CPU decoder's library (default auto: PyAV, else OpenCV)")
    d.add_argument("--decoder-threads", type=int, default=4, help="--decoder nvdec: decoding threads (default 4)")
    d.add_argument("--decoder-procs", type=int, default=0,
                   help="--decoder nvdec/auto: decode in this many worker processes instead of threads (each its own "
                        "NVDEC decoder; frames to the host as NV12, converted on the GPU); 0 (default): threads")
    d.add_argument("--skip-padded", action="store_true",
                   help="fail a video shorter than the clip instead of repeating its last frame (padded clips "
                        "are scored and counted by default)")
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, help="results folder (created; resumed if it holds a matching run)")
    r.add_argument("--batch-size", type=int, default=8, help="global batch (rounded up to a multiple of the devices)")
    r.add_argument("--workers", type=int, default=None,
                   help="Grain decoding processes (0: decode in the main process; default: cores - 1, at most 8)")
    r.add_argument("--save-scores", action="store_true", help="store every class score per video (always for Charades)")
    r.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    r.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    r.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    r.add_argument("--coordinator", help="multi-host coordinator address (else auto-detected)")
    r.add_argument("--num-processes", type=int)
    r.add_argument("--process-id", type=int)
    return p


def model_options(args) -> dict:
    opts = model_args(args.model_arg)
    if args.temporal_fill:
        opts["temporal_fill"] = args.temporal_fill
    return opts


def model_name(args) -> str:
    """``--model``, with the head window ``--window`` where given (the family spec renames it)."""
    name = args.model
    if args.window is not None:
        from co3d_jax.models import family_of
        try:
            family = family_of(name)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        windowed = family.renamed(name, window=args.window)
        if windowed is None or not family.create(name).continual:
            raise SystemExit(f"--window applies to continual models with a head window ({name!r} is not one)")
        name = windowed
    return name


# ----------------------------------------------------------------------------- protocol
@dataclasses.dataclass(frozen=True)
class Protocol:
    mode: str              # "clip" or "init_frame"
    num_frames: int        # frames sampled per video
    sampling_rate: int
    drop_first: int        # clip: frames dropped after sampling
    first_output: int      # init_frame: first step output used
    num_outputs: int       # init_frame: outputs averaged

    @property
    def model_frames(self) -> int:
        return self.num_frames - self.drop_first


def make_protocol(model, args) -> Protocol:
    rate = args.sampling_rate or model.frame_rate
    if model.continual:
        if args.num_forward_frames < 1:
            raise SystemExit("--num-forward-frames must be >= 1")
        ffd = -1 if args.frame_delay is None else args.frame_delay
        num_init = max(model.delay, ffd - 1)
        return Protocol("init_frame", num_init + args.num_forward_frames, rate, 0, num_init, args.num_forward_frames)
    delay = args.frame_delay or 0
    if delay < 0:
        raise SystemExit("--frame-delay must be >= 0 for clip models")
    return Protocol("clip", model.clip_length + delay, rate, delay, 0, 1)


def random_params(model, seed: int = 0) -> dict:
    """Fast random parameters with the model's exact structure (numpy; ``model.init`` runs every
    initialiser eagerly and takes minutes on a CPU for X3D). Kernels: normal with fan-in
    scaling; BatchNorm near identity with a little noise (the residual branches' last BN scaled
    by 0.1, as zero-init of that BN does in training); biases small."""
    import jax
    from co3d_jax.params import flatten, unflatten

    shapes = flatten(jax.eval_shape(model.init, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    out = {}
    for key, sd in sorted(shapes.items()):
        shape, leaf = tuple(sd.shape), key.rsplit("/", 1)[-1]
        if leaf == "var":
            v = rng.uniform(0.5, 1.5, shape)
        elif leaf == "scale":   # residual branches' last BN damped, so deep nets stay finite
            v = rng.uniform(0.5, 1.5, shape) * (0.1 if key.endswith("c_bn/scale") else 1.0)
        elif leaf in ("mean", "bias"):
            v = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[:-1])) or 1
            v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        out[key] = np.asarray(v, dtype=sd.dtype)
    return unflatten(out)


@functools.lru_cache(maxsize=8)
def compiled_predict(model, protocol, mesh):
    """The jitted, sharded predict function (cached: repeated runs in one process reuse it)."""
    from jax.sharding import PartitionSpec as P

    from co3d_jax.mesh import jit_per_example

    # per device (shard_map): every clip's or stream's scores are its own, and the fused kernels run on
    # each device's shard (a GSPMD jit would gather a Pallas call's operands onto every device)
    return jit_per_example(make_predict_fn(model, protocol), mesh, in_specs=(P(), P("data")),
                           out_specs=(P("data"), P("data")))


def make_predict_fn(model, protocol: Protocol):
    """``f(params, frames (B, T, S, S, 3)) -> (scores (B, K), ok (B,))``, not jitted."""
    import jax.numpy as jnp

    if protocol.mode == "clip":
        def f(params, frames):
            scores = model.forward(params, frames)
            return scores, jnp.ones(scores.shape[:1], bool)
        return f

    lo, n = protocol.first_output, protocol.num_outputs

    def f(params, frames):  # the first num_init frames by one clip-mode prefill, the rest stepped
        _, out = model.prefill_stream(params, frames, lo, frames.dtype)
        s = out.scores[:, lo:lo + n]
        v = out.valid[:, lo:lo + n]
        w = v.astype(s.dtype)
        cnt = jnp.sum(w, axis=1)
        scores = jnp.sum(s * w[..., None], axis=1) / jnp.maximum(cnt, 1)[:, None]
        return scores, cnt > 0
    return f


# ----------------------------------------------------------------------------- summary
def summarise(config: dict, items, done: dict, index, batch_size: int) -> dict:
    recs = [done[r.id] for _, r in items if r.id in done]
    ok = [r for r in recs if "error" not in r]
    failed = [dict(id=r["id"], error=r["error"]) for r in recs if "error" in r]
    padded = [dict(id=r["id"], padded=r["padded"]) for r in ok if r.get("padded")]
    from co3d_jax.data import metrics as M

    result: dict = {}
    if index.multilabel:
        labelled = [r for r in ok if r.get("label") is not None]
        if labelled:
            scores = np.array([r["scores"] for r in labelled], np.float64)
            targets = np.zeros_like(scores)
            for i, r in enumerate(labelled):
                targets[i, list(r["label"])] = 1
            m, aps = M.mean_average_precision(scores, targets)
            result = dict(mAP=m, classes_with_positives=int(np.sum(~np.isnan(aps))), num_labelled=len(labelled))
    else:
        ranks = [r["rank"] for r in ok if r.get("rank") is not None]
        result = {f"top{k}": M.topk_accuracy(ranks, k) for k in (1, 3, 5)}
        result.update({f"top{k}_batch_mean": M.batch_mean_accuracy(ranks, k, batch_size) for k in (1, 3, 5)})
        result["batch_size_for_batch_mean"] = batch_size
        result["num_labelled"] = len(ranks)
    return dict(
        config=config,
        complete=len(recs) == len(items),
        num_videos=len(items),
        num_evaluated=len(ok),
        num_failed=len(failed),
        num_padded=len(padded),
        num_missing=len(index.missing),
        num_skipped=len(index.skipped),
        num_pending=len(items) - len(recs),
        metrics=result,
        metrics_note=("topK: sample-weighted accuracy over evaluated videos; topK_batch_mean: the reference's "
                      "mean of per-batch accuracies over consecutive batches of batch_size_for_batch_mean "
                      "evaluated videos in dataset order" if not index.multilabel else
                      "mAP: mean per-class average precision over classes with a positive"),
        failed=failed,
        padded=padded,
        padded_note="evaluated videos shorter than the clip, scored with their last frame repeated `padded` "
                    "times (--skip-padded fails them instead)",
        missing=[m["id"] for m in index.missing],
        skipped=list(index.skipped),
        classes=list(index.classes),
    )


def summary_csv(summary: dict) -> str:
    cfg = summary["config"]
    row = dict(model=cfg["model"], weights=cfg["weights"], dataset=cfg["dataset"], split=cfg["split"],
               protocol=cfg["protocol"]["mode"], frames=cfg["protocol"]["num_frames"],
               sampling_rate=cfg["protocol"]["sampling_rate"], num_videos=summary["num_videos"],
               num_evaluated=summary["num_evaluated"], num_failed=summary["num_failed"],
               num_padded=summary["num_padded"], num_missing=summary["num_missing"],
               num_skipped=summary["num_skipped"], complete=summary["complete"])
    row.update({k: v for k, v in summary["metrics"].items()})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
    w.writeheader()
    w.writerow(row)
    return buf.getvalue()


# ----------------------------------------------------------------------------- main
def _log(msg: str) -> None:
    print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.weights and not args.random_weights:
        _log("refusing to evaluate without --weights (pass --random-weights for a smoke run with random parameters)")
        return 2
    if args.weights and args.random_weights:
        _log("--weights and --random-weights are exclusive")
        return 2
    if args.batch_size < 1:
        _log("--batch-size must be >= 1")
        return 2
    if args.limit is not None and args.limit < 1:
        _log("--limit must be >= 1 (leave it out to evaluate every video)")
        return 2
    if args.source == "tfds" and args.annotations:
        _log("--annotations applies to --source files (a TFDS dataset carries its own index)")
        return 2
    # optional packages before any work: a missing one is one line (cli_main)
    from co3d_jax.data.video import resolve_backend
    video_decoder = args.decoder
    if args.decoder in ("pyav", "opencv"):
        video_decoder, args.cpu_decoder = "cpu", args.decoder
    decoder = resolve_backend(args.cpu_decoder)
    if args.decoder_threads < 1 or args.decoder_procs < 0:
        _log("--decoder-threads must be >= 1 and --decoder-procs >= 0")
        return 2
    require("grain", "data", "evaluation's input pipeline")
    if args.source == "tfds":
        require("tensorflow_datasets", "tfds", "--source tfds")
    if args.workers is not None and args.workers < 0:
        _log("--workers must be >= 0")
        return 2

    import jax

    if video_decoder != "cpu":
        if args.distributed:
            _log(f"--decoder {video_decoder} decodes in one process: not with --distributed (use --decoder cpu)")
            return 2
        from co3d_jax.data.nvdec import resolve_decoder
        video_decoder = resolve_decoder(video_decoder)   # nvdec unavailable: one line; auto: cpu + notice

    if args.distributed:
        kw = {k: v for k, v in dict(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                    process_id=args.process_id).items() if v is not None}
        # CPU processes exchange the end-of-run barrier through Gloo (GPU/TPU clients ignore this).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**kw)

    import co3d_jax
    from co3d_jax.data import ClipSpec, EvalLoader, label_rank, open_dataset
    from co3d_jax.data.datasets import ClassCountWarning
    from co3d_jax.data.pipeline import default_workers
    from co3d_jax.predictions import PREDICTIONS, prediction_files, read_predictions, repair_tail
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    # ---------------- model
    name = model_name(args)
    opts = model_options(args)
    try:
        model = co3d_jax.create_model(name, **opts)
    except (ValueError, TypeError) as e:
        _log(str(e))
        return 2
    if args.window is not None and not model.continual:
        _log("--window needs a continual model")
        return 2
    if args.temporal_fill and not model.continual:
        _log("--temporal-fill applies to continual models")
        return 2
    protocol = make_protocol(model, args)
    if args.weights:
        from co3d_jax.params import ParamsError
        try:
            params = co3d_jax.load_params(args.weights, model)
        except ParamsError as e:
            _log(str(e))
            return 2
        weights_id = dict(path=os.path.abspath(args.weights), sha256=file_sha256(args.weights))
        weights_name = os.path.abspath(args.weights)
    else:
        params = random_params(model, args.seed)
        weights_id = dict(random_seed=args.seed)
        weights_name = f"random(seed={args.seed})"

    # ---------------- data
    try:
        with warnings.catch_warnings():  # said once below, with the model's class count
            warnings.simplefilter("ignore", ClassCountWarning)
            index = open_dataset(args.dataset, args.root, args.split, args.annotations, args.classes, args.source)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        _log(f"cannot read the dataset: {e}")
        return 2
    if len(index.classes) > model.num_classes:
        _log(f"the dataset has {len(index.classes)} classes but the model predicts {model.num_classes}")
        return 2
    if len(index.classes) < model.num_classes and args.dataset == "kinetics400":
        _log(f"warning: {len(index.classes)} classes present, model has {model.num_classes}: labels index the "
             "sorted present classes (reference behaviour); use --classes shipped for the full list")
    spec = ClipSpec(num_frames=protocol.num_frames, sampling_rate=protocol.sampling_rate,
                    image_size=model.image_size, mean=tuple(model.normalisation[0]),
                    std=tuple(model.normalisation[1]), decoder=decoder, drop_first=protocol.drop_first,
                    kind="frames" if args.dataset == "charades" else "video", allow_padding=not args.skip_padded)
    records = index.records[: args.limit] if args.limit is not None else index.records
    items = list(enumerate(records))

    config = dict(model=name, model_options=opts, weights=weights_name, weights_id=weights_id,
                  dataset=args.dataset, root=os.path.abspath(args.root), source=args.source, split=index.split,
                  layout=index.layout,
                  annotations=os.path.abspath(args.annotations) if args.annotations else None,
                  classes=args.classes, num_classes=len(index.classes), decoder=decoder,
                  protocol=dict(dataclasses.asdict(protocol), image_size=model.image_size,
                                normalisation=[list(model.normalisation[0]), list(model.normalisation[1])],
                                delay=model.delay if model.continual else None),
                  save_scores=bool(args.save_scores or index.multilabel), skip_padded=args.skip_padded)
    if video_decoder != "cpu":   # NVDEC's pixels may differ (docs/nvdec.md): a resume keeps the decoder
        config["video_decoder"] = "nvdec"

    # ---------------- output folder / resume
    pid, nproc = jax.process_index(), jax.process_count()
    try:
        out = make_out_dir(args.out)
    except CliError as e:
        _log(str(e))
        return 2
    cfg_path = os.path.join(out, "config.json")
    if args.overwrite and pid == 0:
        for f in prediction_files(out) + [cfg_path, os.path.join(out, "summary.json"), os.path.join(out, "summary.csv")]:
            if os.path.exists(f):
                os.remove(f)
    try:
        old = read_run_config(cfg_path) if prediction_files(out) else None
    except CliError as e:
        _log(str(e))
        return 2
    if old is not None:
        if old != json.loads(json.dumps(config)):
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != json.loads(json.dumps(config)).get(k))
            _log(f"{out} holds a different run (differs in {', '.join(diff)}); use another --out or --overwrite")
            return 2
    if pid == 0:
        atomic_write(cfg_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    pred_path = os.path.join(out, PREDICTIONS if nproc == 1 else f"predictions.{pid}.jsonl")
    repair_tail(pred_path)
    done = read_predictions(out)
    todo = [(i, r) for i, r in items if r.id not in done]
    if done:
        _log(f"resuming: {len(items) - len(todo)} of {len(items)} videos already done")

    # ---------------- devices / sharding
    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("data",))
    replicated = NamedSharding(mesh, P())
    ndev = devices.size
    global_batch = -(-args.batch_size // ndev) * ndev
    params = jax.device_put(params, replicated)
    predict = compiled_predict(model, protocol, mesh)
    workers = (default_workers() if args.workers is None else args.workers) if video_decoder == "cpu" else 0
    save_scores = config["save_scores"]
    _log(f"{name}: {protocol.mode}, {protocol.num_frames} frames at rate {protocol.sampling_rate}"
         + (f" (output at frame {protocol.first_output})" if model.continual else "")
         + f"; {len(todo)} videos to go on {ndev} device(s), batch {global_batch}, "
         + (f"{workers} worker(s)" if video_decoder == "cpu" else f"NVDEC in {args.decoder_procs} process(es)"
            if args.decoder_procs else f"NVDEC in {args.decoder_threads} thread(s)"))

    def to_local(x):
        if nproc == 1:
            return np.asarray(x)
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, P("data")))

    def finish(windows, result, fh):
        scores, okv = (to_local(a) for a in result)
        lines = []
        for row, s in enumerate(windows):
            if s.error is not None:
                lines.append(dict(id=s.record.id, position=s.position, error=s.error))
                continue
            if not okv[row]:
                lines.append(dict(id=s.record.id, position=s.position, error="no valid model output"))
                continue
            sc = scores[row].astype(np.float64)
            top = np.argsort(-sc, kind="stable")[:5]
            rec = dict(id=s.record.id, position=s.position,
                       label=list(s.record.label) if isinstance(s.record.label, tuple) else s.record.label,
                       pred=top.tolist(), pred_scores=[float(sc[k]) for k in top],
                       decoded=s.info.get("decoded"), repeated=s.info.get("repeated"),
                       padded=s.info.get("padded"))
            if isinstance(s.record.label, int):
                rec["rank"] = label_rank(sc, s.record.label)
            if save_scores:
                rec["scores"] = [float(v) for v in scores[row]]
            lines.append(rec)
        fh.write("".join(dumps(r) + "\n" for r in lines))
        fh.flush()
        os.fsync(fh.fileno())
        return lines

    def _stop(signum, frame):  # SIGTERM (e.g. a scheduler) stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    try:
        old_sigterm = signal.signal(signal.SIGTERM, _stop)
    except ValueError:  # not the main thread
        old_sigterm = None
    t0 = time.time()
    bar = None
    if not args.no_progress and pid == 0:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=f"eval {name}", unit="video", dynamic_ncols=True)
    n_ok = n_top1 = 0
    interrupted = False
    first = None
    mine: list = []
    loader = None
    with open(pred_path, "a", encoding="utf-8") as fh:
        pending = None
        try:
            # Every process runs the same number of steps over its share of the items (strided); the
            # loader decodes ahead in Grain workers and transforms on the devices, one batch ahead.
            loader = EvalLoader(spec, todo, global_batch, mesh, workers, decoder=video_decoder,
                                decoder_threads=args.decoder_threads, decoder_procs=args.decoder_procs)
            mine = loader.items
            for step, (clips, windows) in enumerate(loader):
                if step == 0:   # compiled aside: Ctrl-C / SIGTERM during the first compile act at once
                    predict = compile_responsive(predict, params, clips)
                result = predict(params, clips)          # async: the device works while we collect
                if pending is not None:
                    lines = finish(*pending, fh)
                    if first is None:  # batch 0 done (includes compilation): steady rates start here
                        first = (time.time(), len(lines))
                    n_ok += sum("rank" in r for r in lines)
                    n_top1 += sum(r.get("rank") == 0 for r in lines)
                    if bar is not None:
                        bar.update(len(lines) * nproc)
                        if n_ok:
                            bar.set_postfix(top1=f"{n_top1 / n_ok:.3f}")
                pending = (windows, result)
            if pending is not None:
                lines = finish(*pending, fh)
                if bar is not None:
                    bar.update(len(lines) * nproc)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            pending = None
            if bar is not None:
                bar.close()
            if loader is not None:   # stops the decoding workers, frees their shared memory
                loader.close()
            if old_sigterm is not None:  # a SIGTERM after main returns is the caller's again
                signal.signal(signal.SIGTERM, old_sigterm)
    t_end = time.time()
    elapsed = t_end - t0
    if interrupted:
        _log(f"interrupted after {elapsed:.1f}s; re-run the same command to resume")
        return 130
    if nproc > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("evaluate-done")
    if pid != 0:
        return 0
    summary = summarise(config, items, read_predictions(out), index, args.batch_size)
    atomic_write(os.path.join(out, "summary.json"), dumps(summary, indent=2) + "\n")
    atomic_write(os.path.join(out, "summary.csv"), summary_csv(summary))
    atomic_write(os.path.join(out, "timing.json"), dumps(dict(
        elapsed_s=elapsed, videos_this_run=len(todo), devices=ndev,
        steady_videos_per_s=None if first is None or t_end <= first[0] else
        (len(mine) - first[1]) * nproc / (t_end - first[0]), device_kind=str(devices.flat[0].device_kind),
        batch=global_batch, workers=workers, decoder=video_decoder,
        decoder_threads=args.decoder_threads if video_decoder != "cpu" else None,
        decoder_procs=args.decoder_procs if video_decoder != "cpu" else None,
        loader=("nvdec-procs" if args.decoder_procs else "nvdec-threads") if video_decoder != "cpu" else
        "grain" if workers > 0 else "inline"), indent=2) + "\n")
    metr = ", ".join(f"{k}={v:.4f}" if v == v else f"{k}=none (no video evaluated)"
                     for k, v in summary["metrics"].items() if isinstance(v, float))
    _log(f"done in {elapsed:.1f}s: {summary['num_evaluated']} evaluated ({summary['num_padded']} padded), "
         f"{summary['num_failed']} failed, {summary['num_missing']} missing, {summary['num_skipped']} files skipped; "
         f"{metr}; summary in {out}/summary.json")
    return 0


if __name__ == "__main__":
    exit_process(main())
