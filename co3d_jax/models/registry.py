"""The model registry: every family's :class:`~co3d_jax.models.spec.FamilySpec`, and
:func:`create_model` / :func:`list_models` / :func:`family_of` over them.

A family is one model file that declares ``FAMILY``; adding a family means adding its module to
:data:`FAMILIES` below. Names: the fixed variants of each family (``x3d_s``, ``cox3d_s_13``,
``coslow_64``, ...) and the patterns that build any head window (``cox3d_s_32``, ``coi3d_16``).
"""

from __future__ import annotations

from . import r2plus1d, resnet3d, slowfast, x3d
from .spec import FamilySpec
from ..model import Model

FAMILIES: tuple[FamilySpec, ...] = (x3d.FAMILY, resnet3d.FAMILY, r2plus1d.FAMILY, slowfast.FAMILY)


def list_models() -> list[str]:
    """Every fixed variant name, sorted (patterns build more; see :func:`names_help`)."""
    return sorted(n for f in FAMILIES for n in f.variants)


def names_help(sep: str = "; ") -> str:
    """All model names and name patterns, by family, joined with ``sep`` (CLI help and errors)."""
    return sep.join(f"{f.description}: {f.names_help}" for f in FAMILIES)


def family_of(name: str) -> FamilySpec:
    """The family that owns model ``name``; ``ValueError`` naming the known models otherwise."""
    for f in FAMILIES:
        if f.owns(name):
            return f
    patterns = ", ".join(p.help for f in FAMILIES for p in f.patterns)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())} (or {patterns})")


def create_model(name: str, **options) -> Model:
    """Build a registered model. ``options`` are the architecture's config fields (for X3D:
    ``se_scope``, ``temporal_fill``, ``num_classes``, ``head_activation``, ...)."""
    return family_of(name).create(name, **options)


__all__ = ["FAMILIES", "create_model", "family_of", "list_models", "names_help"]
