"""Mixture-of-experts adapters in both of CLIP's encoders (MoE-Adapters, docs/methods/moe_adapters.md).

Beside the MLP of every residual block of the image and the text transformer: ``experts``
AdaptFormer adapters (``utils.adapter.Adapter``) and a noisy top-k router. For each
sample, the router reads the block's stream at the sample's first token ``h0`` (the class
token of an image, the start token of a prompt) and gives gate logits
``h0 @ W_router + N(0, 1) * (softplus(h0 @ W_noise) + 0.01)``; the gates are the softmax
of the top-k logits (zero elsewhere), and the block adds ``sum_i gate_i * expert_i(h)`` over
the sample's whole stream ``h``. Router and noise weights start at zero.

As in the official code, the noise is drawn at test time too (its blocks read their
training flag once, when built); ``noise_at_test: false`` gates with the clean logits at
test time instead.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.adapter import Adapter, add_beside_mlp
from utils.clip_backbone import ClipBackbone


class MoEAdapter(nn.Module):
    """``experts`` adapters on a (L, N, D) stream (N, L, D with ``batch_first``) mixed per sample."""

    def __init__(self, d: int, experts: int, top_k: int, bottleneck: int, scale: float, dropout: float,
                 noise_at_test: bool = True, batch_first: bool = False, noise_epsilon: float = 0.01):
        super().__init__()
        self.experts = nn.ModuleList(Adapter(d, bottleneck, scale, dropout) for _ in range(experts))
        self.router = nn.Parameter(torch.zeros(d, experts))
        self.w_noise = nn.Parameter(torch.zeros(d, experts))
        self.top_k, self.noise_at_test, self.batch_first = top_k, noise_at_test, batch_first
        self.noise_epsilon = noise_epsilon

    def gates(self, h0: torch.Tensor) -> torch.Tensor:
        """(N, experts): softmax over each sample's top-k gate logits, zero elsewhere."""
        logits = h0 @ self.router.to(h0)
        if self.training or self.noise_at_test:
            std = F.softplus(h0 @ self.w_noise.to(h0)) + self.noise_epsilon
            logits = logits + torch.randn_like(logits) * std
        top, index = logits.topk(min(self.top_k, logits.shape[1]), dim=1)
        return torch.zeros_like(logits).scatter(1, index, torch.softmax(top, dim=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        g = self.gates(h[:, 0] if self.batch_first else h[0])
        out = 0
        for i, expert in enumerate(self.experts):
            weight = g[:, i, None, None] if self.batch_first else g[None, :, i, None]
            out = out + weight * expert(h)
        return out


def apply_moe_adapters(backbone: ClipBackbone, experts: int, top_k: int, bottleneck: int, scale: float,
                       dropout: float, noise_at_test: bool = True) -> List[MoEAdapter]:
    """MoE adapters beside every MLP of both encoders; only they require grad."""
    backbone.requires_grad_(False)

    def make(d: int) -> MoEAdapter:
        return MoEAdapter(d, experts, top_k, bottleneck, scale, dropout, noise_at_test, backbone.batch_first)

    return add_beside_mlp(backbone.model.visual.transformer, make) + add_beside_mlp(backbone.model.transformer, make)
