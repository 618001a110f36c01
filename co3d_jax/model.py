"""The public model object: one definition for clip mode and continual (frame-by-frame) mode."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from .layers import Layer, fold_batchnorm
from .layers.base import Out
from .normalisation import KINETICS
from .stream import reset_state, scan_stream


StepOutput = Out
"""Output of :meth:`Model.step`: class scores ``out.scores`` ``(B, K)`` (after the head
activation) and ``out.valid`` ``(B,)`` (False during warm-up or on temporally strided steps:
ignore ``scores``). It is the layers' :class:`~co3d_jax.layers.base.Out` (fields ``y``, ``valid``;
``scores`` is ``y``), so every level's ``step`` returns ``(state, Out)``."""


@dataclasses.dataclass(frozen=True)
class Model:
    """A continual 3D CNN (or a clip model, which is the same network run clip-wise).

    Attributes: ``name``; ``net`` (root :class:`~co3d_jax.layers.Layer`, channels-last);
    ``image_size`` (crop side); ``clip_length`` (frames of one clip-mode evaluation);
    ``frame_rate`` (sampling stride in 30-fps frames); ``normalisation`` (``mean``, ``std``);
    ``num_classes``; ``config`` (the options it was built with); ``family`` (the
    :class:`~co3d_jax.models.spec.FamilySpec` it was built from, set by
    :func:`co3d_jax.create_model`; ``None`` for a model assembled by hand).
    """

    name: str
    net: Layer
    image_size: int
    clip_length: int
    frame_rate: int
    num_classes: int
    normalisation: tuple = KINETICS
    config: Any = None
    continual: bool = True
    family: Any = dataclasses.field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------------ metadata
    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    @property
    def delay(self) -> int:
        """Frames fed before the first valid output, minus one: output ``t`` is valid from ``t = delay``."""
        return self.net.delay

    @property
    def receptive_field(self) -> int:
        return self.net.receptive_field

    @property
    def stride(self) -> int:
        return self.net.stride

    @property
    def padding(self) -> int:
        return self.net.padding

    # ------------------------------------------------------------------ params
    def init(self, key: jax.Array):
        """Random parameters (a nested dict of arrays)."""
        return self.net.init(key, self.frame_shape)

    def fold_batchnorm(self, params) -> tuple["Model", Any]:
        """An inference-only copy with every Conv->BatchNorm merged (same outputs)."""
        net, params = fold_batchnorm(self.net, params)
        return dataclasses.replace(self, net=net), params

    # ------------------------------------------------------------------ clip mode
    def forward(self, params, clip: jax.Array) -> jax.Array:
        """Clip mode. ``clip``: ``(B, T, H, W, 3)`` float, normalised -> scores ``(B, K)``
        (the head activation averaged over output positions, as the reference evaluates)."""
        self._check(clip, clip=True)
        y = self.net.forward(params, clip)
        return jnp.mean(y, axis=(1, 2, 3))

    def forward_train(self, params, clip: jax.Array):
        """Clip mode in training mode (:meth:`Layer.forward_train`: batch-statistics batch norm)
        -> ``(scores (B, K), params with updated running statistics)``."""
        self._check(clip, clip=True)
        y, params = self.net.forward_train(params, clip)
        return jnp.mean(y, axis=(1, 2, 3)), params

    # ------------------------------------------------------------------ continual mode
    def init_state(self, batch_size: int, dtype=jnp.float32):
        """Fresh state for ``batch_size`` streams (a fixed-shape pytree)."""
        return self.net.init_state(batch_size, self.frame_shape, dtype)

    def step(self, params, state, frame: jax.Array, valid: jax.Array | None = None):
        """Consume one frame ``(B, H, W, 3)`` per stream -> ``(state, StepOutput)``.

        ``valid`` (optional ``(B,)`` bool): streams with False get no frame this step and keep
        their state.
        """
        self._check(frame, clip=False)
        b = frame.shape[0]
        if valid is None:
            valid = jnp.ones((b,), bool)
        elif valid.shape != (b,) or valid.dtype != jnp.bool_:
            raise ValueError(f"{self.name}: valid must be a ({b},) bool array, got {valid.shape} {valid.dtype}")
        state, out = self.net.step(params, state, frame, valid)
        return state, out._replace(y=out.y.reshape(b, -1))

    def peek(self, params, state, frame: jax.Array, valid: jax.Array | None = None) -> StepOutput:
        """The output :meth:`step` would give, without advancing the state."""
        return self.step(params, state, frame, valid)[1]

    def stream(self, params, state, frames: jax.Array, valid: jax.Array | None = None, unroll: int = 1):
        """Run ``frames`` ``(B, T, H, W, 3)`` through the stream as one ``lax.scan``.

        Returns ``(state, StepOutput(scores (B, T, K), valid (B, T)))``. Jit it (or use
        :meth:`stream_fn`) for speed.
        """
        self._check(frames, clip=True)
        return scan_stream(self.step, params, state, frames, valid, unroll)

    def stream_fn(self, unroll: int = 1, donate: bool = False):
        """``jit``-compiled :meth:`stream` (optionally donating the state buffers)."""
        return jax.jit(partial(self.stream, unroll=unroll), donate_argnums=(1,) if donate else ())

    def reset(self, state, mask: jax.Array):
        """Reset the streams where ``mask`` ``(B,)`` is True to a fresh state
        (:func:`co3d_jax.stream.reset_state` with this model's ``init_state``)."""
        leaves = jax.tree.leaves(state)
        dtype = next((a.dtype for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)), jnp.float32)
        fresh = self.init_state(leaves[0].shape[0], dtype) if leaves else state
        return reset_state(state, fresh, mask, name=self.name)

    # ------------------------------------------------------------------ checks
    def _check(self, x: jax.Array, *, clip: bool) -> None:
        rank = 5 if clip else 4
        what = "clip (B, T, H, W, 3)" if clip else "frame (B, H, W, 3)"
        want = self.frame_shape
        if x.ndim != rank or tuple(x.shape[-3:]) != want:
            raise ValueError(f"{self.name}: expected a {what} with (H, W, C) = {want}, got shape {tuple(x.shape)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{self.name}: expected a float {what} (normalised), got dtype {x.dtype}")
