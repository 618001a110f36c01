"""The continual-layer contract shared by every layer and container.

A layer is a frozen dataclass (static configuration, hashable, safe to close over under
`jax.jit`) whose methods are pure functions of explicit arrays:

* ``init(key, in_shape) -> params``: random parameters (PyTorch default-like init).
* ``forward(params, clip) -> clip``: clip mode, ``(B, T, H, W, C) -> (B, T', H', W', C')``,
  exactly the ``torch.nn`` computation (zero temporal padding at both ends).
* ``forward_train(params, clip) -> (clip, params)``: clip mode in training mode (batch-statistics
  batch norm with updated running statistics); the default is ``forward`` with params unchanged.
* ``init_state(batch, in_shape, dtype) -> state``: a fixed-shape pytree (``None`` when stateless).
* ``step(params, state, frame, valid) -> (state, Out(frame, valid))``: continual mode for one
  frame ``(B, H, W, C) -> (B, H', W', C')``; ``valid`` is a ``(B,)`` bool vector. A layer only
  advances its state for streams whose input is valid, and returns the validity of its own output
  (continual-inference returns ``None`` instead). Containers, :meth:`co3d_jax.Model.step` and
  :func:`co3d_jax.stream.scan_stream` return the same ``(state, Out)`` shape.
* ``prefill(params, xs, dtype) -> (state, ys)``: the state of a fresh stream (``init_state(B, ...,
  dtype)``) after the valid inputs ``xs`` ``(B, N, H, W, C)``, and the outputs ``ys``
  ``(B, M, H', W', C')`` it emitted on the way (those at ``n >= delay`` with ``(n - delay) %
  stride == 0``, :func:`emit_positions`), equal to stepping the ``N`` frames. The default scans
  ``step``; layers with work to share override ``_prefill`` with one clip-mode pass.
* ``steps(params, state, xs) -> (state, ys)``: bulk steps, what stepping the valid inputs ``xs``
  ``(B, N, H, W, C)`` from ``state`` gives (``ys`` ``(B, N, H', W', C')``, every one emitted), as
  one clip-mode pass per layer. Only for layers with ``bulk_ok`` (stride 1, an override or no
  state) and streams where ``steady(state)`` holds (every stream past its warm-up, so that every
  input emits and no first-frame fill applies); :meth:`co3d_jax.Model.stream` checks both.
* ``out_shape(in_shape) -> shape``: per-frame output shape ``(H', W', C')``.
* metadata: ``receptive_field``, ``stride``, ``padding``, ``delay`` (temporal, in frames), and
  ``macs(in_shape, t)`` for one step (``t=None``) or a ``t``-frame clip, in the ptflops
  convention the paper uses (see :mod:`co3d_jax.flops`), and ``store_macs(in_shape)`` for a
  step on which a temporal stride suppresses the output.

``in_shape`` is the per-frame shape ``(H, W, C)``; tuple-valued layers (:class:`Broadcast`,
:class:`Parallel`) take and return tuples of such shapes.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = Any
State = Any
Shape = tuple[int, ...]


class Out(NamedTuple):
    """What every ``step`` returns beside its state: the output ``y`` and its ``(B,)`` validity
    (``y`` is garbage where ``valid`` is False). Over a stream (:func:`co3d_jax.stream.scan_stream`)
    both gain a time axis. :class:`co3d_jax.StepOutput` is this class; ``scores`` names ``y`` there."""

    y: Any
    valid: Array

    @property
    def scores(self):
        """``y`` under the name :meth:`co3d_jax.Model.step` documents (class scores ``(B, K)``)."""
        return self.y


def static(cls):
    """Decorator: a frozen, hashable, keyword-friendly dataclass (all layer configs use it)."""
    return dataclasses.dataclass(frozen=True, eq=True)(cls)


class Layer:
    """Base class. Subclasses are ``@static`` dataclasses; stateless per-frame layers only
    override ``apply`` (and ``out_shape``/``macs`` when shapes or costs change)."""

    name_hint = "layer"

    # ---------------------------------------------------------------- metadata
    @property
    def receptive_field(self) -> int:
        return 1

    @property
    def stride(self) -> int:
        return 1

    @property
    def padding(self) -> int:
        return 0

    @property
    def delay(self) -> int:
        return self.receptive_field - 1 - self.padding

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def macs(self, in_shape: Shape, t: int | None = None) -> int:
        """Multiply-accumulates (paper/ptflops convention) for one step (``t=None``) or one
        ``t``-frame clip."""
        return 0

    def store_macs(self, in_shape: Shape) -> int:
        """MACs of a step whose input is valid but whose output is not: the off-phase steps of a
        temporal stride, where the layer only updates its state. ptflops never sees these steps
        (continual returns ``None``); by default the layer does its whole step's work."""
        return self.macs(in_shape, None)

    # ---------------------------------------------------------------- params / state
    def init(self, key: Array, in_shape: Shape) -> Params:
        return None

    def init_state(self, batch: int, in_shape: Shape, dtype=jnp.float32) -> State:
        return None

    # ---------------------------------------------------------------- compute
    def apply(self, params: Params, x: Array) -> Array:
        """Per-frame computation shared by clip and step mode (stateless layers)."""
        raise NotImplementedError(type(self).__name__)

    def forward(self, params: Params, x: Array) -> Array:
        check_input(self, x, clip=True)
        return self.apply(params, x)

    def forward_train(self, params: Params, x: Array) -> tuple[Array, Params]:
        """Training-mode clip forward: ``(y, new_params)``. Layers without training behaviour
        return ``forward`` and their params unchanged; :class:`BatchNorm` normalises with batch
        statistics and returns updated running statistics; containers thread it through their
        children. Pure: nothing is mutated, inference paths are untouched."""
        return self.forward(params, x), params

    def step(self, params: Params, state: State, x: Array, valid: Array) -> tuple[State, Out]:
        check_input(self, x, clip=False)
        return state, Out(self.apply(params, x), valid)

    def prefill(self, params: Params, xs, dtype=jnp.float32):
        """``(state, ys)``: a fresh stream's state after the valid inputs ``xs`` ``(B, N, ...)``
        and the ``M = len(emit_positions(N, delay, stride))`` outputs ``(B, M, ...)`` it emitted,
        as stepping them one by one from ``init_state(B, ..., dtype)`` gives."""
        b, n = seq_shape(xs)
        if n == 0:
            shape = seq_frame_shape(xs)
            return self.init_state(b, shape, dtype), _empty(self.out_shape(shape), b, _seq_dtype(xs))
        return self._prefill(params, xs, dtype)

    # ---------------------------------------------------------------- bulk steps
    @property
    def bulk_ok(self) -> bool:
        """Whether :meth:`steps` can run this layer: stateless per-frame layers can; a stateful
        layer only with its own ``steps`` (and ``steady``)."""
        return type(self).step is Layer.step

    def steady(self, state: State) -> Array:
        """``(B,)`` bool, or a Python ``True`` where no stream can fail it: whether :meth:`steps`
        from ``state`` equals stepping (for a layer with a validity counter ``n``: the counter is
        past ``max(delay, 1)``, so every valid input emits and no first-input fill applies)."""
        if isinstance(state, dict) and "n" in state:
            return state["n"] >= max(self.delay, 1)
        return True

    def steps(self, params: Params, state: State, xs):
        """``(state, ys)``: the state and the outputs ``(B, N, ...)`` of stepping the ``N`` valid
        inputs ``xs`` ``(B, N, ...)`` from ``state``, for a ``bulk_ok`` layer in a ``steady`` state."""
        if type(self).step is Layer.step:
            return state, per_frame(partial(self.apply, params), xs)
        raise NotImplementedError(f"{type(self).__name__} has no bulk steps (bulk_ok is False)")

    def _prefill(self, params: Params, xs, dtype):
        """``prefill`` for ``N >= 1`` inputs. Default: per-frame ``apply`` for layers that keep
        the stateless ``step``, else a scan over ``step`` (exact by construction)."""
        if type(self).step is Layer.step:
            return None, per_frame(partial(self.apply, params), xs)
        return scan_prefill(self, params, xs, dtype)


