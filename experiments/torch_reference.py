"""PyTorch reference models for benchmarks and parity checks (imports torch).

* :func:`build_cox3d_torch` builds CoX3D the way co3d does (``models/cox3d/modules/x3d.py``,
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


def _round_width(width, multiplier, min_depth=8, divisor=8):
    width *= multiplier
    new = max(min_depth, int(width + divisor / 2) // divisor * divisor)
    if new < 0.9 * width:
        new += divisor
    return int(new)


def build_cox3d_torch(*, image_size: int = 160, window: int = 13, depth_factor: float = 2.2,
                      num_classes: int = 400, temporal_fill: str = "zeros", se_scope: str = "frame"):
    """A co3d-style CoX3D (``continual`` modules) in eval mode, with random weights."""
    import continual as co
    from torch import nn

    def se(dim, window_size):
        dim_fc = _round_width(dim, 0.0625)
        return co.Residual(co.Sequential(OrderedDict([
            ("avg_pool", co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=window_size if se_scope == "clip" else 1,
                                              temporal_fill=temporal_fill)),
            ("fc1", co.Conv3d(dim, dim_fc, kernel_size=1, bias=True)),
            ("fc1_act", nn.ReLU()),
            ("fc2", co.Conv3d(dim_fc, dim, kernel_size=1, bias=True)),
            ("fc2_sig", nn.Sigmoid()),
        ])), reduce="mul")

    def transform(c_in, c_out, inner, stride, use_se):
        layers = [
            ("a", co.Conv3d(c_in, inner, kernel_size=1, bias=False)),
            ("a_bn", nn.BatchNorm3d(inner)),
            ("a_relu", nn.ReLU()),
            ("b", co.Conv3d(inner, inner, kernel_size=(3, 3, 3), stride=(1, stride, stride), padding=(1, 1, 1),
                            groups=inner, bias=False, temporal_fill=temporal_fill)),
            ("b_bn", nn.BatchNorm3d(inner)),
        ]
        if use_se:
            layers.append(("se", se(inner, window)))
        layers += [("b_relu", nn.SiLU()),  # co3d's Swish: x * sigmoid(x)
                    ("c", co.Conv3d(inner, c_out, kernel_size=1, bias=False)),
                   ("c_bn", nn.BatchNorm3d(c_out))]
        return co.Sequential(OrderedDict(layers))

    def block(c_in, c_out, inner, stride, use_se):
        branch2 = transform(c_in, c_out, inner, stride, use_se)
        if c_in != c_out or stride != 1:
            skip = co.Sequential(OrderedDict([
                ("branch1", co.Conv3d(c_in, c_out, kernel_size=1, stride=(1, stride, stride), bias=False)),
                ("branch1_bn", nn.BatchNorm3d(c_out))]))
        else:
            skip = co.Delay(branch2.delay, temporal_fill=temporal_fill)
        return co.Sequential(co.BroadcastReduce(skip, co.Sequential(OrderedDict([("branch2", branch2)])),
                                                reduce="sum"), nn.ReLU())

    stem_dim = _round_width(12, 2.0)
    stem = co.Sequential(OrderedDict([
        ("conv_xy", co.Conv3d(3, stem_dim, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)),
        ("conv", co.Conv3d(stem_dim, stem_dim, (5, 1, 1), padding=(2, 0, 0), groups=stem_dim, bias=False,
                           temporal_fill=temporal_fill)),
        ("bn", nn.BatchNorm3d(stem_dim)),
        ("relu", nn.ReLU()),
    ]))
    stages = [("s1", co.Sequential(OrderedDict([("pathway0_stem", stem)])))]
    c_in = stem_dim
    for s, mult in enumerate((1, 2, 4, 8)):
        c_out = _round_width(stem_dim, mult)
        inner = int(2.25 * c_out)
        depth = int(math.ceil(depth_factor * (1, 2, 5, 3)[s]))
        blocks = [(f"pathway0_res{i}", block(c_in if i == 0 else c_out, c_out, inner, 2 if i == 0 else 1, i % 2 == 0))
                  for i in range(depth)]
        stages.append((f"s{s + 2}", co.Sequential(OrderedDict(blocks))))
        c_in = c_out
    inner = int(2.25 * c_in)
    final = math.ceil(image_size / 32)
    head = co.Sequential(OrderedDict([
        ("conv_5", co.Conv3d(c_in, inner, kernel_size=1, bias=False)),
        ("conv_5_bn", nn.BatchNorm3d(inner)),
        ("conv_5_relu", nn.ReLU()),
        ("avg_pool", co.AvgPool3d((window, final, final), stride=1, temporal_fill=temporal_fill)),
        ("lin_5", co.Conv3d(inner, 2048, kernel_size=1, bias=False)),
        ("lin_5_relu", nn.ReLU()),
        ("projection", co.Linear(2048, num_classes, bias=True, channel_dim=1)),
        ("act", nn.Softmax(dim=1)),
    ]))
    stages.append(("head", head))
    return co.Sequential(OrderedDict(stages)).eval()


def build_x3d_pytorchvideo(size: str, num_classes: int = 400):
    """pytorchvideo's X3D as its hub builds ``x3d_{size}`` (random weights, eval mode)."""
    from pytorchvideo.models.x3d import create_x3d
    clip, crop, depth = X3D_HUB[size]
    return create_x3d(input_clip_length=clip, input_crop_size=crop, depth_factor=depth,
                      model_num_class=num_classes).eval()
