"""Fine-tuning library: loss, optimiser, a jitted data-parallel train step, head replacement and
training-time data sampling. The CLI is ``experiments/finetune.py``; see ``docs/finetuning.md``.

* **Forward.** Training runs the clip network in training mode (:meth:`Layer.forward_train`:
  batch-statistics BN, running statistics updated with momentum 0.1 as PyTorch) on the
  *logits*: :func:`logits_net` replaces the head's final softmax by the identity (same params).
  The loss is ``log_softmax`` cross-entropy on the logits averaged over the head's output
  positions (one position at the configured clip length). Taking ``log`` of the model's softmax
  output instead would underflow to ``-inf`` for confident wrong predictions and loses precision
  (the gradient of ``log(softmax)`` through the softmax's rounding); ``log_softmax`` is exact.
  Optional dropout (X3D recipe: 0.5) is applied to the input of the classifier layer, whose
  params path the model's family spec names (``head``: ``head/projection`` for the PySlowFast-named
  families).
* **Optimiser** (:func:`make_optimizer`): SGD with (Nesterov) momentum or AdamW, a linear warmup
  into a cosine decay (the X3D recipe's schedule), weight decay on conv/dense kernels only (not on
  BN scale/bias or biases), optional global-norm clipping. BN running statistics are not trained:
  their gradients are zero, they get no weight decay, and after every update they are replaced by
  the statistics :meth:`Layer.forward_train` returns.
* **Data parallel** (:func:`make_train_step`): a 1-D ``data`` mesh over the local devices; the
  batch is sharded over it (``NamedSharding(mesh, P('data'))``) and params/optimizer state are
  replicated. Batch statistics and gradients are global-batch quantities (XLA inserts the
  all-reduces), so the result does not depend on the device count beyond float summation order.
* **Mixed precision** (``compute_dtype='bfloat16'``): the clip is cast to bf16 and every layer
  casts its f32 params to the input dtype, so convolutions and matmuls run in bf16; BN statistics,
  the loss, gradients, params and optimizer state stay f32.
* **Heads** (:func:`load_pretrained`): a checkpoint whose classifier (the family spec's ``head``)
  has another class count gets a fresh projection (normal(0.01) kernel, zero bias, PySlowFast's ``fc_init_std``);
  every other parameter must match exactly.
* **Precise BN** (:func:`precise_bn`): running statistics recomputed as the average batch
  statistics over extra batches with the weights fixed (PySlowFast ``BN.USE_PRECISE_STATS``).
* **Data**: sampling is in :mod:`co3d_jax.data.augment`, the augmentation on the device in
  :mod:`co3d_jax.data.device_augment`, the Grain pipeline and batching in
  :mod:`co3d_jax.data.train_loader`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from .layers import Activation, Layer, Parallel, Sequential
from .mesh import data_mesh, jit_over, shardings  # noqa: F401  (data_mesh: part of the training API)
from .models.spec import DEFAULT_HEAD, spec_of
from .params import ParamsError, check_against, flatten, read_npz, unflatten

BN_KEYS = frozenset({"scale", "bias", "mean", "var"})


# ============================================================================ config
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyper-parameters (hashable: it keys the compiled train step)."""

    total_steps: int
    optimizer: str = "sgd"            # "sgd" | "adamw"
    lr: float = 0.1                   # peak learning rate (after warmup)
    warmup_steps: int = 0
    warmup_start_lr: float = 0.0
    end_lr: float = 0.0               # cosine decay target at total_steps
    momentum: float = 0.9             # sgd
    nesterov: bool = True             # sgd (PySlowFast X3D: SOLVER.NESTEROV True)
    b1: float = 0.9                   # adamw
    b2: float = 0.999                 # adamw
    weight_decay: float = 5e-5        # on kernels only
    grad_clip: float = 0.0            # global-norm clip (0: off)
    label_smoothing: float = 0.0
    dropout: float = 0.0              # before the projection (X3D recipe: 0.5)
    compute_dtype: str = "float32"    # "float32" | "bfloat16"
    seed: int = 0                     # dropout RNG

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got "
                             f"{self.total_steps}, {self.warmup_steps}")


