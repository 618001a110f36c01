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
``running_mean``, ``var`` -> ``running_var``). Strictness is the X3D porter's
(:mod:`weight_port.convert`): every parameter filled with the right shape, every tensor consumed
(BN ``num_batches_tracked`` consumed and ignored), otherwise one
:class:`~weight_port.errors.CheckpointMismatchError` listing missing, unexpected and mis-shaped
keys in the checkpoint's own naming.

:func:`port_strict` is the shared strict core, also used by :mod:`weight_port.slowfast`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from . import layouts as L
from .errors import CheckpointMismatchError, PortError, summarise

if TYPE_CHECKING:
    from .convert import Conversion

LAYOUTS = ("torchvision",)
_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}


# ------------------------------------------------------------------------------------ shared core
def build_model(arch: str, family: str, prefixes: tuple[str, ...], **model_options: Any):
    """``co3d_jax.create_model(arch, **model_options)`` for ``arch`` of one family, errors as
    :class:`PortError`."""
    import co3d_jax

    known = [n for n in co3d_jax.list_models() if n.startswith(prefixes)]
    if not arch.startswith(prefixes):
        raise PortError(f"--arch {arch!r}: the {family} porter handles {', '.join(known)}")
    try:
        return co3d_jax.create_model(arch, **model_options)
    except (ValueError, TypeError) as e:
        raise PortError(f"--arch {arch}: {e}") from None


@functools.lru_cache(maxsize=16)
def target_shapes(arch: str, options: tuple, family: str, prefixes: tuple) -> dict[str, tuple[int, ...]]:
    """Flat ``{jax path: shape}`` of the model's parameters (abstract, nothing allocated)."""
    import jax

    from co3d_jax.params import flatten

    model = build_model(arch, family, prefixes, **dict(options))
    tree = jax.eval_shape(model.init, jax.random.key(0))
    return {k: tuple(v.shape) for k, v in flatten(tree).items()}


def torch_leaf(path: str) -> str:
    """The torch parameter name of a JAX leaf (``kernel`` -> ``weight`` ...)."""
    leaf = path.rsplit("/", 1)[-1]
    if leaf not in _LEAF:
        raise PortError(f"internal: no torch name for JAX parameter {path!r}")
    return _LEAF[leaf]


def _relayout(src: np.ndarray, shape: tuple[int, ...], source_ndim: int) -> np.ndarray | None:
    """Torch (or Caffe2) layout -> JAX layout, ``None`` if it cannot fit. A Linear weight stored
    with trailing singleton dims (a Caffe2 FC as a 1x1x1 conv, ``(O, I, 1, 1, 1)``) is accepted."""
    a = np.asarray(src)
    while source_ndim == 2 and a.ndim > 2 and a.shape[-1] == 1:
        a = a.reshape(a.shape[:-1])
    if a.ndim != source_ndim:
        return None
    arr = L.torch_to_jax(a, shape)
    return None if arr is None or tuple(arr.shape) != tuple(shape) else arr


def port_strict(state: Mapping[str, np.ndarray], targets: Mapping[str, tuple[int, ...]],
                source_name: Callable[[str], str], *, label: str, arch: str, layout: str,
                counter: str | None = L.BN_COUNTER, ignorable: Callable[[str], bool] = lambda k: False,
                hints: Callable[[list, list, list], Iterable[str]] = lambda m, u, s: ()) -> dict[str, np.ndarray]:
    """Fill every target from ``state`` or raise one :class:`CheckpointMismatchError`.

    ``source_name(jax_path)`` gives the tensor's name in ``state``; a 2-D JAX kernel is a Linear
    (source rank 2), 5-D a conv, 1-D a vector. For each BN (JAX leaf ``scale``) the ``counter``
    buffer next to it is consumed. Keys for which ``ignorable`` is true may stay unconsumed.
    Returns flat float32 params.
    """
    flat: dict[str, np.ndarray] = {}
    consumed: set[str] = set()
    missing: list[str] = []
    misshaped: list[str] = []
    for path, shape in targets.items():
        name = source_name(path)
        if counter and path.endswith("/scale"):
            consumed.add(name.rsplit(".", 1)[0] + "." + counter)
        if name not in state:
            missing.append(name)
            continue
        consumed.add(name)
        src = np.asarray(state[name])
        ndim = len(shape)
        want = L.torch_shape(shape, ndim)
        if not np.issubdtype(src.dtype, np.floating):
            misshaped.append(f"{name} dtype {src.dtype} (expected floating)")
            continue
        arr = _relayout(src, shape, ndim)
        if arr is None:
            misshaped.append(f"{name} {tuple(src.shape)} != expected {want}")
            continue
        flat[path] = np.ascontiguousarray(arr, dtype=np.float32)
    unexpected = sorted(k for k in state if k not in consumed and not ignorable(k))
    if missing or unexpected or misshaped:
        missing, misshaped = sorted(missing), sorted(misshaped)
        problems = (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        parts = [f"{len(keys)} {what}: {summarise(keys)}" for what, keys in problems if keys]
        tips = list(hints(missing, unexpected, misshaped))
        msg = (f"{label}: checkpoint ({layout} layout) does not match --arch {arch}: " + "; ".join(parts)
               + ("; hint: " + "; ".join(tips) if tips else ""))
        raise CheckpointMismatchError(msg, missing, unexpected, misshaped)
    return flat


def _class_hint(state: Mapping[str, np.ndarray], key: str, num_classes: int) -> list[str]:
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
    if layout == "auto":
        layout = detect_layout(state) or ""
        if not layout:
            raise PortError(f"{source_label}: unrecognised state dict layout: not a torchvision R(2+1)D state dict "
                            f"(stem.*, layer1..4.*, fc.*); first keys: {summarise(sorted(state), 4)}")
    elif layout not in LAYOUTS:
        raise PortError(f"unknown layout {layout!r} for R(2+1)D; choose from auto, {', '.join(LAYOUTS)}")
    prefixes = ("r2plus1d_",)
    model = build_model(arch, "R(2+1)D", prefixes, **model_options)
    targets = target_shapes(arch, tuple(sorted(model_options.items())), "R(2+1)D", prefixes)
    flat = port_strict(state, targets, jax_to_torchvision, label=source_label, arch=arch, layout=layout,
                       hints=lambda m, u, s: _class_hint(state, "fc.weight", model.num_classes))
    from co3d_jax.params import unflatten

    from .convert import Conversion  # lazy: convert.py may dispatch to this module
    return Conversion(params=unflatten(flat), arch=arch, model_options=dict(model_options), layout=layout,
                      source=dict(state), notes=notes, container=container)


def convert_file(src: str, arch: str, *, layout: str = "auto", **model_options: Any) -> Conversion:
    """Read a torch checkpoint file (``weights_only``) and convert it; see :func:`convert_state_dict`."""
    from .checkpoint import read_checkpoint

    state, container = read_checkpoint(src)
    return convert_state_dict(state, arch, layout=layout, source_label=src, container=container, **model_options)
