"""Flax NNX front end: every model and layer as an ``nnx.Module``, with no second implementation.

A :class:`Continual` module holds a functional layer (static configuration) and three
tree-valued Flax variables; every method calls the functional code with their values and writes
the results back:

* ``m.vars``, one ``nnx.Param``: the trainable params tree (the functional params without the
  batch-norm running statistics), exactly what ``nnx.state(m, nnx.Param)`` and
  ``nnx.Optimizer(m, tx, wrt=nnx.Param)`` see;
* ``m.stats``, one ``nnx.BatchStat``: the ``mean``/``var`` leaves of every
  :class:`~co3d_jax.layers.BatchNorm` (``None`` without batch norm);
* ``m.stream_state``, one :class:`StreamState`: the continual state tree (buffers and counters),
  created by :meth:`Continual.init_stream` and advanced by :meth:`Continual.step` /
  :meth:`Continual.stream`.

Whole trees in a few variables, not one variable per array: NNX transforms walk every variable on
every call, so this keeps ``nnx.jit``'s host cost small and independent of depth.
:meth:`Continual.step_fn` / :meth:`Continual.stream_fn` (:class:`FastCall`) skip ``nnx.jit``'s
graph traversal altogether for live loops.

Batch norm starts in eval mode (running statistics, as the ported checkpoints are used);
``m.train()`` switches clip mode to batch statistics with ``BatchStat`` updates
(:meth:`~co3d_jax.layers.Layer.forward_train`), ``m.eval()`` back. Stream mode always uses the
running statistics.

    m = co3d_jax.nnx.create_model("cox3d_s_13", rngs=nnx.Rngs(0))
    scores = m(clip)                        # clip mode (B, T, H, W, 3) -> (B, K)
    m.init_stream(batch_size=2)
    out = m.step(frame)                     # StepOutput(scores (B, K), valid (B,)); state advances
    m.reset(jnp.array([True, False]))       # restart stream 0
    params = co3d_jax.nnx.to_params(m)      # the functional params, bit for bit

Under ``nnx.jit`` call :meth:`init_stream` outside the jitted function (it creates variables);
:meth:`step`, :meth:`stream`, :meth:`reset` and ``__call__`` only update them. See
``docs/flax.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import Layer, Out
from .model import Model
from .models import create_model as _create_functional
from .params import check_against, flatten
from .stream import reset_state, scan_stream
from .train import param_labels

__all__ = ["StreamState", "Continual", "ContinualModel", "FastCall", "create_model", "from_params", "wrap", "to_params"]


@nnx.register_variable_name("stream_state")
class StreamState(nnx.Variable):
    """Continual-inference stream state: per-stream buffers and counters. Neither learnable
    (``nnx.Param``) nor a batch statistic (``nnx.BatchStat``); Linen collection ``stream_state``
    through ``flax.nnx.bridge``."""


def _shape(s):
    """``in_shape`` as nested tuples (hashable: it is static module data)."""
    return tuple(_shape(a) if isinstance(a, (tuple, list)) else int(a) for a in s)


def _split_params(params):
    """Functional params -> ``(trainable, stats)``: the same nested dicts without the BN running
    statistics (every other node kept, empty dicts included), and the BN ``mean``/``var`` leaves
    alone (only the dicts that lead to one; ``{}`` when there are none). The arrays are not copied."""
    def visit(p, lbl):
        trainable, stats = {}, {}
        for k, v in p.items():
            if isinstance(v, dict):
                trainable[k], s = visit(v, lbl[k])
                if s:
                    stats[k] = s
            elif lbl[k] == "stats":
                stats[k] = v
            else:
                trainable[k] = v
        return trainable, stats
    return visit(params, param_labels(params))


def _tree(variable):
    """A tree-valued variable's value, with any ``nnx.State`` in it as plain dicts (``nnx.update``
    from nested dicts, as the Linen bridge does, stores ``State`` mappings; the functional code and
    its pytree structures expect dicts)."""
    value = variable.get_value()
    return value.to_pure_dict() if isinstance(value, nnx.State) else value


def _merge_params(trainable, stats):
    """Inverse of :func:`_split_params`: the functional params tree as plain nested dicts (the
    inputs may be any mappings, e.g. the ``nnx.State`` values ``nnx.update`` leaves from the Linen
    bridge). No array is copied; under ``jit`` this runs at trace time only."""
    out = {k: _merge_params(v, {}) if isinstance(v, Mapping) else v for k, v in trainable.items()}
    for k, v in stats.items():
        out[k] = _merge_params(trainable.get(k, {}), v) if isinstance(v, Mapping) else v
    return out


class Continual(nnx.Module):
    """A functional layer or container as an NNX module (build with :func:`wrap`).

    Attributes: ``layer`` (the functional layer, static), ``in_shape`` (per-frame input shape),
    ``vars`` (one ``nnx.Param`` whose value is the trainable params tree: the functional params
    without the BN running statistics), ``stats`` (one ``nnx.BatchStat`` whose value is the tree of
    BN ``mean``/``var`` leaves; ``None`` for a layer without batch norm), ``stream_state`` (one
    :class:`StreamState` whose value is the functional state tree; ``None`` until
    :meth:`init_stream`), ``use_running_average`` (batch-norm mode; see ``train()``/``eval()``).

    A handful of variables holding whole trees, not one variable per array: ``nnx.jit`` and the
    other NNX transforms walk every variable on every call, so their host cost stays small and
    independent of the network's depth.
    """

    vars: Any = nnx.data()
    stats: Any = nnx.data()
    stream_state: Any = nnx.data()

    def __init__(self, layer: Layer, params, in_shape, *, use_running_average: bool = True):
        if not isinstance(layer, Layer):
            raise TypeError(f"expected a co3d_jax.layers.Layer, got {type(layer).__name__}")
        self.layer = layer
        self.in_shape = _shape(in_shape)
        trainable, stats = _split_params(params)
        self.vars = nnx.Param(trainable)
        self.stats = nnx.BatchStat(stats) if stats else None
        self.stream_state = None
        self.use_running_average = use_running_average

    def _params(self):
        """The functional params tree (the variables' arrays, not copied)."""
        trainable = _tree(self.vars)
        return trainable if self.stats is None else _merge_params(trainable, _tree(self.stats))

    # ------------------------------------------------------------------ metadata
    @property
    def delay(self) -> int:
        """Frames fed before the first valid output, minus one."""
        return self.layer.delay

    @property
    def receptive_field(self) -> int:
        return self.layer.receptive_field

    @property
    def stride(self) -> int:
        return self.layer.stride

    @property
    def padding(self) -> int:
        return self.layer.padding

    # ------------------------------------------------------------------ functional hooks
    # Pure functions of explicit params/state; ContinualModel routes them to Model's methods.
    def _forward(self, params, x):
        return self.layer.forward(params, x)

    def _forward_train(self, params, x):
        return self.layer.forward_train(params, x)

    def _init_state(self, batch_size: int, dtype):
        return self.layer.init_state(batch_size, self.in_shape, dtype)

    def _step(self, params, state, x, valid) -> tuple[Any, Out]:
        # The one call of a layer-level step in this module.
        if valid is None:
            valid = jnp.ones((jax.tree.leaves(x)[0].shape[0],), bool)
        return self.layer.step(params, state, x, valid)

    def _stream(self, params, state, frames, valid, unroll):
        return scan_stream(self._step, params, state, frames, valid, unroll)

    def _reset(self, state, mask):
        leaves = jax.tree.leaves(state)
        dtype = next((a.dtype for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)), jnp.float32)
        batch = leaves[0].shape[0] if leaves else mask.shape[0]
        return reset_state(state, self._init_state(batch, dtype), mask, name=type(self.layer).__name__)

    # ------------------------------------------------------------------ clip mode
    def __call__(self, x, *, use_running_average: bool | None = None):
        """Clip mode. Eval mode: ``forward`` with the running statistics. Train mode
        (``use_running_average=False``, or after ``train()``): ``forward_train`` (batch
        statistics), and the ``BatchStat`` variables take the updated running statistics."""
        ura = self.use_running_average if use_running_average is None else use_running_average
        params = self._params()
        if ura:
            return self._forward(params, x)
        y, new = self._forward_train(params, x)
        if self.stats is not None:
            self.stats.set_value(_split_params(new)[1])
        return y

    # ------------------------------------------------------------------ continual mode
    def init_stream(self, batch_size: int, dtype=jnp.float32) -> None:
        """Start ``batch_size`` fresh streams (replaces any current stream state)."""
        self.stream_state = StreamState(self._init_state(batch_size, dtype))

    def _state(self):
        if self.stream_state is None:
            raise RuntimeError(f"{type(self).__name__}: no stream state; call init_stream(batch_size) first")
        return _tree(self.stream_state)

    def step(self, frame, valid: jax.Array | None = None):
        """Consume one frame per stream and advance the stream state. Returns the functional
        step's :class:`~co3d_jax.layers.Out` (``y``, ``valid``; for a model the
        :class:`co3d_jax.StepOutput`, whose ``scores`` are ``(B, K)``)."""
        state, out = self._step(self._params(), self._state(), frame, valid)
        self.stream_state.set_value(state)
        return out

    def peek(self, frame, valid: jax.Array | None = None):
        """The output :meth:`step` would give, without advancing the stream state."""
        return self._step(self._params(), self._state(), frame, valid)[1]

    def stream(self, frames, valid: jax.Array | None = None, unroll: int = 1):
        """Feed ``frames`` ``(B, T, ...)`` through :meth:`co3d_jax.Model.stream` (a ``lax.scan`` of steps,
        or bulk steps past the warm-up; wrap the call in ``nnx.jit``);
        outputs gain a time axis ``(B, T, ...)``. Same outputs as ``T`` calls of :meth:`step`."""
        state, out = self._stream(self._params(), self._state(), frames, valid, unroll)
        self.stream_state.set_value(state)
        return out

    def reset(self, mask: jax.Array) -> None:
        """Restart the streams where ``mask`` ``(B,)`` is True; the others continue."""
        self.stream_state.set_value(self._reset(self._state(), mask))

    # ------------------------------------------------------------------ fast paths
    def step_fn(self, *, donate: bool = False) -> "FastCall":
        """A compiled :meth:`step` for live loops: ``fn(frame, valid=None)`` returns what
        ``nnx.jit(lambda m, x, v: m.step(x, v))(m, frame, valid)`` returns and advances this
        module's stream state the same way, bit for bit, at the host cost of
        ``jax.jit(model.step)``. See :class:`FastCall`."""
        return FastCall(self, "step", donate=donate)

    def stream_fn(self, unroll: int = 1, *, donate: bool = False) -> "FastCall":
        """A compiled :meth:`stream`: ``fn(frames, valid=None)``, as :meth:`step_fn`."""
        return FastCall(self, "stream", unroll=unroll, donate=donate)