# ============================================================================ params
def param_labels(params) -> Any:
    """Same tree as ``params`` with a label per leaf: ``'stats'`` (BN running mean/var),
    ``'bn'`` (BN scale/bias), ``'kernel'`` (conv/dense weights: the only weight-decayed leaves)
    or ``'bias'``."""
    def visit(p):
        if isinstance(p, dict):
            if set(p) == BN_KEYS:
                return {k: ("stats" if k in ("mean", "var") else "bn") for k in p}
            return {k: (visit(v) if isinstance(v, dict) else ("kernel" if k == "kernel" else "bias"))
                    for k, v in p.items()}
        raise TypeError(f"params must be nested dicts, got {type(p).__name__}")
    return visit(params)


def merge_stats(updated, trained_stats, labels):
    """``updated`` with its BN running statistics taken from ``trained_stats``."""
    return jax.tree.map(lambda u, s, lbl: s if lbl == "stats" else u, updated, trained_stats, labels)


def logits_net(net: Layer) -> Layer:
    """``net`` with a final softmax (the last child, recursively, or a head's ``activation``
    setting, e.g. SlowFast's) replaced by the identity; the params tree is unchanged. Nets ending
    in anything else are returned as they are."""
    if isinstance(net, Activation) and net.fn == "softmax":
        return Activation("identity")
    if dataclasses.is_dataclass(net) and getattr(net, "activation", None) == "softmax":
        return dataclasses.replace(net, activation="identity")
    if isinstance(net, Sequential):
        *rest, (name, last) = net.children
        new = logits_net(last)
        if new is not last:
            return dataclasses.replace(net, children=(*rest, (name, new)))
    return net


def map_layers(layer: Layer, fn) -> Layer:
    """Rebuild a layer tree bottom-up with ``fn`` applied to every leaf layer (containers keep
    their names, so the params tree is unchanged)."""
    if isinstance(layer, Sequential):
        kids = tuple((n, map_layers(c, fn)) for n, c in layer.children)
        return dataclasses.replace(layer, children=kids)
    if isinstance(layer, Parallel):  # includes BroadcastReduce
        kids = tuple((n, map_layers(b, fn)) for n, b in layer.branches)
        return dataclasses.replace(layer, branches=kids)
    return fn(layer)


def training_net(net: Layer) -> Layer:
    """The network the train step differentiates: :func:`logits_net` (head softmax -> identity)."""
    return logits_net(net)


def _init_kernel(rng: np.random.Generator, shape, projection: bool):
    if projection:  # PySlowFast: fc weight normal(0, fc_init_std=0.01)
        return rng.normal(0.0, 0.01, shape)
    # c2_msra_fill = kaiming_normal_(mode="fan_out", nonlinearity="relu"); torch's fan_out of a
    # (C_out, C_in/g, kT, kH, kW) weight is C_out * kT * kH * kW.
    fan_out = shape[-1] * math.prod(shape[:-2])
    return rng.normal(0.0, math.sqrt(2.0 / fan_out), shape)


def init_for_training(model, seed: int = 0, zero_init_final_bn: bool = True):
    """From-scratch params with PySlowFast's X3D initialisation: MSRA (fan-out) conv/dense
    kernels, zero biases, the classifier (the family spec's ``head``) ~ N(0, 0.01), BN scale 1 /
    bias 0 / mean 0 / var 1, and the last BN of every residual branch (the spec's ``final_bn``,
    ``c_bn``; PySlowFast's ``transform_final_bn``) zero-initialised."""
    spec = spec_of(model)
    final_bn = spec.final_bn if zero_init_final_bn else None
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0))

    def visit(p, path):
        name = path.rsplit("/", 1)[-1]
        if set(p) == BN_KEYS:
            c = p["scale"].shape
            scale = np.zeros(c) if name == final_bn else np.ones(c)
            return {"scale": scale, "bias": np.zeros(c), "mean": np.zeros(c), "var": np.ones(c)}
        out = {}
        for k, v in sorted(p.items()):
            if isinstance(v, dict):
                out[k] = visit(v, f"{path}/{k}" if path else k)
            elif k == "kernel":
                out[k] = _init_kernel(rng, v.shape, path == spec.head)
            else:
                out[k] = np.zeros(v.shape)
        return out

    return jax.tree.map(lambda a, s: jnp.asarray(a, s.dtype), visit(shapes, ""), shapes)


def _subtree(tree, path: str):
    for k in path.split("/"):
        tree = tree[k]
    return tree


