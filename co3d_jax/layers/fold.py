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


def _fuse_in_sequence(children: tuple) -> tuple:
    """One Sequential's ``(name, layer)`` children with activations moved into the convs that
    take them (see :func:`fuse_activations`)."""
    items = list(children)
    for k, (name, child) in enumerate(items):
        if not (isinstance(child, Conv) and child.takes_activations):
            continue
        conv = child
        # the input activation: the child right before the conv (it feeds the conv alone)
        if k > 0 and not conv.in_activation:
            pname, prev = items[k - 1]
            if isinstance(prev, Activation) and prev.fn in ("relu", "swish"):  # f(0) = 0
                conv = dataclasses.replace(conv, in_activation=prev.fn)
                items[k - 1] = (pname, Activation("identity"))
        # the output activation: the first non-identity child after the conv (identities are folded
        # BatchNorms); an unfolded BatchNorm or any other layer in between stops it
        j = k + 1
        while j < len(items) and isinstance(items[j][1], Activation) and items[j][1].fn == "identity":
            j += 1
        if j < len(items) and not conv.out_activation:
            nname, nxt = items[j]
            if isinstance(nxt, Activation) and nxt.fn in ("relu", "swish"):
                conv = dataclasses.replace(conv, out_activation=nxt.fn)
                items[j] = (nname, Activation("identity"))
        items[k] = (name, conv)
    return tuple(items)


def fuse_activations(layer: Layer) -> Layer:
    """``layer`` with each ``Activation`` (relu or swish) that directly precedes or follows a
    ``Conv(takes_activations=True)`` inside a :class:`Sequential` moved into that conv's
    ``in_activation`` / ``out_activation`` and replaced by an identity ``Activation`` (the
    Sequential keeps its names, delays and params; outputs are the same computation). An output
    activation is moved only across identities (the slots of folded BatchNorms), never across a
    BatchNorm, so apply it after :func:`fold_batchnorm` to fuse those too. X3D marks its depthwise
    convs (``b``, the stem's ``conv``), whose Pallas step then applies both activations in its kernel."""
    if isinstance(layer, Sequential):
        children = tuple((n, fuse_activations(c)) for n, c in layer.children)
        return dataclasses.replace(layer, children=_fuse_in_sequence(children))
    if isinstance(layer, Parallel):
        return dataclasses.replace(layer, branches=tuple((n, fuse_activations(b)) for n, b in layer.branches))
    return layer
