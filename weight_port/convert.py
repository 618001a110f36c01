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
``.pkl`` files through :mod:`weight_port.caffe2`), ``r2plus1d`` (:mod:`weight_port.r2plus1d`) and
``slowfast`` (:mod:`weight_port.slowfast`; ``.pkl`` read like resnet3d's). The last two have no
``--verify`` reference yet (their parity tests live in ``tests/test_r2plus1d.py`` and
``tests/test_slowfast.py``). To add a family, append a :class:`Family`
row whose ``match`` recognises its arch names.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import numpy as np

from . import layouts as L
from .errors import CheckpointMismatchError, PortError, summarise


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
           "R(2+1)D-18 (r2plus1d_18_8, r2plus1d_18_16; torchvision state dicts)"),
    Family("slowfast", lambda a: a.startswith("slowfast_"), "weight_port.slowfast:convert_state_dict",
           "SlowFast-R50 (slowfast_8x8_r50, slowfast_4x16_r50; pytorchvideo, PySlowFast, Caffe2 .pkl)",
           read="weight_port.resnet3d:read_source"),  # a .pkl is Caffe2 blobs, else a torch file
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
    try:
        return co3d_jax.create_model(arch, **model_options)
    except (ValueError, TypeError) as e:
        raise PortError(f"--arch {arch}: {e}") from None


def target_shapes(model) -> dict[str, tuple[int, ...]]:
    """Flat ``{jax path: shape}`` of the model's parameters (no allocation)."""
    import jax

    from co3d_jax.params import flatten

    tree = jax.eval_shape(model.init, jax.random.key(0))
    return {k: tuple(v.shape) for k, v in flatten(tree).items()}


@functools.lru_cache(maxsize=16)
def _cached_target_shapes(arch: str, options: tuple) -> dict[str, tuple[int, ...]]:
    return target_shapes(build_model(arch, **dict(options)))


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
    detected = L.detect_layout(state)
    if layout == "auto":
        if detected is None:
            raise PortError(f"{source_label}: unrecognised state dict layout: neither PySlowFast X3D names "
                            f"(s1.pathway0_stem.*, s2.pathway0_res0.*, head.*) nor pytorchvideo names (blocks.*); "
                            f"first keys: {summarise(sorted(state), 4)}")
        layout = detected
    elif layout not in L.LAYOUTS:
        raise PortError(f"unknown layout {layout!r}; choose from auto, {', '.join(L.LAYOUTS)}")

    model = build_model(arch, **model_options)
    targets = dict(_cached_target_shapes(arch, tuple(sorted(model_options.items()))))
    num_stages = len(model.config.stage_depths)
    swap_stem = True
    if layout == "pytorchvideo":
        swap_stem = L.stem_names_swapped(state)
        notes.append("pytorchvideo stem: blocks.0.conv.conv_t is the 1x3x3 spatial conv (-> conv_xy), "
                     "blocks.0.conv.conv_xy the 5x1x1 temporal conv (-> conv)" if swap_stem else
                     "pytorchvideo stem names are literal in this file (conv_t temporal, conv_xy spatial)")

    # Identity-BN case: a shortcut BN pytorchvideo omits (branch1 conv with C_in == C_out).
    identity_bn: set[str] = set()
    if layout == "pytorchvideo":
        for path, shape in targets.items():
            if path.endswith("/skip/branch1/kernel") and shape[3] == shape[4]:
                module = path[: -len("/branch1/kernel")] + "/branch1_bn"
                names = [_source_name(L.jax_to_slowfast(f"{module}/{leaf}"), layout, swap_stem, num_stages)
                         for leaf in L.BN_LEAVES]
                if not any(n in state for n in names):
                    identity_bn.add(module)

    flat: dict[str, np.ndarray] = {}
    consumed: set[str] = set()
    missing: list[str] = []
    misshaped: list[str] = []
    for path, shape in targets.items():
        module, leaf = path.rsplit("/", 1)
        if module in identity_bn:
            flat[path] = {"scale": np.ones(shape, np.float32), "bias": np.zeros(shape, np.float32),
                          "mean": np.zeros(shape, np.float32),
                          "var": np.full(shape, L.IDENTITY_BN_VAR, np.float32)}[leaf]
            consumed.add(_source_name(L.jax_to_slowfast(f"{module}/scale"), layout, swap_stem, num_stages)
                         .rsplit(".", 1)[0] + "." + L.BN_COUNTER)
            continue
        sf = L.jax_to_slowfast(path)
        name = _source_name(sf, layout, swap_stem, num_stages)
        if leaf == "scale":  # this module is a BN: its counter is consumed and ignored
            consumed.add(name.rsplit(".", 1)[0] + "." + L.BN_COUNTER)
        if name not in state:
            missing.append(name)
            continue
        consumed.add(name)
        src = np.asarray(state[name])
        want = L.torch_shape(shape, L.source_ndim(sf, shape))
        if not np.issubdtype(src.dtype, np.floating):
            misshaped.append(f"{name} dtype {src.dtype} (expected floating)")
            continue
        arr = L.torch_to_jax(src, shape)
        if arr is None or tuple(arr.shape) != shape:
            misshaped.append(f"{name} {tuple(src.shape)} != expected {want}")
            continue
        flat[path] = np.ascontiguousarray(arr, dtype=np.float32)
    unexpected = sorted(k for k in state if k not in consumed)

    if missing or unexpected or misshaped:
        raise _mismatch(source_label, arch, layout, model, state, sorted(missing), unexpected,
                        sorted(misshaped))
    if identity_bn:
        notes.append("filled " + ", ".join(sorted(identity_bn)) + " with an identity BN (pytorchvideo has no "
                     "shortcut BN when C_in == C_out: scale 1, bias 0, mean 0, var 1-eps)")
    from co3d_jax.params import unflatten

    return Conversion(params=unflatten(flat), arch=arch, model_options=dict(model_options), layout=layout,
                      source=state, notes=notes, container=container)


def _mismatch(label: str, arch: str, layout: str, model, state, missing, unexpected, misshaped):
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            parts.append(f"{len(keys)} {what}: {summarise(keys)}")
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
    msg = (f"{label}: checkpoint ({layout} layout) does not match --arch {arch}: " + "; ".join(parts)
           + ("; hint: " + "; ".join(hints) if hints else ""))
    return CheckpointMismatchError(msg, missing, unexpected, misshaped)


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
