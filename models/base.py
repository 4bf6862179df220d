"""The learner contract: PyCIL's public learner surface, plus the optional hooks this
toolbox's trainer, report and analysis use. A PyCIL fork sees only the first part.

PyCIL's surface (what forks rely on; see docs/forks.md). A learner keeps ``_cur_task`` (-1
before the first task), ``_known_classes`` (classes of finished tasks), ``_total_classes``
(seen so far, the current task included), ``_network`` and ``_device``; the trainer calls
``incremental_train(data_manager)``, ``eval_task()`` -> ``(cnn_accy, nme_accy)`` and
``after_task()`` once per task.

The toolbox's hooks, each with a default here that works or fails loudly, never one that
quietly gives a wrong answer:

=========================  ======================================================  ===================
hook                       what it is for                                          default
=========================  ======================================================  ===================
``options_class``          the method's options dataclass (defaults = official)    None: no options
``release``                the official release ``released`` data files come from  None: name one
``uses_text``              whether it builds prompts from class names (then        True
                           folder ids such as wnids are refused as names)
``trains``                 what the method trains, in words ("" = nothing)          required by analysis
``state_dict`` / ``load_state_dict``  what a resumed run needs                     the task counters
``results_extra()``        the method's own records for results.json                {}
``task_metrics()``         extra figures of the task just evaluated, by name;       {}
                           each becomes a metrics.csv column and a report column
                           (``text_accuracy`` shows as "text Last")
``timings``                cumulative seconds per phase (results.json)              {}
``on_checkpoint``          set by the trainer: call it to save a checkpoint now     None
``image_view(x, trained)``  analysis: L2-normalised image features (N, D) of        NotImplementedError
                           preprocessed images, as trained or as zero-shot CLIP
``text_view(names, trained)``  analysis: the same for the class prompts (C, D)     NotImplementedError
``visual_classifier()``    analysis: a visual classifier's rows (K, D), or None     None
=========================  ======================================================  ===================
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch


class BaseLearner:
    options_class: Optional[type] = None
    release: Optional[str] = None
    uses_text: bool = True  # prompts from class names: class folders that are ids are refused as names

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
        self.timings: Dict[str, float] = {}
        self.on_checkpoint: Optional[Callable[[], None]] = None

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

    # ------------------------------------------------------------------ the toolbox's hooks
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

    def task_metrics(self) -> Dict[str, float]:
        """Extra figures of the task ``eval_task`` just evaluated, by name."""
        return {}

    @property
    def trains(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} does not say what it trains: set its class attribute "
                                  f"'trains' (\"\" for a method that trains nothing; see models/base.py)")

    def image_view(self, images: torch.Tensor, trained: bool) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no image_view(images, trained): the analysis needs "
                                  f"it to compare the trained features with zero-shot CLIP's (see models/base.py)")

    def text_view(self, names: Sequence[str], trained: bool) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no text_view(names, trained): the analysis needs "
                                  f"it to compare the trained features with zero-shot CLIP's (see models/base.py)")

    # The two defaults above refuse: toolbox/retention.py reads this mark to refuse a learner without its own.
    image_view.refuses = text_view.refuses = True

    def visual_classifier(self) -> Optional[torch.Tensor]:
        return None
