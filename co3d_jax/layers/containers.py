"""Containers: Sequential, Broadcast, Parallel, Reduce, BroadcastReduce and Residual, and the
Sequential/Parallel variants some networks need: StridedSequential (skips the layers after a
temporal stride on steps where nothing reaches them), ClipOnlySequential (a clip-only root) and
Pathways (a Parallel whose streams have different clip lengths).

Temporal metadata follows continual-inference (reference §1.7):

* Sequential: ``RF`` from the last child backwards, ``rf <- s_m * rf + rf_m - s_m``;
  ``stride = prod(s_m)``; ``padding = p_0 + sum_i p_i * prod_{j<i} s_j``;
  ``delay = RF - 1 - padding``.
* Parallel / BroadcastReduce: ``delay = max``, ``RF = max``, ``padding = max``, stride of the first
  branch (all branches must share it). With ``auto_delay`` every branch whose delay is below the
  maximum becomes ``Sequential(branch, Delay(max - delay))``, or ``Sequential(Delay(max - delay),
  branch)`` when the branch is temporally strided (see :func:`delayed`).

Validity: a ``Sequential`` passes each child's output validity to the next child, so a child
never advances its state on a step where its input is not valid (continual-inference does not
call it on ``None``). A ``Parallel``'s output is valid when every branch's output is.

Children are named: params and state are dicts keyed by child name (containers drop children
that have no params or no state, so the pytrees stay small and readable).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from .base import Layer, Out, all_steady, scan_prefill, static
from .simple import Delay

REDUCTIONS = ("sum", "mul", "concat", "max")


def _named(children) -> tuple[tuple[str, Layer], ...]:
    out = []
    for i, c in enumerate(children):
        name, layer = c if isinstance(c, tuple) else (str(i), c)
        if not isinstance(layer, Layer):
            raise TypeError(f"container child {name!r} is not a Layer: {layer!r}")
        out.append((str(name), layer))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate child names: {names}")
    return tuple(out)


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None and not (isinstance(v, dict) and not v)}


@static
class Sequential(Layer):
    """Chain of named layers. Build with ``Sequential.of(("a", layer), layer2, ...)``."""

    children: tuple

    @classmethod
    def of(cls, *children) -> "Sequential":
        return cls(_named(children))

    def __post_init__(self):
        object.__setattr__(self, "children", _named(self.children))
        if not self.children:
            raise ValueError("Sequential needs at least one child")

    def __getitem__(self, name: str) -> Layer:
        for n, c in self.children:
            if n == name:
                return c
        raise KeyError(name)

    # ---------------------------------------------------------------- metadata
    @property
    def receptive_field(self):
        layers = [c for _, c in self.children][::-1]
        rf = layers[0].receptive_field
        for m in layers[1:]:
            rf = m.stride * rf + m.receptive_field - m.stride
        return rf

    @property
    def stride(self):
        return math.prod(c.stride for _, c in self.children)

    @property
    def padding(self):
        p, s = 0, 1
        for _, c in self.children:
            p += c.padding * s
            s *= c.stride
        return p

    def shapes(self, in_shape) -> list:
        """Per-frame input shape of every child, then the output shape."""
        shapes = [in_shape]
        for _, c in self.children:
            shapes.append(c.out_shape(shapes[-1]))
        return shapes

    def out_shape(self, in_shape):
        return self.shapes(in_shape)[-1]

    def macs(self, in_shape, t=None):
        total, shape = 0, in_shape
        for _, c in self.children:
            total += c.macs(shape, t)
            if t is not None:
                t = clip_length(c, t)
            shape = c.out_shape(shape)
        return total

    # ---------------------------------------------------------------- params / state
    def init(self, key, in_shape):
        keys = jax.random.split(key, len(self.children))
        shapes = self.shapes(in_shape)
        return _drop_none({n: c.init(k, s) for (n, c), k, s in zip(self.children, keys, shapes)})

    def init_state(self, batch, in_shape, dtype=jnp.float32):
        shapes = self.shapes(in_shape)
        return _drop_none({n: c.init_state(batch, s, dtype) for (n, c), s in zip(self.children, shapes)})

    # ---------------------------------------------------------------- compute
    def forward(self, params, x):
        params = params or {}
        for n, c in self.children:
            x = c.forward(params.get(n), x)
        return x

    def forward_train(self, params, x):
        if params is None:
            return self.forward(params, x), params
        new = dict(params)
        for n, c in self.children:
            x, p = c.forward_train(params.get(n), x)
            if n in params:
                new[n] = p
        return x, new

    def apply(self, params, x):
        params = params or {}
        for n, c in self.children:
            x = c.apply(params.get(n), x)
        return x

    def step(self, params, state, x, valid):
        params, state = params or {}, state or {}
        new_state, out = {}, Out(x, valid)
        for n, c in self.children:
            with jax.named_scope(n):  # op metadata names the layer path (profiles); no runtime cost
                new_state[n], out = c.step(params.get(n), state.get(n), *out)
        return _drop_none(new_state), out

    @property
    def bulk_ok(self):
        return all(c.bulk_ok for _, c in self.children)

    def steady(self, state):
        state = state or {}
        return all_steady(c.steady(state.get(n)) for n, c in self.children)

    def steps(self, params, state, xs):
        params, state, new_state = params or {}, state or {}, {}
        for n, c in self.children:
            with jax.named_scope(n):
                new_state[n], xs = c.steps(params.get(n), state.get(n), xs)
        return _drop_none(new_state), xs

    def _prefill(self, params, xs, dtype):
        """Each child prefills on the outputs its predecessor emitted."""
        params, new_state = params or {}, {}
        for n, c in self.children:
            new_state[n], xs = c.prefill(params.get(n), xs, dtype)
        return _drop_none(new_state), xs


def clip_length(layer: Layer, t):
    """Clip-mode temporal length of ``layer``'s output for a ``t``-frame input.

    Multi-stream layers whose streams have different lengths (:class:`Pathways`) take and return
    a tuple of lengths through their ``clip_lengths(t)`` method, which this calls when present;
    a :class:`Sequential` chains its children; other layers follow their metadata (``Delay``: the
    identity in clip mode; a global :class:`GlobalAvgPool`: 1)."""
    if hasattr(layer, "clip_lengths"):
        return layer.clip_lengths(t)
    if isinstance(layer, Sequential):
        for _, c in layer.children:
            t = clip_length(c, t)
        return t
    if getattr(layer, "clip_pool", None) == "global":
        return 1
    if isinstance(layer, Delay):
        return t
    rf, s, p = layer.receptive_field, layer.stride, layer.padding
    return (t + 2 * p - rf) // s + 1


@static
class StridedSequential(Sequential):
    """A :class:`Sequential` whose children after the first temporally strided child run under
    ``lax.cond`` in stream mode: when no stream's input to them is valid (a strided layer did not
    emit), their state is kept and the output is zeros with ``valid`` False, without computing
    them. Clip mode, params, state and metadata are those of a plain :class:`Sequential`."""

    def _split(self) -> int:
        for i, (_, c) in enumerate(self.children):
            if c.stride > 1:
                return i + 1
        return len(self.children)

    def step(self, params, state, x, valid):
        k = self._split()
        if k >= len(self.children):
            return super().step(params, state, x, valid)
        params, state = params or {}, state or {}
        new_state, out = {}, Out(x, valid)
        for n, c in self.children[:k]:
            with jax.named_scope(n):
                new_state[n], out = c.step(params.get(n), state.get(n), *out)
        tail = self.children[k:]
        tail_state = {n: state[n] for n, _ in tail if n in state}

        def run(operands):
            st, out = operands
            new = {}
            for n, c in tail:
                with jax.named_scope(n):
                    new[n], out = c.step(params.get(n), st.get(n), *out)
            return {n: s for n, s in new.items() if n in st}, out

        def skip(operands):
            st, (x, v) = operands
            y = jax.eval_shape(run, operands)[1].y
            return st, Out(jnp.zeros(y.shape, y.dtype), jnp.zeros_like(v))

        tail_state, out = lax.cond(jnp.any(out.valid), run, skip, (tail_state, out))
        new_state.update(tail_state)
        return _drop_none(new_state), out


@static
class ClipOnlySequential(Sequential):
    """A :class:`Sequential` root for clip-only networks (clip baselines that were never
    continualised): ``init_state``, ``step``, ``prefill`` and per-step ``macs`` raise a clear error."""

    def _clip_only(self):
        return NotImplementedError(
            "clip-only model: this network has no continual (frame-by-frame) mode; use Model.forward on "
            "whole clips")

    def macs(self, in_shape, t=None):
        if t is None:
            raise self._clip_only()
        return super().macs(in_shape, t)

    def init_state(self, batch, in_shape, dtype=None):
        raise self._clip_only()

    def step(self, params, state, x, valid):
        raise self._clip_only()

    def prefill(self, params, xs, dtype=None):
        raise self._clip_only()

    @property
    def bulk_ok(self):
        return False


@static
class Broadcast(Layer):
    """Copy one input into ``n`` streams (a tuple)."""

    n: int = 2

    def out_shape(self, in_shape):
        return (in_shape,) * self.n

    def apply(self, params, x):
        return (x,) * self.n


@static
class Reduce(Layer):
    """Merge a tuple of streams: ``sum``, ``mul``, ``max`` (broadcasting) or ``concat`` (channels)."""

    op: str = "sum"

    def __post_init__(self):
        if self.op not in REDUCTIONS:
            raise ValueError(f"Reduce: op must be one of {REDUCTIONS}, got {self.op!r}")

    def out_shape(self, in_shape):
        if self.op == "concat":
            return (*in_shape[0][:-1], sum(s[-1] for s in in_shape))
        return tuple(max(d) for d in zip(*in_shape))

    def apply(self, params, xs):
        if self.op == "concat":
            return jnp.concatenate(xs, axis=-1)
        out = xs[0]
        for x in xs[1:]:
            out = {"sum": jnp.add, "mul": jnp.multiply, "max": jnp.maximum}[self.op](out, x)
        return out

    def macs(self, in_shape, t=None):
        # Step: continual's reduce_sum/reduce_mul fold the streams with torch.Tensor.add/.mul, which
        # ptflops 0.7.5 patches (1 per broadcast output element and fold). Clip: the PyTorch X3D
        # uses the `+`/`*` operators, which ptflops does not see. concat and max: 0.
        if t is not None or self.op not in ("sum", "mul"):
            return 0
        return (len(in_shape) - 1) * math.prod(self.out_shape(in_shape))


def delayed(branch: Layer, d: int) -> Layer:
    """``branch`` whose outputs come ``d`` input frames later (its delay grows by ``d``).

    A stride-1 branch is followed by ``Delay(d)`` (continual-inference's ``auto_delay``, which
    keeps its state-dict paths). A temporally strided branch is *preceded* by it: a ``Delay``
    after a stride-``s`` layer counts that layer's outputs, i.e. ``s`` input frames each, and
    it would emit on the wrong phase of the stride (continual-inference appends it there too,
    which no co3d model ever exercised)."""
    if d == 0:
        return branch
    return Sequential.of(Delay(d), branch) if branch.stride > 1 else Sequential.of(branch, Delay(d))


def _auto_delay(branches, auto_delay: bool):
    branches = _named(branches)
    if not auto_delay:
        return branches
    dmax = max(b.delay for _, b in branches)
    return tuple((n, delayed(b, dmax - b.delay)) for n, b in branches)


@static
class Parallel(Layer):
    """Apply branch ``i`` to stream ``i`` of a tuple input."""

    branches: tuple

    @classmethod
    def of(cls, *branches, auto_delay: bool = True) -> "Parallel":
        return cls(_auto_delay(branches, auto_delay))

    def __post_init__(self):
        object.__setattr__(self, "branches", _named(self.branches))
        strides = {b.stride for _, b in self.branches}
        if len(strides) != 1:
            raise ValueError(f"Parallel: all branches must share a temporal stride, got {sorted(strides)}")

    @property
    def receptive_field(self):
        return max(b.receptive_field for _, b in self.branches)

    @property
    def delay(self):
        return max(b.delay for _, b in self.branches)

    @property
    def padding(self):
        return max(b.padding for _, b in self.branches)

    @property
    def stride(self):
        return self.branches[0][1].stride

    def out_shape(self, in_shape):
        return tuple(b.out_shape(s) for (_, b), s in zip(self.branches, in_shape))

    def macs(self, in_shape, t=None):
        return sum(b.macs(s, t) for (_, b), s in zip(self.branches, in_shape))

    def init(self, key, in_shape):
        keys = jax.random.split(key, len(self.branches))
        return _drop_none({n: b.init(k, s) for (n, b), k, s in zip(self.branches, keys, in_shape)})

    def init_state(self, batch, in_shape, dtype=jnp.float32):
        return _drop_none({n: b.init_state(batch, s, dtype) for (n, b), s in zip(self.branches, in_shape)})

    def forward(self, params, xs):
        params = params or {}
        return tuple(b.forward(params.get(n), x) for (n, b), x in zip(self.branches, xs))

    def forward_train(self, params, xs):
        if params is None:
            return self.forward(params, xs), params
        new, outs = dict(params), []
        for (n, b), x in zip(self.branches, xs):
            y, p = b.forward_train(params.get(n), x)
            outs.append(y)
            if n in params:
                new[n] = p
        return tuple(outs), new

    def apply(self, params, xs):
        params = params or {}
        return tuple(b.apply(params.get(n), x) for (n, b), x in zip(self.branches, xs))

    def step(self, params, state, xs, valid):
        params, state = params or {}, state or {}
        new_state, outs, out_valid = {}, [], valid
        for (n, b), x in zip(self.branches, xs):
            with jax.named_scope(n):
                new_state[n], (y, v) = b.step(params.get(n), state.get(n), x, valid)
            outs.append(y)
            out_valid = out_valid & v
        return _drop_none(new_state), Out(tuple(outs), out_valid)

    @property
    def aligned(self) -> bool:
        """Whether every branch emits at the same inputs (same delay and stride), as
        ``auto_delay`` makes them; only then do the branches' emitted outputs pair up."""
        return len({(b.delay, b.stride) for _, b in self.branches}) == 1

    @property
    def bulk_ok(self):
        return all(b.bulk_ok for _, b in self.branches)

    def steady(self, state):
        state = state or {}
        return all_steady(b.steady(state.get(n)) for n, b in self.branches)

    def steps(self, params, state, xs):
        params, state, new_state, outs = params or {}, state or {}, {}, []
        for (n, b), x in zip(self.branches, xs):
            with jax.named_scope(n):
                new_state[n], y = b.steps(params.get(n), state.get(n), x)
            outs.append(y)
        return _drop_none(new_state), tuple(outs)

    def _prefill(self, params, xs, dtype):
        if not self.aligned:
            return scan_prefill(self, params, xs, dtype)
        params, new_state, outs = params or {}, {}, []
        for (n, b), x in zip(self.branches, xs):
            new_state[n], y = b.prefill(params.get(n), x, dtype)
            outs.append(y)
        return _drop_none(new_state), tuple(outs)


