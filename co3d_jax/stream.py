"""Stream driver: run a batch of streams through any continual layer as one ``jit(lax.scan)``.

Frames are ``(B, T, H, W, C)``; outputs ``(B, T, ...)`` with a ``(B, T)`` validity mask. Feeding
a stream in chunks (passing the returned state back in) gives exactly the outputs of feeding it
at once, because the scan carries nothing but the explicit state.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from .layers.base import Layer, bcast


def stream_valid(frames, valid, who: str):
    """The ``(B, T)`` validity of ``frames`` ``(B, T, ...)``: all True for ``None``, else ``valid``
    checked (one ``ValueError`` prefixed by ``who`` otherwise)."""
    if frames.ndim < 2:
        raise ValueError(f"{who}: frames must be (B, T, ...), got shape {tuple(frames.shape)}")
    b, t = frames.shape[:2]
    if valid is None:
        return jnp.ones((b, t), bool)
    if valid.shape != (b, t) or valid.dtype != jnp.bool_:
        raise ValueError(f"{who}: valid must be a ({b}, {t}) bool array, got {valid.shape} {valid.dtype}")
    return valid


def scan_stream(step_fn, params, state, frames, valid=None, unroll: int = 1):
    """``step_fn(params, state, frame, valid) -> (state, Out(y, valid))`` scanned over axis 1.

    ``frames``: ``(B, T, ...)``; ``valid``: optional ``(B, T)`` bool (False = no frame for that
    stream at that time: its state is left untouched). Returns ``(state, Out(y (B, T, ...),
    valid (B, T)))``: the step's own output type with a time axis (``StepOutput`` for a model).
    """
    valid = stream_valid(frames, valid, "scan_stream")

    def body(s, xv):
        return step_fn(params, s, *xv)

    xs = (jnp.moveaxis(frames, 1, 0), jnp.moveaxis(valid, 1, 0))
    state, outs = lax.scan(body, state, xs, unroll=unroll)
    return state, jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), outs)


@partial(jax.jit, static_argnames=("layer", "unroll"))
def run_layer(layer: Layer, params, state, frames, valid=None, unroll: int = 1):
    """Jitted :func:`scan_stream` over ``layer.step``: ``(state, Out(y (B, T, ...), valid (B, T)))``."""
    return scan_stream(layer.step, params, state, frames, valid, unroll)


def reset_state(state, fresh, mask, *, name: str | None = None):
    """Replace the state of the streams where ``mask`` (``(B,)`` bool) is True by ``fresh``
    (an ``init_state`` of the same batch size); the other streams continue untouched.

    The one reset: :meth:`co3d_jax.Model.reset` and :meth:`co3d_jax.live.LiveStep.reset` call it.
    ``name`` prefixes the error raised for a mask that is not ``(B,)`` bool."""
    mask = jnp.asarray(mask)
    batch = {a.shape[0] for a in jax.tree.leaves(state)}
    want = batch.pop() if len(batch) == 1 else "B"
    if mask.ndim != 1 or mask.dtype != jnp.bool_ or (want != "B" and mask.shape[0] != want):
        streams = f" (the state is for {want} stream(s))" if want != "B" else ""
        raise ValueError(f"{name + ': ' if name else ''}reset mask must be a ({want},) bool array{streams}, got "
                         f"{mask.shape} {mask.dtype}")
    return jax.tree.map(lambda new, old: jnp.where(bcast(mask, old), new, old), fresh, state)
