"""Functional continual layers: every layer serves clip mode (``forward``) and stream mode
(``init_state``/``step``) with the same params. See :mod:`co3d_jax.layers.base` for the contract."""

from .base import Layer, Out, counter_advance, gate
from .containers import (Broadcast, BroadcastReduce, ClipOnlySequential, Parallel, Pathways, Reduce, Sequential,
                         StridedSequential, broadcast_reduce, clip_length, delayed, residual)
from .conv import Conv
from .fold import fold_batchnorm, fuse_activations
from .pool import GlobalAvgPool, IdentityPool, Pool
from .se import squeeze_excitation
from .simple import Activation, BatchNorm, Delay, Dense

__all__ = [
    "Layer", "Out", "Conv", "Pool", "IdentityPool", "GlobalAvgPool", "Delay", "BatchNorm", "Activation", "Dense",
    "Sequential", "StridedSequential", "ClipOnlySequential", "Broadcast", "Parallel", "Pathways", "Reduce",
    "BroadcastReduce", "broadcast_reduce", "delayed", "residual", "clip_length", "squeeze_excitation", "fold_batchnorm",
    "fuse_activations",
    "counter_advance", "gate",
]
