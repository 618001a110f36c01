"""Where a fine-tuning update's time goes, on 1 and on N devices: loader wait, host-to-device
transfer, train step.

    python -m benchmarks.train_input [--devices 1 2] [--batch 8] [--steps 12] [--workers 0] [--out F.json]

Each device count runs in its own process (on CPU the devices are forced host devices:
``--xla_force_host_platform_device_count``). Per update, with the device synchronised after each
step so the parts do not overlap:

* ``wait``: time blocked in ``BatchLoader.next()`` (Grain read + collate + transfer + device
  augmentation not yet done by the prefetch thread);
* ``put``: the uint8 window + taps transfer (``make_array_from_process_local_data``, measured in
  the prefetch thread, overlapped with the step in a real run);
* ``step``: the jitted train step to ``block_until_ready``;
* ``old_put``: the previous path's transfer of the same batch as host float32 crops
  (``shard_batch``, ``jax.device_put``), for comparison;
* ``step_local``: the cross-device reductions are not separable inside XLA's step, so this runs
  the step jitted on a 1-device mesh with the per-device batch (B / N), so ``step - step_local`` is what sharding the update
  costs (the all-reduces of gradients and of every BN's batch statistics, plus the partitioning).

Model: X3D-XS at ``--image-size`` with ``depth_factor`` 0.3 (small enough for 2 CPU cores), from
scratch; data: generated mpeg4 videos.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def make_videos(root, n, t=30, hw=(64, 80)):
    from co3d_jax.data.datasets import VideoRecord
    from co3d_jax.data.video import encode_video

    recs = []
    rng = np.random.default_rng(0)
    for k in range(n):
        base = rng.integers(0, 256, (hw[0] // 8, hw[1] // 8, 3)).astype(np.float32)
        frames = np.stack([np.kron((base + 7 * i) % 256, np.ones((8, 8, 1))).astype(np.uint8) for i in range(t)])
        path = os.path.join(root, f"v{k}.mp4")
        encode_video(path, frames, 30)
        recs.append(VideoRecord(f"v{k}", path, k % 4))
    return recs


def child(args):
    import jax

    import co3d_jax
    from co3d_jax import train as T
    from co3d_jax.data import augment as A
    from co3d_jax.data.train_loader import BatchLoader, load_train_sample

    with tempfile.TemporaryDirectory() as root:
        recs = make_videos(root, args.videos)
        model = co3d_jax.create_model("x3d_xs", num_classes=4, image_size=args.image_size, depth_factor=0.3)
        spec = A.TrainClipSpec(num_frames=model.clip_length, sampling_rate=2, image_size=args.image_size,
                               jitter=A.TrainClipSpec.default_jitter(args.image_size))
        cfg = T.TrainConfig(total_steps=args.steps, lr=0.01)
        mesh = T.data_mesh()
        n = mesh.devices.size
        params = T.init_for_training(model, 0)
        p, o = T.replicate((params, T.init_opt_state(params, cfg)), mesh)
        step = T.make_train_step(model.net, cfg, mesh, donate=False)
        loader = BatchLoader(recs, spec, 0, args.batch, 0, args.workers, 2, mesh=mesh, stop=args.steps)
        rows = []
        try:
            for s in range(args.steps):
                put0 = loader.stats["put_s"]
                t0 = time.perf_counter()
                x, y = loader.next()
                jax.block_until_ready(x)
                t1 = time.perf_counter()
                p2, o2, m = step(p, o, x, y, np.int32(s))
                jax.block_until_ready(m)
                t2 = time.perf_counter()
                rows.append(dict(wait=t1 - t0, step=t2 - t1, put=loader.stats["put_s"] - put0))
        finally:
            loader.close()
        # the old path: float32 crops from the host, device_put per update
        host = np.stack([load_train_sample(spec, 0, recs[i % len(recs)], i).clip for i in range(args.batch)])
        labels = np.zeros(args.batch, np.int32)
        old = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(T.shard_batch(host, labels, mesh))
            old.append(time.perf_counter() - t0)
        # the same update's per-device share on one device, unsharded
        local = T.data_mesh(jax.local_devices()[:1])
        pl, ol = T.replicate((params, T.init_opt_state(params, cfg)), local)
        step_l = T.make_train_step(model.net, cfg, local, donate=False)
        xl, yl = T.shard_batch(host[: args.batch // n], labels[: args.batch // n], local)
        jax.block_until_ready(step_l(pl, ol, xl, yl, np.int32(0)))
        loc = []
        for s in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(step_l(pl, ol, xl, yl, np.int32(s)))
            loc.append(time.perf_counter() - t0)
    steady = rows[2:]   # the first updates include compilation

    def med(k):
        return float(np.median([r[k] for r in steady]))

    out = dict(devices=n, platform=jax.devices()[0].platform, batch=args.batch, image_size=args.image_size,
               frames=spec.num_frames, workers=args.workers, steps=args.steps,
               median_s=dict(wait=med("wait"), put=med("put"), step=med("step"), old_put=float(np.median(old)),
                             step_local=float(np.median(loc))),
               first_step_s=rows[0]["step"], float32_batch_bytes=int(host.nbytes))
    print("RESULT " + json.dumps(out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    results = []
    for n in args.devices:
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip())
        cmd = [sys.executable, "-m", "benchmarks.train_input", "--child", "--batch", str(args.batch),
               "--image-size", str(args.image_size), "--steps", str(args.steps), "--videos", str(args.videos),
               "--workers", str(args.workers)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        if res.returncode or not line:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        r = json.loads(line[0][7:])
        results.append(r)
        m = r["median_s"]
        print(f"{n} device(s): wait {m['wait'] * 1e3:.1f} ms, put {m['put'] * 1e3:.2f} ms "
              f"(old float32 put {m['old_put'] * 1e3:.2f} ms), step {m['step'] * 1e3:.1f} ms "
              f"(per-device share on 1 device {m['step_local'] * 1e3:.1f} ms)", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(dict(command="python -m benchmarks.train_input " + " ".join(argv or sys.argv[1:]),
                           date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), results=results), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