@static
class Pathways(Parallel):
    """A :class:`Parallel` over streams whose clip lengths differ (SlowFast's slow and fast
    pathways): ``macs`` and :func:`clip_length` take a tuple of per-stream lengths.

    In stream mode the streams may also run at different rates: with a tuple ``valid`` (one
    ``(B,)`` mask per stream) each branch steps on its own stream's validity, under ``lax.cond``
    (skipped, its state kept, on steps where no stream's input to it is valid), and the output
    validity is the tuple of the branches'. A single ``valid`` is a :class:`Parallel` step."""

    def macs(self, in_shape, t=None):
        ts = t if isinstance(t, tuple) else (t,) * len(self.branches)
        return sum(b.macs(s, ti) for (_, b), s, ti in zip(self.branches, in_shape, ts))

    def clip_lengths(self, t):
        return tuple(clip_length(b, ti) for (_, b), ti in zip(self.branches, t))

    def step(self, params, state, xs, valid):
        if not isinstance(valid, (tuple, list)):
            return super().step(params, state, xs, valid)
        params, state = params or {}, state or {}
        new_state, outs = {}, []
        for (n, b), x, v in zip(self.branches, xs, valid):
            new_state[n], out = cond_step(b, params.get(n), state.get(n), x, v)
            outs.append(out)
        return _drop_none(new_state), Out(tuple(o.y for o in outs), tuple(o.valid for o in outs))


