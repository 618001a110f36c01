"""Strict conversion of X3D state dicts (slowfast or pytorchvideo naming) to co3d_jax params.

Every target parameter must be filled with the right shape and every source tensor consumed
(BN ``num_batches_tracked`` counters are consumed and ignored); otherwise
:class:`~weight_port.errors.CheckpointMismatchError` lists the missing, unexpected and
mis-shaped keys in one message. The only tolerated gap is structural and explicit:
pytorchvideo's stage-2 block-0 shortcut has no BN, which is filled with an exact identity BN.

Architecture families (the extension point): :data:`FAMILIES` maps each family to the
``--arch`` names it owns and to the functions that port it, as ``"module:function"`` strings
imported lazily. :func:`convert_state_dict`, :func:`convert_file`, :func:`read_source` and
:func:`verify_fn` dispatch on the family of ``arch`` (:func:`family_of`). A family provides:

* ``convert``: ``convert_state_dict(state, arch, *, layout, source_label, container,
  **model_options) -> Conversion`` (strict; raises ``CheckpointMismatchError``/``PortError``);
* ``read`` (optional): ``read_source(path, layout) -> (state, container)``; default: a torch
  checkpoint via :func:`weight_port.checkpoint.read_checkpoint`;
* ``verify`` (optional): ``verify(conv, *, image_size, frames, seed) -> VerifyResult`` for
  ``--verify``; without one, ``--verify`` is refused for that family.

Families: ``x3d`` (``x3d_*``, ``cox3d_*``; this module and :mod:`weight_port.reference`),
``resnet3d`` (Slow/CoSlow, I3D/CoI3D; :mod:`weight_port.resnet3d`, which also reads Caffe2
``.pkl`` files through :mod:`weight_port.caffe2`), ``r2plus1d`` (:mod:`weight_port.r2plus1d`;
torchvision reference) and ``slowfast`` (:mod:`weight_port.slowfast`; ``.pkl`` read like
resnet3d's; pytorchvideo reference). All four have ``--verify``. The strict fill is
:func:`weight_port.strict.port_strict`, the verification harness
:mod:`weight_port.verification`. To add a family, append a :class:`Family` row whose ``match``
recognises its arch names.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from . import layouts as L
from .errors import PortError
from .strict import cached_target_shapes, create_model, port_strict, resolve_layout


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture family of the porter: ``match(arch)`` says whether it owns an arch
    name; ``convert``/``read``/``verify`` are ``"module:function"`` paths (see the module
    docstring); ``describe`` is shown in errors and help."""

    name: str
    match: Any
    convert: str
    describe: str
    read: str | None = None
    verify: str | None = None


def _is_resnet3d(arch: str) -> bool:
    from .resnet3d import is_resnet3d_arch

    return is_resnet3d_arch(arch)


FAMILIES: list[Family] = [
    Family("x3d", lambda a: a.startswith(("x3d_", "cox3d_")), "weight_port.convert:convert_x3d_state_dict",
           "X3D/CoX3D (x3d_*, cox3d_*)", verify="weight_port.reference:verify"),
    Family("resnet3d", _is_resnet3d, "weight_port.resnet3d:convert_state_dict",
           "Slow/CoSlow/I3D/CoI3D (slow_8x8_r50, coslow_<T>, i3d_r50, coi3d_<T>, *_charades)",
           read="weight_port.resnet3d:read_source", verify="weight_port.resnet3d:verify"),
    Family("r2plus1d", lambda a: a.startswith("r2plus1d_"), "weight_port.r2plus1d:convert_state_dict",
           "R(2+1)D-18 (r2plus1d_18_8, r2plus1d_18_16; torchvision state dicts)",
           verify="weight_port.r2plus1d:verify"),
    Family("slowfast", lambda a: a.startswith("slowfast_"), "weight_port.slowfast:convert_state_dict",
           "SlowFast-R50 (slowfast_8x8_r50, slowfast_4x16_r50; pytorchvideo, PySlowFast, Caffe2 .pkl)",
           read="weight_port.resnet3d:read_source",  # a .pkl is Caffe2 blobs, else a torch file
           verify="weight_port.slowfast:verify"),
]


def family_of(arch: str) -> Family:
    """The :class:`Family` that owns ``arch``; :class:`PortError` if none does."""
    for fam in FAMILIES:
        if fam.match(arch):
            return fam
    raise PortError(f"--arch {arch!r}: the porter handles " + ", ".join(f.describe for f in FAMILIES) + " models")


def _resolve(ref: str):
    import importlib

    module, func = ref.split(":")
    return getattr(importlib.import_module(module), func)


