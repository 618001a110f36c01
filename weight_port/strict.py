"""The strict porting core shared by every architecture family.

* :func:`create_model`: ``co3d_jax.create_model`` with its errors as :class:`~weight_port.errors.PortError`;
* :func:`target_shapes` / :func:`cached_target_shapes`: the ``{jax path: shape}`` to fill;
* :func:`port_strict`: fill every target from a source state dict, consume every source tensor,
  or raise one :class:`~weight_port.errors.CheckpointMismatchError` (:func:`mismatch_error`)
  listing the missing, unexpected and mis-shaped keys in the checkpoint's own naming.

Families differ only in the hooks they pass: how a JAX path is named in the source, which torch
shape it expects and how a source tensor is re-laid for JAX.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from co3d_jax.models.checkpoints import BN_COUNTER

from .errors import CheckpointMismatchError, PortError, summarise
from .tensors import RELAYOUT, torch_shape as _torch_shape

Shape = tuple[int, ...]
# hints(missing, unexpected, misshaped) -> hint strings for the mismatch message
Hints = Callable[[list, list, list], Iterable[str]]


# ------------------------------------------------------------------------------------ models
def create_model(arch: str, **model_options: Any):
    """``co3d_jax.create_model(arch, **model_options)``; its ``ValueError``/``TypeError`` (unknown
    model, bad option) as ``PortError("--arch <arch>: ...")``."""
    import co3d_jax

    try:
        return co3d_jax.create_model(arch, **model_options)
    except (ValueError, TypeError) as e:
        raise PortError(f"--arch {arch}: {e}") from None


def target_shapes(model) -> dict[str, Shape]:
    """Flat ``{jax path: shape}`` of the model's parameters (abstract: nothing is allocated)."""
    import jax

    from co3d_jax.params import flatten

    tree = jax.eval_shape(model.init, jax.random.key(0))
    return {k: tuple(v.shape) for k, v in flatten(tree).items()}


@functools.lru_cache(maxsize=32)
def cached_target_shapes(arch: str, options: tuple) -> dict[str, Shape]:
    """:func:`target_shapes` of ``create_model(arch, **dict(options))``, cached per configuration
    (``options``: sorted ``(name, value)`` pairs). The dict is shared: do not modify it."""
    return target_shapes(create_model(arch, **dict(options)))


# ------------------------------------------------------------------------------------ layouts
def resolve_layout(layout: str, state: Mapping[str, Any], detect: Callable[[Iterable[str]], str | None],
                   layouts: Sequence[str], *, label: str, unrecognised: str, scope: str = "") -> str:
    """The source layout: ``layout`` itself if it is one of ``layouts``; for ``"auto"`` what
    ``detect(state keys)`` finds. Else :class:`PortError`: ``"<label>: <unrecognised>; first keys:
    ..."`` (nothing detected) or ``"unknown layout '<layout>'<scope>; choose from auto, ..."``."""
    if layout == "auto":
        found = detect(state)
        if not found:
            raise PortError(f"{label}: {unrecognised}; first keys: {summarise(sorted(state), 4)}")
        return found
    if layout not in layouts:
        raise PortError(f"unknown layout {layout!r}{scope}; choose from auto, {', '.join(layouts)}")
    return layout


def default_torch_shape(path: str, shape: Shape) -> Shape:
    """The torch shape behind a JAX leaf of ``shape``: conv for 5-D, Linear for 2-D, else as is."""
    return _torch_shape(shape)


# ------------------------------------------------------------------------------------ the strict fill
def port_strict(state: Mapping[str, np.ndarray], targets: Mapping[str, Shape], source_name: Callable[[str], str],
                *, label: str, arch: str, layout: str, counter: str | None = BN_COUNTER,
                ignorable: Callable[[str], bool] = lambda k: False, hints: Hints = lambda m, u, s: (),
                torch_shape: Callable[[str, Shape], Shape] = default_torch_shape,
                to_jax: Callable[[np.ndarray, Shape, Shape], np.ndarray | None] = RELAYOUT["torch"],
                filled: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Fill every target from ``state`` or raise one :class:`CheckpointMismatchError`.

    ``source_name(jax_path)`` is the tensor's name in ``state``; ``torch_shape(jax_path, shape)``
    the torch shape it must have (for messages); ``to_jax(src, torch shape, jax shape)`` re-lays
    it (``None``: it does not fit). For each BN (JAX leaf ``scale``) the ``counter`` buffer next to
    it is consumed. ``filled`` gives some targets outright (not read from ``state``). Keys for
    which ``ignorable`` is true may stay unconsumed. Returns flat float32 params in target order.
    """
    flat: dict[str, np.ndarray] = {}
    consumed: set[str] = set()
    missing: list[str] = []
    misshaped: list[str] = []
    for path, shape in targets.items():
        name = source_name(path)
        if counter and path.endswith("/scale"):
            consumed.add(name.rsplit(".", 1)[0] + "." + counter)
        if filled is not None and path in filled:
            flat[path] = filled[path]
            continue
        if name not in state:
            missing.append(name)
            continue
        consumed.add(name)
        src = np.asarray(state[name])
        want = torch_shape(path, shape)
        if not np.issubdtype(src.dtype, np.floating):
            misshaped.append(f"{name} dtype {src.dtype} (expected floating)")
            continue
        arr = to_jax(src, want, shape)
        if arr is None or tuple(arr.shape) != tuple(shape):
            misshaped.append(f"{name} {tuple(src.shape)} != expected {want}")
            continue
        flat[path] = np.ascontiguousarray(arr, dtype=np.float32)
    unexpected = sorted(k for k in state if k not in consumed and not ignorable(k))
    if missing or unexpected or misshaped:
        missing, misshaped = sorted(missing), sorted(misshaped)
        raise mismatch_error(label, arch, layout, missing, unexpected, misshaped,
                             list(hints(missing, unexpected, misshaped)))
    return flat


def mismatch_error(label: str, arch: str, layout: str, missing: Sequence[str], unexpected: Sequence[str],
                   misshaped: Sequence[str], hints: Sequence[str] = ()) -> CheckpointMismatchError:
    """The one-line ``<label>: checkpoint (<layout> layout) does not match --arch <arch>: N missing:
    ...; N unexpected: ...; N mis-shaped: ...[; hint: ...]`` error."""
    problems = (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
    parts = [f"{len(keys)} {what}: {summarise(keys)}" for what, keys in problems if keys]
    msg = (f"{label}: checkpoint ({layout} layout) does not match --arch {arch}: " + "; ".join(parts)
           + ("; hint: " + "; ".join(hints) if hints else ""))
    return CheckpointMismatchError(msg, missing, unexpected, misshaped)
