"""Orbax checkpoints of a training run: params, optimizer state and a JSON ``meta`` (step, seed,
data position), restorable onto any device count. Used by ``experiments/finetune.py``."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from .train import shardings


def _opt_leaves(opt_state) -> dict:
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(opt_state))}


def _abstract(tree, sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def make_manager(directory: str, keep: int):
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=opts)


def save_checkpoint(mngr, step: int, params, opt_state, meta: dict) -> None:
    state = {"params": params, "opt_state": _opt_leaves(opt_state)}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
              force=True)


def restore_checkpoint(mngr, step: int, params_like, opt_like, mesh):
    """Restore onto ``mesh`` (any device count): the target is abstract (shape, dtype, replicated
    sharding on this mesh), so the stored shardings are never used; then unflatten the optimizer
    state into the structure of ``opt_like``."""
    repl, _ = shardings(mesh)
    target = {"params": _abstract(params_like, repl), "opt_state": _abstract(_opt_leaves(opt_like), repl)}
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                       meta=ocp.args.JsonRestore()))
    state, meta = out["state"], out["meta"]
    leaves = [state["opt_state"][k] for k in sorted(state["opt_state"])]
    opt_state = jax.tree.unflatten(jax.tree.structure(opt_like), leaves)
    return state["params"], opt_state, meta
