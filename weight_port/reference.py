"""The PyTorch reference for ``--verify``: pytorchvideo's ``create_x3d`` configured like the
torch-hub ``x3d_xs/s/m/l`` (and PySlowFast's X3D), run against the converted JAX model.

For a slowfast-layout checkpoint the reference is the same pytorchvideo network with the one
structural difference patched in (a ``BatchNorm3d`` on stage 2 block 0's shortcut, which
PySlowFast has and pytorchvideo omits), and the weights are loaded under pytorchvideo names via
:func:`weight_port.layouts.slowfast_to_pytorchvideo` with ``strict=True``.

Both sides compute the same two quantities on one random clip: the class probabilities
(pytorchvideo's head applies ``Softmax(dim=1)`` in eval mode too, then averages positions;
co3d_jax ``head_activation='softmax'`` averages the per-position softmax) and the logits
(torch head activation removed; co3d_jax ``head_activation='identity'``). Float32, TF32 off
in torch, ``highest`` matmul/conv precision in JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable

import numpy as np

from . import layouts as L
from .convert import Conversion, build_model
from .errors import PortError


@dataclasses.dataclass
class VerifyResult:
    """Errors of the JAX model against the torch reference on one clip ``(B, T, S, S, 3)``."""

    clip_shape: tuple[int, ...]
    prob_max_abs: float
    prob_rel: float
    logit_max_abs: float
    logit_rel: float
    logit_scale: float

    @property
    def worst_rel(self) -> float:
        return max(self.prob_rel, self.logit_rel)

    def report(self) -> str:
        b, t, h, w, c = self.clip_shape
        return (f"verify on a random clip {b}x{t}x{h}x{w}x{c} (float32; torch TF32 off, JAX precision highest):\n"
                f"  softmax scores: max abs error {self.prob_max_abs:.3e}, relative {self.prob_rel:.3e}\n"
                f"  logits:         max abs error {self.logit_max_abs:.3e}, relative {self.logit_rel:.3e} "
                f"(max |logit| {self.logit_scale:.3g})")


def _rel(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    err = float(np.max(np.abs(a - b)))
    return err, err / max(float(np.max(np.abs(b))), 1e-30)


@functools.lru_cache(maxsize=8)
def jax_forward_fn(arch: str, options: tuple = ()) -> Callable:
    """``fn(params, clip) -> (softmax scores, logits)``, both ``(B, K)``: one jitted function with
    the forwards of ``create_model(arch, head_activation='softmax'|'identity', **options)`` on the
    same params (cached: repeated verifications of one configuration compile once).
    ``options``: sorted ``(name, value)`` pairs of ``create_model`` options."""
    import jax

    opts = dict(options)
    soft = build_model(arch, **{**opts, "head_activation": "softmax"})
    ident = build_model(arch, **{**opts, "head_activation": "identity"})
    return jax.jit(lambda params, clip: (soft.forward(params, clip), ident.forward(params, clip)))


def build_torch_reference(conv: Conversion, *, frames: int, image_size: int):
    """A pytorchvideo ``create_x3d`` in eval mode with the conversion's source weights loaded."""
    import torch
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
    try:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise PortError("verify: the source weights do not load into the pytorchvideo reference: "
                        + " ".join(str(e).split())[:400]) from None
    return model.eval()


def verify(conv: Conversion, *, image_size: int | None = None, frames: int | None = None, batch: int = 1,
           seed: int = 0) -> VerifyResult:
    """Run the torch reference and the converted JAX model on one random clip and compare.

    Defaults: the model's ``image_size`` and its head window (``config.window``) as the clip
    length, so the head pools the whole clip into one position.
    """
    import jax
    import jax.numpy as jnp
    import torch

    cfg = build_model(conv.arch, **conv.model_options).config
    image_size = int(image_size or cfg.image_size)
    frames = int(frames or cfg.window)
    reference = build_torch_reference(conv, frames=frames, image_size=image_size)

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
           torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, 3, frames, image_size, image_size, generator=g, dtype=torch.float32)
        with torch.no_grad():
            probs_ref = reference(x).numpy()
            head = reference.blocks[-1]
            act, head.activation = head.activation, None
            logits_ref = reference(x).numpy()
            head.activation = act
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[:2]
        torch.set_float32_matmul_precision(old[2])

    opts: dict[str, Any] = {**conv.model_options, "image_size": image_size, "window": frames}
    params = jax.tree.map(jnp.asarray, conv.params)
    clip = jnp.asarray(x.permute(0, 2, 3, 4, 1).numpy())
    with jax.default_matmul_precision("highest"):
        probs, logits = jax.device_get(jax_forward_fn(conv.arch, tuple(sorted(opts.items())))(params, clip))
    if probs.shape != probs_ref.shape or logits.shape != logits_ref.shape:
        raise PortError(f"verify: output shapes differ: JAX {probs.shape}, torch {probs_ref.shape}")
    pa, pr = _rel(probs, probs_ref)
    la, lr = _rel(logits, logits_ref)
    return VerifyResult(tuple(clip.shape), pa, pr, la, lr, float(np.max(np.abs(logits_ref))))