class FastCall:
    """A jitted :meth:`Continual.step` / :meth:`Continual.stream` bound to one module (made by
    :meth:`Continual.step_fn` / :meth:`Continual.stream_fn`).

    ``nnx.jit`` splits the module's graph and rebuilds it on every call, and returns every
    variable's value, the unchanged params included (the compiled call writes a copy of all the
    weights every time). This callable does neither: it is one ``jax.jit`` of the functional
    ``step``/``stream`` taking the module's current params trees, stream state and frames, and
    writes the new state back into the module's :class:`StreamState`. The module stays the one
    source of truth: params are read on every call (optimizer updates are seen, nothing is
    recompiled), and ``m.step``, ``m.reset``, ``init_stream`` and this callable mix freely.
    Outputs and state are bit for bit those of ``nnx.jit`` and of the functional API.

    ``donate=True`` donates the old state buffers to each call (one allocation less per call; do
    not keep references to old state arrays). For the lowest batch-1 latency with fixed weights,
    :class:`co3d_jax.live.LiveStep` (weights baked in, packed state) remains the functional option.
    """

    def __init__(self, module: Continual, method: str, *, unroll: int = 1, donate: bool = False):
        if method not in ("step", "stream"):
            raise ValueError(f"FastCall: method must be 'step' or 'stream', got {method!r}")
        self.module, self.method, self.unroll, self.donate = module, method, unroll, donate

        def call(trainable, stats, state, x, valid):
            params = trainable if stats is None else _merge_params(trainable, stats)
            if method == "step":
                return module._step(params, state, x, valid)
            return module._stream(params, state, x, valid, unroll)

        self._fn = jax.jit(call, donate_argnums=(2,) if donate else ())

    def __call__(self, x, valid: jax.Array | None = None):
        m = self.module
        state = m._state()
        state, out = self._fn(_tree(m.vars), None if m.stats is None else _tree(m.stats), state, x, valid)
        m.stream_state.set_value(state)
        return out


