"""Fused kernels (Pallas) for continual steps and clip-mode depthwise convolutions: a leaf tier that imports nothing from ``co3d_jax``.

Each kernel has an XLA twin in :mod:`co3d_jax.layers` that defines its semantics; a layer selects
the kernel only through its option (``Conv(impl="pallas")`` anywhere; ``impl="fused"``, X3D's default,
on NVIDIA GPUs only), and the tests run every kernel in Pallas interpret mode against the XLA path
on small shapes (CPU).
"""

import contextlib
import functools
import threading

import jax

from .depthwise import clip_supported, depthwise_clip, depthwise_clip_reference, depthwise_step, depthwise_step_reference, pallas_supported


_LOCAL = threading.local()


@contextlib.contextmanager
def disabled():
    """Within it (in this thread), :func:`on_nvidia_gpu` is False, so what is traced chooses the XLA
    path for ``impl='fused'`` (an explicit ``impl='pallas'`` still runs the kernels)."""
    prev = getattr(_LOCAL, "off", False)
    _LOCAL.off = True
    try:
        yield
    finally:
        _LOCAL.off = prev


def traced_without(fn):
    """``fn`` traced inside :func:`disabled`: for a jit over several devices, where GSPMD has no
    partitioning rule for a Pallas call and would gather its operands onto every device."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with disabled():
            return fn(*args, **kwargs)
    return wrapped


def on_nvidia_gpu() -> bool:
    """Whether the default device is an NVIDIA GPU (where the fused kernels were measured faster)
    and the kernels are not :func:`disabled`."""
    return not getattr(_LOCAL, "off", False) and _nvidia_default_device()


def nvidia_default_device() -> bool:
    """Whether the default device is an NVIDIA GPU, whether or not the kernels are :func:`disabled`
    (``Model.stream``'s bulk steps, which need no kernel, default to on there)."""
    return _nvidia_default_device()


def _nvidia_default_device() -> bool:
    d = jax.devices()[0]
    return d.platform == "gpu" and "nvidia" in getattr(d, "device_kind", "").lower()


__all__ = ["disabled", "traced_without", "clip_supported", "depthwise_clip", "depthwise_clip_reference", "depthwise_step", "depthwise_step_reference", "nvidia_default_device", "on_nvidia_gpu", "pallas_supported"]
