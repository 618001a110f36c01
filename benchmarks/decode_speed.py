"""Decode time per clip, before (today's decoders) and after (seeking VideoFrames), on generated
10 s 340x256 30-fps h264 and mpeg4 videos.

Evaluation sampling: ``decode_clip`` (X3D-S 13 x 6, X3D-M 16 x 5; it already seeks to the
centred window, as the reference does). Training sampling: a random window
(``augment.train_sample``'s indices) from ``decode_all`` (before: the whole video) or from
``VideoFrames`` (after: seek to the keyframe, stop after the last sampled frame), plus the
evaluation windows read through ``VideoFrames``.

    PYTHONPATH=$PWD python benchmarks/decode_speed.py --out results/decode_speed_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np


def make_video(path, codec, n=300, w=340, h=256, fps=30):
    import av
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for t in range(n):
            img = np.stack([(xx * 2 + t * 3) % 256, (yy * 2 + t * 5) % 256, (xx + yy + t * 7) % 256], -1)
            img = img.astype(np.uint8)
            r = (t * 4) % h
            img[r:r + 20] = rng.integers(0, 256, img[r:r + 20].shape, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def timeit(fn, reps):
    fn()                                          # warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return {"median_ms": 1e3 * float(np.median(ts)), "min_ms": 1e3 * float(np.min(ts)), "reps": reps}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/decode_speed_cpu.json")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)

    import av
    import cv2
    from co3d_jax.data.sampling import centered_window, clip_size, temporal_indices
    from co3d_jax.data.video import VideoFrames, decode_all, decode_clip

    out = {"device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible",
           "versions": {"python": platform.python_version(), "pyav": av.__version__, "ffmpeg": av.library_versions.get("libavcodec"),
                        "opencv": cv2.__version__, "numpy": np.__version__},
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "PYTHONPATH=$PWD python benchmarks/decode_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "video": "generated, 300 frames (10 s) 340x256 30 fps, PyAV default encoder settings",
           "unit": "ms per clip, single thread of decode, median over reps (after one warm-up)",
           "results": {}}
    samplings = {"x3d_s_eval_13x6": (13, 6), "x3d_m_eval_16x5": (16, 5)}
    with tempfile.TemporaryDirectory() as d:
        for codec in ("libx264", "mpeg4"):
            path = os.path.join(d, f"{codec}.mp4")
            make_video(path, codec)
            res = out["results"][codec] = {}
            c = av.open(path)
            s = c.streams.video[0]
            res["keyframes"] = [p.pts for p in c.demux(s) if p.is_keyframe]
            res["time_base"] = str(s.time_base)
            c.close()
            n = len(decode_all(path)[0])
            for name, (num, rate) in samplings.items():
                size = clip_size(rate, num, 30.0)
                start, _ = centered_window(n, size)
                idx = temporal_indices(n, size, num, start)
                res[f"{name}_decode_clip"] = timeit(lambda: decode_clip(path, rate, num), args.reps)
                res[f"{name}_decode_all"] = timeit(lambda: decode_all(path)[0][idx], args.reps)
                res[f"{name}_seek"] = timeit(lambda: VideoFrames(path)[idx], args.reps)
            # Training: a uniformly random window (train_sample's rule), 13 x 6, a new one each rep.
            size = clip_size(6, 13, 30.0)
            rng = np.random.default_rng(0)
            starts = iter(rng.uniform(0.0, max(n - size, 0.0), 10 * args.reps + 10))

            def train(decoder):
                frames = decoder()
                idx = temporal_indices(len(frames), size, 13, next(starts))
                return frames[idx]
            res["train_13x6_decode_all"] = timeit(lambda: train(lambda: decode_all(path)[0]), args.reps)
            res["train_13x6_seek"] = timeit(lambda: train(lambda: VideoFrames(path)), args.reps)
            res["train_13x6_seek_opencv"] = timeit(lambda: train(lambda: VideoFrames(path, "opencv")), args.reps)
            res["train_13x6_decode_all_opencv"] = timeit(lambda: train(lambda: decode_all(path, "opencv")[0]), args.reps)
            for k, v in res.items():
                if isinstance(v, dict):
                    print(f"{codec:8s} {k:34s} {v['median_ms']:8.1f} ms", flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
