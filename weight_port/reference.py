"""The PyTorch reference for ``--verify``: pytorchvideo's ``create_x3d`` configured like the
torch-hub ``x3d_xs/s/m/l`` (and PySlowFast's X3D), run against the converted JAX model.

For a slowfast-layout checkpoint the reference is the same pytorchvideo network with the one
structural difference patched in (a ``BatchNorm3d`` on stage 2 block 0's shortcut, which
PySlowFast has and pytorchvideo omits), and the weights are loaded under pytorchvideo names via
:func:`weight_port.layouts.slowfast_to_pytorchvideo`; every parameter and BN statistic must load
(:func:`weight_port.verification.load_reference_weights`).

The comparison is :func:`weight_port.verification.compare`: class probabilities (pytorchvideo's
head applies ``Softmax(dim=1)`` in eval mode too, then averages positions; co3d_jax
``head_activation='softmax'`` averages the per-position softmax) and logits (torch head
activation removed; co3d_jax ``head_activation='identity'``), float32 on one random clip.
"""

from __future__ import annotations

import warnings

from . import layouts as L
from .convert import Conversion, build_model
from .errors import PortError
from .verification import VerifyResult, compare, head_activation_outputs, jax_forward_fn, load_reference_weights

__all__ = ["VerifyResult", "build_torch_reference", "jax_forward_fn", "verify"]


def build_torch_reference(conv: Conversion, *, frames: int, image_size: int):
    """A pytorchvideo ``create_x3d`` in eval mode with the conversion's source weights loaded."""
    from torch import nn

    with warnings.catch_warnings():  # pytorchvideo's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models.x3d import create_x3d

    cfg = build_model(conv.arch, **conv.model_options).config
    try:
        model = create_x3d(input_clip_length=frames, input_crop_size=image_size, model_num_class=cfg.num_classes,
                           width_factor=cfg.width_factor, depth_factor=cfg.depth_factor,
                           bottleneck_factor=cfg.bottleneck_factor, stem_dim_in=cfg.conv1_dim,
                           head_dim_out=cfg.conv5_dim, norm_eps=L.BN_EPS, head_activation=nn.Softmax)
    except AssertionError as e:
        raise PortError(f"verify: pytorchvideo cannot build X3D for {frames} frames at {image_size}px ({e})") from None
    num_stages = len(cfg.stage_depths)
    if conv.layout == "slowfast":
        state = {L.slowfast_to_pytorchvideo(k, num_stages): v for k, v in conv.source.items()}
    else:
        state = dict(conv.source)
        if not L.stem_names_swapped(state):  # a file with literal stem names: use pytorchvideo's
            t, xy = "blocks.0.conv.conv_t.weight", "blocks.0.conv.conv_xy.weight"
            state[t], state[xy] = state[xy], state[t]
    # Shortcut BNs present in the weights but absent from pytorchvideo's structure (PySlowFast's
    # stage-2 block 0): add them so the reference is PySlowFast's network.
    for name, module in model.named_modules():
        if getattr(module, "branch1_conv", None) is not None and module.branch1_norm is None \
                and f"{name}.branch1_norm.weight" in state:
            module.branch1_norm = nn.BatchNorm3d(module.branch1_conv.out_channels, eps=L.BN_EPS)
    load_reference_weights(model, state, "pytorchvideo")
    return model.eval()


def verify(conv: Conversion, *, image_size: int | None = None, frames: int | None = None, batch: int = 1,
           seed: int = 0) -> VerifyResult:
    """Run the torch reference and the converted JAX model on one random clip and compare.

    Defaults: the model's ``image_size`` and its head window (``config.window``) as the clip
    length, so the head pools the whole clip into one position.
    """
    cfg = build_model(conv.arch, **conv.model_options).config
    image_size = int(image_size or cfg.image_size)
    frames = int(frames or cfg.window)
    reference = build_torch_reference(conv, frames=frames, image_size=image_size)
    return compare(conv, head_activation_outputs(reference), {"image_size": image_size, "window": frames},
                   frames=frames, image_size=image_size, batch=batch, seed=seed)
