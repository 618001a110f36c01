"""Shared test helpers (no torch)."""

import math

import jax
import jax.numpy as jnp
import numpy as np


def random_params(model, seed: int = 0):
    """Random weights (PyTorch-like fan-in uniform) and broad random BN statistics, drawn with
    numpy on the model's param shapes (``Model.init`` compiles one RNG program per shape, which
    costs far more CPU than the tests themselves)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0))

    def visit(p):
        if set(p) == {"scale", "bias", "mean", "var"}:
            c = p["scale"].shape
            return {"scale": rng.uniform(0.5, 1.5, c), "bias": 0.2 * rng.standard_normal(c),
                    "mean": 0.5 * rng.standard_normal(c), "var": rng.uniform(0.3, 2.0, c)}
        if "kernel" in p:
            bound = 1.0 / math.sqrt(math.prod(p["kernel"].shape[:-1]))
            return {k: rng.uniform(-bound, bound, v.shape) for k, v in p.items()}
        return {k: visit(v) for k, v in sorted(p.items())}

    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), visit(shapes))


def write_video(path, n, fps=30, hw=(48, 64), seed=0, faststart=False):
    """A small mpeg4 video (PyAV) of ``n`` frames of moving coloured blocks."""
    rng = np.random.default_rng(seed)
    h, w = hw
    base = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.float32)
    import av
    with av.open(path, "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.kron((base + 9 * i) % 256, np.ones((8, 8, 1))).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
