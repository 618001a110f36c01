"""The family spec: everything the rest of co3d-jax needs to know about one model family, declared
once, as data plus a builder, in that family's model file (``co3d_jax/models/<family>.py``).

The registry (:mod:`co3d_jax.models.registry`), the weight porter (:mod:`weight_port`), the FLOP
counter (:mod:`co3d_jax.flops`), fine-tuning (:mod:`co3d_jax.train`), the profiler and the
evaluation CLI read :class:`FamilySpec` objects; none of them names a family.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

from ..model import Model

DEFAULT_HEAD = "head/projection"
"""Params path of the classifier layer in PySlowFast-named networks (X3D, ResNet-3D, SlowFast)."""


@dataclasses.dataclass(frozen=True)
class Reported:
    """A row of the paper's Kinetics-400 table (co3d.md §5): ``top1`` (%), ``gflops`` (the table's
    "GFLOPs", which are GMACs; per clip for clip models, per frame for continual ones)."""

    top1: float
    gflops: float


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Names beyond the fixed variants, e.g. ``cox3d_<size>_<window>``: ``regex`` (full match) and
    ``options(match) -> builder keyword arguments``; ``help`` is the pattern as users read it;
    ``format(options) -> name`` is the inverse of ``options`` (used to rename a variant, e.g. to
    another head window)."""

    regex: str
    options: Callable[[re.Match], dict]
    help: str
    format: Callable[[dict], str] | None = None

    def match(self, name: str) -> re.Match | None:
        return re.fullmatch(self.regex, name)


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """One model family, declared once in its model file.

    * ``name`` (``"x3d"``), ``description`` (shown in help and errors);
    * ``build(**options) -> Model``: config -> network; ``variants`` maps every registered name to
      the keyword arguments of ``build`` (the name itself is passed as ``name``); ``patterns``
      build further names (any head window);
    * ``head``: the params path of the classifier layer (``"head/projection"``), which
      fine-tuning replaces and the FLOP counter treats with ptflops' linear quirk;
    * ``final_bn``: child name of the last BatchNorm of a residual branch, zero-initialised when
      training from scratch (PySlowFast's ``transform_final_bn``); ``None`` if the family has none;
    * ``reported``: the paper's table rows by variant name;
    * ``paper_batch(name) -> int``: the batch size the paper profiled that model with;
    * ``checkpoints``: the porter's knowledge of this family's torch checkpoints as plain data
      (:mod:`weight_port` reads it; nothing here imports torch).
    """

    name: str
    description: str
    build: Callable[..., Model]
    variants: Mapping[str, Mapping[str, Any]]
    patterns: tuple[Pattern, ...] = ()
    head: str = DEFAULT_HEAD
    final_bn: str | None = "c_bn"
    reported: Mapping[str, Reported] = dataclasses.field(default_factory=dict)
    paper_batch: Callable[[str], int] = lambda name: 1
    checkpoints: Any = None

    def options(self, name: str) -> dict | None:
        """Builder keyword arguments for ``name``, or ``None`` if this family does not own it."""
        if name in self.variants:
            return {**self.variants[name], "name": name}
        for p in self.patterns:
            m = p.match(name)
            if m:
                return {**p.options(m), "name": name}
        return None

    def owns(self, name: str) -> bool:
        return self.options(name) is not None

    def create(self, name: str, **overrides) -> Model:
        opts = self.options(name)
        if opts is None:
            raise ValueError(f"{self.description} has no model {name!r}")
        return dataclasses.replace(self.build(**{**opts, **overrides}), family=self)

    def renamed(self, name: str, **changes) -> str | None:
        """The name of variant ``name`` with builder options ``changes`` (e.g. ``window=64``:
        ``cox3d_s_13`` -> ``cox3d_s_64``), or ``None`` if no name of this family builds that."""
        opts = self.options(name)
        if opts is None:
            return None
        want = {k: v for k, v in {**opts, **changes}.items() if k != "name"}
        for p in self.patterns:
            if p.format is not None:
                candidate = p.format(want)
                got = self.options(candidate)
                if got is not None and {k: v for k, v in got.items() if k != "name"} == want:
                    return candidate
        return None

    @property
    def names_help(self) -> str:
        """The variant names and patterns as one line (CLI help, errors)."""
        return ", ".join([*self.variants, *(p.help for p in self.patterns)])


def spec_of(model: Model) -> FamilySpec:
    """The spec ``model`` was built from (:func:`co3d_jax.create_model` records it); a model
    assembled by hand has none, which is a ``ValueError`` naming the model."""
    if model.family is None:
        raise ValueError(f"model {model.name!r} was not built by co3d_jax.create_model, so no family spec "
                         f"says where its head is")
    return model.family


__all__ = ["DEFAULT_HEAD", "FamilySpec", "Pattern", "Reported", "spec_of"]