class ContinualModel(Continual):
    """A :class:`co3d_jax.Model` as an NNX module (build with :func:`create_model` or
    :func:`from_params`): ``m(clip)`` gives clip scores ``(B, K)``, :meth:`step` a
    :class:`co3d_jax.StepOutput`, all through the ``Model``'s own methods."""

    def __init__(self, model: Model, params, *, use_running_average: bool = True):
        if not isinstance(model, Model):
            raise TypeError(f"expected a co3d_jax.Model, got {type(model).__name__}")
        super().__init__(model.net, params, model.frame_shape, use_running_average=use_running_average)
        self.model = model

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self.model.frame_shape

    def _forward(self, params, x):
        return self.model.forward(params, x)

    def _forward_train(self, params, x):
        return self.model.forward_train(params, x)

    def _init_state(self, batch_size, dtype):
        return self.model.init_state(batch_size, dtype)

    def _step(self, params, state, x, valid):
        return self.model.step(params, state, x, valid)

    def _stream(self, params, state, frames, valid, unroll):
        return self.model.stream(params, state, frames, valid, unroll)

    def _reset(self, state, mask):
        return self.model.reset(state, mask)


# ---------------------------------------------------------------------- constructors
def create_model(name: str, *, rngs: nnx.Rngs, **options) -> ContinualModel:
    """:func:`co3d_jax.create_model` with random parameters drawn from ``rngs.params()``."""
    model = _create_functional(name, **options)
    return ContinualModel(model, model.init(rngs.params()))


