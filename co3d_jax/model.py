"""The public model object: one definition for clip mode and continual (frame-by-frame) mode."""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .layers import Layer, fold_batchnorm, fuse_activations
from .layers.base import Out
from .normalisation import KINETICS
from .stream import reset_state, scan_stream, stream_valid


StepOutput = Out
"""Output of :meth:`Model.step`: class scores ``out.scores`` ``(B, K)`` (after the head
activation) and ``out.valid`` ``(B,)`` (False during warm-up or on temporally strided steps,
where ``scores`` are zeros). It is the layers' :class:`~co3d_jax.layers.base.Out` (fields ``y``, ``valid``;
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
        """An inference-only copy with every Conv->BatchNorm merged (same outputs), then the
        activations next to convs built to take them moved into those convs
        (:func:`~co3d_jax.layers.fuse_activations`: X3D's depthwise convs, whose Pallas step applies
        them in its kernel). The params pytree keeps its paths (less the BatchNorms' entries)."""
        net, params = fold_batchnorm(self.net, params)
        return dataclasses.replace(self, net=fuse_activations(net)), params

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
        self._check_batch(state, b, "frame")
        if valid is None:
            valid = jnp.ones((b,), bool)
        elif valid.shape != (b,) or valid.dtype != jnp.bool_:
            raise ValueError(f"{self.name}: valid must be a ({b},) bool array, got {valid.shape} {valid.dtype}")
        state, out = self.net.step(params, state, frame, valid)
        # zeros where not valid: the net's value there is warm-up filler (and prefill has none)
        return state, Out(jnp.where(out.valid[:, None], out.y.reshape(b, -1), 0), out.valid)

    def peek(self, params, state, frame: jax.Array, valid: jax.Array | None = None) -> StepOutput:
        """The output :meth:`step` would give, without advancing the state."""
        return self.step(params, state, frame, valid)[1]

    @property
    def bulk_ok(self) -> bool:
        """Whether :meth:`stream` can run chunks as bulk steps (temporal stride 1 and every
        stateful layer with :meth:`~co3d_jax.layers.Layer.steps`: CoX3D and CoSlow; not the models
        with a temporal stride, CoI3D, continual R(2+1)D and SlowFast)."""
        return self.net.stride == 1 and self.net.bulk_ok

    def stream(self, params, state, frames: jax.Array, valid: jax.Array | None = None, unroll: int = 1,
               bulk: bool | None = None):
        """Run ``frames`` ``(B, T, H, W, 3)`` through the stream.

        Returns ``(state, StepOutput(scores (B, T, K), valid (B, T)))``, what :meth:`step` gives
        frame by frame. Jit it (or use :meth:`stream_fn`) for speed.

        ``bulk=True``: a chunk whose frames are all valid, on streams that are all past their
        warm-up (their output valid, no first-frame fill pending), runs as bulk steps: each layer
        processes the ``T`` frames at once from its state, with the clip-mode kernels
        (:meth:`~co3d_jax.layers.Layer.steps`); any other chunk (warm-up, missing frames, a stream
        just reset) is one ``lax.scan`` of :meth:`step`. Both give the same outputs and state up to
        float summation order; ``lax.cond`` picks one per call, on the device. ``bulk=False``
        always scans. The default, ``None``, is ``True`` where :attr:`bulk_ok` on an NVIDIA GPU
        (where it was measured faster) and ``False`` elsewhere (both branches compile, which
        costs compile time; pass ``True`` to use bulk steps there).
        """
        self._check(frames, clip=True)
        b, t = frames.shape[:2]
        self._check_batch(state, b, "frames")
        if bulk is None:
            from .kernels import nvidia_default_device
            bulk = self.bulk_ok and nvidia_default_device()
        if bulk and not self.bulk_ok:
            raise ValueError(f"{self.name}: bulk steps need a network of temporal stride 1 whose stateful layers "
                             f"all have them (Model.bulk_ok is False); use bulk=False or None")
        if not bulk or t < 2:
            return scan_stream(self.step, params, state, frames, valid, unroll)
        valid = stream_valid(frames, valid, self.name)

        def scan(operands):
            return scan_stream(self.step, params, *operands, unroll)

        want = jax.eval_shape(scan, (state, frames, valid))

        def bulk_steps(operands):
            st, x, _ = operands
            new, ys = self.net.steps(params, st, x)
            new = jax.tree.map(lambda a, w: a.astype(w.dtype), new, want[0])
            scores = ys.reshape(b, t, -1).astype(want[1].y.dtype)
            return new, StepOutput(scores, jnp.ones((b, t), bool))

        steady = jnp.all(valid) & jnp.all(jnp.asarray(self.net.steady(state)))
        return jax.lax.cond(steady, bulk_steps, scan, (state, frames, valid))

    def prefill(self, params, clip: jax.Array, dtype=jnp.float32):
        """The state a fresh stream (``init_state(B, dtype)``) has after consuming ``clip``
        ``(B, T, H, W, 3)``, and the outputs of those ``T`` steps, from one clip-mode pass per layer
        instead of ``T`` steps: ``(state, StepOutput(scores (B, T, K), valid (B, T)))``, what
        :meth:`stream` returns from a fresh state (up to float summation order). Clip-only models
        raise as :meth:`step` does."""
        self._check(clip, clip=True)
        b, t = clip.shape[:2]
        fresh = jax.eval_shape(partial(self.init_state, b, dtype))  # clip-only models raise here
        state, ys = self.net.prefill(params, clip, dtype)
        have = jax.tree.map(lambda a: (a.shape, a.dtype), state)
        want = jax.tree.map(lambda a: (a.shape, a.dtype), fresh)
        if have != want:
            raise AssertionError(f"{self.name}: prefill state does not match init_state:\n{have}\n{want}")
        d, s = self.delay, self.stride
        k = math.prod(self.net.out_shape(self.frame_shape))
        scores = jnp.zeros((b, t, k), ys.dtype)
        if ys.shape[1]:
            scores = scores.at[:, d::s].set(ys.reshape(b, ys.shape[1], k))
        valid = np.zeros((t,), bool)
        valid[d::s] = True
        return state, StepOutput(scores, jnp.broadcast_to(jnp.asarray(valid), (b, t)))

    def prefill_stream(self, params, frames: jax.Array, num_prefill: int | None = None, dtype=jnp.float32):
        """A fresh stream over ``frames`` ``(B, T, H, W, 3)``: the first ``num_prefill`` frames
        (default: all) by :meth:`prefill`, the rest stepped by :meth:`stream`. Returns
        ``(state, StepOutput(scores (B, T, K), valid (B, T)))``, as stepping all ``T`` gives."""
        t = frames.shape[1]
        k = t if num_prefill is None else min(max(int(num_prefill), 0), t)
        if k == 0:
            return self.stream(params, self.init_state(frames.shape[0], dtype), frames)
        state, out = self.prefill(params, frames[:, :k], dtype)
        if k == t:
            return state, out
        state, rest = self.stream(params, state, frames[:, k:])
        return state, StepOutput(*(jnp.concatenate([a, r], axis=1) for a, r in zip(out, rest)))

    def stream_fn(self, unroll: int = 1, donate: bool = False, bulk: bool | None = None):
        """``jit``-compiled :meth:`stream` (optionally donating the state buffers)."""
        return jax.jit(partial(self.stream, unroll=unroll, bulk=bulk), donate_argnums=(1,) if donate else ())

    def reset(self, state, mask: jax.Array):
        """Reset the streams where ``mask`` ``(B,)`` is True to a fresh state
        (:func:`co3d_jax.stream.reset_state` with this model's ``init_state``)."""
        leaves = jax.tree.leaves(state)
        dtype = next((a.dtype for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)), jnp.float32)
        fresh = self.init_state(leaves[0].shape[0], dtype) if leaves else state
        return reset_state(state, fresh, mask, name=self.name)

    # ------------------------------------------------------------------ checks
    def _check_batch(self, state, b: int, what: str) -> None:
        """A state for another number of streams than ``what`` has: one ``ValueError`` naming
        both batch sizes (shapes only: checked while tracing, no cost at run time)."""
        batches = {a.shape[0] if a.ndim else None for a in jax.tree.leaves(state)}
        if len(batches) > 1:
            raise ValueError(f"{self.name}: the state is not one init_state(...): its arrays have leading "
                             f"(batch) sizes {sorted(batches, key=str)}")
        if batches and batches != {b}:
            (have,) = batches
            raise ValueError(f"{self.name}: the state is for {have} stream(s) (init_state(batch_size={have})) "
                             f"but the {what} has batch size {b}; use one batch size for both")

    def _check(self, x: jax.Array, *, clip: bool) -> None:
        rank = 5 if clip else 4
        what = "clip (B, T, H, W, 3)" if clip else "frame (B, H, W, 3)"
        want = self.frame_shape
        if x.ndim != rank or tuple(x.shape[-3:]) != want:
            raise ValueError(f"{self.name}: expected a {what} with (H, W, C) = {want}, got shape {tuple(x.shape)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{self.name}: expected a float {what} (normalised), got dtype {x.dtype}")