def fresh_head(model, seed: int = 0) -> dict:
    """A new classifier (the family spec's ``head``; ``kernel ~ N(0, 0.01)``, zero bias) for
    ``model.num_classes``."""
    shapes = _subtree(jax.eval_shape(model.init, jax.random.key(0)), spec_of(model).head)
    rng = np.random.default_rng([seed, 7])
    return {k: jnp.asarray(_init_kernel(rng, v.shape, True) if k == "kernel" else np.zeros(v.shape), v.dtype)
            for k, v in shapes.items()}


def load_pretrained(path: str, model, seed: int = 0) -> tuple[dict, dict]:
    """Load ``path`` (``.npz``) for fine-tuning ``model``: every parameter must match, except the
    classifier (the family spec's ``head``, e.g. ``head/projection``), which is re-initialised
    (:func:`fresh_head`) when its class count differs. Returns ``(params, info)``; ``info`` has
    ``replaced_head``, ``checkpoint_classes``, ``metadata``."""
    head = spec_of(model).head
    prefix = head + "/"
    flat, meta = read_npz(path)
    reference = jax.eval_shape(model.init, jax.random.key(0))
    ref_flat = flatten(reference)
    head_keys = [k for k in ref_flat if k.startswith(prefix)]
    if not head_keys:
        raise ParamsError(f"{model.name}: no {head} in the model; cannot adapt the head")
    ckpt_kernel = flat.get(prefix + "kernel")
    ckpt_classes = None if ckpt_kernel is None else int(ckpt_kernel.shape[-1])
    replace = any(k not in flat or tuple(flat[k].shape) != tuple(ref_flat[k].shape) for k in head_keys)
    body = {k: v for k, v in flat.items() if not k.startswith(prefix)}
    ref_body = unflatten({k: v for k, v in ref_flat.items() if not k.startswith(prefix)})
    check_against(body, ref_body, f"{path} (arch {meta.get('arch', 'unknown')}) for model {model.name}")
    params = unflatten({k: jnp.asarray(v, ref_flat[k].dtype) for k, v in body.items()})
    *parents, leaf = head.split("/")
    _subtree(params, "/".join(parents))[leaf] = (
        fresh_head(model, seed) if replace else {k[len(prefix):]: jnp.asarray(flat[k]) for k in head_keys})
    return params, dict(replaced_head=replace, checkpoint_classes=ckpt_classes, metadata=meta)


# ============================================================================ optimiser
def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from ``warmup_start_lr`` to ``lr`` over ``warmup_steps``, then a cosine
    decay to ``end_lr`` at ``total_steps`` (the X3D recipe's ``cosine`` policy with warmup)."""
    decay = max(cfg.total_steps - cfg.warmup_steps, 1)

    def cosine(step):
        t = jnp.clip(step / decay, 0.0, 1.0)
        return cfg.end_lr + (cfg.lr - cfg.end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))

    if cfg.warmup_steps == 0:
        return cosine
    warm = optax.linear_schedule(cfg.warmup_start_lr, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warm, cosine], [cfg.warmup_steps])


