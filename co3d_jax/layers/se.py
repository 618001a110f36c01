"""Continual squeeze-excitation (co3d's ``CoSe``, reference §2.1.4).

``CoSe = Residual(Sequential(avg_pool, fc1, relu, fc2, sigmoid), reduce="mul")``:

* ``scope="frame"`` (CoX3D's default): the gate uses the current frame's spatial mean; no delay.
* ``scope="clip"``: the gate averages the last ``window`` frames and the skip waits
  ``window - 1`` frames, adding ``window - 1`` to the delay.

In clip mode the pool is global over ``T, H, W`` (so the clip model equals X3D) unless
``clip_pool="frame"``, which pools each frame separately: the exact clip counterpart of the
frame-scope step.
"""

from __future__ import annotations

from .base import Layer
from .containers import Sequential, residual
from .pool import GlobalAvgPool
from .simple import Activation, Dense

SE_SCOPES = ("frame", "clip")


def squeeze_excitation(channels: int, se_channels: int, *, scope: str = "frame", window: int = 1,
                       clip_pool: str = "global", temporal_fill: str = "zeros") -> Layer:
    """Per-channel gating ``x * sigmoid(fc2(relu(fc1(pool(x)))))``; params under
    ``["branches"]["gate"]["fc1" | "fc2"]``."""
    if scope not in SE_SCOPES:
        raise ValueError(f"squeeze_excitation: scope must be one of {SE_SCOPES}, got {scope!r}")
    k = 1 if scope == "frame" else window
    gate = Sequential.of(
        ("pool", GlobalAvgPool(window=k, clip_pool=clip_pool if k == 1 else "global", temporal_fill=temporal_fill)),
        ("fc1", Dense(channels, se_channels)),
        ("fc1_act", Activation("relu")),
        ("fc2", Dense(se_channels, channels)),
        ("fc2_act", Activation("sigmoid")),
    )
    return residual(gate, reduce="mul", name="gate")
