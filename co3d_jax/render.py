"""Render a continual model's predictions onto its input video (``experiments.stream --render``).

Each output frame shows, for every stream side by side: the input frame, the latest top-k classes
and scores (drawn from the first frame where the model emits; on frames where it does not emit,
e.g. the off-phase frames of a temporal stride, the latest output stays, labelled with the frame
it came from), and a strip chart of the probabilities over time of the stream's most probable
classes (the ``chart_classes`` with the highest peak score), up to the current frame. Drawn with
numpy and OpenCV, written with :func:`co3d_jax.data.video.encode_video`.

    render_streams("out.mp4", [StreamTrace(frames, scores, valid, "video.mp4")], labels, fps=15)
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Sequence

import numpy as np

from .extras import require

PANEL_WIDTH = 320       # width of one stream's column (pixels, even)
TEXT_HEIGHT = 112       # the top-k block under the frame
CHART_HEIGHT = 96       # the strip chart under it
COLOURS = ((230, 85, 13), (49, 130, 189), (49, 163, 84), (117, 107, 177), (214, 39, 40), (140, 86, 75))


@dataclasses.dataclass
class StreamTrace:
    """One stream to render: ``frames`` uint8 ``(T, H, W, 3)`` (any size: scaled to the panel
    width), ``scores`` ``(T, K)`` class scores of each step, ``valid`` ``(T,)`` whether the model
    emitted on that frame, and a ``name`` for the panel's title."""

    frames: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    name: str = ""


def _text(img, s: str, org, scale: float = 0.4, colour=(255, 255, 255), thickness: int = 1) -> None:
    cv2 = require("cv2", "data", "drawing a rendered stream (--render)")
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def chart_classes(scores: np.ndarray, valid: np.ndarray, n: int) -> list[int]:
    """The ``n`` classes with the highest peak score over the frames where the model emitted."""
    if not valid.any():
        return []
    peak = scores[valid].max(axis=0)
    return [int(k) for k in np.argsort(-peak)[:n]]


def render_panel(trace: StreamTrace, t: int, labels: Sequence[str], top: int = 5, classes: Sequence[int] = (),
                 width: int = PANEL_WIDTH) -> np.ndarray:
    """One stream's column at frame ``t``: uint8 ``(H', width, 3)``."""
    cv2 = require("cv2", "data", "drawing a rendered stream (--render)")

    frame = trace.frames[min(t, len(trace.frames) - 1)]
    h = int(round(frame.shape[0] * width / frame.shape[1] / 2)) * 2
    img = cv2.resize(frame, (width, h), interpolation=cv2.INTER_AREA)
    text = np.full((TEXT_HEIGHT, width, 3), 24, np.uint8)
    chart = np.full((CHART_HEIGHT, width, 3), 16, np.uint8)
    if trace.name:
        cv2.rectangle(img, (0, 0), (width, 16), (0, 0, 0), -1)
        _text(img, trace.name[-48:], (4, 12), 0.38)
    emitted = np.nonzero(trace.valid[: t + 1])[0]
    if len(emitted) == 0:
        _text(text, f"frame {t}: warming up", (6, 18), 0.45, (160, 160, 160))
    else:
        last = int(emitted[-1])
        s = trace.scores[last]
        _text(text, f"frame {t}" + ("" if last == t else f" (output of frame {last})"), (6, 16), 0.42,
              (255, 255, 255) if last == t else (170, 170, 170))
        for r, k in enumerate(np.argsort(-s)[:top]):
            y = 22 + 18 * r
            colour = COLOURS[list(classes).index(k) % len(COLOURS)] if k in classes else (150, 150, 150)
            bar = int(max(0.0, min(1.0, float(s[k]))) * (width - 12))
            cv2.rectangle(text, (6, y), (6 + bar, y + 14), colour, -1)
            _text(text, f"{labels[k][:34]} {s[k]:.3f}", (10, y + 11), 0.4)
    # strip chart: each chart class's score at the frames the model emitted so far, on a y axis
    # from 0 to the chart classes' peak over the whole stream (fixed, so the lines do not jump)
    cv2.line(chart, (0, CHART_HEIGHT - 2), (width, CHART_HEIGHT - 2), (90, 90, 90), 1)
    total = max(len(trace.valid), 2)
    top_score = max([float(trace.scores[trace.valid][:, k].max()) for k in classes] + [1e-6])
    if classes and len(emitted):
        _text(chart, f"{top_score:.3g}", (width - 44, 11), 0.35, (150, 150, 150))
    for i, k in enumerate(classes):
        pts = [(int(u * (width - 1) / (total - 1)),
                int((CHART_HEIGHT - 3) * (1 - min(max(float(trace.scores[u, k]) / top_score, 0), 1)))) for u in emitted]
        if len(pts) == 1:
            cv2.circle(chart, pts[0], 2, COLOURS[i % len(COLOURS)], -1)
        elif pts:
            cv2.polylines(chart, [np.asarray(pts, np.int32)], False, COLOURS[i % len(COLOURS)], 1, cv2.LINE_AA)
    x = int(t * (width - 1) / (total - 1))
    cv2.line(chart, (x, 0), (x, CHART_HEIGHT - 1), (200, 200, 200), 1)
    return np.concatenate([img, text, chart], axis=0)


def render_frames(traces: Sequence[StreamTrace], labels: Sequence[str], top: int = 5, chart: int = 5,
                  width: int = PANEL_WIDTH) -> np.ndarray:
    """uint8 ``(T, H, W, 3)``: the streams' panels side by side for every frame (``T`` = the
    longest stream; a shorter stream's panel holds its last frame)."""
    if not traces:
        raise ValueError("render: no streams")
    classes = [chart_classes(np.asarray(tr.scores), np.asarray(tr.valid, bool), chart) for tr in traces]
    traces = [dataclasses.replace(tr, scores=np.asarray(tr.scores, np.float32), valid=np.asarray(tr.valid, bool))
              for tr in traces]
    length = max(len(tr.valid) for tr in traces)
    out = []
    for t in range(length):
        panels = [render_panel(tr, min(t, len(tr.valid) - 1), labels, top, cl, width) for tr, cl in zip(traces, classes)]
        h = max(p.shape[0] for p in panels)
        panels = [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0))) for p in panels]
        out.append(np.concatenate(panels, axis=1))
    return np.stack(out)


def render_streams(path: str, traces: Sequence[StreamTrace], labels: Sequence[str], fps: float = 15, top: int = 5,
                   chart: int = 5, width: int = PANEL_WIDTH) -> tuple[int, int, int]:
    """Render ``traces`` (see :func:`render_frames`) and write them to the video ``path``;
    returns ``(frames, height, width)`` of the written video."""
    from .data.video import encode_video

    frames = render_frames(traces, labels, top, chart, width)
    encode_video(path, frames, Fraction(fps).limit_denominator(1001))  # PyAV wants a rational rate
    return frames.shape[:3]


__all__ = ["StreamTrace", "chart_classes", "render_frames", "render_panel", "render_streams"]