def make_optimizer(cfg: TrainConfig, labels) -> optax.GradientTransformation:
    """SGD (+momentum, Nesterov) or AdamW with :func:`lr_schedule`; weight decay on kernels only."""
    decay_mask = jax.tree.map(lambda lbl: lbl == "kernel", labels)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    sched = lr_schedule(cfg)
    if cfg.optimizer == "sgd":
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay, decay_mask))  # PyTorch-style L2
        parts.append(optax.sgd(sched, momentum=cfg.momentum or None, nesterov=cfg.nesterov and cfg.momentum > 0))
    else:
        parts.append(optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


# ============================================================================ forward / loss
def train_forward(net: Layer, params, clip: jax.Array, *, dropout: float = 0.0, rng: jax.Array | None = None,
                  head: str = DEFAULT_HEAD):
    """Training-mode forward of ``net`` -> ``(logits (B, K) float32, new_params)``.

    ``net`` should end in logits (:func:`logits_net`). Output positions are averaged (one at the
    configured clip length). With ``dropout > 0`` inverted dropout is applied to the input of the
    layer at params path ``head`` (the family spec's classifier; ``rng`` required)."""
    if dropout > 0:
        if rng is None:
            raise ValueError("dropout needs an rng key")
        if not _has_layer(net, head.split("/")):
            raise ValueError(f"dropout: the network has no layer at {head!r} (its classifier) to apply it before")
        y, new = _forward_train_dropout(net, params, clip, dropout, rng, tuple(head.split("/")))
    else:
        y, new = net.forward_train(params, clip)
    return jnp.mean(y.astype(jnp.float32), axis=tuple(range(1, y.ndim - 1))), new


def _has_layer(layer: Layer, path) -> bool:
    """Whether ``path`` (child names) leads through :class:`Sequential` children to a layer."""
    if not path:
        return True
    return isinstance(layer, Sequential) and any(n == path[0] and _has_layer(c, path[1:]) for n, c in layer.children)


def _forward_train_dropout(layer, params, x, rate, rng, path):
    """``layer.forward_train`` with dropout on the input of the child at ``path``."""
    if not path:
        keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
        return layer.forward_train(params, jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype))
    params = params or {}
    new = dict(params)
    for n, c in layer.children:
        x, p = (_forward_train_dropout(c, params.get(n), x, rate, rng, path[1:]) if n == path[0]
                else c.forward_train(params.get(n), x))
        if n in params:
            new[n] = p
    return x, new


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy from logits (``log_softmax``; optional label smoothing)."""
    k = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, k, dtype=jnp.float32)
    if label_smoothing:
        onehot = onehot * (1.0 - label_smoothing) + label_smoothing / k
    return jnp.mean(-jnp.sum(onehot * jax.nn.log_softmax(logits, axis=-1), axis=-1))


# ============================================================================ train step
@functools.lru_cache(maxsize=16)
def make_train_step(net: Layer, cfg: TrainConfig, mesh: Mesh, donate: bool = True, head: str = DEFAULT_HEAD):
    """``train_step(params, opt_state, clips, labels, step) -> (params, opt_state, metrics)``,
    jitted, with ``clips (B, T, H, W, 3)``/``labels (B,)`` sharded over ``mesh`` and everything
    else replicated. ``step`` (int32) is the number of updates done before this one (it seeds
    dropout, applied before the classifier at params path ``head``: pass the family spec's
    ``model.family.head``). ``metrics``: ``loss``, ``accuracy``, ``grad_norm``, ``lr`` and
    ``params_finite`` (every updated parameter is finite: see :func:`nonfinite`). Cached
    per ``(net, cfg, mesh, donate, head)``, so repeated runs in one process compile once."""
    net = training_net(net)
    sched = lr_schedule(cfg)
    dtype = jnp.dtype(cfg.compute_dtype)
    base_key = jax.random.key(cfg.seed)

    def step_fn(params, opt_state, clips, labels, step):
        labels_tree = param_labels(params)
        tx = make_optimizer(cfg, labels_tree)
        rng = jax.random.fold_in(base_key, step)

        def loss_fn(p):
            logits, new = train_forward(net, p, clips.astype(dtype), dropout=cfg.dropout, rng=rng, head=head)
            loss = cross_entropy(logits, labels, cfg.label_smoothing)
            return loss, (logits, new)

        (loss, (logits, new)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params_out = merge_stats(optax.apply_updates(params, updates), new, labels_tree)
        acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params_out)]))
        metrics = dict(loss=loss, accuracy=acc, grad_norm=optax.global_norm(grads), lr=sched(step),
                       params_finite=finite)
        return params_out, opt_state, metrics

    repl, batch = shardings(mesh)
    return jit_over(step_fn, mesh, in_shardings=(repl, repl, batch, batch, repl), out_shardings=(repl, repl, repl),
                    donate_argnums=(0, 1) if donate else ())


def nonfinite(metrics: dict) -> list[str]:
    """The names of a host-side step's ``metrics`` that say the run has diverged: a non-finite
    ``loss`` or ``grad_norm``, or ``params_finite`` false (an update produced NaN/inf weights)."""
    bad = [k for k in ("loss", "grad_norm") if k in metrics and not np.isfinite(float(metrics[k]))]
    if "params_finite" in metrics and not bool(metrics["params_finite"]):
        bad.append("params")
    return bad


def check_clip(net: Layer, params_shapes, num_frames: int, image_size: int, name: str = "the model") -> None:
    """Raise ``ValueError`` (one line) if ``net`` cannot take a training clip of ``num_frames``
    frames: tracing it (no compute) fails, or yields an empty intermediate, e.g. a pooling or
    convolution window longer in time than the clip (X3D's head pools over its clip length: fewer
    frames average over nothing, a NaN loss)."""
    clip = jax.ShapeDtypeStruct((1, num_frames, image_size, image_size, 3), jnp.float32)
    try:
        closed = jax.make_jaxpr(lambda p, x: train_forward(training_net(net), p, x))(params_shapes, clip)
    except Exception as e:  # shape errors from the layers
        raise ValueError(f"{name} cannot take {num_frames}-frame clips: {str(e).splitlines()[0]}") from None
    empty = _first_empty(closed.jaxpr)
    if empty is not None:
        prim, shape = empty
        raise ValueError(f"{name} cannot take {num_frames}-frame clips: its {prim} gives an empty {shape} output "
                         "(a temporal window is longer than the clip); use more frames (--num-frames)")


def _first_empty(jaxpr):
    from jax.extend.core import jaxprs_in_params

    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            shape = getattr(v.aval, "shape", ())
            if 0 in shape:
                return eqn.primitive.name, tuple(shape)
        for sub in jaxprs_in_params(eqn.params):
            found = _first_empty(sub)
            if found is not None:
                return found
    return None


def init_opt_state(params, cfg: TrainConfig):
    return make_optimizer(cfg, param_labels(params)).init(params)


def replicate(tree, mesh: Mesh):
    repl, _ = shardings(mesh)
    return jax.device_put(tree, repl)


def shard_batch(clips: np.ndarray, labels: np.ndarray, mesh: Mesh):
    """Put a host batch on the mesh, split along the batch axis."""
    n = mesh.devices.size
    if clips.shape[0] % n:
        raise ValueError(f"batch size {clips.shape[0]} is not divisible by the {n} devices of the mesh")
    _, batch = shardings(mesh)
    return jax.device_put(clips, batch), jax.device_put(labels, batch)


@functools.lru_cache(maxsize=16)
def make_batch_stats_fn(net: Layer, mesh: Mesh):
    """``f(params, clips) -> stats``: every BN's batch ``mean`` and unbiased ``var`` (in the
    running-statistics leaves of a params-shaped tree) for one training-mode forward; jitted
    with the batch sharded over ``mesh``."""
    from .layers.simple import BN_MOMENTUM
    net = logits_net(net)

    def f(params, clips):
        labels = param_labels(params)
        zeroed = jax.tree.map(lambda p, lbl: jnp.zeros_like(p) if lbl == "stats" else p, params, labels)
        _, new = net.forward_train(zeroed, clips)   # running = 0.9 * 0 + 0.1 * batch statistic
        return jax.tree.map(lambda p, lbl: p / BN_MOMENTUM if lbl == "stats" else None, new, labels)

    repl, batch = shardings(mesh)
    return jit_over(f, mesh, in_shardings=(repl, batch), out_shardings=repl)


def precise_bn(net: Layer, params, batches, mesh: Mesh):
    """PySlowFast's "precise BN" (``BN.USE_PRECISE_STATS``): replace the running statistics by
    the average of the batch statistics (mean, unbiased variance) over ``batches`` (an iterable
    of ``(clips, labels)``: host arrays, or arrays already sharded over ``mesh``) with the weights fixed. After a short fine-tuning run the
    momentum-0.1 running statistics lag the last weights; these do not."""
    fn = make_batch_stats_fn(net, mesh)
    total, n = None, 0
    for clips, labels in batches:
        x = clips if isinstance(clips, jax.Array) else shard_batch(np.asarray(clips), np.asarray(labels), mesh)[0]
        stats = fn(params, x)
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        n += 1
    if n == 0:
        return params
    labels = param_labels(params)
    avg = jax.tree.map(lambda t: t / n, total)
    return jax.tree.map(lambda p, lbl, s: s if lbl == "stats" else p, params, labels, avg)


def evaluate_clips(model, params, clips, batch_size: int = 16) -> np.ndarray:
    """Inference class scores ``(N, K)`` of ``model`` (running BN statistics) on ``clips``."""
    fwd = jax.jit(model.forward)
    return np.concatenate([np.asarray(fwd(params, jnp.asarray(clips[i:i + batch_size])))
                           for i in range(0, len(clips), batch_size)])
