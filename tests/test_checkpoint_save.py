"""``co3d_jax.checkpoint.save_checkpoint`` on two devices: no per-device slicing at the first save
(Orbax's replica-parallel save of replicated ``jax.Array`` s compiles a ``jit(slice)`` per shape and
device, which made the first two-device save take seconds), and the state restores exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
import orbax.checkpoint as ocp
from co3d_jax.checkpoint import make_manager, restore_checkpoint, save_checkpoint
from co3d_jax.mesh import data_mesh
from co3d_jax.train import replicate

compiles = [0]
jax.monitoring.register_event_duration_secs_listener(
    lambda ev, d, **k: compiles.__setitem__(0, compiles[0] + (ev == "/jax/core/compile/backend_compile_duration")))
mesh = data_mesh()
rng = np.random.default_rng(0)
params = replicate({"a": rng.normal(size=(6, 8)).astype(np.float32), "b": rng.normal(size=(10,)).astype(np.float32),
                    "c": {"k": rng.normal(size=(3, 3, 4)).astype(np.float32)}}, mesh)
opt = replicate((rng.normal(size=(6, 8)).astype(np.float32), np.int32(7)), mesh)
jax.block_until_ready((params, opt))
out = {}
c0 = compiles[0]
m = make_manager(sys.argv[1] + "/ours", 2)
save_checkpoint(m, 1, params, opt, {"step": 1})
m.wait_until_finished()
out["ours"] = compiles[0] - c0
p2, o2, meta = restore_checkpoint(m, 1, params, opt, mesh)
out["equal"] = all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves((params, opt)),
                                                                               jax.tree.leaves((p2, o2))))
out["replicated"] = all(x.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), x.ndim)
                        for x in jax.tree.leaves((p2, o2)))
out["meta"] = meta
m.close()
c0 = compiles[0]
m = make_manager(sys.argv[1] + "/orbax", 2)   # what the save did before: the jax.Arrays to Orbax (other shapes)
other = replicate({"a": np.ones((4, 6), np.float32), "b": np.ones((12,), np.float32),
                   "c": np.ones((2, 3, 4), np.float32)}, mesh)
m.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": other}), meta=ocp.args.JsonSave({})))
m.wait_until_finished()
out["jax_arrays"] = compiles[0] - c0
m.close()
print(json.dumps(dict(out, devices=len(jax.devices()))))
"""


def test_first_save_on_two_devices_compiles_nothing_and_restores(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["devices"] == 2
    assert r["jax_arrays"] >= 3          # Orbax slices each replicated array per device (the old cost)
    assert r["ours"] == 0                # host copies: nothing to compile
    assert r["equal"] and r["replicated"] and r["meta"] == {"step": 1}
