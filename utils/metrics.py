"""Continual-learning metrics on an accuracy matrix.

``A[t][j]``: accuracy (%) on task j's classes after training task t (j <= t).
- accuracy after task t: over all seen test images (not the mean of the row), as PyCIL,
  MG-CLIP, RAPF and PROOF compute it;
- task-mean accuracy after task t: the mean of row t, i.e. the mean over seen tasks of each
  task's accuracy, as CODA-Prompt's trainer computes it (the two agree when every task has
  as many test images, e.g. CIFAR-100; not on ImageNet-R);
- Avg: mean of the accuracies after each task; Last: the final one (of either definition);
- forgetting: mean over old tasks j < T-1 of (best A[t][j] for j <= t < T-1) - A[T-1][j];
- BWT: mean over old tasks of A[T-1][j] - A[j][j].
Forgetting and BWT are None with a single task.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


def accuracy(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_pred) == np.asarray(y_true)) * 100.0) if len(y_true) else 0.0


def accuracy_dict(y_pred: np.ndarray, y_true: np.ndarray, task_ranges: Sequence[range], known_classes: int,
                  topk: int = 5) -> Dict[str, object]:
    """PyCIL's accuracy dict, grouped by task. ``y_pred`` (N, k) class ids best first,
    ``y_true`` (N,). ``grouped`` holds ``total``, one ``"start-end"`` key per task (zero-padded
    to the width of the largest label, so they sort as strings too: a fork's trainer builds
    its accuracy matrix from them, one column per task), ``old`` and ``new``; also
    ``top1``, ``top<topk>`` and ``per_task`` (unrounded, the accuracy-matrix row)."""
    y_pred, y_true = np.asarray(y_pred), np.asarray(y_true)
    top1 = y_pred[:, 0]
    width = max(2, len(str(max((r.stop - 1 for r in task_ranges), default=0))))
    grouped: Dict[str, float] = {"total": round(accuracy(top1, y_true), 2)}
    per_task = per_task_accuracy(top1, y_true, task_ranges)
    for r, acc in zip(task_ranges, per_task):
        grouped[f"{r.start:0{width}d}-{r.stop - 1:0{width}d}"] = round(acc, 2)
    old = y_true < known_classes
    grouped["old"] = round(accuracy(top1[old], y_true[old]), 2) if old.any() else 0.0
    grouped["new"] = round(accuracy(top1[~old], y_true[~old]), 2) if (~old).any() else 0.0
    k = min(topk, y_pred.shape[1])
    return {
        "grouped": grouped,
        "top1": accuracy(top1, y_true),
        f"top{topk}": float(np.mean((y_pred[:, :k] == y_true[:, None]).any(axis=1)) * 100),
        "per_task": per_task,
    }


def per_task_accuracy(y_pred: np.ndarray, y_true: np.ndarray, task_ranges: Sequence[range]) -> List[float]:
    """Accuracy (%) on each task's classes; a task without test images gives NaN."""
    y_pred, y_true = np.asarray(y_pred), np.asarray(y_true)
    out = []
    for r in task_ranges:
        mask = (y_true >= r.start) & (y_true < r.stop)
        out.append(accuracy(y_pred[mask], y_true[mask]) if mask.any() else float("nan"))
    return out


def topk_accuracy(scores: np.ndarray, y_true: np.ndarray, k: int) -> float:
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean((top == np.asarray(y_true)[:, None]).any(axis=1)) * 100.0)


def forgetting(matrix: Sequence[Sequence[float]]) -> Optional[float]:
    T = len(matrix)
    if T < 2:
        return None
    drops = [max(matrix[t][j] for t in range(j, T - 1)) - matrix[T - 1][j] for j in range(T - 1)]
    return float(np.mean(drops))


def backward_transfer(matrix: Sequence[Sequence[float]]) -> Optional[float]:
    T = len(matrix)
    if T < 2:
        return None
    return float(np.mean([matrix[T - 1][j] - matrix[j][j] for j in range(T - 1)]))


def task_mean_accuracies(matrix: Sequence[Sequence[float]]) -> List[float]:
    """The task-mean accuracy after each task: the mean of each accuracy-matrix row (a task
    without test images, NaN, is left out)."""
    return [float(np.nanmean(row)) for row in matrix]


def summarize(accuracies: Sequence[float], matrix: Sequence[Sequence[float]]) -> Dict[str, Optional[float]]:
    """Avg and Last of both accuracy definitions (``avg``/``last``: over all seen test
    images; ``avg_task_mean``/``last_task_mean``: mean over tasks), forgetting and BWT."""
    task_mean = task_mean_accuracies(matrix)
    return {
        "avg": float(np.mean(accuracies)) if len(accuracies) else None,
        "last": float(accuracies[-1]) if len(accuracies) else None,
        "avg_task_mean": float(np.mean(task_mean)) if task_mean else None,
        "last_task_mean": task_mean[-1] if task_mean else None,
        "forgetting": forgetting(matrix),
        "bwt": backward_transfer(matrix),
    }
