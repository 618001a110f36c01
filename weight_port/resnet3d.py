"""``--verify`` for Slow/CoSlow/I3D/CoI3D: pytorchvideo's ``create_resnet`` configured like torch
hub ``slow_r50`` / ``i3d_r50`` holding the checkpoint's tensors under pytorchvideo names (the
family's table, :data:`co3d_jax.models.resnet3d.CHECKPOINTS`), against the converted JAX model.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np

from co3d_jax.models import resnet3d as family
from co3d_jax.models.checkpoints import jax_to_pyslowfast

from .conversion import Conversion
from .errors import PortError
from .pipeline import model_config
from .strict import cached_target_shapes
from .tensors import params_to_torch, torch_shape
from .verification import VerifyResult, compare, head_activation_outputs, jax_forward_fn, load_reference_weights

REFERENCE_PACKAGE = "pytorchvideo"
"""The package ``verify`` builds its torch reference with (checked before any work by ``--verify``)."""

__all__ = ["VerifyResult", "build_torch_reference", "jax_forward_fn", "params_to_state_dict", "pytorchvideo_state",
           "verify"]


def params_to_state_dict(flat: Mapping[str, np.ndarray], layout: str = "slowfast", *, counters: bool = True,
                         pool_block: bool = False) -> dict[str, np.ndarray]:
    """Torch-layout arrays named for ``layout`` from flat JAX params (the inverse port; tests
    use it to build checkpoints). ``counters`` adds BN ``num_batches_tracked`` (torch layouts)."""
    return params_to_torch(flat, lambda p: family.pyslowfast_name(jax_to_pyslowfast(p), layout, pool_block),
                           family.CHECKPOINTS.is_linear, counters=counters and layout != "caffe2")


def pytorchvideo_state(conv: Conversion, pool_block: bool = False) -> dict[str, np.ndarray]:
    """The conversion's *source* tensors under pytorchvideo ``create_resnet`` names (``pool_block``:
    numbered with I3D's ``stage1_pool`` block), reshaped to torch shapes where Caffe2 blobs lack
    trailing singleton dims. Independent of the JAX parameter mapping (only names are mapped)."""
    targets = cached_target_shapes(conv.arch, tuple(sorted(conv.model_options.items())))
    src_pool_block = conv.layout == "pytorchvideo" and family.has_pool_block(conv.source)
    out = {}
    for path, shape in targets.items():
        sf = jax_to_pyslowfast(path)
        src = np.asarray(conv.source[family.pyslowfast_name(sf, conv.layout, src_pool_block)])
        want = torch_shape(shape, family.CHECKPOINTS.is_linear(path))
        out[family.slowfast_to_pytorchvideo(sf, pool_block)] = np.ascontiguousarray(src.reshape(want), np.float32)
    return out


def build_torch_reference(conv: Conversion, *, frames: int, image_size: int):
    """pytorchvideo ``create_resnet`` configured like torch hub ``slow_r50`` / ``i3d_r50``
    (stem kernel, ``stage_conv_a_kernel_size``, I3D's ``stage1_pool``), with the head pool
    kernel ``(frames // pool_t, S // 32, S // 32)`` and a softmax head, in eval mode, with the
    conversion's source weights loaded (every parameter and BN statistic must load)."""
    from torch import nn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models.resnet import create_resnet

    cfg = model_config(conv)
    kwargs: dict[str, Any] = dict(model_depth=50, model_num_class=cfg.num_classes, stem_dim_out=cfg.width,
                                  head_activation=nn.Softmax, dropout_rate=0.0,
                                  head_pool_kernel_size=(frames // cfg.pool_t, image_size // 32, image_size // 32))
    if tuple(cfg.depths) != (3, 4, 6, 3):
        raise PortError(f"verify: pytorchvideo has no ResNet with stage depths {list(cfg.depths)}")
    if cfg.arch == "slow":  # hub slow_r50
        kwargs.update(stem_conv_kernel_size=(1, 7, 7))
    else:  # hub i3d_r50
        kwargs.update(stem_conv_kernel_size=(5, 7, 7), stage1_pool=nn.MaxPool3d,
                      stage_conv_a_kernel_size=((3, 1, 1), [(3, 1, 1), (1, 1, 1)], [(3, 1, 1), (1, 1, 1)],
                                                [(1, 1, 1), (3, 1, 1)]))
    model = create_resnet(**kwargs)
    load_reference_weights(model, pytorchvideo_state(conv, pool_block=cfg.arch == "i3d"), "pytorchvideo")
    return model.eval()


def verify(conv: Conversion, *, image_size: int | None = None, frames: int | None = None, batch: int = 1,
           seed: int = 0) -> VerifyResult:
    """Compare the converted JAX clip model with the pytorchvideo reference on one random clip
    (:func:`weight_port.verification.compare`): softmax scores and logits. Defaults: the model's
    image size and head window (``config.window``) as the clip length."""
    cfg = model_config(conv)
    image_size = int(image_size or cfg.image_size)
    frames = int(frames or cfg.window)
    if image_size < 32 or frames < cfg.pool_t:
        raise PortError(f"verify: a {frames}-frame {image_size}px clip is too small for {conv.arch}")
    reference = build_torch_reference(conv, frames=frames, image_size=image_size)
    return compare(conv, head_activation_outputs(reference), {"image_size": image_size, "window": frames},
                   frames=frames, image_size=image_size, batch=batch, seed=seed)
