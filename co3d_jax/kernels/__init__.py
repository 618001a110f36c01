"""Fused kernels (Pallas) for continual steps: a leaf tier that imports nothing from ``co3d_jax``.

Each kernel has an XLA twin in :mod:`co3d_jax.layers` that defines its semantics; a layer selects
the kernel only through an explicit option (e.g. ``Conv(impl="pallas")``), and the tests run every
kernel in Pallas interpret mode against the XLA path on small shapes (CPU).
"""

from .depthwise import depthwise_step, depthwise_step_reference, pallas_supported

__all__ = ["depthwise_step", "depthwise_step_reference", "pallas_supported"]
