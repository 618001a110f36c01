"""Counting operations: the paper's analytic MACs, XLA's FLOPs, and parameters.

Two counts, for two questions:

* :func:`paper_macs`: **multiply-accumulates as the paper reports them** ("FLOPs" in the
  tables are MACs), reproducing ``ptflops.get_model_complexity_info`` 0.7.5 (PyTorch backend,
  batch 1) run by co3d's profiler on the PyTorch models (reference co3d.md §5.5). Analytic: it
  walks the layer tree (each layer's ``macs(in_shape, t)``), nothing is traced or compiled.
* :func:`xla_flops` / :func:`model_xla_flops`: what XLA's ``HloCostAnalysis`` counts for our own
  jitted JAX function, lowered **for CPU**: 2 flops per FMA, convolution taps that fall into
  padding excluded, 1 flop per element for elementwise ops and reductions. On GPU the compiled
  executable reports ``flops = -1`` for convolutions (cuDNN custom calls; jax-ml/jax#16008 and
  our H100 measurement, jax_notes §4.3), so we always count a CPU lowering, with
  ``jax.experimental.roofline`` (a backend-independent jaxpr interpreter) as fallback.

ptflops conventions (read from ptflops 0.7.5 ``pytorch_ops.py``/``pytorch_engine.py`` and
continual-inference 1.2.4 ``ptflops.py``, ``convert.py``, ``container.py``, ``pooling.py``,
``linear.py``; then checked by running ptflops on PyTorch mirrors of co3d's X3D and CoX3D, with
per-module and per-function totals):

=====================  =====================================  ==========================================
op                     clip model (``nn`` X3D)                continual step (``forward_steps``, T=1)
=====================  =====================================  ==========================================
Conv3d                 out positions x kT*kH*kW x Cin/g x     same for one output frame: **all kT taps**,
                       Cout (padded taps counted) + Cout       not kT partial slices (the hook sees the
                       per output element if biased           (B,C,1,H,W) output of forward_steps)
BatchNorm3d (affine)   2 / element                            **4** / element (see note a)
ReLU                   **2** / element (hook + patched        **3** / element (hook twice + F.relu)
                       ``F.relu``)
Sigmoid, Swish         0 (not in MODULES_MAPPING;             0
                       ``x*torch.sigmoid(x)`` operators)
Softmax                1 / element (patched ``F.softmax``)    1 / element
AvgPool3d /            2 / input element (hook +              hook: 1 / input element of the frame;
AdaptiveAvgPool3d      patched ``F.*pool3d``)                 + patched ``F.adaptive_avg_pool1d``
                                                              over the (H'W'C, kT) ring (note b)
Linear (projection)    Cin*Cout + Cout per position           continual's ``co.Linear(channel_dim=1)``
                                                              is miscounted: (1 + bias) x Cin (note c)
residual ``+``, SE     0 (Python operators)                   1 / output element: continual's
``x * gate``                                                  ``reduce_sum``/``reduce_mul`` call the
                                                              patched ``torch.Tensor.add``/``.mul``
Delay, Dropout, views  0                                      0
=====================  =====================================  ==========================================

a. ``co.forward_stepping`` (which continual applies to every plain ``nn`` module in a
   ``co.Sequential``) replaces ``module.forward`` by a wrapper that, outside "forward" call
   mode, calls ``CoModule._call_impl`` again, so the module's ptflops forward hook fires twice
   per step. The patched functional (``F.relu``) runs once.
b. The spatial pool of a continual pool is a ``functools.partial(F.avg_pool2d, ...)`` bound
   before ptflops patches ``F`` (not counted); the temporal ``nn.AdaptiveAvgPool1d`` child's hook
   is dropped (ptflops sums a counted module's own ``__flops__`` only, not its children's), but
   its patched ``F.adaptive_avg_pool1d`` counts the ``(H'W', C, kT)`` window. So the head's
   per-step pool cost grows by ``C*kT`` with the window (432*64 MACs for a _64 model: invisible
   at the table's precision).
c. ptflops' linear hook multiplies ``input.shape[-1] * output.shape[-1]`` by the product of the
   other input dims; with channels on axis 1 of a ``(1, 2048, 1, 1, 1)`` step input it counts
   ``(1*1 + 1) * 2048 = 4096`` instead of ``2048*400 + 400``. Our :class:`~co3d_jax.layers.Dense`
   counts true MACs; :func:`paper_macs` applies this quirk to the head ``projection`` in step
   mode (``linear_quirk=True``), which is the only ``co.Linear`` in CoX3D (its SE fc's are
   1x1x1 ``co.Conv3d`` and are counted correctly).
d. pytorchvideo's ``create_x3d`` (same ptflops) gives 0.642 / 2.084 / 5.024 / 19.34 GMACs for
   XS/S/M/L: fvcore's SE squeezes with ``Tensor.mean`` (not counted) but scales with a counted
   ``torch.mul`` (net -1 per SE-input element against SlowFast's 2x-counted pool), and its
   stage-2 block-0 shortcut has no BN (``branch1_norm`` only when ``dim_in != dim_out``; 48
   fewer parameters). co3d profiles its SlowFast-derived X3D, which is what we reproduce.

Layers implement these in their ``macs`` methods (``t=None``: one step; ``t``: a clip).

Reproduction (GMACs; reference = ptflops 0.7.5 on co3d's PyTorch models, co3d.md §5.5; "table"
= the paper/README table, made with an older ptflops without functional patching, i.e. ReLU
and pools counted once and no ``Tensor.add``/``.mul``):

===========  ===================  ============  =====
model        :func:`paper_macs`   reference     table
===========  ===================  ============  =====
X3D-XS       0.644664056          0.645         0.64
X3D-S        2.090946056          2.091         2.06
X3D-M        5.041361336          5.041         4.97
X3D-L        19.399621094         19.40         19.17
CoX3D-S      0.169193936          0.169         0.17
CoX3D-M      0.330596192          0.331         0.33
CoX3D-L      1.262831168          1.263         1.25
===========  ===================  ============  =====

All seven equal ptflops 0.7.5 on our PyTorch mirrors **exactly** (to the MAC; CoX3D for the
default windows 13/16/16). The residual gap to the table (2.091 vs 2.06, 19.40 vs 19.17, 0.169
vs 0.17 ...) is the newer ptflops' extra element-wise counting; conv MACs are identical. With
``count_padded=False`` convolutions count only taps inside the (unpadded) input, which is what
XLA counts: ``2 * paper_macs(..., count_padded=False)`` equals XLA's flops for a network of
bias-free ``lax`` convolutions; for whole models XLA also counts every element-wise op (BN, SE,
Swish, adds) and the depthwise shift-and-add implementation (``impl='shift'``, a multiply and
an add per tap, padded taps included), so model counts are compared only in ratio.

Parameters: :func:`count_params` counts trainable parameters (PyTorch ``p.numel()`` over
``parameters()``); BN running statistics are buffers in PyTorch and are excluded. X3D-XS/S/M
3,794,322 and X3D-L 6,153,432.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .layers import Dense, Pool
from .layers.macs import count_padded_taps, padded_taps, valid_taps

__all__ = ["paper_macs", "paper_step_macs", "analytic_macs", "padded_taps", "count_padded_taps", "valid_taps",
           "xla_flops", "model_xla_flops", "count_params"]


# ---------------------------------------------------------------------------------------- analytic
def analytic_macs(layer, in_shape, t: int | None = None, *, count_padded: bool = True) -> int:
    """``layer.macs(in_shape, t)`` (ptflops convention) with the padded-tap switch applied."""
    with padded_taps(count_padded):
        return int(layer.macs(tuple(in_shape), t))


def _projection_quirk(model) -> int:
    """Step-mode correction for continual's ``co.Linear(channel_dim=1)`` projection (note c)."""
    net = model.net
    try:
        head = net["head"]
        proj = head["projection"]
    except (KeyError, TypeError):
        return 0
    if not isinstance(proj, Dense):
        return 0
    head_in = net.shapes(model.frame_shape)[[n for n, _ in net.children].index("head")]
    shape = head.shapes(head_in)[[n for n, _ in head.children].index("projection")]
    positions = math.prod(shape[:-1])
    true = proj.macs(shape)
    counted = (1 + (1 if proj.bias else 0)) * proj.in_channels * positions
    return counted - true


