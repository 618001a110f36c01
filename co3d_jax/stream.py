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


def scan_stream(step_fn, params, state, frames, valid=None, unroll: int = 1):
    """``step_fn(params, state, frame, valid) -> (state, out, valid)`` scanned over axis 1.

    ``frames``: ``(B, T, ...)``; ``valid``: optional ``(B, T)`` bool (False = no frame for that
    stream at that time: its state is left untouched). Returns ``(state, outs (B, T, ...),
    valid (B, T))``.
    """
    if frames.ndim < 2:
        raise ValueError(f"scan_stream: frames must be (B, T, ...), got shape {tuple(frames.shape)}")
    b, t = frames.shape[:2]
    if valid is None:
        valid = jnp.ones((b, t), bool)
    elif valid.shape != (b, t) or valid.dtype != jnp.bool_:
        raise ValueError(f"scan_stream: valid must be a ({b}, {t}) bool array, got {valid.shape} {valid.dtype}")

    def body(s, xv):
        x, v = xv
        s, y, vo = step_fn(params, s, x, v)
        return s, (y, vo)

    xs = (jnp.moveaxis(frames, 1, 0), jnp.moveaxis(valid, 1, 0))
    state, (ys, vs) = lax.scan(body, state, xs, unroll=unroll)
    return state, jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), ys), jnp.moveaxis(vs, 0, 1)


@partial(jax.jit, static_argnames=("layer", "unroll"))
def run_layer(layer: Layer, params, state, frames, valid=None, unroll: int = 1):
    """Jitted :func:`scan_stream` over ``layer.step``."""
    return scan_stream(layer.step, params, state, frames, valid, unroll)


def reset_state(state, fresh, mask):
    """Replace the state of the streams where ``mask`` (``(B,)`` bool) is True by ``fresh``
    (an ``init_state`` of the same batch size); the other streams continue untouched."""
    def sel(new, old):
        if mask.shape != (old.shape[0],):
            raise ValueError(f"reset mask must have shape ({old.shape[0]},), got {mask.shape}")
        return jnp.where(bcast(mask, old), new, old)
    return jax.tree.map(sel, fresh, state)
