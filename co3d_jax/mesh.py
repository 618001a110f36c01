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


__all__ = ["data_mesh", "shardings"]
