"""Export the single-frame step as a self-contained, serialized StableHLO artifact.

The exported function is ``step(state, frame) -> (state, scores, valid)`` with the weights baked
in as constants and the state as explicit inputs and outputs (dicts of arrays). Its outputs are a
plain tuple rather than :class:`co3d_jax.StepOutput`, so that deserializing it needs no class of
this package. An export directory holds:

* ``step.jaxexport``: ``jax.export`` serialization (platforms chosen at export time);
* ``state0.npz``: the fresh state's leaves ``"0" .. "N-1"`` in tree-flatten order;
* ``meta.json``: model name, batch size, frame shape, delay, class count.

Serving it needs jax and numpy only, not this package::

    import json, numpy as np, jax
    exp = jax.export.deserialize(open(d + "/step.jaxexport", "rb").read())
    z = np.load(d + "/state0.npz")
    state_tree = exp.in_tree.children()[0].children()[0]     # args = ((state, frame), {})
    state = jax.tree.unflatten(state_tree, [z[str(i)] for i in range(len(z.files))])
    for frame in frames:                                       # frame: (B, H, W, 3) float32
        state, scores, valid = exp.call(state, frame)

:func:`load_exported` does exactly this.

From the command line::

    python -m co3d_jax.export --model cox3d_s_64 --weights W.npz --out DIR [--batch-size B] [--platform cpu]
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def export_step(model, params, path: str, batch_size: int = 1, platforms: Sequence[str] | None = None,
                dtype=jnp.float32) -> str:
    """Serialize ``model.step`` for ``batch_size`` streams into the directory ``path``."""
    state0 = model.init_state(batch_size, dtype)

    def step(state, frame):
        state, out = model.step(params, state, frame)
        return state, out.scores, out.valid

    frame_spec = jax.ShapeDtypeStruct((batch_size, *model.frame_shape), dtype)
    state_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state0)
    kwargs = {"platforms": tuple(platforms)} if platforms else {}
    exp = jax.export.export(jax.jit(step), **kwargs)(state_spec, frame_spec)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "step.jaxexport"), "wb") as f:
        f.write(exp.serialize())
    leaves = jax.tree.leaves(state0)
    np.savez(os.path.join(path, "state0.npz"), **{str(i): np.asarray(a) for i, a in enumerate(leaves)})
    meta = {"model": model.name, "batch_size": batch_size, "frame_shape": list(model.frame_shape),
            "dtype": jnp.dtype(dtype).name, "delay": model.delay, "num_classes": model.num_classes,
            "platforms": list(exp.platforms)}
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return path


def load_exported(path: str):
    """Load an export directory: ``(call, state0, meta)`` with ``call(state, frame) -> (state,
    scores, valid)``. Uses jax and numpy only."""
    with open(os.path.join(path, "step.jaxexport"), "rb") as f:
        exp = jax.export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(path, "state0.npz")) as z:
        leaves = [z[str(i)] for i in range(len(z.files))]
    state_tree = exp.in_tree.children()[0].children()[0]
    state0 = jax.tree.unflatten(state_tree, leaves)
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    return exp.call, state0, meta


def main(argv=None) -> int:
    """``python -m co3d_jax.export``: export a continual model's step for serving."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m co3d_jax.export",
                                 description="Export a continual model's single-frame step as serialized StableHLO "
                                             "(step.jaxexport, state0.npz, meta.json); see the module docstring.")
    ap.add_argument("--model", required=True, help="registry name of a continual model, e.g. cox3d_s_64")
    ap.add_argument("--weights", required=True, help="parameter file (.npz from weight_port or finetune)")
    ap.add_argument("--out", required=True, help="export folder (created; its parent must exist)")
    ap.add_argument("--batch-size", type=int, default=1, help="streams per call")
    ap.add_argument("--platform", action="append", default=[], help="target platform (repeatable; default: this one)")
    args = ap.parse_args(argv)

    from . import create_model, load_params
    from .params import ParamsError, read_npz

    def fail(msg):
        print(f"error: {msg}", file=sys.stderr)
        return 2

    out = os.path.abspath(args.out)
    if not os.path.isdir(os.path.dirname(out)):
        return fail(f"--out {out}: the parent folder {os.path.dirname(out)} does not exist (create it first)")
    if args.batch_size < 1:
        return fail("--batch-size must be >= 1")
    try:
        opts = json.loads(read_npz(args.weights)[1].get("model_options", "{}"))
        model = create_model(args.model, **opts)
        params = load_params(args.weights, model)
    except (ParamsError, ValueError, TypeError) as e:
        return fail(str(e).splitlines()[0])
    if not model.continual:
        return fail(f"{args.model} is a clip model; export a continual one (cox3d_*)")
    export_step(model, params, out, args.batch_size, args.platform or None)
    print(f"exported {model.name} (batch {args.batch_size}) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