def paper_macs(model, mode: str = "clip", *, count_padded: bool = True, t: int | None = None,
               linear_quirk: bool = True) -> int:
    """MACs of one forward pass, batch 1, in the paper's ptflops convention.

    ``mode='clip'``: one clip of ``t`` frames (default ``model.clip_length``) through the clip
    network. ``mode='step'``: one emitting step after warm-up (what co3d profiles for frame
    models). ``linear_quirk`` reproduces continual's miscounted projection in step mode (note c
    of the module docstring); ``count_padded=False`` counts only in-input conv taps (XLA).
    """
    if mode not in ("clip", "step"):
        raise ValueError(f"paper_macs: mode must be 'clip' or 'step', got {mode!r}")
    if mode == "clip":
        return analytic_macs(model.net, model.frame_shape, t or model.clip_length, count_padded=count_padded)
    macs = analytic_macs(model.net, model.frame_shape, None, count_padded=count_padded)
    return macs + (_projection_quirk(model) if linear_quirk else 0)


def paper_step_macs(model, *, count_padded: bool = True, linear_quirk: bool = True) -> dict[str, float]:
    """Per-step MACs of a continual model with a temporal stride (CoI3D), paper convention.

    Returns ``{"emit": ..., "skip": ..., "average": ...}``: ``emit`` is a step whose output is
    valid (= ``paper_macs(model, 'step')``, what co3d profiles); ``skip`` a step the stride
    suppresses: only the top-level children before the strided one run, and the strided
    :class:`~co3d_jax.layers.Pool` costs what continual's ptflops hook counts for a frame it only
    stores (its input frame; the patched temporal ``adaptive_max_pool1d`` is not called);
    ``average`` is the mean per input frame over one stride period. For stride-1 models all three
    are equal. Only a top-level strided ``Pool`` is supported (CoI3D's ``pathway0_pool``).
    """
    emit = paper_macs(model, "step", count_padded=count_padded, linear_quirk=linear_quirk)
    net = model.net
    children = getattr(net, "children", ())
    if net.stride == 1 or not children:
        return {"emit": emit, "skip": emit, "average": float(emit)}
    shapes = net.shapes(model.frame_shape)
    skip, average, s_in = 0, 0.0, 1
    for (name, child), shape in zip(children, shapes):
        cost = analytic_macs(child, shape, None, count_padded=count_padded)
        if child.stride > 1:
            if not isinstance(child, Pool) or s_in != 1:
                raise NotImplementedError(f"paper_step_macs: only one top-level strided Pool is supported, got "
                                          f"{name!r} ({type(child).__name__}, stride {child.stride})")
            stored = math.prod(shape)  # hook on the input frame only
            skip += stored
            average += (cost + (child.stride - 1) * stored) / child.stride
        elif s_in == 1:
            skip += cost
            average += cost
        else:
            average += cost / s_in
        s_in *= child.stride
    if linear_quirk:
        average += _projection_quirk(model) / s_in
    return {"emit": emit, "skip": skip, "average": average}


