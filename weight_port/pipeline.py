"""The one conversion every family goes through, driven by the family's
:class:`~co3d_jax.models.checkpoints.CheckpointSpec` (``family_of(arch).checkpoints``):

read (``torch.load(weights_only=True)``, or the restricted Caffe2 unpickler for a family with a
blob layout; with the training config the file records, PySlowFast's ``cfg``) -> strip a shared ``module.``/``model.`` prefix -> detect the layout from the key
names -> name every JAX param in the checkpoint's naming -> strict fill
(:func:`weight_port.strict.port_strict`: every parameter filled with the right shape, every tensor
consumed, else one :class:`~weight_port.errors.CheckpointMismatchError`) -> the family's
``recorded`` check of the recorded config against ``arch`` (warnings) -> :class:`Conversion`.
Verification and saving follow in :mod:`weight_port.convert`.

Nothing here names a family: what differs between families is data in their spec.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np

from co3d_jax.models import FAMILIES as _ALL_FAMILIES
from co3d_jax.models import FamilySpec
from co3d_jax.models import family_of as _registry_family_of
from co3d_jax.models.checkpoints import BN_COUNTER, BN_LEAVES, Naming, Source
from co3d_jax.params import unflatten

from .caffe2 import is_non_parameter_blob, load_caffe2_blobs
from .checkpoint import read_checkpoint
from .conversion import Conversion
from .errors import PortError
from .strict import cached_target_shapes, create_model, port_strict, resolve_layout
from .tensors import RELAYOUT, RESHAPING, identity_bn_params, spec_torch_shape

PREFIXES = ("module.", "model.")


class RecordedConfigWarning(UserWarning):
    """The training config a checkpoint records names another model than ``--arch`` (e.g. X3D-M
    weights converted as X3D-S: the same tensor shapes, so only the config tells them apart)."""

# The families the porter handles: those whose spec declares checkpoints, in registry order.
FAMILIES: tuple[FamilySpec, ...] = tuple(f for f in _ALL_FAMILIES if f.checkpoints is not None)


def handled() -> str:
    """``"X3D/CoX3D (x3d_xs, ...), Slow/CoSlow/I3D/CoI3D (...), ..."``: the families the porter
    handles and their model names (messages, CLI help)."""
    return ", ".join(f"{f.description} ({f.names_help})" for f in FAMILIES)


def family_of(arch: str, family: str | None = None) -> FamilySpec:
    """The :class:`FamilySpec` that owns ``arch`` (one of :data:`FAMILIES`); :class:`PortError` if
    none does or, with ``family``, if it is not that family."""
    try:
        fam = _registry_family_of(arch)
    except ValueError:
        fam = None
    if family is not None and (fam is None or fam.name != family):
        want = next(f for f in FAMILIES if f.name == family)
        raise PortError(f"--arch {arch!r}: the {want.checkpoints.label} porter handles {want.names_help}")
    if fam is None or fam.checkpoints is None:
        raise PortError(f"--arch {arch!r}: the porter handles {handled()} models"
                        + (f"; {arch!r} is an unknown model" if fam is None else ""))
    return fam


# ------------------------------------------------------------------------------------ reading
def read_source(path: str, arch: str, layout: str = "auto", family: str | None = None, with_config: bool = False):
    """Read a checkpoint file for ``arch``: ``(state dict as numpy, container)``. A ``.pkl`` file
    (or ``layout`` a blob layout) of a family with a Caffe2 layout is read as Caffe2 blobs
    (container ``"caffe2"``), anything else as a torch checkpoint (``weights_only=True``).
    ``with_config``: ``(state, container, recorded config or None)`` (the training config the
    file records, :func:`weight_port.checkpoint.recorded_config`)."""
    spec = family_of(arch, family).checkpoints
    if layout in spec.blob_layouts or (layout == "auto" and spec.blob_layouts and path.endswith(".pkl")):
        blobs = load_caffe2_blobs(path)
        return (blobs, "caffe2", None) if with_config else (blobs, "caffe2")
    return read_checkpoint(path, with_config)


def strip_prefixes(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Remove a ``module.`` / ``model.`` prefix shared by *every* key (repeatedly)."""
    state = dict(state)
    stripped = []
    while state:
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped.append(prefix)
                break
        else:
            break
    return state, stripped


