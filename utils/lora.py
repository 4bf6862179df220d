"""LoRA on CLIP's attention projections (SPEC item 4), built on loralib.

Default: key and value projections of every residual attention block of both encoders,
rank 8, alpha 1 (update = W x + (alpha / r) B A x), A Xavier-uniform, B zero, no dropout.
Only LoRA parameters require grad. ``lora_disabled(model)`` runs the model as plain CLIP
(used for the gap reference, SPEC 10) without copying weights.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Sequence

import loralib
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.clip_backbone import ClipBackbone, SDPAttention

_TARGET_ATTR = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj"}
LORA_TARGETS = tuple(_TARGET_ATTR)  # the projections LoRA can wrap
LORA_ENCODERS = ("visual", "text")


class LoRALinear(loralib.Linear):
    """A frozen ``nn.Linear`` plus a trainable low-rank update that can be switched off.

    Weights are never merged (``merge_weights=False``): the frozen weight stays
    bit-identical in train and eval mode, and switching the update off is exact."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__(base.in_features, base.out_features, r=rank, lora_alpha=alpha,
                         merge_weights=False, bias=base.bias is not None)
        with torch.no_grad():
            self.weight.copy_(base.weight)
            if base.bias is not None:
                self.bias.copy_(base.bias)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.reset_lora()
        self.lora_enabled = True

    def reset_lora(self) -> None:
        """A ~ Xavier-uniform, B = 0: the layer equals the frozen linear again."""
        nn.init.xavier_uniform_(self.lora_A)
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.lora_enabled:
            out = out + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling
        return out


def _blocks(backbone: ClipBackbone, encoders: Sequence[str]) -> Iterator[SDPAttention]:
    if "visual" in encoders:
        for block in backbone.model.visual.transformer.resblocks:
            yield block.attn
    if "text" in encoders:
        for block in backbone.model.transformer.resblocks:
            yield block.attn


def apply_lora(backbone: ClipBackbone, rank: int = 8, alpha: float = 1.0,
               targets: Sequence[str] = ("k", "v"), encoders: Sequence[str] = ("visual", "text")) -> List[LoRALinear]:
    """Freeze all of ``backbone`` and wrap the chosen projections with LoRA (in place).
    Returns the LoRA layers in a fixed order (visual blocks first, then text)."""
    for p in backbone.parameters():
        p.requires_grad_(False)
    layers = []
    for attn in _blocks(backbone, encoders):
        for t in targets:
            attr = _TARGET_ATTR[t]
            layer = LoRALinear(getattr(attn, attr), rank, alpha)
            setattr(attn, attr, layer)
            layers.append(layer)
    return layers


def lora_layers(model: nn.Module) -> List[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def lora_parameters(model: nn.Module) -> List[nn.Parameter]:
    return [p for layer in lora_layers(model) for p in (layer.lora_A, layer.lora_B)]


def lora_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Only the LoRA tensors (names as in ``model.state_dict()``), cloned to CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k.endswith(".lora_A") or k.endswith(".lora_B")}


def load_lora_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    own = {k for k in model.state_dict() if k.endswith(".lora_A") or k.endswith(".lora_B")}
    if set(state) != own:
        missing, extra = sorted(own - set(state)), sorted(set(state) - own)
        raise KeyError(f"LoRA state does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
    model.load_state_dict(state, strict=False)


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """Run ``model`` with every LoRA update switched off (exactly the frozen CLIP)."""
    layers = lora_layers(model)
    before = [layer.lora_enabled for layer in layers]
    for layer in layers:
        layer.lora_enabled = False
    try:
        yield model
    finally:
        for layer, state in zip(layers, before):
            layer.lora_enabled = state
