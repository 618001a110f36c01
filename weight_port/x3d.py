"""``--verify`` for X3D/CoX3D: pytorchvideo's ``create_x3d`` configured like the torch-hub
``x3d_xs/s/m/l`` (and PySlowFast's X3D) holding the checkpoint's tensors, run against the
converted JAX model. The names are the X3D table's (:data:`co3d_jax.models.x3d.CHECKPOINTS`).

For a slowfast-layout checkpoint the reference is the same pytorchvideo network with the one
structural difference patched in (a ``BatchNorm3d`` on stage 2 block 0's shortcut, which
PySlowFast has and pytorchvideo omits); every parameter and BN statistic must load
(:func:`weight_port.verification.load_reference_weights`). The comparison is
:func:`weight_port.verification.compare`: class probabilities (pytorchvideo's head applies
``Softmax(dim=1)`` in eval mode too, then averages positions) and logits, float32, one random clip.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np

from co3d_jax.models import x3d as family
from co3d_jax.models.checkpoints import jax_to_pyslowfast

from .conversion import Conversion
from .errors import PortError
from .pipeline import model_config
from .tensors import BN_EPS, params_to_torch
from .verification import VerifyResult, compare, head_activation_outputs, jax_forward_fn, load_reference_weights

REFERENCE_PACKAGE = "pytorchvideo"
"""The package ``verify`` builds its torch reference with (checked before any work by ``--verify``)."""

__all__ = ["VerifyResult", "build_torch_reference", "jax_forward_fn", "jax_params_to_state_dict", "verify"]


def build_torch_reference(conv: Conversion, *, frames: int, image_size: int):
    """A pytorchvideo ``create_x3d`` in eval mode with the conversion's source weights loaded."""
    from torch import nn

    with warnings.catch_warnings():  # pytorchvideo's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models.x3d import create_x3d

    cfg = model_config(conv)
    try:
        model = create_x3d(input_clip_length=frames, input_crop_size=image_size, model_num_class=cfg.num_classes,
                           width_factor=cfg.width_factor, depth_factor=cfg.depth_factor,
                           bottleneck_factor=cfg.bottleneck_factor, stem_dim_in=cfg.conv1_dim,
                           head_dim_out=cfg.conv5_dim, norm_eps=BN_EPS, head_activation=nn.Softmax)
    except AssertionError as e:
        raise PortError(f"verify: pytorchvideo cannot build X3D for {frames} frames at {image_size}px ({e})") from None
    num_stages = len(cfg.stage_depths)
    if conv.layout == "slowfast":
        state = {family.slowfast_to_pytorchvideo(k, num_stages): v for k, v in conv.source.items()}
    else:
        state = dict(conv.source)
        if not family.stem_names_swapped({k: np.shape(v) for k, v in state.items()}):
            t, xy = "blocks.0.conv.conv_t.weight", "blocks.0.conv.conv_xy.weight"  # use pytorchvideo's names
            state[t], state[xy] = state[xy], state[t]
    # Shortcut BNs present in the weights but absent from pytorchvideo's structure (PySlowFast's
    # stage-2 block 0): add them so the reference is PySlowFast's network.
    for name, module in model.named_modules():
        if getattr(module, "branch1_conv", None) is not None and module.branch1_norm is None \
                and f"{name}.branch1_norm.weight" in state:
            module.branch1_norm = nn.BatchNorm3d(module.branch1_conv.out_channels, eps=BN_EPS)
    load_reference_weights(model, state, "pytorchvideo")
    return model.eval()


def verify(conv: Conversion, *, image_size: int | None = None, frames: int | None = None, batch: int = 1,
           seed: int = 0) -> VerifyResult:
    """Run the torch reference and the converted JAX model on one random clip and compare.
    Defaults: the model's ``image_size`` and its head window (``config.window``) as the clip
    length, so the head pools the whole clip into one position."""
    cfg = model_config(conv)
    image_size = int(image_size or cfg.image_size)
    frames = int(frames or cfg.window)
    reference = build_torch_reference(conv, frames=frames, image_size=image_size)
    return compare(conv, head_activation_outputs(reference), {"image_size": image_size, "window": frames},
                   frames=frames, image_size=image_size, batch=batch, seed=seed)


def jax_params_to_state_dict(flat: Mapping[str, np.ndarray], layout: str = "slowfast", *,
                             num_stages: int = 4, counters: bool = True) -> dict[str, np.ndarray]:
    """Torch-layout X3D arrays named for ``layout`` from flat JAX params (the inverse port; tests
    build checkpoints with it). ``counters`` adds ``num_batches_tracked`` per BN."""
    if layout not in family.CHECKPOINTS.layouts:
        raise ValueError(f"unknown layout {layout!r}; choose from {family.CHECKPOINTS.layouts}")

    def key(path: str) -> str:
        sf = jax_to_pyslowfast(path)
        return sf if layout == "slowfast" else family.slowfast_to_pytorchvideo(sf, num_stages)
    return params_to_torch(flat, key, family.CHECKPOINTS.is_linear, counters=counters)
