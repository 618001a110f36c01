"""Functional continual layers: every layer serves clip mode (``forward``) and stream mode
(``init_state``/``step``) with the same params. See :mod:`co3d_jax.layers.base` for the contract."""

from .base import Layer, counter_advance, gate
from .containers import (Broadcast, BroadcastReduce, Parallel, Reduce, Sequential, broadcast_reduce,
                         residual)
from .conv import Conv
from .fold import fold_batchnorm
from .pool import GlobalAvgPool, Pool
from .se import squeeze_excitation
from .simple import Activation, BatchNorm, Delay, Dense

__all__ = [
    "Layer", "Conv", "Pool", "GlobalAvgPool", "Delay", "BatchNorm", "Activation", "Dense",
    "Sequential", "Broadcast", "Parallel", "Reduce", "BroadcastReduce", "broadcast_reduce",
    "residual", "squeeze_excitation", "fold_batchnorm", "counter_advance", "gate",
]