def read_source(path: str, arch: str, layout: str = "auto") -> tuple[dict[str, np.ndarray], str]:
    """Read a checkpoint file for ``arch``: ``(state dict as numpy, container)``."""
    fam = family_of(arch)
    if fam.read:
        return _resolve(fam.read)(path, layout)
    from .checkpoint import read_checkpoint

    return read_checkpoint(path)


def verify_fn(arch: str):
    """The ``--verify`` function of ``arch``'s family."""
    fam = family_of(arch)
    if not fam.verify:
        raise PortError(f"--verify is not available for {fam.describe} models")
    return _resolve(fam.verify)


def verify(conv: "Conversion", **kwargs):
    """Run ``conv`` beside its family's PyTorch reference on a random clip (``--verify``);
    ``kwargs``: ``image_size``, ``frames``, ``batch``, ... of the family's verify function."""
    return verify_fn(conv.arch)(conv, **kwargs)


@dataclasses.dataclass
class Conversion:
    """Result of a conversion.

    ``params``: nested dict of float32 numpy arrays (the co3d_jax pytree); ``arch`` and
    ``model_options``: what to pass to ``co3d_jax.create_model``; ``layout``: ``"slowfast"`` or
    ``"pytorchvideo"``; ``source``: the source state dict after prefix stripping (torch layout,
    kept for ``--verify``); ``notes``: human-readable remarks (prefixes stripped, identity BNs).
    """

    params: dict
    arch: str
    model_options: dict
    layout: str
    source: dict[str, np.ndarray]
    notes: list[str]
    container: str = "bare"

    def metadata(self, source_path: str | None = None) -> dict[str, str]:
        meta = {"arch": self.arch, "layout": self.layout, "container": self.container,
                "converter": "weight_port"}
        if self.model_options:
            meta["model_options"] = json.dumps(self.model_options, sort_keys=True)
        if source_path:
            meta["source"] = os.path.basename(source_path)
        return meta


def build_model(arch: str, **model_options: Any):
    """``co3d_jax.create_model`` with errors as :class:`PortError`; X3D/CoX3D only."""
    import co3d_jax

    if not (arch.startswith("x3d_") or arch.startswith("cox3d_")):
        raise PortError(f"--arch {arch!r}: the porter handles X3D/CoX3D models (x3d_*, cox3d_*); "
                        f"known: {', '.join(n for n in co3d_jax.list_models() if 'x3d' in n)}")
    return create_model(arch, **model_options)


def _source_name(sf_key: str, layout: str, swap_stem: bool, num_stages: int) -> str:
    if layout == "slowfast":
        return sf_key
    pv = L.slowfast_to_pytorchvideo(sf_key, num_stages, swap_stem)
    if pv is None:  # pragma: no cover - every JAX X3D leaf has a pytorchvideo name
        raise PortError(f"internal: no pytorchvideo name for {sf_key}")
    return pv


def convert_state_dict(state: Mapping[str, np.ndarray], arch: str, *, layout: str = "auto",
                       source_label: str = "checkpoint", container: str = "bare",
                       **model_options: Any) -> Conversion:
    """Convert a state dict (numpy arrays) for ``create_model(arch, **model_options)`` with the
    converter of ``arch``'s family (:data:`FAMILIES`). Raises :class:`CheckpointMismatchError`
    (strictness) or :class:`PortError`."""
    convert = _resolve(family_of(arch).convert)
    return convert(state, arch, layout=layout, source_label=source_label, container=container, **model_options)