def from_params(name_or_model, params, **options) -> ContinualModel:
    """An NNX module holding the functional ``params`` (e.g. :func:`co3d_jax.load_params`'s) of
    ``name_or_model`` (a registry name, built with ``options``, or a :class:`co3d_jax.Model`).
    The arrays are used as they are; a tree that does not fit the model raises
    :class:`co3d_jax.params.ParamsError` naming the missing, unexpected and mis-shaped keys."""
    model = _create_functional(name_or_model, **options) if isinstance(name_or_model, str) else name_or_model
    if options and not isinstance(name_or_model, str):
        raise TypeError("from_params: options apply to a model name, not to a built Model")
    reference = jax.eval_shape(model.init, jax.random.key(0))
    check_against(flatten(params), reference, f"params for model {model.name}")
    return ContinualModel(model, params)


def wrap(layer: Layer, *, rngs: nnx.Rngs | None = None, in_shape, params=None) -> Continual:
    """Any functional layer or container as an NNX module with random parameters from
    ``rngs.params()`` (or the given functional ``params``). ``in_shape`` is the per-frame input
    shape ``(H, W, C)`` (a tuple of shapes for multi-stream layers)."""
    if params is None:
        if rngs is None:
            raise TypeError("wrap: pass rngs (random init) or params")
        params = layer.init(rngs.params(), in_shape)
    return Continual(layer, params, in_shape)


def to_params(m: Continual):
    """The functional params of ``m`` (the arrays it holds, bit for bit): its ``nnx.Param`` and
    ``nnx.BatchStat`` trees merged."""
    return m._params()
