"""PyCIL's public learner surface, and nothing else.

A learner keeps ``_cur_task`` (-1 before the first task), ``_known_classes`` (classes of
finished tasks), ``_total_classes`` (seen so far, the current task included),
``_network`` and ``_device``; the trainer calls ``incremental_train(data_manager)``,
``eval_task()`` -> ``(cnn_accy, nme_accy)`` and ``after_task()`` once per task.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from utils.metrics import accuracy_dict


class BaseLearner:
    def __init__(self, args: Dict[str, Any]):
        self.args = args
        self._cur_task = -1
        self._known_classes = 0
        self._total_classes = 0
        self._network = None
        self._old_network = None
        self._data_memory, self._targets_memory = np.array([]), np.array([])
        self.topk = 5
        self._memory_size = args.get("memory_size", 0)
        self._memory_per_class = args.get("memory_per_class", None)
        self._fixed_memory = args.get("fixed_memory", False)
        device = args.get("device", "cpu")
        self._multiple_gpus = list(device) if isinstance(device, (list, tuple)) else [device]
        self._device = self._multiple_gpus[0]
        # Class ranges of the tasks seen so far (for the accuracy matrix).
        self._task_ranges: List[range] = []

    @property
    def exemplar_size(self) -> int:
        return len(self._targets_memory)

    def _get_memory(self):
        """PyCIL: the exemplars as ``(data, targets)`` for ``get_dataset(appendent=...)``, or None."""
        return None if len(self._targets_memory) == 0 else (self._data_memory, self._targets_memory)

    def incremental_train(self, data_manager) -> None:
        raise NotImplementedError

    def eval_task(self):
        raise NotImplementedError

    def after_task(self) -> None:
        self._known_classes = self._total_classes

    def _evaluate(self, y_pred: np.ndarray, y_true: np.ndarray) -> Dict[str, Any]:
        """PyCIL's accuracy dict. y_pred (N, topk) class ids, best first; y_true (N,)."""
        return accuracy_dict(y_pred, y_true, self._task_ranges, self._known_classes, self.topk)

    def state_dict(self) -> Dict[str, Any]:
        """Counters of the completed tasks (for checkpoints; plain types only). A learner
        saved in the middle of a task describes the state before that task."""
        done = [r for r in self._task_ranges if r.stop <= self._known_classes]
        return {"cur_task": len(done) - 1, "known_classes": self._known_classes,
                "task_ranges": [[r.start, r.stop] for r in done]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._cur_task = state["cur_task"]
        self._known_classes = self._total_classes = state["known_classes"]
        self._task_ranges = [range(a, b) for a, b in state["task_ranges"]]

    def results_extra(self) -> Dict[str, Any]:
        """Method-specific records for results.json (epochs, gap values, ...)."""
        return {}
