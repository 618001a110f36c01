"""Run one jitted CoX3D step between cudaProfilerStart/Stop, for Nsight Compute's per-kernel times.

    ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
        python -m experiments.ncu_step --model cox3d_s_64 --batch 64 > kernels.csv
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os


def _cudart():
    import nvidia.cuda_runtime as rt  # shipped with the CUDA jax plugin
    base = list(rt.__path__)[0]
    libs = sorted(glob.glob(os.path.join(base, "lib", "libcudart.so*")))
    return ctypes.CDLL(libs[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cox3d_s_64")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--impl", default="auto")
    args = ap.parse_args(argv)
    import jax
    import jax.numpy as jnp

    import co3d_jax
    from experiments.benchmark_jax import cast_tree
    dt = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    model = co3d_jax.create_model(args.model, depthwise_impl=args.impl)
    model, params = model.fold_batchnorm(model.init(jax.random.key(0)))
    params = cast_tree(params, dt)
    step = jax.jit(model.step)
    x = jax.random.normal(jax.random.key(1), (args.batch, *model.frame_shape), dt)
    st = model.init_state(args.batch, dt)
    for _ in range(3):
        st, out = step(params, st, x)
    jax.block_until_ready(out)
    rt = _cudart()
    rt.cudaProfilerStart()
    st, out = step(params, st, x)
    jax.block_until_ready(out)
    rt.cudaProfilerStop()


if __name__ == "__main__":
    main()