# -------------------------------------------------------------------- shape checking
def check_frame(layer: Layer, x: Array, in_shape: Shape | None, *, clip: bool) -> None:
    """Trace-time check that ``x`` has the rank and trailing shape this layer expects."""
    rank = 5 if clip else 4
    what = "clip (B, T, H, W, C)" if clip else "frame (B, H, W, C)"
    if x.ndim != rank:
        raise ValueError(f"{type(layer).__name__}: expected a {what}, got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{type(layer).__name__}: expected a floating {what}, got dtype {x.dtype}")
    if in_shape is not None:
        have = tuple(x.shape[-len(in_shape):])
        want = tuple(in_shape)
        if any(w is not None and h != w for h, w in zip(have, want)):
            raise ValueError(f"{type(layer).__name__}: expected {what} with (H, W, C) = {want}, got {tuple(x.shape)}")


def check_input(layer: Layer, x, *, clip: bool) -> None:
    """Rank and dtype check of a layer input (tuple inputs of multi-stream layers are skipped)."""
    if not isinstance(x, (tuple, list)):
        check_frame(layer, x, None, clip=clip)


def check_state_frame(layer: Layer, x: Array, buf: Array, what: str = "frame") -> None:
    """A step input ``(B, H, W, C)`` must match the ``(B, k, H, W, C)`` buffer of its state."""
    want = (buf.shape[0], *buf.shape[2:])
    if tuple(x.shape) != want:
        raise ValueError(f"{type(layer).__name__}: {what} of shape {tuple(x.shape)} does not match the state, "
                         f"which was built for (B, H, W, C) = {want}")


