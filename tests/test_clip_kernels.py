"""benchmarks/clip_kernels.py on CPU: a tiny X3D clip timed and traced through the GPU path, the
convolution layout count of an optimised HLO module, and the kernel-name grouping of a trace."""

import gzip
import json

from benchmarks.clip_kernels import conv_layouts, kernel_names, layer_table, main


def test_main_times_and_counts_a_tiny_clip(tmp_path):
    out = tmp_path / "r.json"
    assert main(["--models", "x3d_xs", "--dtype", "fp32", "--batch", "1", "--image-size", "32", "--repeats", "1",
                 "--trace-calls", "1", "--timing", "--variants",
                 "lax:clip_depthwise_impl=lax;pallas:clip_depthwise_impl=pallas", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert {"device", "jax", "date", "command"} <= set(d["env"]) and "clip_kernels" in d["env"]["command"]
    r, p = d["rows"]
    assert r["label"] == "lax" and r["clips_per_s"] > 0 and r["hlo"]["kernel_like_ops"] > 10
    # X3D-XS: 3 + 5 + 11 + 7 blocks with a grouped 3x3x3 conv each, and the stem's 5x1x1 depthwise conv
    assert sum(n for k, n in r["conv_layouts"].items() if k.endswith("grouped")) == 27
    assert r["vs"] == "lax" and r["max_rel_diff"] == 0.0 and r["top1_agreement"] == 1.0
    # the Pallas clip kernel (interpreted on CPU) replaces every depthwise conv and agrees with them
    assert p["label"] == "pallas" and p["vs"] == "lax" and not any(k.endswith("grouped") for k in p["conv_layouts"])
    assert p["max_rel_diff"] < 1e-4 and p["top1_agreement"] == 1.0


def test_conv_layouts_reads_cudnn_custom_calls():
    text = """
  %a = (f32[2,8,4,4,4]{4,3,2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=3x3x3 pad=1_1x1_1x1_1}, dim_labels=bf012_oi012->bf012, feature_group_count=8, custom_call_target="__cudnn$convForward"
  %b = (f32[2,4,4,4,8]{4,3,2,1,0}, u8[0]{0}) custom-call(%y, %v), window={size=1x1x1}, dim_labels=b012f_o012i->b012f, custom_call_target="__cudnn$convForward"
  %c = f32[8]{0} custom-call(%z), custom_call_target="__cublas$gemm"
  %d = f32[2,4,4,4,8]{4,3,2,1,0} convolution(%p, %q), window={size=3x3x3}, dim_labels=b012f_012io->b012f, feature_group_count=8
"""
    assert conv_layouts(text) == {"__cudnn$convForward bf012_oi012->bf012 grouped": 1,
                                  "__cudnn$convForward b012f_o012i->b012f dense": 1,
                                  "convolution b012f_012io->b012f grouped": 1}


def test_kernel_names_groups_stream_kernels(tmp_path):
    ev = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #13(Compute)"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
    for s in range(2):
        ev += [{"ph": "X", "pid": 1, "tid": 7, "ts": 100 * s, "dur": 3.0, "name": "loop_fusion_3"},
               {"ph": "X", "pid": 1, "tid": 7, "ts": 100 * s + 5, "dur": 5.0, "name": "loop_fusion_12"},
               {"ph": "X", "pid": 1, "tid": 7, "ts": 100 * s + 20, "dur": 4.0, "name": "sm90_xmma_fprop_grouped"},
               {"ph": "X", "pid": 2, "tid": 1, "ts": 100 * s, "dur": 50.0, "name": "host"}]
    d = tmp_path / "plugins" / "profile" / "run"
    d.mkdir(parents=True)
    with gzip.open(d / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": ev}, f)
    assert kernel_names(str(tmp_path), 2) == [
        {"kernel": "loop_fusion", "per_call": 2.0, "us_per_call": 8.0},
        {"kernel": "sm90_xmma_fprop_grouped", "per_call": 1.0, "us_per_call": 4.0}]


def test_layer_table_per_clip():
    rows = [{"model": "x3d_l", "label": l, "dtype": "fp32", "batch": 32,
             "trace_per_call": {"gpu_us_per_step": 3200.0 * k, "kernels_per_step": 100,
                                "by_layer_kind": {"branch2/b": {"us_per_step": 1600.0 * k}, "branch2/a": {"us_per_step": 320.0}}}}
            for l, k in (("lax", 1), ("shift", 2))]
    t = layer_table(rows + [{"model": "x3d_m", "label": "shift", "dtype": "fp32", "batch": 64}]).splitlines()
    assert t[0] == "| layer kind (µs per clip) | x3d_l/lax/fp32 | x3d_l/shift/fp32 |"
    assert t[2] == "| branch2/b | 50.0 | 100.0 |" and t[3] == "| branch2/a | 10.0 | 10.0 |"
    assert t[4] == "| all (GPU µs per clip) | 100.0 | 200.0 |"
