"""The porter's public entry points: :func:`convert_file`, :func:`convert_state_dict`,
:func:`save_conversion`, :func:`verify`.

Conversion is one pipeline for every family (:mod:`weight_port.pipeline`), driven by the family's
checkpoint table in its model file (``co3d_jax.models.family_of(arch).checkpoints``). What is left
per family is the ``--verify`` reference, the torch network from pytorchvideo or torchvision that
holds the checkpoint's tensors (:data:`VERIFIERS`: :mod:`weight_port.x3d`,
:mod:`weight_port.resnet3d`, :mod:`weight_port.r2plus1d`, :mod:`weight_port.slowfast`).

Adding a family: a ``CheckpointSpec`` in its model file (``FamilySpec(checkpoints=...)``) and,
for ``--verify``, a module here with ``verify(conv, *, image_size, frames, batch, seed)`` listed
in :data:`VERIFIERS`.
"""

from __future__ import annotations

import warnings
from typing import Callable

from co3d_jax.extras import require

from . import r2plus1d, resnet3d, slowfast, x3d
from .conversion import Conversion, save_conversion
from .errors import PortError
from .pipeline import FAMILIES, convert_file, convert_state_dict, family_of, read_source
from .verification import VerifyResult

# family name -> verify(conv, *, image_size=None, frames=None, batch=1, seed=0) -> VerifyResult
VERIFIERS: dict[str, Callable[..., VerifyResult]] = {
    "x3d": x3d.verify, "resnet3d": resnet3d.verify, "r2plus1d": r2plus1d.verify, "slowfast": slowfast.verify}
# family name -> the package its --verify reference comes from (the [port] extra installs each)
REFERENCE_PACKAGES: dict[str, str] = {
    "x3d": x3d.REFERENCE_PACKAGE, "resnet3d": resnet3d.REFERENCE_PACKAGE, "r2plus1d": r2plus1d.REFERENCE_PACKAGE,
    "slowfast": slowfast.REFERENCE_PACKAGE}


def verify_fn(arch: str) -> Callable[..., VerifyResult]:
    """The ``--verify`` function of ``arch``'s family."""
    fam = family_of(arch)
    if fam.name not in VERIFIERS:
        raise PortError(f"--verify is not available for {fam.description} models")
    return VERIFIERS[fam.name]


def require_verify(arch: str) -> None:
    """Check, before any work, that ``--verify`` for ``arch`` can run: torch and the family's
    reference package (:data:`REFERENCE_PACKAGES`) import, else one
    :class:`~co3d_jax.extras.MissingExtra` line naming the package and the ``[port]`` extra."""
    fam = family_of(arch)
    if fam.name not in VERIFIERS:
        raise PortError(f"--verify is not available for {fam.description} models")
    with warnings.catch_warnings():  # pytorchvideo's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        for module in ("torch", REFERENCE_PACKAGES.get(fam.name, "torch")):
            require(module, "port", f"--verify for {arch}")


def verify(conv: Conversion, **kwargs) -> VerifyResult:
    """Run ``conv`` beside its family's PyTorch reference on a random clip (``--verify``);
    ``kwargs``: ``image_size``, ``frames``, ``batch``, ``seed``."""
    return verify_fn(conv.arch)(conv, **kwargs)


__all__ = ["FAMILIES", "REFERENCE_PACKAGES", "VERIFIERS", "Conversion", "convert_file", "convert_state_dict", "family_of", "read_source",
           "require_verify", "save_conversion", "verify", "verify_fn"]
