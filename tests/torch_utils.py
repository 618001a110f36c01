"""PyTorch <-> JAX helpers for the parity tests (test-only; imports torch and continual).

Layout conventions (see ``co3d_jax.layers``):

* clips: PyTorch ``(B, C, T, H, W)`` <-> JAX ``(B, T, H, W, C)``; frames ``(B, C, H, W)`` <->
  ``(B, H, W, C)``;
* conv weights: PyTorch ``(C_out, C_in/groups, kT, kH, kW)`` -> DHWIO ``(kT, kH, kW, C_in/groups, C_out)``
  (tap 0 = oldest frame in both);
* batch norm: ``weight, bias, running_mean, running_var`` -> ``scale, bias, mean, var``;
* linear: ``weight (C_out, C_in)`` -> ``kernel (C_in, C_out)``.

:func:`params_from_torch` walks a JAX layer tree and a structurally identical (continual or
``torch.nn``) module tree side by side and returns the JAX params pytree.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from co3d_jax import layers as L
from helpers import rel_err

# The reference modules run one small frame at a time: extra intra-op threads only add overhead
# (about 20x slower stepping on a shared 2-core machine).
torch.set_num_threads(1)

# ---------------------------------------------------------------------------------- arrays


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A copy: ``.numpy()`` views the tensor's memory, and on CPU ``jnp.asarray`` may alias a numpy
    buffer without copying, so a later in-place torch update (BN running statistics in train mode)
    would otherwise show through in JAX arrays made from it."""
    return t.detach().cpu().numpy().copy()


def clip_to_torch(x) -> torch.Tensor:
    """``(B, T, H, W, C)`` -> ``(B, C, T, H, W)`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x, np.float32), -1, 1)))


def clip_from_torch(t: torch.Tensor) -> np.ndarray:
    """``(B, C, T, H, W)`` -> ``(B, T, H, W, C)``."""
    return np.moveaxis(to_numpy(t), 1, -1)


def frame_to_torch(x) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B, C, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x, np.float32), -1, 1)))


def frame_from_torch(t: torch.Tensor) -> np.ndarray:
    """``(B, C, H, W)`` -> ``(B, H, W, C)``."""
    return np.moveaxis(to_numpy(t), 1, -1)


# ---------------------------------------------------------------------------------- converters


def conv_params(conv: nn.Module) -> dict:
    """``nn.Conv3d`` / ``co.Conv3d`` -> ``{"kernel": DHWIO[, "bias"]}``."""
    p = {"kernel": jnp.asarray(to_numpy(conv.weight).transpose(2, 3, 4, 1, 0))}
    if conv.bias is not None:
        p["bias"] = jnp.asarray(to_numpy(conv.bias))
    return p


def bn_params(bn: nn.Module) -> dict:
    """``nn.BatchNorm*d`` (eval statistics) -> ``{"scale", "bias", "mean", "var"}``."""
    c = bn.num_features
    return {
        "scale": jnp.asarray(to_numpy(bn.weight) if bn.weight is not None else np.ones(c, np.float32)),
        "bias": jnp.asarray(to_numpy(bn.bias) if bn.bias is not None else np.zeros(c, np.float32)),
        "mean": jnp.asarray(to_numpy(bn.running_mean)),
        "var": jnp.asarray(to_numpy(bn.running_var)),
    }


def linear_params(module: nn.Module) -> dict:
    """``nn.Linear`` / ``co.Linear`` or a 1x1x1 ``Conv3d`` -> ``{"kernel": (C_in, C_out)[, "bias"]}``."""
    w = to_numpy(module.weight)
    if w.ndim == 5:
        if w.shape[2:] != (1, 1, 1) or getattr(module, "groups", 1) != 1:
            raise ValueError(f"only a dense 1x1x1 conv maps to Dense, got weight {w.shape}")
        w = w[:, :, 0, 0, 0]
    p = {"kernel": jnp.asarray(w.T)}
    if module.bias is not None:
        p["bias"] = jnp.asarray(to_numpy(module.bias))
    return p


def randomize_bn_(bn: nn.Module, gen: torch.Generator, mean_std: float = 0.2,
                  var_range: tuple = (0.5, 1.5)) -> nn.Module:
    """Random affine params and running statistics (in place), so eval-mode BN is not the identity:
    weight ~ U(0.5, 1.5), bias ~ N(0, 0.2^2), running mean ~ N(0, mean_std^2), running var ~
    U(var_range), each ``(C,)`` and drawn from ``gen`` in that order."""
    c = bn.num_features
    lo, hi = var_range
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=gen) * 0.2)
        bn.running_mean.copy_(torch.randn(c, generator=gen) * mean_std)
        bn.running_var.copy_(torch.rand(c, generator=gen) * (hi - lo) + lo)
    return bn


def randomize_model_bn_(model: nn.Module, seed: int, mean_std: float = 0.5,
                        var_range: tuple = (0.5, 2.0)) -> nn.Module:
    """:func:`randomize_bn_` on every ``BatchNorm3d`` of ``model`` (in place, module order, one
    generator seeded ``seed``), as a trained checkpoint would have them: broad statistics and a
    non-zero ``num_batches_tracked`` (which the porters consume and ignore)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            randomize_bn_(m, gen, mean_std, var_range)
            m.num_batches_tracked.fill_(1000)
    return model


