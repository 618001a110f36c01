"""Kernels per continual step: the compiled step's optimised HLO, and on a GPU its kernels and time.

    python -m benchmarks.step_kernels --model cox3d_s_64 --batch 1,64 --dtype fp32 --out results/step_kernels.json

For each batch size and dtype (random weights, BN folded, params and state in the dtype) the step
is the one :class:`co3d_jax.live.LiveStep` compiles (weights baked in, packed state donated).

* Everywhere (CPU too, seconds at a small ``--image-size``): op counts of the optimised HLO
  outside fused computations (fusions by kind, custom calls by target, copies, convolutions,
  dots, everything else that launches work), and the same for a ``--chunk``-frame ``lax.scan``
  of the step with params as arguments (the throughput path, counted per frame).
* On a GPU: ``LiveStep`` per-call latency (blocking median/p99, pipelined dispatch and wall per
  call, the bare compiled call), the scan's frames/s, and a ``jax.profiler`` trace
  (``create_perfetto_trace=True``) of ``--trace-steps`` steps parsed into kernels per step, GPU µs
  per step, and the top kernels by time with the layer each comes from (fusion name -> HLO
  metadata ``op_name``, whose path is the layer path: containers step their children under
  ``jax.named_scope``). ``--variants`` compiles extra model options side by side (e.g.
  ``depthwise_impl=lax``).

The JSON records device, versions, date and the command.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import gzip
import json
import os
import platform
import re
import sys
import tempfile
import time

from .roofline import hbm_bytes_per_s, min_bytes

# instructions that launch no work of their own
_NO_KERNEL = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
              "after-all", "opt-barrier", "partition-id", "replica-id", "add-dependency", "domain"}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][a-z0-9\-]*)\((.*)$")
_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")


def parse_hlo(text: str) -> dict:
    """``{computation: [(name, opcode, rest_of_line)]}`` and the entry computation's name."""
    comps, entry, cur = {}, None, None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m:
            cur = m.group(2)
            comps[cur] = []
            if m.group(1):
                entry = cur
            continue
        if cur is None:
            continue
        if line.strip() == "}":
            cur = None
            continue
        m = _INSTR.match(line)
        if m:
            comps[cur].append((m.group(1), m.group(3), m.group(4)))
    return {"computations": comps, "entry": entry}


def _control_computations(parsed) -> list[str]:
    """The entry and what while/conditional/call run (not fused computations, not reducers)."""
    comps, seen, todo = parsed["computations"], [], [parsed["entry"]]
    while todo:
        c = todo.pop()
        if c in seen or c not in comps:
            continue
        seen.append(c)
        for _, op, rest in comps[c]:
            if op == "while":
                todo += re.findall(r"(?:condition|body)=%?([\w.\-]+)", rest)
            elif op == "conditional":
                m = re.search(r"branch_computations=\{([^}]*)\}", rest)
                todo += re.findall(r"%?([\w.\-]+)", m.group(1)) if m else []
                todo += re.findall(r"(?:true|false)_computation=%?([\w.\-]+)", rest)
            elif op == "call":
                todo += re.findall(r"to_apply=%?([\w.\-]+)", rest)
    return seen


def hlo_counts(text: str) -> dict:
    """Op counts of an optimised HLO module outside fused computations."""
    parsed = parse_hlo(text)
    ops = collections.Counter()
    fusion_kinds = collections.Counter()
    custom = collections.Counter()
    op_names = {}
    for c in _control_computations(parsed):
        for name, op, rest in parsed["computations"][c]:
            ops[op] += 1
            if op == "fusion":
                m = re.search(r"kind=(k\w+)", rest)
                kind = m.group(1) if m else "?"
                m = re.search(r'"kind":"(\w+)"', rest)  # e.g. __triton_gemm, __cudnn..., __custom_fusion
                fusion_kinds[kind + (f":{m.group(1)}" if m and kind == "kCustom" else "")] += 1
            elif op == "custom-call":
                m = re.search(r'custom_call_target="([^"]+)"', rest)
                custom[m.group(1) if m else "?"] += 1
            m = re.search(r'op_name="([^"]+)"', rest)
            if m:
                op_names[name] = m.group(1)
    kernels = sum(n for op, n in ops.items() if op not in _NO_KERNEL)
    return {"kernel_like_ops": kernels, "fusions": ops["fusion"], "fusion_kinds": dict(fusion_kinds),
            "custom_calls": dict(custom), "copies": ops["copy"], "convolutions": ops["convolution"],
            "dots": ops["dot"], "whiles": ops["while"], "conditionals": ops["conditional"],
            "other_ops": {op: n for op, n in sorted(ops.items()) if op not in _NO_KERNEL | {
                "fusion", "custom-call", "copy", "convolution", "dot"}}, "_op_names": op_names}


