"""Test configuration: CPU, float32, highest matmul precision (parity with PyTorch)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compile-time bound suite: LLVM -O0 cuts CPU compile time by about a third and leaves the
# arithmetic unchanged (no fast-math either way).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
