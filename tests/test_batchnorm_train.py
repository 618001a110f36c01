"""Training-mode batch norm (``Layer.forward_train``) vs ``torch.nn.BatchNorm3d.train()``.

Outputs, updated running statistics (momentum 0.1, unbiased variance) and gradients, for a bare
BatchNorm and through a small container (Sequential + BroadcastReduce residual, i.e. Parallel),
over two consecutive training steps; the inference path is unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from co3d_jax import layers as L

from torch_utils import bn_params, clip_from_torch, conv_params, randomize_bn_, to_numpy

TOL = dict(rtol=1e-5, atol=1e-5)


def _close(a, b, **kw):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **{**TOL, **kw})


def test_batchnorm_forward_train_matches_torch():
    gen = torch.Generator().manual_seed(0)
    tbn = randomize_bn_(nn.BatchNorm3d(6), gen).train()
    layer = L.BatchNorm(6)
    params = bn_params(tbn)
    fwd = jax.jit(layer.forward_train)
    for it in range(2):  # the second step starts from the updated statistics
        x = torch.randn(3, 6, 4, 5, 7, generator=gen) * 2 + 0.5
        y_t = tbn(x)
        y, params = fwd(params, jnp.asarray(clip_from_torch(x)))
        _close(y, clip_from_torch(y_t))
        _close(params["mean"], to_numpy(tbn.running_mean), err_msg=f"running mean, step {it}")
        _close(params["var"], to_numpy(tbn.running_var), err_msg=f"running var, step {it}")
        _close(params["scale"], to_numpy(tbn.weight))
    # inference path untouched: eval-mode torch == forward with the updated statistics
    tbn.eval()
    x = torch.randn(2, 6, 3, 4, 4, generator=gen)
    _close(layer.forward(params, jnp.asarray(clip_from_torch(x))), clip_from_torch(tbn(x)))


def test_batchnorm_train_gradients_match_torch():
    gen = torch.Generator().manual_seed(1)
    tbn = randomize_bn_(nn.BatchNorm3d(4), gen).train()
    x = torch.randn(2, 4, 3, 4, 4, generator=gen, requires_grad=True)
    w = torch.randn(2, 4, 3, 4, 4, generator=gen)
    (tbn(x) * w).sum().backward()
    layer = L.BatchNorm(4)

    def loss(p, xj):
        y, _ = layer.forward_train(p, xj)
        return jnp.sum(y * jnp.asarray(clip_from_torch(w)))

    gp, gx = jax.grad(loss, argnums=(0, 1))(bn_params(tbn), jnp.asarray(clip_from_torch(x.detach())))
    _close(gx, clip_from_torch(x.grad), atol=1e-4)
    _close(gp["scale"], to_numpy(tbn.weight.grad), atol=1e-4)
    _close(gp["bias"], to_numpy(tbn.bias.grad), atol=1e-4)
    assert not np.any(np.asarray(gp["mean"])) and not np.any(np.asarray(gp["var"]))


def test_batchnorm_train_low_precision_input():
    layer = L.BatchNorm(3)
    p = {"scale": jnp.ones(3), "bias": jnp.zeros(3), "mean": jnp.zeros(3), "var": jnp.ones(3)}
    x = jax.random.normal(jax.random.key(0), (2, 2, 3, 3, 3)) * 3 + 1
    y16, p16 = layer.forward_train(p, x.astype(jnp.bfloat16))
    y32, p32 = layer.forward_train(p, x)
    assert y16.dtype == jnp.bfloat16 and p16["mean"].dtype == jnp.float32 and p16["var"].dtype == jnp.float32
    _close(y16.astype(jnp.float32), y32, atol=5e-2, rtol=5e-2)
    _close(p16["mean"], p32["mean"], atol=2e-2)


class TorchNet(nn.Module):
    """conv -> BN -> ReLU -> (1x1 conv -> BN) + (1x3x3 conv -> BN -> swish)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(8)
        self.skip_c = nn.Conv3d(8, 8, 1, bias=False)
        self.skip_bn = nn.BatchNorm3d(8)
        self.main_c = nn.Conv3d(8, 8, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.main_bn = nn.BatchNorm3d(8)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        m = self.main_bn(self.main_c(x))
        return self.skip_bn(self.skip_c(x)) + m * torch.sigmoid(m)


def jax_net():
    return L.Sequential.of(
        ("conv", L.Conv(3, 8, (3, 3, 3), 1, (1, 1, 1))), ("bn", L.BatchNorm(8)), ("relu", L.Activation("relu")),
        ("res", L.broadcast_reduce(
            ("skip", L.Sequential.of(("c", L.Conv(8, 8)), ("bn", L.BatchNorm(8)))),
            ("main", L.Sequential.of(("c", L.Conv(8, 8, (1, 3, 3), 1, (0, 1, 1))), ("bn", L.BatchNorm(8)),
                                     ("act", L.Activation("swish")))))))


def _torch_params(t: TorchNet):
    return {"conv": conv_params(t.conv), "bn": bn_params(t.bn),
            "res": {"skip": {"c": conv_params(t.skip_c), "bn": bn_params(t.skip_bn)},
                    "main": {"c": conv_params(t.main_c), "bn": bn_params(t.main_bn)}}}


def test_container_forward_train_matches_torch():
    gen = torch.Generator().manual_seed(2)
    t = TorchNet()
    for bn in (t.bn, t.skip_bn, t.main_bn):
        randomize_bn_(bn, gen)
    t.train()
    net = jax_net()
    params = _torch_params(t)
    assert jax.tree.structure(params) == jax.tree.structure(net.init(jax.random.key(0), (6, 6, 3)))
    fwd = jax.jit(net.forward_train)
    for it in range(2):
        x = torch.randn(2, 3, 4, 6, 6, generator=gen)
        y_t = t(x)
        y, new = fwd(params, jnp.asarray(clip_from_torch(x)))
        _close(y, clip_from_torch(y_t), atol=1e-4)
        want = _torch_params(t)
        jax.tree.map(lambda a, b: _close(a, b, err_msg=f"step {it}"), new, want)
        # non-statistics leaves pass through unchanged
        np.testing.assert_array_equal(new["conv"]["kernel"], params["conv"]["kernel"])
        np.testing.assert_array_equal(new["res"]["main"]["bn"]["scale"], params["res"]["main"]["bn"]["scale"])
        params = new
    t.eval()
    x = torch.randn(1, 3, 3, 6, 6, generator=gen)
    _close(net.forward(params, jnp.asarray(clip_from_torch(x))), clip_from_torch(t(x).detach()), atol=1e-4)


def test_forward_train_default_is_forward():
    pool = L.Pool("avg", (2, 2, 2), 1, 0)
    x = jax.random.normal(jax.random.key(1), (1, 4, 4, 4, 2))
    y, p = pool.forward_train(None, x)
    _close(y, pool.forward(None, x))
    assert p is None
    net = L.Sequential.of(("a", L.Activation("relu")), ("p", pool))
    y, p = net.forward_train({}, x)
    assert p == {}
    _close(y, net.forward({}, x))


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
