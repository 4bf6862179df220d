"""Herding exemplar selection (iCaRL), as PyCIL and PROOF use it, and the per-class budget.

``herding_order(feats, m)`` picks, one at a time and without replacement, the sample whose
addition brings the mean of the chosen normalised features closest to the class mean."""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F


def herding_order(feats: torch.Tensor, m: int) -> List[int]:
    """Indices (into ``feats`` (n, d), normalised here) of the first ``m`` herding picks
    (``m`` is capped at n)."""
    x = F.normalize(feats.double(), dim=1)
    mu = x.mean(0)
    chosen: List[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(x), dtype=torch.bool)
    for k in range(1, min(m, len(x)) + 1):
        dist = ((mu - (running + x) / k) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += x[i]
    return chosen


def per_class_budget(memory_size: int, fixed: bool, per_class: int, seen_classes: int) -> int:
    """Exemplars per class: ``per_class`` with a fixed memory, else ``memory_size // seen``."""
    return per_class if fixed else memory_size // max(1, seen_classes)


def update_herding_memory(memory: Dict[int, List[int]], feats: torch.Tensor, labels: torch.Tensor,
                          new_classes, m: int) -> Dict[int, List[int]]:
    """Old classes keep their first ``m`` exemplars (herding order); each new class gets its
    first ``m`` herding picks. ``memory`` maps class -> indices into ``feats``/``labels``."""
    out = {c: idx[:m] for c, idx in memory.items()}
    for c in new_classes:
        rows = torch.nonzero(labels == c).flatten()
        out[c] = [int(rows[i]) for i in herding_order(feats[rows], m)]
    return out