# ---------------------------------------------------------------------------------------- XLA
def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a))
                        if hasattr(a, "shape") or isinstance(a, (int, float)) else a, tree)


def _roofline_flops(fn, args) -> float:
    from jax.experimental import roofline
    _, result = roofline.roofline(fn)(*args)
    return float(result.unfused_flops)  # `flops` holds dots only; unfused_flops is the total


def xla_flops(fn: Callable, *args, compiled: bool = True) -> float:
    """FLOPs XLA's cost analysis assigns to ``jax.jit(fn)(*args)``, lowered for CPU.

    ``args`` may be arrays or ``jax.ShapeDtypeStruct`` s (nothing is executed). ``compiled=True``
    analyses the optimised CPU executable (``lower(...).compile().cost_analysis()``);
    ``compiled=False`` the un-optimised lowering (no compile, faster; equal for convolutions and
    dots). Convolutions count 2 per valid (non-padding) tap; a ``scan``/``while`` body counts once.
    Falls back to ``jax.experimental.roofline`` when XLA reports nothing or ``-1``.
    """
    args = _abstract(args)
    flops = -1.0
    try:
        cpu = jax.devices("cpu")[0]
        with jax.default_device(cpu):
            lowered = jax.jit(fn).lower(*args)
            ca = lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
        if isinstance(ca, (list, tuple)):
            ca = ca[0] if ca else None
        if ca:
            flops = float(ca.get("flops", -1.0))
    except Exception:  # pragma: no cover - e.g. no CPU backend in this process
        flops = -1.0
    if flops < 0:
        flops = _roofline_flops(fn, args)
    return flops


def model_xla_flops(model, params, mode: str = "clip", *, batch: int = 1, t: int | None = None,
                    compiled: bool = True) -> float:
    """XLA flops of one clip forward (``mode='clip'``: ``model.net.forward`` on a
    ``(batch, t or clip_length, H, W, 3)`` clip) or of one continual step (``mode='step'``:
    ``model.net.step`` on a ``(batch, H, W, 3)`` frame and a fresh state, outside any scan; the
    step function computes every layer each call, so this is also the emitting-step cost)."""
    h, w, c = model.frame_shape
    f32 = jnp.float32
    if mode == "clip":
        x = jax.ShapeDtypeStruct((batch, t or model.clip_length, h, w, c), f32)
        return xla_flops(lambda p, x: model.net.forward(p, x), params, x, compiled=compiled)
    if mode == "step":
        state = jax.eval_shape(lambda: model.init_state(batch))
        x = jax.ShapeDtypeStruct((batch, h, w, c), f32)
        valid = jax.ShapeDtypeStruct((batch,), jnp.bool_)
        return xla_flops(lambda p, s, x, v: model.net.step(p, s, x, v), params, state, x, valid, compiled=compiled)
    raise ValueError(f"model_xla_flops: mode must be 'clip' or 'step', got {mode!r}")


# ---------------------------------------------------------------------------------------- params
_BN_STATS = ("mean", "var")


def count_params(params: Any) -> int:
    """Number of parameters, excluding BatchNorm running statistics (leaves named ``mean`` or
    ``var``, which PyTorch keeps as buffers). Works on arrays or ``ShapeDtypeStruct`` s."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        if name in _BN_STATS:
            continue
        total += int(math.prod(np.shape(leaf)))
    return total
