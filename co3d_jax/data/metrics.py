"""Evaluation metrics (reference §5.4), in numpy.

* Top-k: a prediction is correct when the label is among the ``k`` highest scores (ranks from a
  stable descending sort: ties go to the lower class index). :func:`topk_accuracy` is the
  sample-weighted mean; :func:`batch_mean_accuracy` is the reference's number, the mean of
  per-batch accuracies over consecutive batches (``drop_last=False``).
* Charades mAP (:func:`mean_average_precision`): per-class average precision
  ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds (torchmetrics / sklearn,
  no interpolation); classes without a positive have NaN AP and are dropped from the mean.
"""

from __future__ import annotations

import numpy as np


def label_rank(scores: np.ndarray, label: int) -> int:
    """Position of ``label`` in the stable descending order of ``scores`` (0 = top-1)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return int(np.nonzero(order == label)[0][0])


def topk_accuracy(ranks, k: int) -> float:
    ranks = np.asarray(ranks)
    return float(np.mean(ranks < k)) if ranks.size else float("nan")


def batch_mean_accuracy(ranks, k: int, batch_size: int) -> float:
    """Mean over consecutive batches of ``batch_size`` (last one partial) of the batch top-k accuracy."""
    ranks = np.asarray(ranks)
    if not ranks.size:
        return float("nan")
    accs = [np.mean(ranks[i:i + batch_size] < k) for i in range(0, ranks.size, batch_size)]
    return float(np.mean(accs))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: ``scores`` ``(N,)``, binary ``targets`` ``(N,)``; NaN without positives."""
    scores = np.asarray(scores, np.float64)
    targets = np.asarray(targets).astype(bool)
    npos = int(targets.sum())
    if npos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], targets[order]
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]   # last index of each distinct threshold
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / npos
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """``(mAP over classes with a positive, per-class AP (NaN where none))`` for ``(N, K)`` arrays."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    aps = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])
    valid = ~np.isnan(aps)
    return (float(np.mean(aps[valid])) if valid.any() else float("nan")), aps
