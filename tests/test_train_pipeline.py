"""The fine-tuning input pipeline: augmentation on the device against the numpy reference, and the
Grain loader against the sample order of the old per-batch loader (same batches, failures
replaced, resume at any step, worker processes or not)."""

from __future__ import annotations

import numpy as np
import pytest

import jax

from co3d_jax import train as T
from co3d_jax.data import augment as A
from co3d_jax.data import device_augment as D
from co3d_jax.data.datasets import VideoRecord
from co3d_jax.data.train_loader import BatchLoader, collate, load_train_element, load_train_sample

SPEC = A.TrainClipSpec(num_frames=4, sampling_rate=2, image_size=16, jitter=(16, 28), flip=True)


def frames_of(seed, t=12, h=24, w=30):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3)).astype(np.uint8)


def device_clip(frames, taps, spec=SPEC):
    batch = {f: getattr(taps, f)[None] for f in D.TAP_FIELDS}
    return np.asarray(D.make_augment(None, spec.mean, spec.std)(frames[None], batch))[0]


# ----------------------------------------------------------------------------- device augmentation
@pytest.mark.parametrize("shape", [(12, 24, 30), (12, 30, 24), (3, 10, 12)])
def test_device_augment_equals_numpy_reference(shape):
    """Every sample: the device's resize/crop/flip/normalisation of the host-drawn taps equals
    :func:`train_sample` (numpy) on the same draws."""
    frames = frames_of(1, *shape)
    flips = set()
    for s in range(24):
        d = A.draw_sample(len(frames), 30.0, SPEC, A.sample_rng(3, s))
        flips.add(d.flip)
        taps = A.crop_taps(shape[1], shape[2], d.short, SPEC.image_size, d.top, d.left, d.flip)
        got = device_clip(np.ascontiguousarray(frames[d.indices]), taps)
        want = A.train_sample(frames, 30.0, SPEC, A.sample_rng(3, s))
        assert got.shape == want.shape == (4, 16, 16, 3)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
        np.testing.assert_array_equal(got, device_clip(np.ascontiguousarray(frames[d.indices]), taps))  # deterministic
    assert flips == {True, False}


def test_crop_flip_and_normalisation_on_known_offsets():
    """No resize (short side = frame size): the taps are a plain crop, a flip reverses its
    columns, and the output is ``(x / 255 - mean) / std``."""
    frames = frames_of(2, 4, 20, 26)
    for top, left, flip in [(0.0, 0.0, False), (1.0, 1.0, False), (0.5, 0.25, True)]:
        taps = A.crop_taps(20, 26, 20, 16, top, left, flip)
        y0, x0 = int(round(top * 4)), int(round(left * 10))
        crop = frames[:, y0:y0 + 16, x0:x0 + 16].astype(np.float32) / np.float32(255)
        if flip:
            crop = crop[:, :, ::-1]
        mean, std = np.asarray(SPEC.mean, np.float32), np.asarray(SPEC.std, np.float32)
        np.testing.assert_allclose(device_clip(frames, taps), (crop - mean) / std, rtol=0, atol=2e-6)


def test_padding_to_a_canvas_changes_nothing():
    """Windows of different sizes share a zero-padded canvas; the taps never read the padding."""
    a, b = frames_of(4, 4, 24, 30), frames_of(5, 4, 40, 18)
    elems = []
    for k, f in enumerate((a, b)):
        d = A.draw_sample(len(f), 30.0, SPEC, A.sample_rng(0, k))
        elems.append((f[d.indices], A.crop_taps(f.shape[1], f.shape[2], d.short, 16, d.top, d.left, d.flip)))

    class E:
        def __init__(self, fr, taps):
            self.frames, self.taps = fr, taps

    frames, taps = collate([E(*e) for e in elems])
    assert frames.shape == (2, 4, 64, 32, 3)
    got = np.asarray(D.make_augment(None, SPEC.mean, SPEC.std)(frames, taps))
    for k, (f, t) in enumerate(elems):
        np.testing.assert_array_equal(got[k], device_clip(np.ascontiguousarray(f), t))