def _torch_children(module: nn.Module) -> list:
    return list(module._modules.values())


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None and not (isinstance(v, dict) and not v)}


def params_from_torch(layer: L.Layer, module: nn.Module):
    """JAX params for ``layer`` from the weights of ``module``, walking both trees in parallel.

    Containers correspond child by child (``Sequential`` <-> ``co.Sequential``/``nn.Sequential``,
    ``BroadcastReduce``/``Parallel`` <-> ``co.BroadcastReduce``/``co.Parallel``, whose
    ``auto_delay`` wrapping is the same on both sides); ``Conv`` <- conv, ``BatchNorm`` <- BN,
    ``Dense`` <- linear or 1x1x1 conv; parameter-free layers give ``None``.
    """
    if isinstance(layer, L.Sequential):
        kids = _torch_children(module)
        if len(kids) != len(layer.children):
            raise ValueError(f"Sequential: {len(layer.children)} JAX children vs {len(kids)} torch children ({module})")
        return _drop_none({n: params_from_torch(c, m) for (n, c), m in zip(layer.children, kids)})
    if isinstance(layer, L.Parallel):  # includes BroadcastReduce
        kids = _torch_children(module)
        if len(kids) != len(layer.branches):
            raise ValueError(f"Parallel: {len(layer.branches)} JAX branches vs {len(kids)} torch branches ({module})")
        return _drop_none({n: params_from_torch(b, m) for (n, b), m in zip(layer.branches, kids)})
    if isinstance(layer, L.Conv):
        return conv_params(module)
    if isinstance(layer, L.BatchNorm):
        return bn_params(module)
    if isinstance(layer, L.Dense):
        return linear_params(module)
    return None


# ---------------------------------------------------------------------------------- running co modules


def co_forward_steps(module: nn.Module, clip: torch.Tensor) -> list[Optional[torch.Tensor]]:
    """Fresh state, then ``forward_step`` on each frame of ``clip`` ``(B, C, T, ...)``;
    returns the per-frame outputs (``None`` where the module emitted nothing)."""
    module.clean_state()
    outs = []
    with torch.no_grad():
        for t in range(clip.shape[2]):
            outs.append(module.forward_step(clip[:, :, t]))
    return outs


