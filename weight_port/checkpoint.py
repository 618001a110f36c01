"""Reading PyTorch checkpoint files safely (``weights_only=True``) into numpy arrays.

torch is imported lazily, only here and by the ``--verify`` references.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import PortError, one_line, summarise

# Where the weights may sit inside a checkpoint dict, in order of preference (PySlowFast and
# pytorchvideo use ``model_state``; Lightning/ride use ``state_dict``).
STATE_KEYS = ("model_state", "state_dict", "model")


def load_torch_file(path: str) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with one-line errors."""
    if not os.path.exists(path):
        raise PortError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise PortError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise PortError(f"{path}: empty file, not a PyTorch checkpoint")
    with open(path, "rb") as f:
        head = f.read(8)
    # torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (0x80 + protocol)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise PortError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle; "
                        f"it starts with {head!r})")
    import pickle

    from co3d_jax.extras import require

    torch = require("torch", "port", f"reading the PyTorch checkpoint {os.path.basename(path)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "weights_only" in msg or "Weights only load failed" in msg:
            raise PortError(f"{path}: the checkpoint contains objects other than tensors and plain containers; "
                            "refusing to unpickle it (torch.load weights_only=True)") from None
        first = one_line(msg.splitlines()[0]) if msg.strip() else "unpickling error"
        raise PortError(f"{path}: not a PyTorch checkpoint ({first[:160]})") from None
    except Exception as e:  # truncated zip, damaged pickle: RuntimeError/EOFError/...
        first = one_line(str(e)) or type(e).__name__
        first = first.split(". ")[0][:160]  # torch appends long advice after the first sentence
        raise PortError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt? "
                        f"({type(e).__name__}: {first})") from None


def extract_state_dict(obj: Any, path: str = "checkpoint") -> tuple[dict[str, np.ndarray], str]:
    """The weights of a loaded checkpoint as float/int numpy arrays and where they were found
    (``"model_state"``, ``"state_dict"``, ``"model"`` or ``"bare"``)."""
    import torch

    if not isinstance(obj, dict):
        raise PortError(f"{path}: not a checkpoint: top-level object is a {type(obj).__name__}, "
                        "expected a dict (a state dict or {'model_state': ...})")
    where = "bare"
    for key in STATE_KEYS:
        if key in obj and isinstance(obj[key], dict):
            obj, where = obj[key], key
            break
    if not obj:
        raise PortError(f"{path}: the checkpoint's {where} state dict is empty")
    non_tensor = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        if where == "bare":
            raise PortError(f"{path}: not a checkpoint: no 'model_state'/'state_dict' entry and not a bare state dict "
                            f"(top-level keys: {summarise(sorted(map(str, obj)))})")
        raise PortError(f"{path}: '{where}' holds non-tensor entries: {summarise(sorted(non_tensor))}")
    state = {}
    for k, v in obj.items():
        v = v.detach().cpu()
        if v.is_floating_point() and v.dtype != torch.float32:
            v = v.float()
        state[str(k)] = v.numpy()
    return state, where


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], str]:
    """Load ``path`` and return ``(state dict as numpy, container)``; see :func:`extract_state_dict`."""
    return extract_state_dict(load_torch_file(path), path)