# ------------------------------------------------------------------------------------ conversion
def convert_state_dict(state: Mapping[str, np.ndarray], arch: str, *, layout: str = "auto",
                       source_label: str = "checkpoint", container: str = "bare", family: str | None = None,
                       recorded: Mapping[str, Any] | None = None, **model_options: Any) -> Conversion:
    """Convert a torch-layout state dict (numpy arrays; Caffe2 blobs for a blob layout) for
    ``create_model(arch, **model_options)``. ``layout``: ``"auto"`` (detect from the key names) or
    one of the family's layouts; ``family``: refuse an ``arch`` of another family; ``recorded``:
    the training config the checkpoint records (nested dicts), which the family's
    ``CheckpointSpec.recorded`` compares with ``arch``: what it finds (another size of the same
    shapes) becomes ``Conversion.warnings`` and a :class:`RecordedConfigWarning`. Raises
    :class:`CheckpointMismatchError` (strictness) or :class:`PortError`."""
    fam = family_of(arch, family)
    spec = fam.checkpoints
    state, stripped = strip_prefixes(state)
    notes = [f"stripped key prefix {p!r}" for p in stripped]
    layout = resolve_layout(layout, state, spec.detect, spec.layouts, label=source_label,
                            unrecognised=spec.unrecognised, scope=f" for {arch}")
    model = create_model(arch, **model_options)
    targets = cached_target_shapes(arch, tuple(sorted(model_options.items())))
    blobs = layout in spec.blob_layouts
    source = Source(layout=layout, shapes={k: tuple(np.shape(v)) for k, v in state.items()}, targets=targets,
                    arch=arch, config=model.config, num_classes=model.num_classes,
                    ignorable=is_non_parameter_blob if blobs else (lambda k: False))
    try:
        naming = spec.naming(source)
    except ValueError as e:
        raise PortError(f"{source_label}: {e}") from None
    key = _checked(naming)
    notes += naming.notes

    # BNs this layout may omit, absent from the checkpoint: exact identity BNs
    optional = spec.optional_bns.get(layout)
    identity = sorted(m for m in (optional(targets) if optional else ())
                      if not any(key(f"{m}/{leaf}") in state for leaf in BN_LEAVES))
    filled = identity_bn_params(targets, identity)
    torch_shape = spec_torch_shape(spec)
    rule = spec.relayout_rule(layout)
    flat = port_strict(state, targets, key, label=source_label, arch=arch, layout=layout,
                       counter=None if blobs else BN_COUNTER, ignorable=source.ignorable,
                       hints=lambda m, u, s: spec.hints(source, key), torch_shape=torch_shape, to_jax=RELAYOUT[rule],
                       filled=filled)
    if identity:
        notes.append("filled " + ", ".join(identity) + f" with an identity BN ({layout} checkpoints omit these "
                     "BNs: scale 1, bias 0, mean 0, var 1-eps)")
    if rule in RESHAPING:
        reshaped = sum(np.shape(state[key(p)]) != torch_shape(p, s) for p, s in targets.items() if p not in filled)
        if reshaped:
            notes.append(f"reshaped {reshaped} Caffe2 blobs that lacked trailing singleton dims")
    warned = []
    if recorded:
        try:
            warned = [f"{source_label}: {w}" for w in spec.recorded(recorded, source)]
        except (TypeError, ValueError, KeyError, AttributeError):  # a config of another shape: no claim
            warned = []
        for w in warned:
            warnings.warn(RecordedConfigWarning(w), stacklevel=2)
    return Conversion(params=unflatten(flat), arch=arch, model_options=dict(model_options), layout=layout,
                      source=state, notes=notes, container=container, warnings=warned)


def _checked(naming: Naming):
    """``naming.key`` with its ``ValueError`` (a path it cannot name: a porter bug) as :class:`PortError`."""
    def key(path: str) -> str:
        try:
            return naming.key(path)
        except ValueError as e:
            raise PortError(f"internal: {e}") from None
    return key


def convert_file(src: str, arch: str, *, layout: str = "auto", family: str | None = None,
                 **model_options: Any) -> Conversion:
    """Read a checkpoint file (:func:`read_source`) and convert it; see :func:`convert_state_dict`."""
    state, container, recorded = read_source(src, arch, layout, family, with_config=True)
    return convert_state_dict(state, arch, layout=layout, source_label=src, container=container, family=family,
                              recorded=recorded, **model_options)


def model_config(conv: Conversion):
    """The config of the model a conversion is for."""
    return create_model(conv.arch, **conv.model_options).config


__all__ = ["FAMILIES", "RecordedConfigWarning", "convert_file", "convert_state_dict", "family_of", "handled", "model_config",
           "read_source", "strip_prefixes"]
