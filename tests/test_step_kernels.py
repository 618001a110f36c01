"""benchmarks/step_kernels.py on CPU: HLO op counts of a small CoX3D step, the layer attribution of
op names, and the trace parser on a synthetic perfetto trace (the GPU part)."""

import gzip
import json

from benchmarks.step_kernels import hlo_counts, layer_kind, layer_of, main, measure, parse_trace


def test_measure_counts_hlo_ops_on_cpu():
    r = measure("cox3d_s_13", 1, "fp32", options={"depth_factor": 0.6, "num_classes": 5}, image_size=32, chunk=2,
                repeats=1, trace_steps=1, dump_dir=None, label="t")
    h = r["step_hlo"]
    assert h["kernel_like_ops"] >= h["fusions"] > 10
    assert r["scan_hlo"]["whiles"] == 1 and "trace_live_step" not in r  # no GPU timing on CPU


def test_main_writes_results_with_environment(tmp_path):
    out = tmp_path / "r.json"
    assert main(["--model", "cox3d_xs", "--image-size", "32", "--batch", "1", "--chunk", "2", "--skip-default",
                 "--variants", "small:depth_factor=0.3", "--timing", "--trace-steps", "0", "--repeats", "1",
                 "--live-splits", "inf,0", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    r = d["rows"][0]
    assert {"device", "jax", "date", "command"} <= set(d["env"]) and r["roofline"]["state_bytes_per_stream"] > 0
    assert r["label"] == "small" and r["options"] == {"depth_factor": 0.3} and r["scan_frames_per_s"] > 0
    # LiveStep timed with every float state array packed (2 buffers) and with none packed
    packed, split = r["live_splits"]
    assert (packed["split_bytes"], packed["arrays"]) == (float("inf"), 2) and split["split_bytes"] == 0
    assert split["arrays"] > 2 and packed["call_ms_median_p99"][0] > 0 and split["pipelined_ms_per_call"] > 0


def test_layer_of_op_names():
    assert layer_of("jit(step)/s2/res0/residual/branch2/a/...c,cd->...d/dot_general") == "s2/res0/residual/branch2/a"
    assert layer_of("jit(step)/s1/conv/jit(remainder)/rem") == "s1/conv"
    assert layer_kind("s4/res3/residual/branch2/se/gate/pool") == "branch2/se/gate/pool"
    assert layer_of(None) == "?"
    assert layer_kind("while/body/eval_jaxpr/s2/res1/residual/branch2/b") == "branch2/b"


def test_hlo_counts_skip_fused_computations():
    text = """HloModule m

%fused_computation (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %n = f32[4]{0} negate(%p)
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %f = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_computation, metadata={op_name="jit(step)/s1/conv/neg"}
  ROOT %c = f32[4]{0} copy(%f)
}
"""
    c = hlo_counts(text)
    assert c["kernel_like_ops"] == 2 and c["fusions"] == 1 and c["copies"] == 1 and c["fusion_kinds"] == {"kLoop": 1}
    assert c["_op_names"]["f"] == "jit(step)/s1/conv/neg"


def test_parse_trace_counts_stream_kernels(tmp_path):
    ev = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #13(Compute)"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8, "args": {"name": "XLA Ops"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
    for s in range(2):
        ev += [{"ph": "X", "pid": 1, "tid": 7, "ts": 100 * s, "dur": 3.0, "name": "loop_fusion", "args": {"hlo_op": "f"}},
               {"ph": "X", "pid": 1, "tid": 7, "ts": 100 * s + 5, "dur": 1.0, "name": "gemm", "args": {"hlo_op": "g"}},
               {"ph": "X", "pid": 1, "tid": 7, "ts": 100 * s + 7, "dur": 2.0, "name": "co3d_depthwise_step__2",
                "args": {"hlo_op": "command_buffer_3", "cuda_graph_id": "9"}},
               {"ph": "X", "pid": 1, "tid": 8, "ts": 100 * s, "dur": 3.0, "name": "f"},
               {"ph": "X", "pid": 2, "tid": 1, "ts": 100 * s, "dur": 50.0, "name": "host"},
               {"ph": "X", "pid": 2, "tid": 1, "ts": 100 * s + 1, "dur": 4.0, "name": "cuGraphLaunch"},
               {"ph": "X", "pid": 2, "tid": 1, "ts": 100 * s + 6, "dur": 2.0, "name": "cuLaunchKernel"},
               {"ph": "X", "pid": 2, "tid": 1, "ts": 100 * s + 9, "dur": 2.0, "name": "cuLaunchKernel"}]
    d = tmp_path / "plugins" / "profile" / "run"
    d.mkdir(parents=True)
    with gzip.open(d / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": ev}, f)
    t = parse_trace(str(tmp_path), 2, {"f": "jit(step)/s2/res0/residual/branch2/b/add", "g": "jit(step)/head/lin_5/dot"})
    assert t["kernels_per_step"] == 3 and t["gpu_us_per_step"] == 6.0
    assert t["by_layer_kind"]["pallas:co3d_depthwise_step"] == {"kernels_per_step": 1.0, "us_per_step": 2.0}
    assert t["top_kernels"][0]["layer"] == "s2/res0/residual/branch2/b"
    assert t["by_layer_kind"]["branch2/b"]["us_per_step"] == 3.0
    # one of the 3 kernels ran inside a CUDA graph; the host launched one graph and two kernels per step
    assert t["kernels_in_cuda_graphs_per_step"] == 1.0 and t["cuda_graphs_seen"] == 1
    assert t["host"]["driver_calls"] == {"cuLaunchKernel": {"per_step": 2.0, "us_per_step": 4.0},
                                         "cuGraphLaunch": {"per_step": 1.0, "us_per_step": 4.0}}
    assert t["host"]["top_by_time"]["host"] == {"per_step": 1.0, "us_per_step": 50.0}
