"""Linear-algebra measures of the modality gap and of classifier subspaces (MG-CLIP
supplementary, Section 3): energy rank of a feature matrix, orthonormal bases and numerical ranks,
principal angles between subspaces, and the gap measures between image and text features.
Pure functions on tensors; ``toolbox/analysis.py`` applies them to runs."""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F


def energy_rank(x: torch.Tensor, energy: float = 0.95) -> Tuple[int, torch.Tensor]:
    """Smallest k whose top-k singular values of ``x`` (N, d) hold ``energy`` of the sum of
    squared singular values; returns (k, an orthonormal basis (d, k) of those directions)."""
    _, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    share = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    k = int((share < energy - 1e-12).sum()) + 1
    return k, vh[:k].t()


def span_basis(columns: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis (d, r) of the span of ``columns`` (d, n), r = the numerical rank
    (singular values above ``tol`` x the largest). The supplementary takes QR bases; for
    columns of full rank QR and this span the same subspace with the same rank, and the SVD
    also stays right when columns depend on each other (QR without pivoting does not)."""
    u, s, _ = torch.linalg.svd(columns.double(), full_matrices=False)
    if s.numel() == 0 or float(s.max()) == 0.0:
        return u[:, :0]
    return u[:, s > tol * s.max()]


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between span(a) and span(b), both orthonormal
    bases (d, p) and (d, q): arccos of the singular values of a^T b."""
    if a.shape[1] == 0 or b.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)
    cos = torch.linalg.svdvals(a.double().t() @ b.double()).clamp(-1.0, 1.0)
    return torch.arccos(cos)


def subspace_report(a: torch.Tensor, b: torch.Tensor) -> Dict[str, float]:
    """Ranks, union rank, principal angles (degrees: smallest, mean, largest) and the
    overlap (mean cos^2 of the principal angles) of two orthonormal bases."""
    angles = principal_angles(a, b)
    union = span_basis(torch.cat([a, b], dim=1))
    degrees = [math.degrees(float(t)) for t in angles]
    return {"rank_a": a.shape[1], "rank_b": b.shape[1], "rank_union": union.shape[1],
            "angle_min_deg": min(degrees) if degrees else None, "angle_mean_deg": sum(degrees) / len(degrees)
            if degrees else None, "angle_max_deg": max(degrees) if degrees else None,
            "overlap": float((torch.cos(angles) ** 2).mean()) if degrees else None}


def gap_measures(image: torch.Tensor, labels: torch.Tensor, text: torch.Tensor,
                 scale: float = 100.0) -> Dict[str, float]:
    """Between normalised image features (N, d) with labels (N,) and normalised class text
    features (C, d): the mean cosine of each image with its class's text, the distance
    between the two centroids, and the gap statistic (mean over images of the mean
    non-target logit, ``scale`` x cosine; MG-CLIP's statistic without batches)."""
    image, text = F.normalize(image.double(), dim=1), F.normalize(text.double(), dim=1)
    cos = image @ text.t()
    target = cos.gather(1, labels.view(-1, 1)).squeeze(1)
    c = text.shape[0]
    non_target = (cos.sum(1) - target) / (c - 1) if c > 1 else torch.full_like(target, float("nan"))
    return {"matched_cosine": float(target.mean()),
            "centroid_distance": float((image.mean(0) - text.mean(0)).norm()),
            "gap_statistic": float(scale * non_target.mean())}
