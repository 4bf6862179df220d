"""Prompt pools of L2P++, DualPrompt and CODA-Prompt (``models/prompts.py``), as the
official code of all three (GT-RIPL/CODA-Prompt, ``models/zoo.py``) defines them, and the
way their prompts enter CLIP's image encoder: prefix-tuning, a key and a value prefix per
prompted block (``SDPAttention.prefix``). Items L1-L3, D1-D2 and C1-C4
of docs/methods/prompts.md.

A pool maps the query (the frozen encoder's final class token, one row per image) to
``{block index: (key prefix, value prefix)}`` (each (N, P, width)) and a loss term.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Prefixes = Dict[int, Tuple[torch.Tensor, torch.Tensor]]


@contextlib.contextmanager
def prefixed(backbone, prefixes: Prefixes) -> Iterator[None]:
    """Inside the block, image block ``i`` attends to ``prefixes[i]`` before its own tokens."""
    blocks = backbone.model.visual.transformer.resblocks
    for i, pair in prefixes.items():
        blocks[i].attn.prefix = pair
    try:
        yield
    finally:
        for i in prefixes:
            blocks[i].attn.prefix = None


def split_halves(prompt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """A prompt (N, ..., length, width): its first half of tokens is the key prefix, the
    second half the value prefix; several selected prompts are laid end to end (N, P, width)."""
    half = prompt.shape[-2] // 2
    n, width = prompt.shape[0], prompt.shape[-1]
    return prompt[..., :half, :].reshape(n, -1, width), prompt[..., half:, :].reshape(n, -1, width)


class KeyedPromptPool(nn.Module):
    """L2P++ (L1-L3) and DualPrompt (D1-D2): a pool of ``pool_size`` prompts of ``length``
    tokens with a key each, in every block of ``layers``; the ``top_k`` keys nearest the
    query by cosine pick the prompts. With ``task_bootstrap`` (DualPrompt) training uses
    the prompt of the current task instead of the nearest. DualPrompt's G-prompts (one
    shared prompt of ``g_length`` tokens per block of ``g_layers``) come after the E-prompt
    in a block that has both. Everything is drawn uniformly from [0, 1), as the official
    ``tensor_prompt``."""

    def __init__(self, width: int, key_dim: int, pool_size: int, length: int, layers: Sequence[int],
                 top_k: int, task_bootstrap: bool = False, g_length: int = 0, g_layers: Sequence[int] = ()):
        super().__init__()
        self.layers, self.g_layers = list(layers), list(g_layers)
        self.top_k, self.task_bootstrap = top_k, task_bootstrap
        self.prompts = nn.ParameterDict({str(i): nn.Parameter(torch.rand(pool_size, length, width))
                                         for i in self.layers})
        self.keys = nn.ParameterDict({str(i): nn.Parameter(torch.rand(pool_size, key_dim)) for i in self.layers})
        self.g_prompts = nn.ParameterDict({str(i): nn.Parameter(torch.rand(g_length, width)) for i in self.g_layers})

    def forward(self, query: torch.Tensor, train: bool, task: int) -> Tuple[Prefixes, torch.Tensor]:
        n = query.shape[0]
        q = F.normalize(query, dim=1).detach()
        loss = query.new_zeros(())
        out: Prefixes = {}
        for i in self.layers:
            cos = q @ F.normalize(self.keys[str(i)], dim=1).t()  # (N, pool)
            pool = self.prompts[str(i)]
            if train and self.task_bootstrap:  # D2: the task's own prompt and key
                loss = loss + (1.0 - cos[:, task]).sum()
                chosen = pool[task].expand(n, -1, -1)
            else:
                idx = cos.topk(self.top_k, dim=1).indices  # (N, top_k)
                if train:  # L3: the official term indexes every row with every row's choices
                    loss = loss + (1.0 - cos[:, idx]).sum()
                chosen = pool[idx]  # (N, top_k, length, width)
            out[i] = split_halves(chosen)
        for i in self.g_layers:
            gk, gv = split_halves(self.g_prompts[str(i)].expand(n, -1, -1))
            if i in out:
                out[i] = (torch.cat([out[i][0], gk], dim=1), torch.cat([out[i][1], gv], dim=1))
            else:
                out[i] = (gk, gv)
        return out, loss


def gram_schmidt_rows(old: torch.Tensor, new_rows: int) -> torch.Tensor:
    """C2: ``new_rows`` rows drawn from N(0, 1), each made orthogonal to every row before it
    (the rows of ``old`` as they are, then the new ones) by subtracting its projection on
    each in turn (classical Gram-Schmidt), then scaled to unit norm; returns them (new_rows, dim)."""
    if len(old) + new_rows > old.shape[1]:  # beyond the width no row is orthogonal to all before it
        raise ValueError(f"{len(old)} + {new_rows} orthonormal rows do not fit width {old.shape[1]}")
    basis = [r for r in old]
    made = []
    for _ in range(new_rows):
        v = torch.randn(old.shape[1], dtype=old.dtype, device=old.device)
        u = v.clone()
        for b in basis:
            u = u - (v @ b) / (b @ b) * b
        basis.append(u)
        made.append(u)
    return torch.stack([u / u.norm() for u in made])


def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """C4: mean of the squared entries of ``t t^T - I`` (rows of ``t`` flattened)."""
    t = t.reshape(t.shape[0], -1)
    return ((t @ t.t() - torch.eye(t.shape[0], device=t.device, dtype=t.dtype)) ** 2).mean()


class CodaPool(nn.Module):
    """CODA-Prompt (C1-C4): per block of ``layers``, ``pool_size`` prompt components (length x
    width), each with a key and an attention vector (key_dim). Task t owns the slice of
    ``pool_size // tasks`` components after those of earlier tasks; they are drawn at the
    task's start (``start_task``, C2) and earlier ones are used but not trained (C3). The
    prompt of an image is the sum of the components, each weighted by the cosine between
    its key and the query scaled elementwise by its attention vector (C1)."""

    def __init__(self, width: int, key_dim: int, pool_size: int, length: int, layers: Sequence[int], tasks: int,
                 ortho_mu: float):
        super().__init__()
        self.layers = list(layers)
        self.per_task = pool_size // tasks
        self.ortho_mu = ortho_mu
        self.task = -1
        zeros = {"p": (pool_size, length, width), "k": (pool_size, key_dim), "a": (pool_size, key_dim)}
        self.params = nn.ParameterDict({f"{name}{i}": nn.Parameter(torch.zeros(shape))
                                        for i in self.layers for name, shape in zeros.items()})

    def start_task(self, task: int) -> None:
        """C2: the task's components, keys and attention vectors, each set orthogonal to the
        earlier ones (for every block: keys, attention vectors, then components)."""
        self.task = task
        s, f = task * self.per_task, (task + 1) * self.per_task
        with torch.no_grad():
            for i in self.layers:
                for name in ("k", "a", "p"):
                    t = self.params[f"{name}{i}"]
                    flat = t.view(t.shape[0], -1)
                    flat[s:f] = gram_schmidt_rows(flat[:s], f - s)

    def _used(self, name: str, i: int, train: bool) -> torch.Tensor:
        t = self.params[f"{name}{i}"]
        s, f = self.task * self.per_task, (self.task + 1) * self.per_task
        return torch.cat([t[:s].detach(), t[s:f]]) if train else t[:f]

    def forward(self, query: torch.Tensor, train: bool, task: int) -> Tuple[Prefixes, torch.Tensor]:
        loss = query.new_zeros(())
        out: Prefixes = {}
        for i in self.layers:
            k, a, p = (self._used(name, i, train) for name in ("k", "a", "p"))
            weights = torch.einsum("nkd,kd->nk", F.normalize(query[:, None, :] * a[None], dim=2),
                                   F.normalize(k, dim=1))  # (N, components)
            out[i] = split_halves(torch.einsum("nk,kld->nld", weights, p))
            if train and self.ortho_mu > 0:
                loss = loss + self.ortho_mu * (ortho_penalty(k) + ortho_penalty(a) + ortho_penalty(p))
        return out, loss


def official_cosine_lr(base_lr: float, epochs: int, epoch: int) -> float:
    """The official rate of epoch ``epoch`` (0-based) of ``epochs`` = E (L5):
    ``base * cos(99 pi max(e - 1, 0) / (200 (E - 1)))``. ``utils/schedulers.CosineSchedule``
    gives ``base * cos(99 pi s / (200 (E - 1)))`` at its counter s, but its constructor sets
    the rate at s = 0 and then puts the counter back to -1, and ``learners/default.py`` calls
    ``step()`` (s + 1) before every epoch but the first: epochs 0 and 1 both run at s = 0,
    epoch e >= 1 at s = e - 1, so the last runs at s = E - 2, never at the curve's end.
    E = 1: base (the official schedule divides by E - 1 = 0 and raises)."""
    if epochs <= 1:
        return base_lr
    return base_lr * math.cos(99 * math.pi * max(epoch - 1, 0) / (200 * (epochs - 1)))
