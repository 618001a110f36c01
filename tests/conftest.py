"""Test configuration: CPU, float32, highest matmul precision (parity with PyTorch)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
