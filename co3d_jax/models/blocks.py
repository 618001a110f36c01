"""The residual block shared by the ResNet-style models (X3D/CoX3D, Slow/I3D/CoSlow/CoI3D, SlowFast).

PySlowFast names: ``residual/skip`` (``branch1`` 1x1x1 projection + ``branch1_bn`` where the
shape changes, else the identity), ``residual/branch2`` (the model's own bottleneck) and the
final ``relu``; the parameter tree and the weight porters depend on these names.
"""

from __future__ import annotations

from ..layers import Activation, BatchNorm, Conv, Delay, Layer, Sequential, broadcast_reduce


def res_block(branch2: Layer, c_in: int, c_out: int, stride: int, continual: bool = True,
              proj_impl: str = "auto") -> Sequential:
    """``relu(skip(x) + branch2(x))`` on ``(B, T, H, W, c_in)`` -> ``(B, T, H/stride, W/stride, c_out)``.

    ``continual=True`` (CoResBlock, reference §2.3): the skip ends in ``Delay(branch2.delay)``, so
    in stream mode it adds the frame the branch is answering for. ``False``: clip-only models
    (no delay layer, the parameter tree of their checkpoints). ``proj_impl``: the projection
    shortcut's ``Conv.impl``.
    """
    if c_in != c_out or stride != 1:
        proj = [("branch1", Conv(c_in, c_out, 1, (1, stride, stride), impl=proj_impl)), ("branch1_bn", BatchNorm(c_out))]
        skip = Sequential.of(*proj, *([("delay", Delay(branch2.delay))] if continual else []))
    else:
        skip = Delay(branch2.delay) if continual else Activation("identity")
    return Sequential.of(("residual", broadcast_reduce(("skip", skip), ("branch2", branch2), auto_delay=continual)),
                         ("relu", Activation("relu")))
