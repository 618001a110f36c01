"""Live multi-stream inference: several videos as one batch of continual streams.

    python -m experiments.stream --model cox3d_s_64 --weights W.npz --video a.mp4 --video b.mp4
    python -m experiments.stream --model cox3d_s_13            # generated video, random weights

Each video is subsampled to the model's frame rate (``model.frame_rate`` frames at 30 fps),
resized (short side), center-cropped and normalised, then fed frame by frame through one jitted
``step``. Once a stream is past the model's delay, every frame prints its top-5 Kinetics-400
classes; every frame prints the step latency. ``--json`` writes all per-frame results.
Without ``--video`` a generated moving-pattern video is streamed (random weights unless
``--weights``), so the command always runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from co3d_jax.extras import cli_main


def prepare(frames: np.ndarray, image_size: int, mean, std) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` -> float32 ``(T, S, S, 3)``: short-side resize, center crop, normalise."""
    from co3d_jax.data.transforms import normalize, resize_crop
    return normalize(resize_crop(frames, image_size), mean, std)


def load_video(path: str, frame_rate: int) -> np.ndarray:
    """Decode ``path`` and keep every ``frame_rate``-th frame at 30 fps (uint8 ``(T, H, W, 3)``)."""
    from co3d_jax.data.video import decode_all
    frames, fps = decode_all(path)  # raises VideoError naming the file
    step = max(frame_rate * (fps or 30.0) / 30.0, 1.0)
    idx = np.arange(0, len(frames), step).astype(int)
    return frames[idx]


def frames_needed(model) -> tuple[int, int, float]:
    """Before its first prediction a continual model takes ``delay + 1`` sampled frames:
    ``(sampled frames, frames of a 30 fps video = delay * stride + 1, seconds)``, where the stride
    (``model.frame_rate``) scales with a video's frame rate."""
    source = model.delay * model.frame_rate + 1
    return model.delay + 1, source, source / 30.0


def first_prediction_help(name: str) -> str:
    """How much video ``name`` needs before it predicts anything (for ``--help``)."""
    import co3d_jax
    model = co3d_jax.create_model(name)
    sampled, source, seconds = frames_needed(model)
    return (f"A continual model predicts nothing until it has seen delay + 1 sampled frames, i.e. delay x stride + 1 "
            f"frames of the video: {name} (the default) has delay {model.delay} and takes one frame "
            f"in {model.frame_rate} at 30 fps, so it needs {sampled} sampled frames = {source} frames of a "
            f"30 fps video ({seconds:.1f} s). A shorter video prints only '(warming up)' and a warning at the end.")


def class_names(num_classes: int) -> list[str]:
    if num_classes == 400:
        from co3d_jax.data.datasets import shipped_kinetics400_classes
        return shipped_kinetics400_classes()
    return [f"class_{i}" for i in range(num_classes)]


