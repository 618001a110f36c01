"""experiments/benchmark_compare's table: issue 19's targets met or missed by how much, the fused and
XLA JAX step columns, the bulk-step columns, and the memory-roofline fraction (from JSON results; nothing is run)."""

from experiments.benchmark_compare import table, target_status


def test_target_status():
    assert target_status("stream", 27623, 35000, None) == "missed by 21%"
    assert target_status("stream", 36000, 35000, None) == "met"
    assert target_status("latency", 0.88, 0.5, None) == "missed: 1.76x the target"
    assert target_status("latency", 0.4, 0.5, None) == "met"
    assert target_status("clip", 167, 1.2, 167 / 224) == "missed by 38%"
    assert target_status("clip", 2845, 2.0, 2845 / 1777) == "missed by 20%"
    assert target_status("clip", 1, None, 1.0) == ""


def test_table_columns():
    env = {"device": "NVIDIA H200", "jax": "0.11.2", "date": "d", "command": "c"}
    jax_res = {"env": env, "results": [
        {"kind": "stream", "model": "cox3d_s_64", "batch": 64, "dtype": "fp32", "depthwise": "auto", "unroll": 1,
         "frames_per_s": 27623.0},
        {"kind": "stream", "model": "cox3d_s_64", "batch": 64, "dtype": "fp32", "depthwise": "auto", "unroll": 1,
         "options": {"depthwise_impl": "auto", "dense_impl": "auto"}, "frames_per_s": 19125.0},
        {"kind": "stream", "model": "cox3d_s_64", "batch": 64, "dtype": "fp32", "depthwise": "auto", "unroll": 1,
         "bulk": True, "frames_per_s": 42000.0},
        {"kind": "latency", "model": "cox3d_s_64", "batch": 1, "dtype": "fp32", "median_ms": 0.88},
        {"kind": "clip", "model": "x3d_l", "batch": 32, "dtype": "fp32", "depthwise": "auto", "clips_per_s": 167.0},
        {"kind": "stream", "model": "cox3d_s_64", "batch": 64, "dtype": "fp32", "depthwise": "lax", "unroll": 1,
         "frames_per_s": 1.0}]}
    torch_res = {"env": {"device": "NVIDIA H200", "torch": "2.11", "continual_inference": "1.2.4", "date": "d"},
                 "results": [{"kind": "stream", "model": "cox3d_s_64", "batch": 64, "dtype": "fp32", "frames_per_s": 1183.0},
                             {"kind": "stream", "model": "cox3d_s_64", "batch": 64, "dtype": "fp32", "bulk": True,
                              "frames_per_s": 2100.0},
                             {"kind": "clip", "model": "x3d_l", "batch": 32, "dtype": "fp32", "clips_per_s": 224.0}]}
    lines = table(jax_res, torch_res).splitlines()
    s = next(x for x in lines if x.startswith("| stream | cox3d_s_64 | fp32"))
    # 27,623 frames/s x 20.9 MB per frame (state read + written, frame) / 4.8 TB/s ~ 12%
    assert "| 27,623 | 19,125 | 1,183 | 23.35x | 35,000 frames/s | missed by 21% | 12." in s
    # bulk steps: JAX's and PyTorch's forward_steps side by side, judged against the same target
    assert s.endswith("| 42,000 | 2,100 | 20.00x | met |"), s
    assert "| 0.880 |  |  |  | 0.5 ms/call | missed: 1.76x the target |  |  |  |  |  |" in next(x for x in lines if x.startswith("| latency"))
    assert "| 167 |  | 224 | 0.75x | 1.2x PyTorch | missed by 38% |" in next(x for x in lines if x.startswith("| clip"))
    assert any('"depthwise": "lax"' in x for x in lines)  # another variant: listed below the table