def check_channels(layer: Layer, x: Array, channels: int) -> None:
    if x.shape[-1] != channels:
        raise ValueError(
            f"{type(layer).__name__}: expected {channels} input channels (last axis), got shape {tuple(x.shape)}")


# -------------------------------------------------------------------- validity helpers
def counter_init(batch: int) -> Array:
    return jnp.zeros((batch,), jnp.int32)


def counter_advance(n: Array, valid: Array, delay: int, stride: int):
    """Emission rule of continual-inference's temporal layers (reference §1.3).

    ``n`` counts this layer's valid inputs before the current one, kept bounded so that very
    long streams never overflow. Returns ``(emit, n_next, first)``: the output is valid iff the
    input is valid, ``n >= delay`` and ``(n - delay) % stride == 0``; ``first`` marks the layer's
    first valid input (where ``replicate`` fill initialises).
    """
    emit = valid & (n >= delay) & ((n - delay) % stride == 0)
    first = valid & (n == 0)
    lo = max(delay, 1)
    nxt = n + valid.astype(n.dtype)
    nxt = jnp.where(nxt >= lo + stride, nxt - stride, nxt)
    return emit, nxt, first


def counter_after(n: int, delay: int, stride: int) -> int:
    """The value of :func:`counter_advance`'s counter after ``n`` valid inputs from 0."""
    lo = max(delay, 1)
    return n if n < lo else lo + (n - lo) % stride


def counter_full(batch: int, value: int) -> Array:
    return jnp.full((batch,), value, jnp.int32)


def emit_positions(n: int, delay: int, stride: int) -> np.ndarray:
    """Indices among ``n`` valid inputs at which a layer with ``delay`` and ``stride`` emits."""
    return np.arange(delay, n, stride)


# -------------------------------------------------------------------- prefill helpers
def seq_shape(xs) -> tuple[int, int]:
    """``(B, N)`` of a sequence ``(B, N, ...)`` or a tuple of them."""
    a = jax.tree.leaves(xs)[0]
    return a.shape[0], a.shape[1]


def seq_frame_shape(xs) -> Shape:
    """Per-frame shape of a sequence (a tuple of shapes for a tuple of sequences)."""
    if isinstance(xs, (tuple, list)):
        return tuple(seq_frame_shape(x) for x in xs)
    return tuple(xs.shape[2:])


