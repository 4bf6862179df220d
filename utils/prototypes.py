"""Class prototypes and the cosine classifier over them (SimpleCIL, APER).

A class's prototype is the mean of its training images' features as they are (not
normalised first); a test image goes to the class whose prototype has the largest cosine
with its feature. The official code's classifier multiplies the cosines by a scale
(``sigma``, 1 when the prototypes are set), which changes no prediction.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def class_means(feats: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """(len(classes), d): the mean feature of each class, in the order of ``classes``."""
    return torch.stack([feats[labels == c].mean(0) for c in classes])


def cosine_scores(feats: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(N, K): the cosine of each feature (N, d) with each prototype (K, d)."""
    return F.normalize(feats, dim=1) @ F.normalize(prototypes, dim=1).t()
