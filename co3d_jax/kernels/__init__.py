"""Fused kernels (Pallas) for continual steps and clip-mode depthwise convolutions: a leaf tier that imports nothing from ``co3d_jax``.

Each kernel has an XLA twin in :mod:`co3d_jax.layers` that defines its semantics; a layer selects
the kernel only through its option (``Conv(impl="pallas")`` anywhere; ``impl="fused"``, X3D's default,
on NVIDIA GPUs only), and the tests run every kernel in Pallas interpret mode against the XLA path
on small shapes (CPU).
"""

import jax

from .depthwise import clip_supported, depthwise_clip, depthwise_clip_reference, depthwise_step, depthwise_step_reference, pallas_supported


def on_nvidia_gpu() -> bool:
    """Whether the default device is an NVIDIA GPU (where the fused kernels were measured faster)."""
    d = jax.devices()[0]
    return d.platform == "gpu" and "nvidia" in getattr(d, "device_kind", "").lower()


__all__ = ["clip_supported", "depthwise_clip", "depthwise_clip_reference", "depthwise_step", "depthwise_step_reference", "on_nvidia_gpu", "pallas_supported"]
