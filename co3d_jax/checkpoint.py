"""Orbax checkpoints of a training run: params, optimizer state and a JSON ``meta`` (step, seed,
data position), restorable onto any device count. Used by ``experiments/finetune.py``.

:func:`restore_latest` restores the newest step that restores completely: a damaged step (a data
file deleted, ``meta/metadata`` missing, a torn write) is reported with a one-line reason and the
previous step is tried; :class:`CheckpointError` only when no step is usable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile

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
    """Save ``params`` and ``opt_state`` (replicated over the mesh) and ``meta`` as step ``step``.

    In one process the arrays are saved from host copies: Orbax's replica-parallel save of a
    replicated ``jax.Array`` slices it across the devices so that each writes a part, which
    compiles a ``jit(slice)`` per array shape and device at the first save (X3D-S: 86 compiles,
    3.6 s on 2 forced CPU devices against 0.1 s on one; host copies: 0.1 s on both;
    ``benchmarks/checkpoint_save.py``). Several processes keep the global arrays."""
    state = {"params": params, "opt_state": _opt_leaves(opt_state)}
    if jax.process_count() == 1:
        state = jax.device_get(state)
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


class CheckpointError(Exception):
    """No checkpoint step of a run can be restored (one-line message)."""


def _reason(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:200]


@contextlib.contextmanager
def _stderr_kept_on_success():
    """Hold what is written to file descriptor 2 (including C++ and callback threads) while a
    restore runs: replayed when it succeeds, dropped when it fails, so a damaged step costs one
    line instead of TensorStore's asyncio tracebacks (``Event loop is closed``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                tmp.seek(0)
                held = tmp.read()
                if held:
                    sys.stderr.write(held.decode(errors="replace"))
                    sys.stderr.flush()


def restore_latest(mngr, params_like, opt_like, mesh):
    """Restore the newest complete step: ``(step, params, opt_state, meta, broken)``, where
    ``broken`` lists the newer steps that failed to restore as ``(step, reason)``; None when the
    run has no checkpoint. Raises :class:`CheckpointError` when steps exist but none restores."""
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        return None
    broken = []
    for step in steps:
        try:
            with _stderr_kept_on_success():
                params, opt_state, meta = restore_checkpoint(mngr, step, params_like, opt_like, mesh)
        except Exception as e:  # Orbax/TensorStore raise many types for a damaged step
            broken.append((step, _reason(e)))
            continue
        if not isinstance(meta, dict) or "step" not in meta:
            broken.append((step, "meta has no step"))
            continue
        return step, params, opt_state, meta, broken
    detail = "; ".join(f"step {s}: {r}" for s, r in broken)
    raise CheckpointError(f"no usable checkpoint in {mngr.directory} ({detail})")


def set_aside(mngr, step: int, dest: str) -> str:
    """Move the damaged ``step`` out of the manager's folder into ``dest/<step>`` (kept for
    inspection, no longer listed or overwritten) and reload the manager. Returns the new path."""
    src = os.path.join(os.fspath(mngr.directory), str(step))
    os.makedirs(dest, exist_ok=True)
    target = os.path.join(dest, str(step))
    n = 1
    while os.path.exists(target):
        target = os.path.join(dest, f"{step}.{n}")
        n += 1
    shutil.move(src, target)
    mngr.reload()
    return target
