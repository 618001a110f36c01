"""Strict porter for torchvision R(2+1)D-18 state dicts -> co3d_jax ``r2plus1d_18_{8,16}`` params.

The checkpoint is a plain ``state_dict`` (``OrderedDict`` of tensors, reference co3d.md §3.1:
``https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth``), whose names co3d uses
verbatim (§3.5), and so do our params pytree paths (:mod:`co3d_jax.models.r2plus1d`):

* ``stem.{0,3}.weight`` (convs), ``stem.{1,4}.*`` (BNs);
* ``layer{1..4}.{0,1}.conv{1,2}.0.{0,3}.weight`` (the Conv2Plus1D spatial / temporal convs),
  ``.conv{1,2}.0.1.*`` (the BN between them), ``.conv{1,2}.1.*`` (the BN after the block's conv);
* ``layer{2,3,4}.0.downsample.0.weight`` / ``.downsample.1.*``;
* ``fc.weight`` (400, 512) and ``fc.bias``.

JAX path -> torch name: drop the ``residual`` and ``main`` container levels, join with ``.``,
and rename the leaf (``kernel`` -> ``weight``, ``scale`` -> ``weight``, ``mean`` ->
``running_mean``, ``var`` -> ``running_var``). Strictness is every porter's
(:func:`weight_port.strict.port_strict`): every parameter filled with the right shape, every
tensor consumed (BN ``num_batches_tracked`` consumed and ignored), otherwise one
:class:`~weight_port.errors.CheckpointMismatchError` listing missing, unexpected and mis-shaped
keys in the checkpoint's own naming.

:func:`verify` (``--verify``) compares the converted model with torchvision's ``r2plus1d_18``
holding the checkpoint's tensors under their own names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from . import layouts as L
from .errors import PortError
from .strict import build_model, cached_target_shapes, port_strict, resolve_layout
from .verification import VerifyResult, compare, load_reference_weights, logit_outputs

if TYPE_CHECKING:
    from .convert import Conversion

LAYOUTS = ("torchvision",)
_PREFIXES = ("r2plus1d_",)
# ------------------------------------------------------------------------------------ shared names
def torch_leaf(path: str) -> str:
    """The torch parameter name of a JAX leaf (``kernel`` -> ``weight`` ...)."""
    leaf = path.rsplit("/", 1)[-1]
    if leaf not in L.LEAF_TO_TORCH:
        raise PortError(f"internal: no torch name for JAX parameter {path!r}")
    return L.LEAF_TO_TORCH[leaf]


def class_hint(state: Mapping[str, np.ndarray], key: str, num_classes: int) -> list[str]:
    """A mismatch hint when the checkpoint's classifier ``key`` has another class count than the model."""
    w = state.get(key)
    if w is not None and np.ndim(w) >= 2 and w.shape[0] != num_classes:
        return [f"the checkpoint has {w.shape[0]} classes, the model {num_classes} (pass num_classes={w.shape[0]})"]
    return []


# ------------------------------------------------------------------------------------ R(2+1)D names
def jax_to_torchvision(path: str) -> str:
    """``layer2/0/residual/main/conv1/0/3/kernel`` -> ``layer2.0.conv1.0.3.weight``;
    ``layer2/0/residual/downsample/1/var`` -> ``layer2.0.downsample.1.running_var``."""
    *mods, _ = path.split("/")
    mods = [m for m in mods if m not in ("residual", "main")]
    if not mods:
        raise PortError(f"internal: no torchvision name for JAX parameter {path!r}")
    return ".".join([*mods, torch_leaf(path)])


def detect_layout(keys: Iterable[str]) -> str | None:
    """``'torchvision'`` if the keys look like a VideoResNet state dict, else ``None``."""
    keys = list(keys)
    hits = sum(k.startswith(("stem.", "layer1.", "layer2.", "layer3.", "layer4.", "fc.")) for k in keys)
    return "torchvision" if keys and hits >= len(keys) // 2 and any(k.startswith("stem.") for k in keys) else None


