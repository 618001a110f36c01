"""Batch-norm folding for inference: ``Conv -> BatchNorm`` becomes one biased ``Conv``.

``W' = W * scale / sqrt(var + eps)`` per output channel and ``b' = bias - mean * scale /
sqrt(var + eps)`` (+ the conv's own bias, scaled). The folded bias is added once per emitted
output, never stored in a temporal buffer, so streaming stays exact (reference §7.9).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from .base import Layer
from .containers import Parallel, Sequential
from .conv import Conv
from .simple import Activation, BatchNorm


def fold_conv_bn(conv: Conv, bn: BatchNorm, conv_params: dict, bn_params: dict):
    inv = bn_params["scale"] / jnp.sqrt(bn_params["var"] + bn.eps)
    kernel = conv_params["kernel"] * inv
    bias = bn_params["bias"] - bn_params["mean"] * inv
    if conv.bias:
        bias = bias + conv_params["bias"] * inv
    return dataclasses.replace(conv, bias=True), {"kernel": kernel, "bias": bias}


def fold_batchnorm(layer: Layer, params):
    """Return ``(layer', params')`` with every ``Conv`` directly followed by a ``BatchNorm``
    (inside any container) merged. Outputs are unchanged up to float rounding.

    A layer that holds sublayers outside :class:`Sequential` / :class:`Parallel` (e.g. SlowFast's
    ``FuseFastToSlow``) folds them in its own ``fold_batchnorm(params) -> (layer', params')``
    method, which is called here; other layers are returned unchanged."""
    if isinstance(layer, Sequential):
        params = params or {}
        children, new_params = [], {}
        items = list(layer.children)
        i = 0
        while i < len(items):
            name, child = items[i]
            nxt = items[i + 1] if i + 1 < len(items) else None
            if isinstance(child, Conv) and nxt is not None and isinstance(nxt[1], BatchNorm):
                child, p = fold_conv_bn(child, nxt[1], params[name], params[nxt[0]])
                children.append((name, child))
                children.append((nxt[0], Activation("identity")))
                new_params[name] = p
                i += 2
                continue
            child, p = fold_batchnorm(child, params.get(name))
            children.append((name, child))
            if p is not None and not (isinstance(p, dict) and not p):
                new_params[name] = p
            i += 1
        return dataclasses.replace(layer, children=tuple(children)), new_params
    if isinstance(layer, Parallel):
        params = params or {}
        branches, new_params = [], {}
        for name, b in layer.branches:
            b, p = fold_batchnorm(b, params.get(name))
            branches.append((name, b))
            if p is not None and not (isinstance(p, dict) and not p):
                new_params[name] = p
        return dataclasses.replace(layer, branches=tuple(branches)), new_params
    hook = getattr(layer, "fold_batchnorm", None)
    if callable(hook):
        return hook(params)
    return layer, params