@cli_main
def main(argv=None) -> int:
    import textwrap

    from co3d_jax.models import names_help

    default = "cox3d_s_13"
    ap = argparse.ArgumentParser(prog="python -m experiments.stream", description=__doc__,
                                 epilog="\n".join(textwrap.wrap(first_prediction_help(default), 96)),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default, help=f"registry name of a continual model ({names_help()})")
    ap.add_argument("--weights", help="ported .npz weights (random weights if omitted)")
    ap.add_argument("--video", action="append", default=[], help="a video file (repeat for more streams)")
    ap.add_argument("--frames", type=int, default=0, help="frames per stream (default: whole video; generated: delay+8)")
    ap.add_argument("--image-size", type=int, default=None, help="override the model's crop size")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="model option, e.g. temporal_fill=replicate or num_classes=10 (repeatable)")
    ap.add_argument("--top", type=int, default=5, help="classes printed (and written to --json) per stream and frame")
    ap.add_argument("--json", help="write per-frame results (top-k, latency) to this JSON file")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the random weights (without --weights) and of the generated video (without --video)")
    ap.add_argument("--render", metavar="OUT.mp4", help="write the video(s) with each frame's top-k and a strip chart "
                                                        "of the top classes over time (co3d_jax.render)")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    import co3d_jax
    from co3d_jax.data.synthetic import moving_pattern
    from co3d_jax.data.video import VideoError
    from experiments._cli import CliError, atomic_write, check_out_file, dumps, parse_options
    from co3d_jax.params import ParamsError

    if args.json:
        try:
            check_out_file(args.json, "--json")
        except CliError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    opts = {}
    if args.weights:
        from co3d_jax.params import read_npz
        try:
            opts.update(json.loads(read_npz(args.weights)[1].get("model_options", "{}")))
        except ParamsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.image_size:
        opts["image_size"] = args.image_size
    try:
        opts.update(parse_options(args.option, "--option"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        model = co3d_jax.create_model(args.model, **opts)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.weights:
        try:
            params = co3d_jax.load_params(args.weights, model)
        except ParamsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        print(f"note: no --weights given: {model.name} runs with RANDOM weights (predictions are meaningless)")
        params = model.init(jax.random.key(args.seed))

    mean, std = model.normalisation
    failed = {}   # video -> why it cannot be streamed; the other videos still stream
    if args.video:
        videos, names = [], []
        for v in args.video:
            try:
                videos.append(load_video(v, model.frame_rate))
                names.append(v)
            except VideoError as e:  # the decoders' rules (unreadable, empty, truncated); names the file
                failed[v] = str(e)
                print(f"error: {e} (skipped; the other streams go on)", file=sys.stderr)
            except RuntimeError as e:  # no decoder installed: no video can be read
                print(f"error: {e}", file=sys.stderr)
                return 2
        if not videos:
            return 2
    else:
        n = args.frames or model.delay + 8
        videos = [moving_pattern(n, model.image_size + 16, seed=args.seed)]
        names = ["<generated>"]
    if args.frames:
        videos = [v[: args.frames] for v in videos]
    clips = [prepare(v, model.image_size, mean, std) for v in videos]
    length = max(len(c) for c in clips)
    b = len(clips)
    frames = np.zeros((b, length, *model.frame_shape), np.float32)
    present = np.zeros((b, length), bool)
    for i, c in enumerate(clips):
        frames[i, : len(c)] = c
        present[i, : len(c)] = True

    labels = class_names(model.num_classes)
    step = jax.jit(model.step, donate_argnums=(1,))
    state = model.init_state(b)
    # compile outside the timed loop
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, model.init_state(b), jnp.asarray(frames[:, 0]), jnp.asarray(present[:, 0])))
    print(f"{model.name}: {b} stream(s), {length} frames, delay {model.delay}, compiled in {time.perf_counter() - t0:.1f} s")

    records, latencies, history = [], [], []
    predicted = np.zeros(b, bool)
    for t in range(length):
        x, v = jnp.asarray(frames[:, t]), jnp.asarray(present[:, t])
        t0 = time.perf_counter()
        state, out = step(params, state, x, v)
        scores = np.asarray(out.scores)
        valid = np.asarray(out.valid)
        ms = (time.perf_counter() - t0) * 1e3
        history.append((scores, valid))
        latencies.append(ms)
        parts = []
        predicted |= valid
        for i in range(b):
            if not valid[i]:
                continue
            top = np.argsort(-scores[i])[: args.top]
            parts.append(f"[{i}] " + ", ".join(f"{labels[k]} {scores[i, k]:.3f}" for k in top))
            records.append({"frame": t, "stream": i, "video": names[i],
                            "top": [{"class": labels[k], "index": int(k), "score": float(scores[i, k])} for k in top]})
        idle = (f"(between outputs: {model.name} emits every {model.stride} frames)" if predicted.any()
                else "(warming up)")
        print(f"frame {t:4d} {ms:7.2f} ms  " + (" | ".join(parts) if parts else idle))
    lat = np.asarray(latencies[1:] or latencies)
    print(f"step latency: median {np.median(lat):.2f} ms, p90 {np.percentile(lat, 90):.2f} ms over {len(lat)} frames "
          f"(batch {b}, {jax.devices()[0].platform})")
    if args.render:
        from co3d_jax.render import StreamTrace, render_streams
        sc, va = (np.stack(h, 1) for h in zip(*history))
        traces = [StreamTrace(videos[i][: len(c)], sc[i, : len(c)], va[i, : len(c)], names[i]) for i, c in enumerate(clips)]
        n, h, w = render_streams(args.render, traces, labels, fps=30 / model.frame_rate, top=args.top)
        print(f"rendered {n} frames ({w}x{h}) to {args.render}")
    sampled, _, seconds = frames_needed(model)
    for i in np.flatnonzero(~predicted):
        print(f"warning: stream [{i}] {names[i]} produced no prediction: it gave {len(clips[i])} sampled frames "
              f"({len(clips[i]) * model.frame_rate / 30:.1f} s of video) and {model.name} needs {sampled} "
              f"(delay {model.delay} + 1, one frame in {model.frame_rate} at 30 fps: {seconds:.1f} s)", file=sys.stderr)
    if args.json:
        atomic_write(args.json, dumps({"model": model.name, "videos": names, "failed": failed, "delay": model.delay,
                                       "frames": records, "latency_ms": latencies}))
    if failed:
        print(f"{len(failed)} of {len(failed) + len(names)} videos could not be streamed: "
              + "; ".join(f"{v}: {e}" for v, e in failed.items()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
