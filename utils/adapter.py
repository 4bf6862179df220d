"""AdaptFormer-style parallel adapters in CLIP's encoders (APER-Adapter, docs/methods/aper_adapter.md;
the experts of MoE-Adapters, utils/moe.py).

Each residual block of the image transformer gets a bottleneck beside its MLP: with ``h``
the block's stream after attention, the block's output is
``h + MLP(LN(h)) + scale * up(dropout(relu(down(h))))`` (the official code's "parallel"
option, no layer norm inside the adapter). ``down`` is initialised as ``nn.Linear``'s
default (Kaiming-uniform, a = sqrt 5) with a zero bias, ``up`` is all zeros: a new
adapter leaves the encoder exactly as it was. ``adapters_disabled(backbone)`` runs the
encoder without them (the pre-trained branch) without a second copy of CLIP.

The block's stream ``h`` reaches the adapter (or any module beside the MLP,
``add_beside_mlp``) through a forward pre-hook on the block's second layer norm (the MLP's
input is ``LN(h)``, not ``h``); the MLP module is wrapped to add the module's output. The
frozen CLIP weights keep their names and values.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, Iterator, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.clip_backbone import ClipBackbone


class Adapter(nn.Module):
    """down (d -> bottleneck), ReLU, dropout, up (bottleneck -> d), times ``scale``."""

    def __init__(self, d: int, bottleneck: int, scale: float, dropout: float):
        super().__init__()
        self.down = nn.Linear(d, bottleneck)
        self.up = nn.Linear(bottleneck, d)
        self.scale, self.dropout = scale, dropout
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = F.dropout(F.relu(self.down(h)), p=self.dropout, training=self.training)
        return self.up(z) * self.scale


class MLPWithAdapter(nn.Module):
    """A block's MLP plus a parallel module (an adapter) on the block's stream (set by the hook)."""

    def __init__(self, mlp: nn.Module, adapter: nn.Module):
        super().__init__()
        self.mlp, self.adapter = mlp, adapter
        self.enabled = True
        self._stream = None

    def remember(self, _module, inputs) -> None:  # forward pre-hook of the block's ln_2
        self._stream = inputs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(x)
        if self.enabled:
            out = out + self.adapter(self._stream)
        self._stream = None
        return out


def add_beside_mlp(transformer: nn.Module, make: Callable[[int], nn.Module]) -> List[nn.Module]:
    """``make(width)`` beside the MLP of every residual block of ``transformer`` (CLIP's
    image or text transformer); returns the new modules, in block order."""
    added = []
    for block in transformer.resblocks:
        wrapped = MLPWithAdapter(block.mlp, make(block.ln_2.normalized_shape[0]))
        block.ln_2.register_forward_pre_hook(wrapped.remember)
        block.mlp = wrapped
        added.append(wrapped.adapter)
    return added


def apply_adapters(backbone: ClipBackbone, bottleneck: int, scale: float, dropout: float) -> List[Adapter]:
    """Adapters in every residual block of the image encoder; only they require grad."""
    backbone.requires_grad_(False)
    return add_beside_mlp(backbone.model.visual.transformer, lambda d: Adapter(d, bottleneck, scale, dropout))


def _wrapped(backbone: ClipBackbone) -> Iterator[MLPWithAdapter]:
    for transformer in (backbone.model.visual.transformer, backbone.model.transformer):
        for block in transformer.resblocks:
            if isinstance(block.mlp, MLPWithAdapter):
                yield block.mlp


@contextlib.contextmanager
def adapters_disabled(backbone: ClipBackbone) -> Iterator[None]:
    """The encoders without their adapters (exactly the pre-trained ones) inside the block."""
    wrapped = list(_wrapped(backbone))
    for w in wrapped:
        w.enabled = False
    try:
        yield
    finally:
        for w in wrapped:
            w.enabled = True


def adapter_parameters(backbone: ClipBackbone) -> List[nn.Parameter]:
    return [p for w in _wrapped(backbone) for p in w.adapter.parameters()]


def adapter_state_dict(backbone: ClipBackbone) -> Dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.detach().cpu().clone() for i, w in enumerate(_wrapped(backbone))
            for k, v in w.adapter.state_dict().items()}


def load_adapter_state_dict(backbone: ClipBackbone, state: Dict[str, torch.Tensor]) -> None:
    for i, w in enumerate(_wrapped(backbone)):
        w.adapter.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == str(i)})


class AdapterCheckpoint:
    """Mixed in ahead of a learner whose trained part is its backbone's adapters (APER-Adapter,
    MoE-Adapters): its ``state_dict`` adds them under ``"adapters"``, ``load_state_dict`` puts
    them back on the learner's device."""

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "adapters": adapter_state_dict(self._network)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        load_adapter_state_dict(self._network, {k: v.to(self._device) for k, v in state["adapters"].items()})
