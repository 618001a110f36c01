"""The first checkpoint save of a replicated training state on this process's devices: Orbax's
default save of the ``jax.Array`` s (replica-parallel: each replicated array is sliced across the
devices, a ``jit(slice)`` compiled per shape and device) against ``co3d_jax.checkpoint.save_checkpoint``
(host copies in one process). This was the extra time of the two-device fine-tuning runs of
``results/scaling_h100x2``, whose steady rate counted the final save.

    python -m benchmarks.checkpoint_save [--model x3d_s] [--out FILE.json]

Prints (and writes) one JSON line: devices, leaves, and per variant the seconds of ``save`` (the
synchronous part), of ``wait_until_finished`` and the XLA compilations during the save; the
default variant is saved twice (the second finds its slices compiled).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import jax
import orbax.checkpoint as ocp

import co3d_jax
from co3d_jax import train as T
from co3d_jax.checkpoint import make_manager, save_checkpoint

COMPILES = [0]


def _count(event: str, duration: float, **kw) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        COMPILES[0] += 1


def timed(fn) -> dict:
    c0, t0 = COMPILES[0], time.perf_counter()
    mngr = fn()
    t1 = time.perf_counter()
    mngr.wait_until_finished()
    t2 = time.perf_counter()
    mngr.close()
    return dict(save_s=round(t1 - t0, 3), wait_s=round(t2 - t1, 3), compiles=COMPILES[0] - c0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="x3d_s")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    jax.monitoring.register_event_duration_secs_listener(_count)
    model = co3d_jax.create_model(args.model, num_classes=4)
    mesh = T.data_mesh()
    params = T.replicate(T.init_for_training(model, 0), mesh)
    opt = T.replicate(T.init_opt_state(params, T.TrainConfig(total_steps=10)), mesh)
    jax.block_until_ready((params, opt))
    work = tempfile.mkdtemp(prefix="ckpt_save_")
    state = {"params": params, "opt_state": {f"{i:05d}": x for i, x in enumerate(jax.tree.leaves(opt))}}

    def orbax_default(step, d):
        def go():
            m = make_manager(os.path.join(work, d), 3)
            m.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({})),
                   force=True)
            return m
        return go

    def ours(step, d):
        def go():
            m = make_manager(os.path.join(work, d), 3)
            save_checkpoint(m, step, params, opt, {})
            return m
        return go

    res = dict(model=args.model, devices=len(jax.devices()), device=jax.devices()[0].device_kind,
               jax=jax.__version__, leaves=len(jax.tree.leaves(state)),
               host_copies_first=timed(ours(1, "ours")), jax_arrays_first=timed(orbax_default(1, "default")),
               jax_arrays_again=timed(orbax_default(2, "default")), host_copies_again=timed(ours(2, "ours")))
    shutil.rmtree(work, ignore_errors=True)
    line = json.dumps(res)
    print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