def co_clip_forward(module: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """The ``torch.nn`` clip computation (``call_mode="forward"``)."""
    with torch.no_grad():
        return module.forward(clip)


class ErrorLog:
    """Worst relative error per ``kind/mode`` over one test module's parity checks.

    :meth:`record` asserts each error against ``tol`` and keeps the maximum; :meth:`fixtures`
    gives the module's autouse fixtures (the table printed after the module, and every test run
    under ``torch.no_grad`` with ``torch.manual_seed(0)``)."""

    def __init__(self, tol: float, title: str):
        self.tol, self.title, self.errors = tol, title, {}

    def record(self, kind: str, errs: dict) -> None:
        """``errs`` ``{mode: relative error}`` of one check of layer ``kind``; fails above ``tol``."""
        for mode, e in errs.items():
            key = f"{kind}/{mode}"
            self.errors[key] = max(self.errors.get(key, 0.0), e)
        assert all(e <= self.tol for e in errs.values()), f"{kind}: relative errors {errs} exceed {self.tol}"

    def report(self) -> None:
        if self.errors:
            print(f"\n{self.title}:")
            for k in sorted(self.errors):
                print(f"  {k:28s} {self.errors[k]:.2e}")

    def fixtures(self):
        """``(report, no_grad)``: assign both to module globals (pytest registers them by name)."""
        @pytest.fixture(scope="module", autouse=True)
        def report():
            yield
            self.report()

        @pytest.fixture(autouse=True)
        def no_grad():
            torch.manual_seed(0)
            with torch.no_grad():
                yield

        return report, no_grad


def stack_valid(outs: Sequence[Optional[torch.Tensor]]):
    """``(valid (T,) bool, stacked outputs (B, n_valid, H, W, C) channels-last)`` of a co step run."""
    valid = np.array([o is not None for o in outs])
    frames = [frame_from_torch(o) for o in outs if o is not None]
    return valid, (np.stack(frames, 1) if frames else None)


# ---------------------------------------------------------------------------------- parity harness


def compare_with_co(layer: L.Layer, params, co_module: nn.Module, in_shape: tuple, *, batch: int = 2,
                    frames: Optional[int] = None, seed: int = 0, clip: bool = True, jit_forward: bool = False,
                    x: Optional[np.ndarray] = None) -> dict:
    """Check ``layer`` against the continual module ``co_module`` on a random stream.

    * metadata: ``delay``, ``receptive_field``, ``stride[0]`` and ``padding[0]`` are equal;
    * stream: :func:`co3d_jax.stream.run_layer` vs ``co_module.forward_step`` frame by frame:
      the JAX validity equals "co returned a tensor" at every step, for every stream;
    * clip: ``layer.forward`` vs ``co_module.forward`` (the ``torch.nn`` computation).

    The input is ``x`` ``(B, T, H, W, C)`` if given, else standard normal with ``frames`` frames,
    by default ``max(24, 3 * receptive_field)``. The stream always gets an explicit
    all-True ``valid`` (so other tests of the same layer and length reuse the compiled scan);
    ``jit_forward`` compiles the clip forward (cheaper than eager for many-op layers such as
    shift-and-add depthwise convs). Returns the relative errors
    ``{"step": ..., "clip": ...}`` (see :func:`rel_err`); the caller asserts the tolerance.
    """
    from co3d_jax.stream import run_layer

    if x is None:
        t = frames if frames is not None else max(24, 3 * layer.receptive_field)
        x = np.random.default_rng(seed).standard_normal((batch, t, *in_shape), dtype=np.float32)
    x = np.asarray(x, np.float32)
    batch, t = x.shape[:2]
    co_module.eval()
    assert tuple(x.shape[2:]) == tuple(in_shape), f"input {x.shape} does not match in_shape {in_shape}"
    xt = clip_to_torch(x)

    got = dict(delay=layer.delay, receptive_field=layer.receptive_field, stride=layer.stride, padding=layer.padding)
    want = dict(delay=int(co_module.delay), receptive_field=int(co_module.receptive_field),
                stride=int(co_module.stride[0]), padding=int(co_module.padding[0]))
    assert got == want, f"metadata: JAX {got} != continual {want}"

    state = layer.init_state(batch, tuple(in_shape), jnp.float32)
    _, (ys, vs) = run_layer(layer, params, state, x, np.ones((batch, t), bool))
    ref_valid, ref = stack_valid(co_forward_steps(co_module, xt))
    vs = np.asarray(vs)
    assert ref_valid.any(), "continual module never emitted: stream too short for the test"
    assert np.array_equal(vs, np.broadcast_to(ref_valid, vs.shape)), (
        f"validity mismatch:\nJAX {vs.astype(int)}\nco  {ref_valid.astype(int)}")
    errs = {"step": rel_err(np.asarray(ys)[:, ref_valid], ref)}
    if clip:
        fwd = jax.jit(layer.forward) if jit_forward else layer.forward
        errs["clip"] = rel_err(np.asarray(fwd(params, x)),
                               clip_from_torch(co_clip_forward(co_module, xt)))
    return errs
