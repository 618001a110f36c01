"""MAC-counting conventions the layers' ``macs`` share (the counters themselves are in
:mod:`co3d_jax.flops`, which re-exports these).

``padded_taps(False)`` switches :meth:`Conv.macs <co3d_jax.layers.Conv.macs>` from ptflops'
convention (every kernel tap counts, padded ones included) to XLA's (only taps that land in the
input); :func:`valid_taps` counts the latter along one axis.
"""

from __future__ import annotations

import contextlib
import contextvars

_COUNT_PADDED = contextvars.ContextVar("co3d_jax_count_padded_taps", default=True)


def count_padded_taps() -> bool:
    """Whether :meth:`Conv.macs` currently counts taps that land in padding (ptflops: yes)."""
    return _COUNT_PADDED.get()


@contextlib.contextmanager
def padded_taps(flag: bool):
    """Context in which convolution MACs count (``True``, ptflops) or skip (``False``, XLA)
    kernel taps that land in zero padding."""
    token = _COUNT_PADDED.set(bool(flag))
    try:
        yield
    finally:
        _COUNT_PADDED.reset(token)


def valid_taps(n: int, k: int, s: int, p: int) -> int:
    """Number of (output position, tap) pairs of a 1-D window (size ``k``, stride ``s``,
    symmetric padding ``p``) over ``n`` inputs whose tap lands inside the input."""
    n_out = (n + 2 * p - k) // s + 1
    total = 0
    for o in range(n_out):
        lo = o * s - p
        total += max(0, min(k, n - lo) - max(0, -lo))
    return total
