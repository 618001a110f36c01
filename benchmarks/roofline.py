"""Roofline estimate of a continual step: FLOPs and bytes per frame, and the achieved fraction.

    python -m benchmarks.roofline --results results/benchmark_h100_jax.json

Per frame (batch-independent, fp32): FLOPs from XLA's count of one step (valid taps, 2 per MAC,
elementwise included) and the paper's MACs; bytes as two bounds:

* ``bytes_min``: what any implementation must move per frame: the state read and written once
  (conv partial sums, pool rings, delays) plus the input frame; weights amortised over the batch;
* ``bytes_unfused``: every leaf layer reads its input and writes its output once (no fusion),
  plus the state traffic.

With the measured frames/s it reports achieved TFLOP/s and TB/s against H100 SXM peaks
(67 TFLOP/s fp32 non-tensor, 989 TFLOP/s bf16 dense tensor, 3.35 TB/s HBM3).
"""

from __future__ import annotations

import argparse
import json
import math

from co3d_jax.benchmark import HBM_BYTES_PER_S, hbm_bytes_per_s, min_bytes  # noqa: F401  (re-exported)

PEAK = {"fp32_flops": 67e12, "bf16_flops": 989e12, "hbm_bytes": HBM_BYTES_PER_S["H100"]}


def leaf_traffic(layer, in_shape, itemsize: int) -> int:
    """Bytes read+written per frame by every leaf layer, unfused."""
    from co3d_jax.layers import BroadcastReduce, Parallel, Sequential
    if isinstance(layer, Sequential):
        total, shape = 0, in_shape
        for _, c in layer.children:
            total += leaf_traffic(c, shape, itemsize)
            shape = c.out_shape(shape)
        return total
    if isinstance(layer, BroadcastReduce):
        return sum(leaf_traffic(b, in_shape, itemsize) for _, b in layer.branches) + \
            math.prod(layer.out_shape(in_shape)) * itemsize * (len(layer.branches) + 1)
    if isinstance(layer, Parallel):
        return sum(leaf_traffic(b, s, itemsize) for (_, b), s in zip(layer.branches, in_shape))
    return (math.prod(in_shape) + math.prod(layer.out_shape(in_shape))) * itemsize


def estimate(name: str, dtype: str = "fp32") -> dict:
    import jax

    import co3d_jax
    from co3d_jax.flops import model_xla_flops, paper_macs
    model = co3d_jax.create_model(name)
    params = jax.eval_shape(model.init, jax.random.key(0))
    item = 2 if dtype == "bf16" else 4
    state_bytes, bytes_min = min_bytes(model, dtype)
    flops = model_xla_flops(model, params, "step", compiled=False)
    return {"model": name, "dtype": dtype, "xla_flops_per_frame": flops, "paper_macs_per_frame": paper_macs(model, "step"),
            "state_bytes_per_stream": state_bytes, "bytes_min_per_frame": bytes_min,
            "bytes_unfused_per_frame": leaf_traffic(model.net, model.frame_shape, item) + 2 * state_bytes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.roofline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results/benchmark_h100_jax.json")
    ap.add_argument("--out", default="results/roofline_h100.json")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        bench = json.load(f)
    measured = {(r["model"], r["dtype"]): r["frames_per_s"] for r in bench["results"]
                if r["kind"] == "stream" and r.get("unroll", 1) == 1 and r.get("depthwise", "auto") == "auto"}
    rows = []
    for (name, dtype), fps in sorted(measured.items()):
        e = estimate(name, dtype)
        e["frames_per_s"] = fps
        e["achieved_tflops"] = fps * e["xla_flops_per_frame"] / 1e12
        e["achieved_tb_s_min"] = fps * e["bytes_min_per_frame"] / 1e12
        e["achieved_tb_s_unfused"] = fps * e["bytes_unfused_per_frame"] / 1e12
        peak_flops = PEAK["bf16_flops" if dtype == "bf16" else "fp32_flops"]
        e["roofline_frames_per_s"] = min(peak_flops / e["xla_flops_per_frame"], PEAK["hbm_bytes"] / e["bytes_min_per_frame"])
        e["fraction_of_roofline"] = fps / e["roofline_frames_per_s"]
        rows.append(e)
        print(f"{name:<12} {dtype} {fps:>9,.0f} frames/s | {e['xla_flops_per_frame'] / 1e9:.3f} GFLOP/frame "
              f"-> {e['achieved_tflops']:.1f} TFLOP/s | bytes/frame min {e['bytes_min_per_frame'] / 1e6:.2f} MB, "
              f"unfused {e['bytes_unfused_per_frame'] / 1e6:.1f} MB -> {e['achieved_tb_s_unfused']:.2f} TB/s unfused | "
              f"roofline {e['roofline_frames_per_s']:,.0f} frames/s ({100 * e['fraction_of_roofline']:.0f}%)")
    with open(args.out, "w") as f:
        json.dump({"device": bench["env"]["device"], "peaks": PEAK, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
