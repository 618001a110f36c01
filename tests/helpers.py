"""Shared test helpers (no torch)."""

import math

import jax
import jax.numpy as jnp
import numpy as np

import co3d_jax
from co3d_jax.flops import paper_macs


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


def assert_paper_macs(model, mode: str, ref_gmacs: float, exact: int, digits: int | None = None) -> int:
    """``paper_macs(model, mode)`` equals ``exact`` and is within 1 % of the paper's
    ``ref_gmacs``; with ``digits``, it also rounds to ``ref_gmacs`` at that many decimals (the
    precision the paper prints). Returns the count."""
    macs = paper_macs(model, mode)
    assert macs == exact
    assert abs(macs / 1e9 - ref_gmacs) / ref_gmacs < 0.01
    if digits is not None:
        assert round(macs / 1e9, digits) == ref_gmacs
    return macs


def write_video(path, n, fps=30, hw=(48, 64), seed=0, faststart=False):
    """A small mpeg4 video (PyAV) of ``n`` frames of moving coloured blocks."""
    from co3d_jax.data.video import encode_video

    rng = np.random.default_rng(seed)
    h, w = hw
    base = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.float32)
    frames = np.stack([np.kron((base + 9 * i) % 256, np.ones((8, 8, 1))).astype(np.uint8) for i in range(n)])
    encode_video(path, frames, fps, faststart=faststart)


# ----------------------------------------------------------------------------- mini datasets
MINI_KINETICS_VIDEOS = [  # (class, ytid, frames, fps, (h, w))
    ("archery", "aaaaaaaaaa1", 45, 30, (48, 64)),
    ("archery", "aaaaaaaaaa2", 12, 30, (48, 64)),      # short: last frame repeated
    ("bowling", "bbbbbbbbbb1", 60, 30, (64, 48)),      # portrait
    ("bowling", "bbbbbbbbbb2", 50, 25, (48, 64)),      # 25 fps
    ("capoeira", "cccccccccc1", 40, 30, (48, 64)),
    ("capoeira", "cccccccccc2", 36, 30, (48, 64)),
]
MINI_KINETICS_BAD = {"archery/corrupt0000_000000_000010.mp4": "corrupt",
                     "bowling/empty00000_000000_000010.mp4": "empty",
                     "capoeira/trunc00000_000000_000010.mp4": "truncated"}


def make_mini_kinetics(root):
    """A Kinetics folder layout under ``root`` (a pathlib.Path): ``data/validate/{class}/*.mp4``
    with the videos of MINI_KINETICS_VIDEOS and a corrupt, an empty and a truncated file."""
    split = root / "data" / "validate"
    for k, (label, ytid, n, fps, hw) in enumerate(MINI_KINETICS_VIDEOS):
        (split / label).mkdir(parents=True, exist_ok=True)
        write_video(str(split / label / f"{ytid}_000000_000010.mp4"), n, fps, hw, seed=k)
    (split / "archery" / "corrupt0000_000000_000010.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    (split / "bowling" / "empty00000_000000_000010.mp4").write_bytes(b"")
    # truncated with the index up front: opens fine, the stream ends before its metadata says
    trunc = split / "capoeira" / "trunc00000_000000_000010.mp4"
    write_video(str(trunc), 40, faststart=True)
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
    return root


MINI_CHARADES = {"AAAAA": (30, ["0", "0,2"]), "BBBBB": (12, ["1", "nan"]), "CCCCC": (20, ["2"])}


def make_mini_charades(root):
    """A Charades layout under ``root``: ``splits/{classes.txt,val.csv}`` and random 40x56 JPEG
    frames in ``data/Charades_v1_rgb/{video}/``; per-frame labels cycle through MINI_CHARADES."""
    from PIL import Image

    frames_dir = root / "data" / "Charades_v1_rgb"
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "classes.txt").write_text("c000 a\nc001 b\nc002 c\n")
    rng = np.random.default_rng(0)
    lines = ["original_vido_id video_id frame_id path labels"]
    for v, (vid, (n, labs)) in enumerate(MINI_CHARADES.items()):
        (frames_dir / vid).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(frames_dir / vid / f"{vid}-{i + 1:06d}.jpg")
            lines.append(f'{vid} {v} {i} {vid}/{vid}-{i + 1:06d}.jpg "{labs[i % len(labs)]}"')
    (root / "splits" / "val.csv").write_text("\n".join(lines) + "\n")
    return root


def rel_err(a, b) -> float:
    """Normwise relative error ``max|a - b| / max|b|`` (``max|b|`` floored at 1e-12; shapes must agree)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def param_shapes(name: str, **options):
    """The params tree of registry model ``name`` as shapes (abstract: nothing is allocated)."""
    return jax.tree.map(lambda a: a.shape, jax.eval_shape(co3d_jax.create_model(name, **options).init,
                                                          jax.random.key(0)))