# ----------------------------------------------------------------------------- the Grain loader
@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """7 videos of various sizes and lengths, one of them corrupt."""
    from helpers import write_video

    root = tmp_path_factory.mktemp("pipe")
    recs = []
    for k in range(7):
        path = str(root / f"v{k}.mp4")
        if k == 3:
            open(path, "wb").write(b"not a video")
        else:
            write_video(path, 6 + 3 * k, seed=k, hw=(32 + 16 * (k % 2), 40))
        recs.append(VideoRecord(f"v{k}", path, k % 3))
    return recs


def old_batches(records, spec, seed, batch, steps):
    """The batches, failures and padding of the old loader: numpy augmentation per sample, a failed
    video replaced by the next one in index order."""
    out, failed, padded = [], {}, {}
    for step in range(steps):
        clips, labels = [], []
        for s, idx in A.sample_indices(seed, len(records), step, batch):
            got = load_train_sample(spec, seed, records[idx], s)
            while got.clip is None:
                failed[records[idx].id] = got.error
                idx = (idx + 1) % len(records)
                got = load_train_sample(spec, seed, records[idx], s)
            if got.padded:
                padded[records[idx].id] = padded.get(records[idx].id, 0) + 1
            clips.append(got.clip)
            labels.append(records[idx].label)
        out.append((np.stack(clips), np.asarray(labels, np.int32)))
    return out, failed, padded


def take(loader, n):
    try:
        return [tuple(np.asarray(a) for a in loader.next()) for _ in range(n)]
    finally:
        loader.close()


def test_grain_loader_gives_the_old_batches_and_resumes(records):
    spec, seed, b, steps = SPEC, 5, 4, 5
    want, failed, padded = old_batches(records, spec, seed, b, steps)
    assert "v3" in failed and padded                       # the case is exercised
    mesh = T.data_mesh()
    loader = BatchLoader(records, spec, seed, b, 0, 0, 2, mesh=mesh, stop=steps)
    got = take(loader, steps)
    for (x, y), (wx, wy) in zip(got, want):
        np.testing.assert_array_equal(y, wy)
        np.testing.assert_allclose(x, wx, rtol=0, atol=2e-6)
    assert loader.failed == failed and loader.padded == padded
    # resumed at step 3 with the bookkeeping of steps 0-2: the same last batches, the same totals
    _, f3, p3 = old_batches(records, spec, seed, b, 3)
    resumed = BatchLoader(records, spec, seed, b, 3, 0, 2, mesh=mesh, stop=steps, failed=f3, padded=p3)
    for (x, y), (gx, gy) in zip(take(resumed, 2), got[3:]):
        np.testing.assert_array_equal(x, gx)
        np.testing.assert_array_equal(y, gy)
    assert resumed.failed == failed and resumed.padded == padded


def test_grain_workers_give_the_same_batches(records):
    """Two Grain worker processes: the same batches, bit for bit, as in-process reading."""
    mesh = T.data_mesh()
    inline = take(BatchLoader(records, SPEC, 1, 4, 2, 0, 2, mesh=mesh, stop=5), 3)
    loader = BatchLoader(records, SPEC, 1, 4, 2, 2, 2, mesh=mesh, stop=5)
    pooled = take(loader, 3)
    for (x, y), (px, py) in zip(inline, pooled):
        np.testing.assert_array_equal(x, px)
        np.testing.assert_array_equal(y, py)
    assert loader.stats["batches"] == 3


def test_element_is_a_function_of_seed_and_sample(records):
    a = load_train_element(records, SPEC, 2, 13)
    b = load_train_element(records, SPEC, 2, 13)
    assert a.video == b.video and a.failed == b.failed
    np.testing.assert_array_equal(a.frames, b.frames)
    for f in D.TAP_FIELDS:
        np.testing.assert_array_equal(getattr(a.taps, f), getattr(b.taps, f))
    assert jax.device_count() >= 1
