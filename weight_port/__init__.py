"""Weight porter: PyTorch checkpoints -> co3d_jax ``.npz`` for every family (X3D/CoX3D, Slow/I3D and
their continual forms, R(2+1)D, SlowFast; PySlowFast, pytorchvideo, torchvision, Caffe2 and bare
state dicts).

The only part of co3d-jax that imports torch, and only lazily (reading checkpoints and the
``--verify`` reference). Command line: ``python -m weight_port --help``.

Python API::

    from weight_port import convert_file, save_conversion, verify
    conv = convert_file("x3d_s.pyth", "x3d_s")     # strict; raises PortError subclasses
    save_conversion(conv, "x3d_s.npz", "x3d_s.pyth")
    print(verify(conv).report())                   # the family's torch reference (pytorchvideo/torchvision)
"""

from __future__ import annotations

from typing import Any

from .errors import CheckpointMismatchError, PortError, VerificationError

__all__ = ["CheckpointMismatchError", "Conversion", "PortError", "VerificationError", "convert_file",
           "convert_state_dict", "download", "read_checkpoint", "save_conversion", "verify"]

_LAZY = {"Conversion": "convert", "convert_file": "convert", "convert_state_dict": "convert",
         "save_conversion": "convert", "read_checkpoint": "checkpoint", "verify": "convert",
         "download": "download"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