def cond_step(layer: Layer, params, state, x, valid) -> tuple:
    """``layer.step`` under ``lax.cond``: when no stream's input is valid, the state is kept and
    the output is zeros with ``valid`` False, without computing the layer."""
    def run(operands):
        st, x, v = operands
        new, out = layer.step(params, st, x, v)
        # a stateless layer may give {} for None: keep the input's (empty) structure for lax.cond
        return (st if not jax.tree.leaves(new) and not jax.tree.leaves(st) else new), out

    def skip(operands):
        st, x, v = operands
        y = jax.eval_shape(run, operands)[1].y
        return st, Out(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), y), jnp.zeros_like(v))

    return lax.cond(jnp.any(valid), run, skip, (state, x, valid))


@static
class BroadcastReduce(Parallel):
    """Broadcast one input to every branch and reduce the outputs (``co.BroadcastReduce``).

    Params and state are dicts keyed by branch name. Metadata is the Parallel's (delay, RF and
    padding are the branch maxima; continual-inference overrides them the same way).
    """

    op: str = "sum"

    def __post_init__(self):
        super().__post_init__()
        Reduce(self.op)  # validates the op

    def out_shape(self, in_shape):
        return Reduce(self.op).out_shape(super().out_shape((in_shape,) * len(self.branches)))

    def macs(self, in_shape, t=None):
        shapes = (in_shape,) * len(self.branches)
        return super().macs(shapes, t) + Reduce(self.op).macs(Parallel.out_shape(self, shapes), t)

    def init(self, key, in_shape):
        return super().init(key, (in_shape,) * len(self.branches))

    def init_state(self, batch, in_shape, dtype=jnp.float32):
        return super().init_state(batch, (in_shape,) * len(self.branches), dtype)

    def forward(self, params, x):
        return Reduce(self.op).apply(None, super().forward(params, (x,) * len(self.branches)))

    def forward_train(self, params, x):
        ys, params = super().forward_train(params, (x,) * len(self.branches))
        return Reduce(self.op).apply(None, ys), params

    def apply(self, params, x):
        return Reduce(self.op).apply(None, super().apply(params, (x,) * len(self.branches)))

    def step(self, params, state, x, valid):
        state, (ys, valid) = super().step(params, state, (x,) * len(self.branches), valid)
        return state, Out(Reduce(self.op).apply(None, ys), valid)

    def steps(self, params, state, xs):
        state, ys = super().steps(params, state, (xs,) * len(self.branches))
        return state, Reduce(self.op).apply(None, ys)

    def _prefill(self, params, xs, dtype):
        if not self.aligned:
            return scan_prefill(self, params, xs, dtype)
        state, ys = super()._prefill(params, (xs,) * len(self.branches), dtype)
        return state, Reduce(self.op).apply(None, ys)


def broadcast_reduce(*branches, reduce: str = "sum", auto_delay: bool = True) -> BroadcastReduce:
    """Shorthand for ``Sequential(Broadcast(n), Parallel(*branches), Reduce(reduce))`` with the
    params/state of branch ``name`` directly under ``[name]``. With ``auto_delay`` a branch
    whose delay is below the maximum is followed by a :class:`Delay` (preceded, if it is
    temporally strided: :func:`delayed`)."""
    return BroadcastReduce(_auto_delay(branches, auto_delay), reduce)


def residual(main: Layer, skip: Layer | None = None, reduce: str = "sum", name: str = "main") -> Sequential:
    """``skip(x) (+) main(x)`` with the skip delayed to the main branch's delay.

    ``skip=None`` is the identity (``co.Residual``); a per-frame skip (e.g. a strided 1x1 conv
    with BN) is delayed after it, as continual's ``auto_delay`` does.
    """
    skip_branch = Delay(main.delay) if skip is None else skip
    return broadcast_reduce(("skip", skip_branch), (name, main), reduce=reduce, auto_delay=True)


def child_names(layer: Layer) -> Sequence[str]:
    return [n for n, _ in getattr(layer, "children", ())]
