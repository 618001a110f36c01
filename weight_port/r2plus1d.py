"""R(2+1)D-18: ``--verify`` against torchvision's ``r2plus1d_18`` holding the checkpoint's tensors
under their own names, and the family-bound :func:`convert_state_dict` / :func:`convert_file`
(refusing other families' archs). The names are the family's table
(:data:`co3d_jax.models.r2plus1d.CHECKPOINTS`)."""

from __future__ import annotations

import functools

from . import pipeline
from .conversion import Conversion
from .errors import PortError
from .pipeline import model_config
from .verification import VerifyResult, compare, load_reference_weights, logit_outputs

REFERENCE_PACKAGE = "torchvision"
"""The package ``verify`` builds its torch reference with (checked before any work by ``--verify``)."""

convert_state_dict = functools.partial(pipeline.convert_state_dict, family="r2plus1d")
convert_file = functools.partial(pipeline.convert_file, family="r2plus1d")


def build_torch_reference(conv: Conversion):
    """torchvision's ``VideoResNet(BasicBlock, [Conv2Plus1D] * 4, layers, R2Plus1dStem)`` (what
    ``r2plus1d_18`` builds, with the model's ``layers`` and ``num_classes``) in eval mode, holding
    the conversion's source tensors under their own names (every parameter and BN statistic
    must load)."""
    from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet

    cfg = model_config(conv)
    model = VideoResNet(BasicBlock, [Conv2Plus1D] * 4, list(cfg.layers), R2Plus1dStem, num_classes=cfg.num_classes)
    load_reference_weights(model, conv.source, "torchvision")
    return model.eval()


def verify(conv: Conversion, *, image_size: int | None = None, frames: int | None = None, batch: int = 1,
           seed: int = 0) -> VerifyResult:
    """``--verify``: the converted model against torchvision's R(2+1)D on one random clip
    (:func:`weight_port.verification.compare`; torchvision returns logits, whose softmax is
    compared with the JAX softmax head). Defaults: the model's image size and clip length."""
    cfg = model_config(conv)
    image_size = int(image_size or cfg.image_size)
    frames = int(frames or cfg.clip_length)
    if image_size < 16 or frames < 1:
        raise PortError(f"verify: a {frames}-frame {image_size}px clip is too small for {conv.arch}")
    reference = build_torch_reference(conv)
    return compare(conv, logit_outputs(reference), {"image_size": image_size, "clip_length": frames},
                   frames=frames, image_size=image_size, batch=batch, seed=seed)