def convert_x3d_state_dict(state: Mapping[str, np.ndarray], arch: str, *, layout: str = "auto",
                           source_label: str = "checkpoint", container: str = "bare",
                           **model_options: Any) -> Conversion:
    """Convert a torch-layout X3D state dict (numpy arrays) for ``create_model(arch, **model_options)``.

    ``layout``: ``"auto"`` (detect from the key names), ``"slowfast"`` or ``"pytorchvideo"``.
    Raises :class:`CheckpointMismatchError` (strictness) or :class:`PortError`.
    """
    state, stripped = L.strip_prefixes(state)
    notes = [f"stripped key prefix {p!r}" for p in stripped]
    layout = resolve_layout(layout, state, L.detect_layout, L.LAYOUTS, label=source_label,
                            unrecognised="unrecognised state dict layout: neither PySlowFast X3D names "
                                         "(s1.pathway0_stem.*, s2.pathway0_res0.*, head.*) nor pytorchvideo names "
                                         "(blocks.*)")

    model = build_model(arch, **model_options)
    targets = cached_target_shapes(arch, tuple(sorted(model_options.items())))
    num_stages = len(model.config.stage_depths)
    swap_stem = True
    if layout == "pytorchvideo":
        swap_stem = L.stem_names_swapped(state)
        notes.append("pytorchvideo stem: blocks.0.conv.conv_t is the 1x3x3 spatial conv (-> conv_xy), "
                     "blocks.0.conv.conv_xy the 5x1x1 temporal conv (-> conv)" if swap_stem else
                     "pytorchvideo stem names are literal in this file (conv_t temporal, conv_xy spatial)")

    def source_name(path: str) -> str:
        return _source_name(L.jax_to_slowfast(path), layout, swap_stem, num_stages)

    identity_bn = _identity_bns(state, targets, layout, source_name)
    flat = port_strict(state, targets, source_name, label=source_label, arch=arch, layout=layout,
                       hints=lambda m, u, s: _hints(arch, layout, model, state),
                       torch_shape=L.slowfast_torch_shape, to_jax=lambda src, want, shape: L.torch_to_jax(src, shape),
                       filled=_identity_bn_params(targets, identity_bn))
    if identity_bn:
        notes.append("filled " + ", ".join(sorted(identity_bn)) + " with an identity BN (pytorchvideo has no "
                     "shortcut BN when C_in == C_out: scale 1, bias 0, mean 0, var 1-eps)")
    from co3d_jax.params import unflatten

    return Conversion(params=unflatten(flat), arch=arch, model_options=dict(model_options), layout=layout,
                      source=state, notes=notes, container=container)


def _identity_bns(state: Mapping[str, np.ndarray], targets: Mapping[str, tuple[int, ...]], layout: str,
                  source_name: Callable[[str], str]) -> set[str]:
    """JAX modules of the shortcut BNs pytorchvideo omits (a ``branch1`` conv with C_in == C_out)
    whose tensors are all absent from a pytorchvideo ``state``: they get an identity BN."""
    if layout != "pytorchvideo":
        return set()
    modules = set()
    for path, shape in targets.items():
        if path.endswith("/skip/branch1/kernel") and shape[3] == shape[4]:
            module = path[: -len("/branch1/kernel")] + "/branch1_bn"
            if not any(source_name(f"{module}/{leaf}") in state for leaf in L.BN_LEAVES):
                modules.add(module)
    return modules


def _identity_bn_params(targets: Mapping[str, tuple[int, ...]], modules: set[str]) -> dict[str, np.ndarray]:
    """Exact identity BN leaves (scale 1, bias 0, mean 0, var 1-eps) for the JAX ``modules``."""
    values = {"scale": 1.0, "bias": 0.0, "mean": 0.0, "var": L.IDENTITY_BN_VAR}
    return {path: np.full(shape, values[path.rsplit("/", 1)[1]], np.float32)
            for path, shape in targets.items() if path.rsplit("/", 1)[0] in modules}


def _hints(arch: str, layout: str, model, state: Mapping[str, np.ndarray]) -> list[str]:
    """Why an X3D checkpoint may not fit: other stage depths (another X3D size), other classes."""
    hints = []
    have = L.stage_depths(state, layout)
    want = list(model.config.stage_depths)
    if have and have != want:
        like = L.KNOWN_DEPTHS.get(tuple(have))
        hints.append(f"the checkpoint has stage depths {have}" + (f" like {like}" if like else "")
                     + f", --arch {arch} has {want}")
    proj = "head.projection.weight" if layout == "slowfast" else f"blocks.{len(want) + 1}.proj.weight"
    if proj in state and np.ndim(state[proj]) == 2 and state[proj].shape[0] != model.num_classes:
        hints.append(f"the checkpoint has {state[proj].shape[0]} classes, the model {model.num_classes} "
                     f"(pass --num-classes {state[proj].shape[0]})")
    return hints


def convert_file(src: str, arch: str, *, layout: str = "auto", **model_options: Any) -> Conversion:
    """Read a checkpoint file (:func:`read_source`) and convert it; see :func:`convert_state_dict`."""
    state, container = read_source(src, arch, layout)
    return convert_state_dict(state, arch, layout=layout, source_label=src, container=container, **model_options)


def save_conversion(conv: Conversion, out: str, source_path: str | None = None) -> None:
    """Write the params as a framework-free ``.npz`` (``co3d_jax.params.save_params``)."""
    from co3d_jax.params import save_params

    if not out.endswith(".npz"):
        raise PortError(f"--out {out}: the output must be a .npz file")
    try:
        save_params(out, conv.params, metadata=conv.metadata(source_path))
    except OSError as e:
        raise PortError(f"cannot write {out}: {e.strerror or e}") from None