def convert_state_dict(state: Mapping[str, np.ndarray], arch: str, *, layout: str = "auto",
                       source_label: str = "checkpoint", container: str = "bare",
                       **model_options: Any) -> Conversion:
    """Convert a torchvision R(2+1)D-18 state dict (numpy arrays) for
    ``create_model(arch, **model_options)`` (``r2plus1d_18_8`` or ``r2plus1d_18_16``, same weights).

    ``layout``: ``"auto"`` or ``"torchvision"``. A shared ``module.``/``model.`` prefix is stripped.
    Raises :class:`CheckpointMismatchError` or :class:`PortError`.
    """
    state, stripped = L.strip_prefixes(state)
    notes = [f"stripped key prefix {p!r}" for p in stripped]
    layout = resolve_layout(layout, state, detect_layout, LAYOUTS, label=source_label, scope=" for R(2+1)D",
                            unrecognised="unrecognised state dict layout: not a torchvision R(2+1)D state dict "
                                         "(stem.*, layer1..4.*, fc.*)")
    model = build_model(arch, "R(2+1)D", _PREFIXES, **model_options)
    targets = cached_target_shapes(arch, tuple(sorted(model_options.items())))
    flat = port_strict(state, targets, jax_to_torchvision, label=source_label, arch=arch, layout=layout,
                       hints=lambda m, u, s: class_hint(state, "fc.weight", model.num_classes))
    from co3d_jax.params import unflatten

    from .convert import Conversion  # lazy: convert.py may dispatch to this module
    return Conversion(params=unflatten(flat), arch=arch, model_options=dict(model_options), layout=layout,
                      source=dict(state), notes=notes, container=container)


def convert_file(src: str, arch: str, *, layout: str = "auto", **model_options: Any) -> Conversion:
    """Read a torch checkpoint file (``weights_only``) and convert it; see :func:`convert_state_dict`."""
    from .checkpoint import read_checkpoint

    state, container = read_checkpoint(src)
    return convert_state_dict(state, arch, layout=layout, source_label=src, container=container, **model_options)


# ------------------------------------------------------------------------------------ --verify
def build_torch_reference(conv: Conversion):
    """torchvision's ``VideoResNet(BasicBlock, [Conv2Plus1D] * 4, layers, R2Plus1dStem)`` (what
    ``r2plus1d_18`` builds, with the model's ``layers`` and ``num_classes``) in eval mode, holding
    the conversion's source tensors under their own names (every parameter and BN statistic
    must load)."""
    from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet

    cfg = build_model(conv.arch, "R(2+1)D", _PREFIXES, **conv.model_options).config
    model = VideoResNet(BasicBlock, [Conv2Plus1D] * 4, list(cfg.layers), R2Plus1dStem, num_classes=cfg.num_classes)
    load_reference_weights(model, conv.source, "torchvision")
    return model.eval()


def verify(conv: Conversion, *, image_size: int | None = None, frames: int | None = None, batch: int = 1,
           seed: int = 0) -> VerifyResult:
    """``--verify``: the converted model against torchvision's R(2+1)D on one random clip
    (:func:`weight_port.verification.compare`; torchvision returns logits, whose softmax is
    compared with the JAX softmax head). Defaults: the model's image size and clip length."""
    cfg = build_model(conv.arch, "R(2+1)D", _PREFIXES, **conv.model_options).config
    image_size = int(image_size or cfg.image_size)
    frames = int(frames or cfg.clip_length)
    if image_size < 16 or frames < 1:
        raise PortError(f"verify: a {frames}-frame {image_size}px clip is too small for {conv.arch}")
    reference = build_torch_reference(conv)
    return compare(conv, logit_outputs(reference), {"image_size": image_size, "clip_length": frames},
                   frames=frames, image_size=image_size, batch=batch, seed=seed)
