"""Throughput of a registry model on the current device, as ``experiments/profile.py`` and
``experiments/benchmark_jax.py`` measure it: random weights with BN folded, inputs already on the
device, one warm-up call (compilation, reported as ``compile_s``) and then the median of
``repeats`` timed calls, each synchronised with ``block_until_ready``."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from .models import create_model


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (which synchronises itself)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cast_tree(tree, dtype):
    """``tree`` with its floating leaves cast to ``dtype``."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def memory_mb(compiled) -> float | None:
    """Arguments, outputs and temporaries of a compiled executable, less what it aliases (MiB)."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    return (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - getattr(mem, "alias_size_in_bytes", 0)) / 2 ** 20


HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12}   # HBM bandwidth by device name


def hbm_bytes_per_s(device: str) -> float | None:
    """The HBM bandwidth of the device named ``device`` (e.g. "NVIDIA H200"), None if unknown."""
    return next((v for k, v in HBM_BYTES_PER_S.items() if k in device), None)


def min_bytes(model, dtype: str = "fp32") -> tuple[int, int]:
    """``(state bytes per stream, bytes_min per frame)`` of a continual model's step: the state (float
    leaves in ``dtype``, int32 counters) read and written once, plus the input frame."""
    item = 2 if dtype == "bf16" else 4
    state = jax.eval_shape(lambda: model.init_state(1, jnp.bfloat16 if dtype == "bf16" else jnp.float32))
    state_bytes = sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(state))
    return state_bytes, 2 * state_bytes + math.prod(model.frame_shape) * item


def bench_model(name: str, depthwise: str = "auto", **options):
    """``create_model(name, **options)``; ``depthwise`` (X3D/CoX3D's ``depthwise_impl``) is passed
    only when it is not ``auto``, so every registry model can be benchmarked; ``auto`` keeps the
    model's default (X3D: ``"fused"``, the Pallas step on NVIDIA GPUs)."""
    if depthwise != "auto":
        options["depthwise_impl"] = depthwise
    return create_model(name, **options)


def bench_stream(name: str, batch: int, dtype: str, chunk: int, repeats: int, unroll: int = 1,
                 depthwise: str = "auto", image_size: int | None = None, options: dict | None = None,
                 bulk: bool = False) -> dict:
    """Frames/s of ``stream`` over ``chunk``-frame calls for ``batch`` streams (BN folded, params,
    state and frames in ``dtype``, state donated between calls, timed once every stream is past
    its warm-up); ``memory_mb`` of the executable. ``options``: more ``create_model`` options
    (recorded in the row when given). ``bulk``: ``Model.stream(bulk=...)``, False (a ``lax.scan``
    of steps) or True (bulk steps, each layer over the chunk at once)."""
    model = bench_model(name, depthwise, **({"image_size": image_size} if image_size else {}), **(options or {}))
    params = model.init(jax.random.key(0))
    model, params = model.fold_batchnorm(params)
    dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    params = cast_tree(params, dt)
    fn = jax.jit(lambda p, s, x: model.stream(p, s, x, unroll=unroll, bulk=bulk), donate_argnums=(1,))
    frames = jax.random.normal(jax.random.key(1), (batch, chunk, *model.frame_shape), dt)
    state = model.init_state(batch, dt)
    t0 = time.perf_counter()
    fn = fn.lower(params, state, frames).compile()
    state, out = fn(params, state, frames)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run():
        holder["state"], o = fn(params, holder["state"], frames)
        jax.block_until_ready(o)

    for _ in range(-(-(model.delay + 1) // chunk)):  # past the warm-up (bulk steps run from there on)
        run()
    sec = median_time(run, repeats)
    return {"kind": "stream", "model": name, "batch": batch, "dtype": dtype, "chunk": chunk, "unroll": unroll,
            "bulk": bool(bulk),
            "depthwise": depthwise, **({"options": options} if options else {}), "seconds_per_chunk": sec,
            "frames_per_s": batch * chunk / sec, "compile_s": compile_s, "memory_mb": memory_mb(fn)}


def bench_clip(name: str, batch: int, dtype: str, repeats: int, depthwise: str = "auto",
               image_size: int | None = None, options: dict | None = None) -> dict:
    """Clips/s of ``forward`` on ``batch`` clips (BN folded, params and clips in ``dtype``);
    ``memory_mb`` of the executable. ``options``: more ``create_model`` options (recorded when given)."""
    model = bench_model(name, depthwise, **({"image_size": image_size} if image_size else {}), **(options or {}))
    params = model.init(jax.random.key(0))
    model, params = model.fold_batchnorm(params)
    dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    params = cast_tree(params, dt)
    fn = jax.jit(model.forward)
    clip = jax.random.normal(jax.random.key(1), (batch, model.clip_length, *model.frame_shape), dt)
    t0 = time.perf_counter()
    fn = fn.lower(params, clip).compile()
    jax.block_until_ready(fn(params, clip))
    compile_s = time.perf_counter() - t0
    sec = median_time(lambda: jax.block_until_ready(fn(params, clip)), repeats)
    return {"kind": "clip", "model": name, "batch": batch, "dtype": dtype, "depthwise": depthwise,
            **({"options": options} if options else {}), "seconds_per_batch": sec, "clips_per_s": batch / sec, "compile_s": compile_s, "memory_mb": memory_mb(fn)}