def _seq_dtype(xs):
    return jax.tree.leaves(xs)[0].dtype


def _empty(out_shape, batch: int, dtype):
    if out_shape and isinstance(out_shape[0], tuple):
        return tuple(_empty(s, batch, dtype) for s in out_shape)
    return jnp.zeros((batch, 0, *out_shape), dtype)


def per_frame(fn: Callable, xs):
    """Apply a per-frame function to every frame of ``xs`` ``(B, N, ...)`` (or a tuple of such)
    at once, as one batch of ``B * N`` frames."""
    b, n = seq_shape(xs)
    flat = jax.tree.map(lambda a: a.reshape(b * n, *a.shape[2:]), xs)
    return jax.tree.map(lambda a: a.reshape(b, n, *a.shape[1:]), fn(flat))


def take_emitted(ys, delay: int, stride: int):
    """The emitted entries ``ys[:, delay::stride]`` of per-input outputs ``(B, N, ...)``."""
    return jax.tree.map(lambda a: a[:, delay::stride], ys)


def scan_prefill(layer: "Layer", params: Params, xs, dtype):
    """``prefill`` by scanning ``layer.step`` over the ``N`` inputs (every stream valid)."""
    b, n = seq_shape(xs)
    state = layer.init_state(b, seq_frame_shape(xs), dtype)
    ones = jnp.ones((b,), bool)

    def body(s, x):
        s, out = layer.step(params, s, x, ones)
        return s, out.y

    state, ys = jax.lax.scan(body, state, jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), xs))
    return state, take_emitted(jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), ys), layer.delay, layer.stride)


def all_steady(flags) -> Array | bool:
    """AND of :meth:`Layer.steady` results (``(B,)`` bool arrays or ``True``)."""
    out = True
    for f in flags:
        out = f if out is True else (out if f is True else out & f)
    return out


def bcast(mask: Array, like: Array) -> Array:
    """Reshape a ``(B,)`` mask to broadcast against ``like`` of shape ``(B, ...)``."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def gate(valid: Array, new: State, old: State) -> State:
    """Per-stream select: keep ``old`` state where the input was not valid."""
    return jax.tree.map(lambda a, b: jnp.where(bcast(valid, a), a, b), new, old)


def _host_rng(key: Array):
    """A numpy Generator seeded from a concrete JAX key, or None under tracing.

    Eager ``jax.random`` compiles one program per distinct shape, which made a CPU ``init`` of a
    whole network take tens of seconds; host sampling from the same key is instant and still
    deterministic in the key."""
    if isinstance(key, jax.core.Tracer):
        # Under tracing (e.g. jax.eval_shape(model.init)) skip the failing conversion below: building
        # that exception's message walks the whole trace, ~20 ms per call (11 s for SlowFast-R50).
        return None
    try:
        data = np.asarray(jax.random.key_data(key))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    return np.random.default_rng(data.ravel().astype(np.uint32).tolist())


def random_uniform(key: Array, shape: Shape, low: float, high: float, dtype=jnp.float32) -> Array:
    rng = _host_rng(key)
    if rng is None:
        return jax.random.uniform(key, shape, dtype, low, high)
    return jnp.asarray(rng.uniform(low, high, shape).astype(dtype))


def random_normal(key: Array, shape: Shape, scale: float = 1.0, dtype=jnp.float32) -> Array:
    rng = _host_rng(key)
    if rng is None:
        return jax.random.normal(key, shape, dtype) * scale
    return jnp.asarray((rng.standard_normal(shape) * scale).astype(dtype))


def fan_in_uniform(key: Array, shape: Shape, fan_in: int, dtype=jnp.float32) -> Array:
    """PyTorch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming a=sqrt(5))."""
    bound = 1.0 / np.sqrt(max(fan_in, 1))
    return random_uniform(key, shape, -bound, bound, dtype)


def tuple3(v) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 3:
        raise ValueError(f"expected an int or a (t, h, w) triple, got {v}")
    return v  # type: ignore[return-value]


Fn = Callable[[Array], Array]
