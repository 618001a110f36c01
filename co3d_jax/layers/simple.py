"""Per-frame (stateless) layers and the residual delay.

Batch norm, activations, dense-over-channels and ``Delay`` (continual-inference's
``co.Delay``, reference §1.6).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .base import (Layer, Out, check_channels, check_input, check_state_frame, counter_advance, counter_after,
                   counter_full, counter_init, fan_in_uniform, gate, random_normal, random_uniform, static)

BN_MOMENTUM = 0.1  # running-statistics momentum of BatchNorm.forward_train (PyTorch's default)

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "swish": lambda x: x * jax.nn.sigmoid(x),
    "sigmoid": jax.nn.sigmoid,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "identity": lambda x: x,
}


@static
class Activation(Layer):
    """Elementwise activation (``relu``, ``swish``, ``sigmoid``, ``identity``) or ``softmax``
    over channels."""

    fn: str = "relu"

    def __post_init__(self):
        if self.fn not in ACTIVATIONS:
            raise ValueError(f"Activation: unknown function {self.fn!r}; choose from {sorted(ACTIVATIONS)}")

    def apply(self, params, x):
        return ACTIVATIONS[self.fn](x)

    def macs(self, in_shape, t=None):
        # ptflops 0.7.5: the nn.ReLU hook counts 1/element and the patched F.relu another 1 (clip: 2).
        # In a continual step the hook fires twice (co.forward_stepping's forward re-enters
        # CoModule._call_impl), so 3/element. F.softmax counts 1/element; Sigmoid and Swish 0.
        n = math.prod(in_shape) * (1 if t is None else t)
        return {"relu": 2 if t is not None else 3, "softmax": 1}.get(self.fn, 0) * n


@static
class BatchNorm(Layer):
    """Inference batch norm over the channel axis: ``(x - mean) / sqrt(var + eps) * scale + bias``.

    Params: ``scale, bias, mean, var`` each ``(C,)``. Fold into a preceding :class:`Conv` with
    :func:`co3d_jax.layers.fold_batchnorm`.
    """

    channels: int
    eps: float = 1e-5

    def init(self, key, in_shape=None):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        c = (self.channels,)
        return {"scale": random_uniform(k1, c, 0.5, 1.5), "bias": random_normal(k2, c, 0.1),
                "mean": random_normal(k3, c, 0.1), "var": random_uniform(k4, c, 0.5, 1.5)}

    def apply(self, params, x):
        check_channels(self, x, self.channels)
        inv = params["scale"] / jnp.sqrt(params["var"] + self.eps)
        return x * inv.astype(x.dtype) + (params["bias"] - params["mean"] * inv).astype(x.dtype)

    def forward_train(self, params, x):
        """Training mode (``torch.nn.BatchNorm3d.train()``): normalise with the batch statistics
        over every axis but channels (B, T, H, W; biased variance), and return the running
        statistics updated with momentum 0.1 and the *unbiased* batch variance, as PyTorch does.
        Statistics are computed in float32 whatever the input dtype; under ``jit`` with a sharded
        batch they are global-batch statistics (synchronised BN)."""
        check_input(self, x, clip=True)
        check_channels(self, x, self.channels)
        axes = tuple(range(x.ndim - 1))
        n = math.prod(x.shape[a] for a in axes)
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=axes)
        var = jnp.mean(jnp.square(xf - mean), axis=axes)
        inv = params["scale"].astype(jnp.float32) * jax.lax.rsqrt(var + self.eps)
        y = (xf - mean) * inv + params["bias"].astype(jnp.float32)
        m = BN_MOMENTUM
        stats = jax.lax.stop_gradient((mean, var * (n / max(n - 1, 1))))
        new = dict(params, mean=(1 - m) * params["mean"] + m * stats[0].astype(params["mean"].dtype),
                   var=(1 - m) * params["var"] + m * stats[1].astype(params["var"].dtype))
        return y.astype(x.dtype), new

    def macs(self, in_shape, t=None):
        # ptflops: affine BN = 2/element; in a continual step its hook fires twice (forward_stepping
        # re-enters CoModule._call_impl), so 4/element.
        return (2 if t is not None else 4) * math.prod(in_shape) * (1 if t is None else t)


@static
class Dense(Layer):
    """Dense layer over the channel (last) axis; params ``kernel (C_in, C_out)``, ``bias``."""

    in_channels: int
    out_channels: int
    bias: bool = True

    def init(self, key, in_shape=None):
        k1, k2 = jax.random.split(key)
        p = {"kernel": fan_in_uniform(k1, (self.in_channels, self.out_channels), self.in_channels)}
        if self.bias:
            p["bias"] = fan_in_uniform(k2, (self.out_channels,), self.in_channels)
        return p

    def out_shape(self, in_shape):
        return (*in_shape[:-1], self.out_channels)

    def apply(self, params, x):
        check_channels(self, x, self.in_channels)
        y = jnp.einsum("...c,cd->...d", x, params["kernel"].astype(x.dtype))
        return y + params["bias"].astype(x.dtype) if self.bias else y

    def macs(self, in_shape, t=None):
        n = math.prod(in_shape[:-1]) * (1 if t is None else t)
        return n * self.in_channels * self.out_channels + (n * self.out_channels if self.bias else 0)


@static
class Delay(Layer):
    """Emit the input from ``d`` valid steps ago (``co.Delay``); identity in clip mode.

    State: ``buf (B, d, H, W, C)`` of the last ``d`` inputs and a counter. The initial fill is
    never emitted (reference §1.6), so only zeros are stored.
    """

    d: int = 0

    @property
    def receptive_field(self):
        return self.d + 1

    def apply(self, params, x):
        return x

    def init_state(self, batch, in_shape, dtype=jnp.float32):
        if self.d == 0:
            return None
        return {"buf": jnp.zeros((batch, self.d, *in_shape), dtype), "n": counter_init(batch)}

    def step(self, params, state, x, valid):
        check_input(self, x, clip=False)
        if self.d == 0:
            return state, Out(x, valid)
        check_state_frame(self, x, state["buf"])
        emit, n_next, _ = counter_advance(state["n"], valid, self.d, 1)
        buf = state["buf"]
        y = buf[:, 0]
        new = {"buf": jnp.concatenate([buf[:, 1:], x[:, None].astype(buf.dtype)], axis=1), "n": n_next}
        return gate(valid, new, state), Out(y.astype(x.dtype), emit)

    @property
    def bulk_ok(self):
        return True

    def steps(self, params, state, xs):
        check_input(self, xs, clip=True)
        if self.d == 0:
            return state, xs
        buf = state["buf"]
        window = jnp.concatenate([buf, xs.astype(buf.dtype)], axis=1)  # output i is input i - d
        return {"buf": window[:, xs.shape[1]:], "n": state["n"]}, window[:, :xs.shape[1]].astype(xs.dtype)

    def _prefill(self, params, xs, dtype):
        if self.d == 0:
            return None, xs
        b, n = xs.shape[:2]
        x = xs.astype(dtype)
        if n < self.d:
            x = jnp.concatenate([jnp.zeros((b, self.d - n, *xs.shape[2:]), dtype), x], axis=1)
        # output at input n >= d is input n - d; the ring holds the last d inputs
        return ({"buf": x[:, -self.d:], "n": counter_full(b, counter_after(n, self.d, 1))},
                xs[:, :max(n - self.d, 0)].astype(dtype).astype(xs.dtype))
