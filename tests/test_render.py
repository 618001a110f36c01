"""``co3d_jax.render`` and ``experiments.stream --render``: checked by decoding the written video
(frame count, size) and by where the overlay changes pixels (the top-k block and the strip chart
only once the model has emitted)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("cv2")

from co3d_jax.data.synthetic import moving_pattern  # noqa: E402
from co3d_jax.data.video import decode_all  # noqa: E402
from co3d_jax.render import (CHART_HEIGHT, PANEL_WIDTH, TEXT_HEIGHT, StreamTrace, chart_classes,  # noqa: E402
                             render_frames, render_streams)

LABELS = [f"class_{i}" for i in range(7)]


def trace(t=20, delay=6, stride=2, seed=0, size=(48, 64)):
    rng = np.random.default_rng(seed)
    frames = np.stack([moving_pattern(t, max(size), seed=seed)[i][: size[0], : size[1]] for i in range(t)])
    scores = rng.dirichlet(np.ones(len(LABELS)), t).astype(np.float32)
    valid = np.zeros(t, bool)
    valid[delay::stride] = True
    return StreamTrace(frames, scores, valid, f"stream{seed}.mp4")


def test_render_frames_overlay_only_where_predictions_exist():
    tr = trace()
    out = render_frames([tr], LABELS)
    h_img = 48 * PANEL_WIDTH // 64
    assert out.shape == (20, h_img + TEXT_HEIGHT + CHART_HEIGHT, PANEL_WIDTH, 3) and out.dtype == np.uint8
    silent = render_frames([StreamTrace(tr.frames, tr.scores, np.zeros(20, bool), tr.name)], LABELS)
    below = slice(h_img, None)  # the top-k block and the chart
    changed = [(out[t, below] != silent[t, below]).any() for t in range(20)]
    assert changed == [t >= 6 for t in range(20)]
    # the video part is the same frame either way; the top-k block holds between emissions
    np.testing.assert_array_equal(out[:, :h_img], silent[:, :h_img])
    assert chart_classes(tr.scores, tr.valid, 3) == list(np.argsort(-tr.scores[tr.valid].max(0))[:3])
    # two streams side by side, the shorter one holding its last frame
    two = render_frames([tr, trace(t=12, seed=1, size=(40, 40))], LABELS)
    assert two.shape[:3] == (20, max(h_img, PANEL_WIDTH) + TEXT_HEIGHT + CHART_HEIGHT, 2 * PANEL_WIDTH)


def test_written_video_decodes(tmp_path):
    tr = trace(t=24)
    path = str(tmp_path / "out.mp4")
    n, h, w = render_streams(path, [tr], LABELS, fps=15)
    frames, fps = decode_all(path)
    assert frames.shape == (24, h, w, 3) == (n, h, PANEL_WIDTH * 1, 3) and fps == pytest.approx(15)
    h_img = 48 * PANEL_WIDTH // 64
    text = frames[:, h_img:h_img + TEXT_HEIGHT].astype(np.float32)
    # the bars: far more bright pixels in the text block once predictions exist (mpeg4 is lossy)
    bright = (text.max(-1) > 100).mean(axis=(1, 2))
    assert bright[6:].min() > 5 * bright[:6].max()


def test_stream_cli_render_generated_video(tmp_path, capsys):
    from experiments import stream as S

    out = str(tmp_path / "render.mp4")
    args = ["--model", "cox3d_s_13", "--image-size", "32", "--option", "depth_factor=0.6", "--option", "num_classes=5",
            "--frames", "26", "--render", out]
    assert S.main(args) == 0
    printed = capsys.readouterr().out
    assert "rendered 26 frames" in printed
    frames, _ = decode_all(out)
    # the generated video is (32 + 16) px square
    assert frames.shape == (26, PANEL_WIDTH + TEXT_HEIGHT + CHART_HEIGHT, PANEL_WIDTH, 3)
    text = frames[:, PANEL_WIDTH:PANEL_WIDTH + TEXT_HEIGHT]
    bright = (text.max(-1) > 100).mean(axis=(1, 2))
    assert bright[22:].min() > 5 * bright[:22].max()  # delay 22: predictions from frame 22
