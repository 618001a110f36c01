"""The data-parallel mesh and its two shardings, shared by training (:mod:`co3d_jax.train`) and the
input pipeline (:mod:`co3d_jax.data`), which must not import each other's layers."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def data_mesh(devices=None) -> Mesh:
    """A 1-D ``('data',)`` mesh over ``devices`` (default: all local devices)."""
    devices = jax.local_devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
    """``(replicated, batch)`` shardings: params/optimizer state, and batch-axis-sharded data."""
    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def jit_over(fn, mesh: Mesh, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs)`` for a function over ``mesh``: on more than one device it is
    traced with the fused Pallas kernels off (:func:`co3d_jax.kernels.disabled`): GSPMD has no rule
    to split a Pallas call over the batch, so it would gather each call's operands onto every
    device and compute the whole batch there."""
    from .kernels import traced_without
    return jax.jit(fn if mesh.size == 1 else traced_without(fn), **jit_kwargs)


def jit_per_example(fn, mesh: Mesh, *, in_specs, out_specs, **jit_kwargs):
    """``jax.jit`` of ``fn`` run on each device's shard of the batch: for a function whose output for
    one example depends on that example alone (inference: scores per clip or stream). ``in_specs`` /
    ``out_specs``: ``P('data')`` for batch-sharded arguments and results, ``P()`` for replicated ones;
    they are also the jit's in/out shardings on ``mesh``. On more than one device ``fn`` runs under
    ``jax.shard_map`` over the ``'data'`` axis, so each device traces the program of one device of its
    local batch, fused Pallas kernels included, and nothing is gathered. ``jit_kwargs`` go to
    ``jax.jit`` (donation). Training, whose batch statistics and gradients span the devices, uses
    :func:`jit_over`."""
    def named(specs):
        return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))
    jit_kwargs = dict(jit_kwargs, in_shardings=named(in_specs), out_shardings=named(out_specs))
    if mesh.size == 1:
        return jax.jit(fn, **jit_kwargs)
    # check_vma off: a Pallas call has no rule for the per-axis variance checks (it is per-device code)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False),
                   **jit_kwargs)


__all__ = ["data_mesh", "jit_over", "jit_per_example", "shardings"]
