"""The per-video predictions an evaluation run appends to: ``predictions.jsonl`` in the run folder
(``predictions.{process}.jsonl`` per process on several hosts), one JSON object per line with at
least ``id`` (and ``error`` for a video that failed). Written by ``experiments/evaluate.py``; read
back by it (to resume) and by ``experiments/scaling.py`` (to compare runs)."""

from __future__ import annotations

import json
import os
import re

PREDICTIONS = "predictions.jsonl"


def prediction_files(out: str) -> list[str]:
    return sorted(os.path.join(out, n) for n in os.listdir(out)
                  if n == PREDICTIONS or re.fullmatch(r"predictions\.\d+\.jsonl", n)) if os.path.isdir(out) else []


def repair_tail(path: str) -> None:
    """Drop a partial last line (a run killed mid-write)."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_predictions(out: str) -> dict:
    """``id -> record`` from all prediction files (the last line for an id wins)."""
    done = {}
    for path in prediction_files(out):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[rec["id"]] = rec
    return done
