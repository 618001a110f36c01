"""The result of a conversion (:class:`Conversion`) and writing it (:func:`save_conversion`)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from .errors import PortError


@dataclasses.dataclass
class Conversion:
    """Result of a conversion.

    ``params``: nested dict of float32 numpy arrays (the co3d_jax pytree); ``arch`` and
    ``model_options``: what to pass to ``co3d_jax.create_model``; ``layout``: the checkpoint's
    naming (``"slowfast"``, ``"pytorchvideo"``, ``"caffe2"``, ``"torchvision"``); ``source``: the
    source state dict after prefix stripping (torch layout, kept for ``--verify``); ``notes``:
    human-readable remarks (prefixes stripped, identity BNs, ...); ``container``: where the
    weights sat in the file (``"model_state"``, ``"bare"``, ``"caffe2"``, ...); ``warnings``: what
    the checkpoint's recorded training config says against ``arch`` (the CLI prints them).
    """

    params: dict
    arch: str
    model_options: dict
    layout: str
    source: dict[str, np.ndarray]
    notes: list[str]
    container: str = "bare"
    warnings: list[str] = dataclasses.field(default_factory=list)

    def metadata(self, source_path: str | None = None) -> dict[str, str]:
        meta = {"arch": self.arch, "layout": self.layout, "container": self.container,
                "converter": "weight_port"}
        if self.model_options:
            meta["model_options"] = json.dumps(self.model_options, sort_keys=True)
        if source_path:
            meta["source"] = os.path.basename(source_path)
        return meta


def save_conversion(conv: Conversion, out: str, source_path: str | None = None) -> None:
    """Write the params as a framework-free ``.npz`` (``co3d_jax.params.save_params``: atomic)."""
    from co3d_jax.params import save_params

    if not out.endswith(".npz"):
        raise PortError(f"--out {out}: the output must be a .npz file")
    try:
        save_params(out, conv.params, metadata=conv.metadata(source_path))
    except OSError as e:
        raise PortError(f"cannot write {out}: {e.strerror or e}") from None
