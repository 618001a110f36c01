"""The spatial transform of both input pipelines on the device: a short-side bilinear resize, a
square crop, an optional horizontal flip and the normalisation, as jitted JAX on uint8 frames after
transfer, described per sample by host-computed :class:`~co3d_jax.data.transforms.CropTaps`.

* Training (:mod:`co3d_jax.data.train_loader`): the host draws every random choice from
  :func:`~co3d_jax.data.augment.sample_rng` (a pure function of ``(seed, sample number)``) and
  turns the scale jitter, random crop and flip into taps (:func:`co3d_jax.data.augment.crop_taps`;
  a flip is the column taps reversed); the numpy reference is
  :func:`co3d_jax.data.augment.train_sample`.
* Evaluation (:mod:`co3d_jax.data.eval_loader`): the taps of the reference's resize + centre crop
  (:func:`co3d_jax.data.transforms.center_crop_taps`); the numpy reference is
  :func:`co3d_jax.data.transforms.eval_transform`.

For each of the ``S`` output rows and columns the taps hold two source indices and two bilinear
weights, a fixed size whatever the frame size or the resize, so nothing here compiles per sample:
the device gathers two source columns, then two source rows per output pixel, in the same float32
operations as the numpy references (equal to them up to float32 rounding, a few ulp where XLA fuses
the multiply-adds; tested).

A batch is the uint8 frames ``(B, T, H, W, 3)`` padded to a common canvas (the taps never read the
padding) plus the taps ``(B, S)`` int32/float32 arrays (``TAP_FIELDS``), host arrays or already on
the devices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

TAP_FIELDS = ("r0", "r1", "rw0", "rw1", "c0", "c1", "cw0", "cw1")


def _one(frames, r0, r1, rw0, rw1, c0, c1, cw0, cw1):
    """uint8 ``(T, H, W, 3)`` -> float32 ``(T, S, S, 3)`` in [0, 1]: the ops of
    :func:`co3d_jax.data.augment.apply_taps` (gather first, on uint8: fewer pixels to convert)."""
    def px(a):
        return a.astype(jnp.float32) / jnp.float32(255.0)

    cols = (px(jnp.take(frames, c0, axis=2)) * cw0[None, None, :, None]
            + px(jnp.take(frames, c1, axis=2)) * cw1[None, None, :, None])
    return (jnp.take(cols, r0, axis=1) * rw0[None, :, None, None]
            + jnp.take(cols, r1, axis=1) * rw1[None, :, None, None])


def augment(frames, taps: dict, mean, std):
    """``(B, T, H, W, 3)`` uint8 + taps (``TAP_FIELDS`` -> ``(B, S)``) -> normalised float32
    ``(B, T, S, S, 3)``. Not jitted: see :func:`make_augment`."""
    out = jax.vmap(_one)(frames, *(taps[k] for k in TAP_FIELDS))
    return (out - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


@functools.lru_cache(maxsize=16)
def make_augment(mesh: Mesh | None, mean: tuple, std: tuple):
    """``f(frames, taps) -> clips``, jitted; with ``mesh``, inputs and output are sharded along the
    batch over its ``data`` axis (each device augments its own samples: no communication)."""
    fn = functools.partial(augment, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32))
    if mesh is None:
        return jax.jit(fn)
    from ..mesh import shardings
    _, batch = shardings(mesh)
    return jax.jit(fn, in_shardings=(batch, batch), out_shardings=batch)
