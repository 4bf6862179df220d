"""Growing cosine classifier for gap compensation (SPEC 13-15).

One weight block per task; a new task's rows start at the mean of its classes'
L2-normalized features. Logits are cosines (no temperature, no bias by default; ``scale``
multiplies them). Only the newest block is trainable, so earlier rows cannot change.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F


class CosineLinear(nn.Module):
    def __init__(self, in_features: int, scale: float = 1.0):
        super().__init__()
        self.in_features = in_features
        self.scale = scale
        self.blocks = nn.ParameterList()

    @property
    def out_features(self) -> int:
        return sum(b.shape[0] for b in self.blocks)

    def add_classes(self, features: torch.Tensor, labels: torch.Tensor, num_new: int, offset: int) -> nn.Parameter:
        """Append ``num_new`` rows for labels ``offset .. offset+num_new-1``, each the mean
        of those images' normalized ``features`` (N, in_features). Earlier blocks freeze."""
        feats = F.normalize(features.float(), dim=1)
        rows = torch.zeros(num_new, self.in_features, dtype=torch.float32, device=features.device)
        for c in range(num_new):
            mask = labels == offset + c
            if not mask.any():
                raise ValueError(f"no training features for class {offset + c}: cannot initialise its prototype")
            rows[c] = feats[mask].mean(dim=0)
        for b in self.blocks:
            b.requires_grad_(False)
        block = nn.Parameter(rows)
        self.blocks.append(block)
        return block

    def load_blocks(self, blocks: List[torch.Tensor], device: torch.device) -> None:
        """Replace all blocks (from a checkpoint); the last one stays trainable."""
        self.blocks = nn.ParameterList([nn.Parameter(b.to(device).float(), requires_grad=i == len(blocks) - 1)
                                        for i, b in enumerate(blocks)])

    def block_logits(self, features: torch.Tensor, block: int) -> torch.Tensor:
        """Cosine logits (N, rows of ``block``) against one block only."""
        return self.scale * F.linear(F.normalize(features.float(), dim=1), F.normalize(self.blocks[block], dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, in_features) -> cosine logits (N, out_features) in [-scale, scale]."""
        weight = torch.cat(list(self.blocks), dim=0)
        return self.scale * F.linear(F.normalize(features.float(), dim=1), F.normalize(weight, dim=1))
