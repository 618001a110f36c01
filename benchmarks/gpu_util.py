"""The utilisation sampler of the benchmarks (``nvdec_speed``, ``input_rates``) lives in
:mod:`co3d_jax.gpu_util`, where ``experiments/scaling.py`` uses it too."""

from co3d_jax.gpu_util import GpuUtil  # noqa: F401

__all__ = ["GpuUtil"]
