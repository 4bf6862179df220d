"""RAPF's decomposed parameter fusion (ECCV 2024): merge a task's trained weight into the
previous one in the left-singular basis of the previous weight."""
from __future__ import annotations

import torch


def svd_fusion(w_old: torch.Tensor, w_new: torch.Tensor, bias: float) -> torch.Tensor:
    """W_old = U S V^T; in U's basis R_o = U^T W_old, R_n = U^T W_new, D = |R_n - R_o|;
    mask M = min(D / max D + bias, 1); returns U (M * R_n + (1 - M) * R_o). Every entry
    keeps at least ``bias`` of its update, the one that changed most keeps all of it;
    ``bias >= 1`` returns ``w_new`` (up to rounding), ``w_new == w_old`` returns ``w_old``."""
    w_old, w_new = w_old.float(), w_new.float()
    u, _, _ = torch.linalg.svd(w_old)
    r_old, r_new = u.t() @ w_old, u.t() @ w_new
    diff = (r_new - r_old).abs()
    top = diff.max()
    if top == 0:
        return w_old.clone()
    mask = torch.clamp(diff / top + bias, max=1.0)
    return u @ (mask * r_new + (1 - mask) * r_old)
