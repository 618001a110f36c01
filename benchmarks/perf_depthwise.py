"""Depthwise 3x3x3 step variants on one stage-2-sized frame batch (GPU work notes).

    python -m benchmarks.perf_depthwise --batch 64 --hw 40 --channels 54

Each variant computes y = sum over the 3-frame window (2 buffered frames + the new one) of a
depthwise 3x3 spatial conv, inside a ``lax.scan`` of ``--steps`` steps that also shifts the
buffer, as the continual step does. Prints ms per step and the number of kernels (fusions and
library calls) in the compiled loop body.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf_depthwise", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hw", type=int, default=40)
    ap.add_argument("--channels", type=int, default=54)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    import jax
    import jax.numpy as jnp
    from jax import lax

    from co3d_jax.layers.conv import _depthwise_shift
    dt = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    b, h, c = args.batch, args.hw, args.channels
    w = jax.random.normal(jax.random.key(0), (3, 3, 3, 1, c), dt)
    xs = jax.random.normal(jax.random.key(1), (args.steps, b, h, h, c), dt)
    buf0 = jnp.zeros((b, 2, h, h, c), dt)

    def v_window(buf, x):  # current implementation
        win = jnp.concatenate([buf, x[:, None]], 1)
        return _depthwise_shift(win, w, (1, 1, 1), (0, 1, 1))[:, 0], win[:, 1:]

    def dw2d(f, k):  # f (B,H,W,C), k (3,3,C): 9 shifted taps
        fp = jnp.pad(f, ((0, 0), (1, 1), (1, 1), (0, 0)))
        acc = None
        for i in range(3):
            for j in range(3):
                t = fp[:, i:i + h, j:j + h] * k[i, j]
                acc = t if acc is None else acc + t
        return acc

    def v_frames(buf, x):  # per-frame 2D taps, no concatenated window
        frames = [buf[:, 0], buf[:, 1], x]
        y = sum(dw2d(f, w[t, :, :, 0]) for t, f in enumerate(frames))
        return y, jnp.stack([buf[:, 1], x], 1)

    def v_temporal_first(buf, x):  # reduce time first per spatial tap, then 9 spatial shifts
        win = jnp.concatenate([buf, x[:, None]], 1)
        winp = jnp.pad(win, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
        acc = None
        for i in range(3):
            for j in range(3):
                s = winp[:, :, i:i + h, j:j + h]
                t = jnp.einsum("bthwc,tc->bhwc", s, w[:, i, j, 0])
                acc = t if acc is None else acc + t
        return acc, win[:, 1:]

    def v_grouped(buf, x):
        win = jnp.concatenate([buf, x[:, None]], 1)
        y = lax.conv_general_dilated(win, w, (1, 1, 1), [(0, 0), (1, 1), (1, 1)],
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=c)
        return y[:, 0], win[:, 1:]

    def v_partial(acc, x):  # accumulator form: acc (B,2,H,W,C) partial sums of future outputs
        z = [dw2d(x, w[t, :, :, 0]) for t in range(3)]
        y = acc[:, 0] + z[2]
        new = jnp.stack([acc[:, 1] + z[1], z[0]], 1)
        return y, new

    res = {}
    for name, fn in [("window_shift", v_window), ("per_frame_taps", v_frames), ("temporal_first", v_temporal_first),
                     ("grouped_conv", v_grouped), ("partial_sums", v_partial)]:
        def run(buf, xs, fn=fn):
            def body(s, x):
                y, s = fn(s, x)
                return s, jnp.sum(y, axis=(1, 2))
            return lax.scan(body, buf, xs)
        f = jax.jit(run)
        comp = f.lower(buf0, xs).compile()
        hlo = comp.as_text()
        kernels = len(re.findall(r"^\s*\S+ = \S+ (fusion|custom-call)\(", hlo, re.M))
        jax.block_until_ready(f(buf0, xs))
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            jax.block_until_ready(f(buf0, xs))
            ts.append(time.perf_counter() - t0)
        res[name] = {"ms_per_step": float(np.median(ts)) / args.steps * 1e3, "kernels": kernels}
        print(name, res[name], flush=True)
    mb = b * h * h * c * jnp.dtype(dt).itemsize / 1e6
    print(json.dumps({"tensor_MB": mb, **res}))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "tensor_MB": mb, "device": jax.devices()[0].device_kind, **res}, fh, indent=1)


if __name__ == "__main__":
    main()
