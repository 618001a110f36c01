"""Exceptions raised by the weight porter. The CLI prints them as one ``error: ...`` line."""

from __future__ import annotations

from typing import Sequence


class PortError(Exception):
    """Any porter failure with a message fit for one line of output (bad file, bad options,
    failed download, failed verification)."""


class CheckpointMismatchError(PortError):
    """The checkpoint's tensors do not match the target model.

    Attributes ``missing`` (expected source keys absent from the file), ``unexpected`` (source
    keys nothing consumes) and ``misshaped`` (``"key got (..) expected (..)"`` strings), all in
    the checkpoint's own naming.
    """

    def __init__(self, message: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 misshaped: Sequence[str] = ()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.misshaped = list(misshaped)


class VerificationError(PortError):
    """The converted JAX model's output differs from the PyTorch reference beyond tolerance."""


def one_line(text: str) -> str:
    """Collapse whitespace so a message never spans several lines."""
    return " ".join(str(text).split())


def summarise(keys: Sequence[str], limit: int = 6) -> str:
    """``"a, b, c, ... (n in all)"``: a short, one-line listing of keys."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")
