import math

import numpy as np
import pytest

from utils.metrics import backward_transfer, forgetting, per_task_accuracy, summarize, topk_accuracy

# Hand-made accuracy matrix: rows = after task t, columns = task j.
M = [[90.0],
     [80.0, 70.0],
     [60.0, 75.0, 50.0]]


def test_forgetting_by_hand():
    # task 0: best earlier max(90, 80) = 90, final 60 -> 30; task 1: best 70, final 75 -> -5
    assert forgetting(M) == pytest.approx((30 + (-5)) / 2)


def test_bwt_by_hand():
    # (60 - 90) + (75 - 70) over 2 old tasks
    assert backward_transfer(M) == pytest.approx((-30 + 5) / 2)


def test_summary_avg_last_and_single_task():
    s = summarize([90.0, 75.0, 61.0], M)
    assert s["avg"] == pytest.approx((90 + 75 + 61) / 3)
    assert s["last"] == 61.0
    single = summarize([90.0], [[90.0]])
    assert single["forgetting"] is None and single["bwt"] is None


def test_per_task_accuracy_and_topk():
    y_true = np.array([0, 1, 2, 3, 3])
    y_pred = np.array([0, 0, 2, 3, 1])
    acc = per_task_accuracy(y_pred, y_true, [range(0, 2), range(2, 4), range(4, 6)])
    assert acc[0] == pytest.approx(50.0) and acc[1] == pytest.approx(100 * 2 / 3)
    assert math.isnan(acc[2])
    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    assert topk_accuracy(scores, np.array([0, 2]), 2) == pytest.approx(100.0)  # both in top-2
    assert topk_accuracy(scores, np.array([0, 2]), 1) == pytest.approx(0.0)


def test_both_accuracy_definitions_by_hand_on_unequal_tasks():
    """Task 0 has 1 test image (right), task 1 has 3 (1 right): over all seen images 2/4 =
    50 %; the mean over tasks (CODA-Prompt's) (100 + 33.3) / 2 = 66.7 %."""
    y_true = np.array([0, 2, 2, 3])
    y_pred = np.array([0, 2, 0, 0])
    row = per_task_accuracy(y_pred, y_true, [range(0, 2), range(2, 4)])
    s = summarize([float(np.mean(y_pred == y_true) * 100)], [row])
    assert s["last"] == pytest.approx(50.0)
    assert s["last_task_mean"] == pytest.approx((100 + 100 / 3) / 2)
    s = summarize([90.0, 75.0, 61.0], M)
    assert s["avg_task_mean"] == pytest.approx((90 + (80 + 70) / 2 + (60 + 75 + 50) / 3) / 3)
    assert s["last_task_mean"] == pytest.approx((60 + 75 + 50) / 3)
