"""Gap preservation (SPEC 9-12): the gap statistic and the epoch rule.

The statistic is the paper's mean negative similarity, computed as the released code does
on 100x-scaled logits: per image the mean of its non-target logits, averaged within each
batch, then a plain mean over batches (so a short last batch weighs as much as a full one).
The rule compares relative change, so the scale does not matter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

import torch


def batch_gap_terms(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[float, float]:
    """(mean non-target logit, mean target logit) of one batch.

    logits (B, C) over the classes of the current task set; labels (B,) in [0, C)."""
    B, C = logits.shape
    logits = logits.float()
    target = logits.gather(1, labels.view(-1, 1)).squeeze(1)  # (B,)
    non_target = (logits.sum(dim=1) - target) / (C - 1)  # (B,)
    return float(non_target.mean()), float(target.mean())


@dataclass
class GapAccumulator:
    """Collects per-batch terms; ``negative`` / ``positive`` are the means over batches."""
    neg: List[float] = field(default_factory=list)
    pos: List[float] = field(default_factory=list)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n, p = batch_gap_terms(logits, labels)
        self.neg.append(n)
        self.pos.append(p)

    @property
    def negative(self) -> float:
        return sum(self.neg) / len(self.neg)

    @property
    def positive(self) -> float:
        return sum(self.pos) / len(self.pos)


def gap_statistic(image_feats: torch.Tensor, labels: torch.Tensor, text_feats: torch.Tensor,
                  logit_scale: float, batch_size: int, order: Optional[torch.Tensor] = None) -> Tuple[float, float]:
    """(mean non-target logit, mean target logit) of normalized features, batch by batch
    (SPEC 9): in the image order ``order`` (a permutation; dataset order if None).
    ``labels`` index the columns of ``text_feats``."""
    if order is not None:
        order = order.to(labels.device)
        image_feats, labels = image_feats[order], labels[order]
    acc = GapAccumulator()
    for i in range(0, len(labels), batch_size):
        acc.add(logit_scale * image_feats[i:i + batch_size] @ text_feats.t(), labels[i:i + batch_size])
    return acc.negative, acc.positive


def gap_order(n: int, seed: int, task: int) -> torch.Tensor:
    """The shuffled image order of task ``task``'s gap statistic: the released code draws
    its batches from a shuffled loader (so a short last batch is a random mix of classes,
    not one class of a folder dataset). Drawn from its own generator, so the global random
    stream is untouched; one order per task, shared by all of that task's measurements, so
    the probe's changes measure the model, not the batch order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + task))


def relative_change(neg0: float, neg: float) -> float:
    """|neg0 - neg| / |neg0| (paper Eq. 3)."""
    return abs(neg0 - neg) / abs(neg0)


def violates(neg0: float, neg: float, alpha: float) -> bool:
    return relative_change(neg0, neg) > alpha


@dataclass
class EpochProbe:
    """The epoch rule (SPEC 11): feed the statistic after each probe epoch; the budget E is
    the number of epochs completed before the first violating one, at least 1, or
    ``max_epochs`` if none violates."""
    neg0: float
    alpha: float
    max_epochs: int
    values: List[float] = field(default_factory=list)
    changes: List[float] = field(default_factory=list)
    budget: Optional[int] = None

    def update(self, neg: float) -> bool:
        """Record epoch ``len(values)+1``; returns True when probing should stop."""
        if self.budget is not None:
            raise RuntimeError("the probe has already chosen its epoch budget")
        self.values.append(neg)
        self.changes.append(relative_change(self.neg0, neg))
        if violates(self.neg0, neg, self.alpha):
            self.budget = max(1, len(self.values) - 1)
        elif len(self.values) >= self.max_epochs:
            self.budget = self.max_epochs
        return self.budget is not None


def choose_epochs(neg0: float, values: Iterable[float], alpha: float, max_epochs: int) -> int:
    """E for a whole sequence of per-epoch statistics (convenience over ``EpochProbe``)."""
    probe = EpochProbe(neg0, alpha, max_epochs)
    for v in values:
        if probe.update(v):
            break
    if probe.budget is None:
        raise ValueError(f"{len(probe.values)} values given, fewer than max_epochs={max_epochs}, and none violates")
    return probe.budget