def layer_of(op_name: str | None) -> str:
    """``jit(step)/jit(main)/s2/res0/residual/branch2/b/mul`` -> ``s2/res0/residual/branch2/b``
    (transformation wrappers and the trailing primitive dropped)."""
    if not op_name:
        return "?"
    parts = [p for p in op_name.split("/") if p and "(" not in p and "->" not in p]
    return "/".join(parts[:-1]) or "(top)"


def layer_kind(layer: str) -> str:
    """A layer path without stage and block indices: ``s2/res0/residual/branch2/b`` -> ``branch2/b``."""
    if layer.startswith("pallas:"):
        return layer
    parts = [p for p in layer.split("/") if not re.fullmatch(r"s\d+|res\d+|residual|head|while|body|eval_jaxpr|"
                                                             r"closed_call|cond|branch_\d+_fun", p)]
    return "/".join(parts) or layer


# ------------------------------------------------------------------------------------ GPU trace
PALLAS_PREFIXES = ("co3d_",)  # the names our pallas_calls give their kernels (co3d_jax/kernels)

def load_trace(trace_dir: str):
    """``(path, events, process names by pid, thread names by (pid, tid))`` of the newest
    ``jax.profiler`` trace file under ``trace_dir``, or None when there is none."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True) or \
        glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not files:
        return None
    path = sorted(files)[-1]
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    pname, tname = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            pname[e["pid"]] = e.get("args", {}).get("name", "")
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            tname[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
    return path, events, pname, tname


def host_summary(events, pname, tname, steps: int, top: int = 20) -> dict:
    """Host work per step: the events on the host's threads (XLA runtime scopes, CUDA driver calls
    such as ``cuLaunchKernel``/``cuGraphLaunch``/``cuGraphExecUpdate``), count and µs per step by name,
    and the GPU-launching driver calls grouped."""
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("ph") != "X":
            continue
        p = pname.get(e.get("pid"), "")
        if "GPU" in p or "gpu" in p.lower():
            continue
        by_name[e["name"]][0] += 1
        by_name[e["name"]][1] += float(e.get("dur", 0))
    launches = {k: v for k, v in by_name.items() if re.match(r"cu(da)?(Launch|GraphLaunch|GraphExec|Graph|Memcpy|Memset|Event|Stream)", k)}
    fmt = lambda items: {k: {"per_step": n / steps, "us_per_step": us / steps} for k, (n, us) in items}
    return {"top_by_time": fmt(sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]),
            "driver_calls": fmt(sorted(launches.items(), key=lambda kv: -kv[1][1]))}


def parse_trace(trace_dir: str, steps: int, op_names: dict) -> dict:
    """Kernels (events on the GPU's ``Stream`` lines) of a ``jax.profiler`` perfetto trace."""
    loaded = load_trace(trace_dir)
    if loaded is None:
        return {"error": f"no trace file under {trace_dir}"}
    path, events, pname, tname = loaded
    lines = collections.Counter()
    kernels, xla_ops = [], []
    for e in events:
        if e.get("ph") != "X":
            continue
        p, t = pname.get(e.get("pid"), ""), tname.get((e.get("pid"), e.get("tid")), "")
        lines[f"{p} | {t}"] += 1
        if "GPU" not in p and "gpu" not in p.lower():
            continue
        if t.startswith("Stream"):
            kernels.append(e)
        elif t == "XLA Ops":
            xla_ops.append(e)
    mem = [e for e in kernels if "memcpy" in e["name"].lower() or "memset" in e["name"].lower()]
    kern = [e for e in kernels if e not in mem]
    total_us = sum(float(e.get("dur", 0)) for e in kern)

    # Kernels inside XLA command buffers (CUDA graphs) carry the command buffer as ``hlo_op``; their
    # event name is the kernel's, which XLA derives from the fusion's name ('.' -> '_'); identical
    # fusions share one kernel (named after one of them), so a name maps to its first instruction.
    by_kernel_name = {}
    for inst in op_names:
        by_kernel_name.setdefault(inst.replace(".", "_").replace("-", "_"), inst)

    def hlo_op(e):
        a = e.get("args", {})
        op = a.get("hlo_op") or e["name"]
        if op.startswith("command_buffer") or op not in op_names:
            op = by_kernel_name.get(e["name"], by_kernel_name.get(e["name"].replace(".", "_"), e["name"]))
        return op

    by_op = collections.defaultdict(lambda: [0, 0.0])
    for e in kern:
        k = hlo_op(e)
        by_op[k][0] += 1
        by_op[k][1] += float(e.get("dur", 0))
    def layer(op):
        if op.startswith(PALLAS_PREFIXES):  # a Pallas kernel: named by its pallas_call, not by an HLO op
            return "pallas:" + op.split("__")[0]
        return layer_of(op_names.get(op))

    by_layer = collections.defaultdict(lambda: [0, 0.0])
    by_kind = collections.defaultdict(lambda: [0, 0.0])
    for k, (n, us) in by_op.items():
        lay = layer(k)
        by_layer[lay][0] += n
        by_layer[lay][1] += us
        by_kind[layer_kind(lay)][0] += n
        by_kind[layer_kind(lay)][1] += us
    top = sorted(by_op.items(), key=lambda kv: -kv[1][1])[:25]
    host = host_summary(events, pname, tname, steps)
    graphs = {e.get("args", {}).get("cuda_graph_id") for e in kern} - {None}
    in_graph = sum(1 for e in kern if e.get("args", {}).get("cuda_graph_id") is not None)
    span = (max(e["ts"] + e.get("dur", 0) for e in kern) - min(e["ts"] for e in kern)) if kern else 0.0
    return {
        "file": os.path.basename(path), "lines": dict(lines.most_common(30)),
        "kernels_per_step": len(kern) / steps, "gpu_us_per_step": total_us / steps,
        "span_us_per_step": span / steps, "memcpy_per_step": len(mem) / steps,
        "mean_kernel_us": total_us / len(kern) if kern else None,
        "top_kernels": [{"hlo_op": k, "layer": layer(k), "per_step": n / steps,
                         "us_per_step": us / steps} for k, (n, us) in top],
        "by_layer_kind": {k: {"kernels_per_step": n / steps, "us_per_step": us / steps}
                          for k, (n, us) in sorted(by_kind.items(), key=lambda kv: -kv[1][1])},
        "by_layer_top": {k: {"kernels_per_step": n / steps, "us_per_step": us / steps}
                         for k, (n, us) in sorted(by_layer.items(), key=lambda kv: -kv[1][1])[:30]},
        "kernels_in_cuda_graphs_per_step": in_graph / steps, "cuda_graphs_seen": len(graphs),
        "host": host,
        "sample_kernel_events": [{k: e.get(k) for k in ("name", "dur", "args")} for e in kern[:5]],
        "sample_xla_op_events": [{k: e.get(k) for k in ("name", "dur", "args")} for e in xla_ops[:3]],
    }


# ------------------------------------------------------------------------------------ main
def environment(module: str = "benchmarks.step_kernels") -> dict:
    """Device, versions, date, the command (``python -m {module} ...``) and ``XLA_FLAGS``."""
    import jax
    import jaxlib
    d = jax.devices()[0]
    return {"device": getattr(d, "device_kind", str(d)), "platform": d.platform, "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": f"python -m {module} " + " ".join(sys.argv[1:]),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _median_p99(fn, n):
    import numpy as np
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3), float(np.percentile(ts, 99) * 1e3)


def measure(model_name: str, batch: int, dtype: str, *, options: dict, image_size: int | None, chunk: int,
            repeats: int, trace_steps: int, dump_dir: str | None, label: str, timing: bool | None = None,
            live_splits: tuple = ()) -> dict:
    import jax
    import jax.numpy as jnp

    import co3d_jax
    from co3d_jax.benchmark import cast_tree
    from co3d_jax.live import LiveStep

    dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    opts = dict(options)
    if image_size:
        opts["image_size"] = image_size
    model = co3d_jax.create_model(model_name, **opts)
    model, params = model.fold_batchnorm(model.init(jax.random.key(0)))
    params = cast_tree(params, dt)
    res = {"label": label, "model": model_name, "options": options, "batch": batch, "dtype": dtype,
           "image_size": model.image_size}
    live = LiveStep(model, params, batch, dt)
    frame = jax.random.normal(jax.random.key(1), (batch, *model.frame_shape), dt)
    valid = live._all_valid
    t0 = time.perf_counter()
    compiled = live._step.lower(live.init(), frame, valid).compile()
    res["step_compile_s"] = time.perf_counter() - t0
    text = compiled.as_text()
    counts = hlo_counts(text)
    op_names = counts.pop("_op_names")
    res["step_hlo"] = counts
    if dump_dir:
        with open(os.path.join(dump_dir, f"hlo_step_{label}_b{batch}_{dtype}.txt"), "w") as f:
            f.write(text)

    # the throughput path: a chunk-frame scan with params as arguments
    stream = jax.jit(lambda p, s, x: model.stream(p, s, x), donate_argnums=(1,))
    frames = jax.random.normal(jax.random.key(2), (batch, chunk, *model.frame_shape), dt)
    t0 = time.perf_counter()
    scan_c = stream.lower(params, model.init_state(batch, dt), frames).compile()
    res["scan_compile_s"] = time.perf_counter() - t0
    sc = hlo_counts(scan_c.as_text())
    scan_names = sc.pop("_op_names")
    res["scan_hlo"] = {"chunk": chunk, **sc}
    if dump_dir:
        with open(os.path.join(dump_dir, f"hlo_scan_{label}_b{batch}_{dtype}.txt"), "w") as f:
            f.write(scan_c.as_text())
    if not (jax.devices()[0].platform != "cpu" if timing is None else timing):
        return res

    # ---- GPU timings
    box = {"s": live.init()}

    def call_block():
        box["s"], o = live(box["s"], frame)
        jax.block_until_ready(o)

    def raw_block():
        box["s"], o = compiled(box["s"], frame, valid)
        jax.block_until_ready(o)

    def old_style_block():  # what __call__ did before: eager all-valid mask and cast per call
        box["s"], o = live._step(box["s"], frame.astype(dt), jnp.ones((batch,), bool))
        jax.block_until_ready(o)

    # the unpacked alternative: the state as its pytree of ~100 arrays, donated, weights closed over
    tree_step = jax.jit(lambda s, x, v: model.step(params, s, x, v), donate_argnums=(0,))
    tbox = {"s": model.init_state(batch, dt)}

    def tree_block():
        tbox["s"], o = tree_step(tbox["s"], frame, valid)
        jax.block_until_ready(o)

    calls = (call_block, raw_block, old_style_block) + ((tree_block,) if batch == 1 else ())  # latency: batch 1
    for f in calls:
        for _ in range(10):
            f()
    n = 200 if batch == 1 else 40
    res["live_call_ms_median_p99"] = _median_p99(call_block, n)
    res["raw_compiled_call_ms_median_p99"] = _median_p99(raw_block, n)
    res["old_style_call_ms_median_p99"] = _median_p99(old_style_block, n)
    if batch == 1:
        res["tree_state_call_ms_median_p99"] = _median_p99(tree_block, n)
    del tbox
    # LiveStep with other packings (``split_bytes``): blocking median/p99 and pipelined ms per call
    res["live_split_bytes"] = live.split_bytes
    res["live_splits"] = []  # in run order (a split_bytes given twice is timed twice: the spread)
    for sb in live_splits:
        other = LiveStep(model, params, batch, dt, split_bytes=sb)
        obox = {"s": other.init()}

        def other_block():
            obox["s"], o = other(obox["s"], frame)
            jax.block_until_ready(o)
        for _ in range(10):
            other_block()
        med = _median_p99(other_block, n)
        t0 = time.perf_counter()
        for _ in range(n // 2):
            obox["s"], o = other(obox["s"], frame)
        jax.block_until_ready(o)
        res["live_splits"].append({"split_bytes": sb, "arrays": len(obox["s"]), "call_ms_median_p99": med,
                                   "pipelined_ms_per_call": (time.perf_counter() - t0) / (n // 2) * 1e3})
        del obox, other
    jax.block_until_ready(box["s"])
    t0 = time.perf_counter()
    npipe = 100 if batch == 1 else 20
    for _ in range(npipe):
        box["s"], o = live(box["s"], frame)
    td = (time.perf_counter() - t0) / npipe
    jax.block_until_ready(o)
    res["live_pipelined_dispatch_ms_per_call"] = td * 1e3
    res["live_pipelined_wall_ms_per_call"] = (time.perf_counter() - t0) / npipe * 1e3

    st = {"s": model.init_state(batch, dt)}

    def scan_run():
        st["s"], o = scan_c(params, st["s"], frames)
        jax.block_until_ready(o)
    scan_run()
    scan_run()
    ts = sorted(_median_p99(scan_run, 1)[0] for _ in range(repeats))
    sec = ts[len(ts) // 2] / 1e3
    res["scan_ms_per_frame"] = sec / chunk * 1e3
    res["scan_frames_per_s"] = batch * chunk / sec

    if trace_steps <= 0:  # timing only (--trace-steps 0)
        return res
    # ---- trace of a few LiveStep steps
    tdir = tempfile.mkdtemp(prefix="step_kernels_")
    jax.block_until_ready(box["s"])
    with jax.profiler.trace(tdir, create_perfetto_trace=True):
        for _ in range(trace_steps):
            call_block()
    res["trace_live_step"] = parse_trace(tdir, trace_steps, op_names)
    if dump_dir:
        for fpath in glob.glob(os.path.join(tdir, "**", "*.json.gz"), recursive=True):
            os.replace(fpath, os.path.join(dump_dir, f"trace_{label}_b{batch}_{dtype}_{os.path.basename(fpath)}"))
    # ---- trace of one scan call (the throughput path), per frame
    sdir = tempfile.mkdtemp(prefix="scan_kernels_")
    with jax.profiler.trace(sdir, create_perfetto_trace=True):
        scan_run()
    res["trace_scan_per_frame"] = parse_trace(sdir, chunk, scan_names)
    if dump_dir:
        for fpath in glob.glob(os.path.join(sdir, "**", "*.json.gz"), recursive=True):
            os.replace(fpath, os.path.join(dump_dir, f"trace_scan_{label}_b{batch}_{dtype}_{os.path.basename(fpath)}"))
    return res


def roofline(model_name: str, dtype: str, device: str, fps: float | None, image_size: int | None) -> dict:
    """Bytes a step must move per frame (state read + written, the frame) against the device's HBM."""
    import co3d_jax
    model = co3d_jax.create_model(model_name, **({"image_size": image_size} if image_size else {}))
    state_bytes, bmin = min_bytes(model, dtype)
    hbm = hbm_bytes_per_s(device)
    out = {"state_bytes_per_stream": state_bytes, "bytes_min_per_frame": bmin, "hbm_bytes_per_s": hbm}
    if hbm:
        out["memory_roofline_frames_per_s"] = hbm / bmin
        if fps:
            out["fraction_of_memory_roofline"] = fps / (hbm / bmin)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.step_kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cox3d_s_64")
    ap.add_argument("--batch", default="1,64", help="comma-separated batch sizes")
    ap.add_argument("--dtype", default="fp32", help="comma-separated: fp32, bf16")
    ap.add_argument("--image-size", type=int, default=None, help="smaller frames for a quick CPU run")
    ap.add_argument("--chunk", type=int, default=16, help="frames per scan call")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--trace-steps", type=int, default=5, help="LiveStep steps traced with jax.profiler (0: no traces, timing only)")
    ap.add_argument("--variants", default="", help="extra model options to compare, ';'-separated "
                    "'label:key=value,key=value' (values parsed as JSON when they can be)")
    ap.add_argument("--skip-default", action="store_true", help="only the --variants (a crash-isolated run)")
    ap.add_argument("--dump", default=None, help="folder for the optimised HLO texts and traces")
    ap.add_argument("--timing", action="store_true", help="time and trace off GPUs too (tests the GPU path)")
    ap.add_argument("--live-splits", default="", help="comma-separated LiveStep split_bytes to time beside the "
                    "default (e.g. 'inf,0': all packed, nothing packed)")
    ap.add_argument("--out", default="results/step_kernels.json")
    args = ap.parse_args(argv)

    variants = [("default", {})]
    for v in filter(None, args.variants.split(";")):
        label, _, kvs = v.partition(":")
        opts = {}
        for kv in filter(None, kvs.split(",")):
            k, _, val = kv.partition("=")
            try:
                opts[k] = json.loads(val)
            except json.JSONDecodeError:
                opts[k] = val
        variants.append((label, opts))
    if args.skip_default:
        variants = variants[1:]
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    env = environment()
    rows = []
    for label, opts in variants:
        for dtype in args.dtype.split(","):
            for b in (int(x) for x in args.batch.split(",")):
                try:
                    r = measure(args.model, b, dtype, options=opts, image_size=args.image_size, chunk=args.chunk,
                                repeats=args.repeats, trace_steps=args.trace_steps, dump_dir=args.dump, label=label,
                                timing=True if args.timing else None,
                                live_splits=tuple(float(x) for x in filter(None, args.live_splits.split(","))))
                except Exception as e:  # a variant that fails to compile: recorded, the others still run
                    rows.append({"label": label, "options": opts, "batch": b, "dtype": dtype,
                                 "error": f"{type(e).__name__}: {str(e)[:2000]}"})
                    print(f"{label} b{b} {dtype}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                r["roofline"] = roofline(args.model, dtype, env["device"], r.get("scan_frames_per_s"),
                                         args.image_size)
                rows.append(r)
                h, s = r["step_hlo"], r["scan_hlo"]
                line = (f"{label:<10} b{b:<3} {dtype}: step {h['kernel_like_ops']} kernel-like ops ({h['fusions']} "
                        f"fusions, {sum(h['custom_calls'].values())} custom calls, {h['copies']} copies); scan of "
                        f"{s['chunk']}: {s['kernel_like_ops']} ops")
                if "trace_live_step" in r:
                    t, ts = r["trace_live_step"], r["trace_scan_per_frame"]
                    line += (f" | LiveStep {r['live_call_ms_median_p99'][0]:.3f} ms (raw {r['raw_compiled_call_ms_median_p99'][0]:.3f},"
                             f" old-style {r['old_style_call_ms_median_p99'][0]:.3f}), pipelined "
                             f"{r['live_pipelined_wall_ms_per_call']:.3f} ms/call | scan {r['scan_frames_per_s']:,.0f} "
                             f"frames/s ({r['scan_ms_per_frame']:.3f} ms/frame) | trace "
                             f"{t.get('kernels_per_step', 0):.0f} kernels, {t.get('gpu_us_per_step', 0):.0f} µs/step; scan "
                             f"{ts.get('kernels_per_step', 0):.0f} kernels, {ts.get('gpu_us_per_step', 0):.0f} µs/frame | "
                             f"tree-state call {r.get('tree_state_call_ms_median_p99', [float('nan')])[0]:.3f} ms")
                for v in r.get("live_splits", []):
                    line += (f" | split_bytes={v['split_bytes']}: {v['arrays']} arrays, {v['call_ms_median_p99'][0]:.3f} ms, "
                             f"pipelined {v['pipelined_ms_per_call']:.3f}")
                print(line, flush=True)
                if os.path.dirname(args.out):
                    os.makedirs(os.path.dirname(args.out), exist_ok=True)
                with open(args.out, "w") as f:  # after every row: a cut-off run keeps what it measured
                    json.dump({"env": env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
