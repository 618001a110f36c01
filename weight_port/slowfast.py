"""SlowFast-R50: ``--verify`` against pytorchvideo's ``create_slowfast`` holding the source
tensors under pytorchvideo names (:func:`pytorchvideo_state`), and the family-bound
:func:`convert_state_dict` / :func:`convert_file` (refusing other families' archs). The names are
the family's table (:data:`co3d_jax.models.slowfast.CHECKPOINTS`)."""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np

from co3d_jax.models import slowfast as family

from . import pipeline
from .caffe2 import is_non_parameter_blob
from .conversion import Conversion
from .errors import PortError
from .pipeline import model_config
from .verification import VerifyResult, compare, head_activation_outputs, load_reference_weights

REFERENCE_PACKAGE = "pytorchvideo"
"""The package ``verify`` builds its torch reference with (checked before any work by ``--verify``)."""

convert_state_dict = functools.partial(pipeline.convert_state_dict, family="slowfast")
convert_file = functools.partial(pipeline.convert_file, family="slowfast")


def pytorchvideo_state(conv: Conversion) -> dict[str, np.ndarray]:
    """The conversion's source tensors under pytorchvideo ``create_slowfast`` names: as they are
    for a pytorchvideo file, else renamed (Caffe2 blobs by PySlowFast's rules, solver blobs left
    out, then pytorchvideo's names). Only names are mapped, never layouts."""
    if conv.layout == "pytorchvideo":
        return dict(conv.source)
    out: dict[str, np.ndarray] = {}
    for key, value in conv.source.items():
        if conv.layout == "caffe2" and is_non_parameter_blob(key):
            continue
        name = family.slowfast_to_pytorchvideo(family.caffe2_to_slowfast(key) if conv.layout == "caffe2" else key)
        if name is None or name in out:
            raise PortError(f"verify: no distinct pytorchvideo name for {conv.layout} key {key!r}")
        out[name] = value
    return out


def build_torch_reference(conv: Conversion, *, frames: int, image_size: int):
    """pytorchvideo ``create_slowfast`` configured like torch hub ``slowfast_r50`` (8x8: fusion
    kernel 7, stride alpha = 4) or its 4x16 counterpart (kernel 5, alpha 8), from the model's
    config, with PySlowFast's head pool kernels for the clip (``(frames // alpha, S // 32, S // 32)``,
    ``(frames, S // 32, S // 32)``) and a softmax head, in eval mode, holding the conversion's source
    tensors (every parameter and BN statistic must load)."""
    from torch import nn

    with warnings.catch_warnings():  # pytorchvideo's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models.slowfast import create_slowfast

    cfg = model_config(conv)
    if cfg.depth not in (50, 101, 152):
        raise PortError(f"verify: pytorchvideo has no SlowFast of depth {cfg.depth}")
    clip_cfg = dataclasses.replace(cfg, image_size=image_size, clip_length=frames)
    width = cfg.width_per_group
    model = create_slowfast(model_depth=cfg.depth, model_num_class=cfg.num_classes,
                            slowfast_channel_reduction_ratio=(cfg.beta_inv,),
                            slowfast_conv_channel_fusion_ratio=cfg.fusion_conv_channel_ratio,
                            slowfast_fusion_conv_kernel_size=(cfg.fusion_kernel_size, 1, 1),
                            slowfast_fusion_conv_stride=(cfg.alpha, 1, 1), stem_dim_outs=(width, width // cfg.beta_inv),
                            head_pool_kernel_sizes=clip_cfg.head_pool_kernels, head_activation=nn.Softmax,
                            dropout_rate=0.0)
    load_reference_weights(model, pytorchvideo_state(conv), "pytorchvideo")
    return model.eval()


def pack_pathways(x, alpha: int, uniform: bool = False) -> list:
    """pytorchvideo hub ``PackPathway`` on a torch clip ``(B, C, T, H, W)``: ``[slow, fast]``, the
    slow pathway the ``T // alpha`` frames at ``linspace(0, T - 1)``, or with ``uniform`` (the
    continual CoSlowFast's sampling) every alpha-th frame."""
    import torch

    t = x.shape[2]
    if uniform:
        return [x[:, :, ::alpha].contiguous(), x]
    return [torch.index_select(x, 2, torch.linspace(0, t - 1, t // alpha).long()), x]


def verify(conv: Conversion, *, image_size: int | None = None, frames: int | None = None, batch: int = 1,
           seed: int = 0) -> VerifyResult:
    """``--verify``: the converted model against pytorchvideo's SlowFast on one random clip
    (:func:`weight_port.verification.compare`). Defaults: the model's image size and clip length
    (fast frames)."""
    cfg = model_config(conv)
    image_size = int(image_size or cfg.image_size)
    frames = int(frames or cfg.clip_length)
    if image_size < 32 or frames < cfg.alpha:
        raise PortError(f"verify: a {frames}-frame {image_size}px clip is too small for {conv.arch}")
    reference = build_torch_reference(conv, frames=frames, image_size=image_size)
    outputs = head_activation_outputs(reference, prepare=lambda x: pack_pathways(x, cfg.alpha, cfg.continual))
    return compare(conv, outputs, {"image_size": image_size, "clip_length": frames},
                   frames=frames, image_size=image_size, batch=batch, seed=seed)
