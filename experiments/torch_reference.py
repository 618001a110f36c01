"""PyTorch reference models for benchmarks and parity checks (imports torch).

* :func:`build_torch_cox3d` builds CoX3D the way co3d does (``models/cox3d/modules/x3d.py``,
  reference §2.1.3, §2.1.7) from ``continual-inference`` modules: stem ``conv_xy``/``conv``,
  blocks ``Sequential(BroadcastReduce(skip, Sequential(branch2)), ReLU)`` with continual SE
  (``co.Residual(..., reduce="mul")``), and the head with a ``co.AvgPool3d((T_w, s, s))``.
* :func:`build_x3d_pytorchvideo` is pytorchvideo's ``create_x3d`` configured like its hub
  ``x3d_xs/s/m/l``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

X3D_HUB = {  # pytorchvideo hub configurations (input_clip_length, input_crop_size, depth_factor)
    "xs": (4, 160, 2.2), "s": (13, 160, 2.2), "m": (16, 224, 2.2), "l": (16, 312, 5.0),
}


def build_torch_cox3d(cfg, head_act: str = "softmax"):
    """continual-inference CoX3D for an :class:`co3d_jax.models.x3d.X3DConfig` (random weights, eval
    mode), mirroring co3d's ``models/cox3d/modules/x3d.py`` module by module."""
    import continual as co
    import torch
    from torch import nn

    from co3d_jax.models.x3d import round_width

    class Swish(nn.Module):
        """co3d's ``models/cox3d/modules/activation.py::Swish``."""

        def forward(self, x):
            return x * torch.sigmoid(x)

    def _bn(c):
        return nn.BatchNorm3d(c, eps=1e-5, momentum=0.1)

    def _co_se(window, dim, dim_fc, scope, fill):
        return co.Residual(
            co.Sequential(OrderedDict([
                ("avg_pool", co.AdaptiveAvgPool3d(output_size=(1, 1, 1), kernel_size={"clip": window, "frame": 1}[scope],
                                                  temporal_fill=fill)),
                ("fc1", co.Conv3d(dim, dim_fc, 1, bias=True)),
                ("fc1_act", nn.ReLU()),
                ("fc2", co.Conv3d(dim_fc, dim, 1, bias=True)),
                ("fc2_sig", nn.Sigmoid()),
            ])),
            reduce="mul",
        )

    def _co_transform(c_in, c_out, inner, stride, block_idx, window, fill, se_scope, se_dim):
        layers = [
            ("a", co.Conv3d(c_in, inner, (1, 1, 1), (1, 1, 1), (0, 0, 0), bias=False)),
            ("a_bn", co.forward_stepping(_bn(inner))),
            ("a_relu", nn.ReLU()),
            ("b", co.Conv3d(inner, inner, (3, 3, 3), (1, stride, stride), (1, 1, 1), groups=inner, bias=False,
                            temporal_fill=fill)),
            ("b_bn", co.forward_stepping(_bn(inner))),
        ]
        if (block_idx + 1) % 2:
            layers.append(("se", _co_se(window, inner, se_dim, se_scope, fill)))
        layers += [
            ("b_relu", co.forward_stepping(Swish())),
            ("c", co.Conv3d(inner, c_out, (1, 1, 1), (1, 1, 1), (0, 0, 0), bias=False)),
            ("c_bn", co.forward_stepping(_bn(c_out))),
        ]
        return co.Sequential(OrderedDict(layers))

    def _co_block(c_in, c_out, inner, stride, block_idx, window, fill, se_scope, se_dim):
        main = co.Sequential(OrderedDict([
            ("branch2", _co_transform(c_in, c_out, inner, stride, block_idx, window, fill, se_scope, se_dim))]))
        if c_in == c_out and stride == 1:
            skip = co.Delay(main.delay)
        else:
            skip = co.Sequential(OrderedDict([
                ("branch1", co.Conv3d(c_in, c_out, kernel_size=1, stride=(1, stride, stride), padding=0, bias=False)),
                ("branch1_bn", _bn(c_out)),
            ]))
        return co.Sequential(co.BroadcastReduce(skip, main, reduce="sum"), nn.ReLU())

    fill, window = cfg.temporal_fill, cfg.window
    c = cfg.stem_dim
    modules = [("s1", co.Sequential(OrderedDict([("pathway0_stem", co.Sequential(OrderedDict([
        ("conv_xy", co.Conv3d(3, c, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False)),
        ("conv", co.Conv3d(c, c, (5, 1, 1), (1, 1, 1), (2, 0, 0), bias=False, groups=c, temporal_fill=fill)),
        ("bn", _bn(c)),
        ("relu", nn.ReLU()),
    ])))])))]
    c_in = c
    for s, (c_out, depth) in enumerate(zip(cfg.stage_dims, cfg.stage_depths)):
        inner = int(cfg.bottleneck_factor * c_out)
        se_dim = round_width(inner, 0.0625)
        blocks = [(f"pathway0_res{i}", _co_block(c_in if i == 0 else c_out, c_out, inner, 2 if i == 0 else 1, i,
                                                 window, fill, cfg.se_scope, se_dim)) for i in range(depth)]
        modules.append((f"s{s + 2}", co.Sequential(OrderedDict(blocks))))
        c_in = c_out
    inner = int(cfg.bottleneck_factor * c_in)
    spat = int(math.ceil(cfg.image_size / 32.0))
    head = [
        ("conv_5", co.Conv3d(c_in, inner, (1, 1, 1), (1, 1, 1), (0, 0, 0), bias=False)),
        ("conv_5_bn", _bn(inner)),
        ("conv_5_relu", nn.ReLU()),
        ("avg_pool", co.AvgPool3d((window, spat, spat), stride=1, temporal_fill=fill)),
        ("lin_5", co.Conv3d(inner, cfg.conv5_dim, (1, 1, 1), (1, 1, 1), (0, 0, 0), bias=False)),
        ("lin_5_relu", nn.ReLU()),
        ("projection", co.Linear(cfg.conv5_dim, cfg.num_classes, bias=True, channel_dim=1)),
    ]
    if head_act == "softmax":
        head.append(("act", nn.Softmax(dim=1)))
    modules.append(("head", co.Sequential(OrderedDict(head))))
    return co.Sequential(OrderedDict(modules)).eval()


def build_x3d_pytorchvideo(size: str, num_classes: int = 400, crop: int | None = None):
    """pytorchvideo's X3D as its hub builds ``x3d_{size}`` (random weights, eval mode); ``crop``
    overrides the hub's input crop size (smaller smoke runs)."""
    from pytorchvideo.models.x3d import create_x3d
    clip, hub_crop, depth = X3D_HUB[size]
    return create_x3d(input_clip_length=clip, input_crop_size=crop or hub_crop, depth_factor=depth,
                      model_num_class=num_classes).eval()
