"""APER with adapters (Zhou et al., IJCV 2024, "Revisiting Class-Incremental Learning
with Pre-Trained Models"; ``adam_adapter`` / ``aper_adapter`` in the official code,
zhoudw-zdw/RevisitingCIL), on CLIP's image encoder: items A1-A6 of docs/methods/aper_adapter.md.

On the first task only: parallel adapters in every block of the image encoder (A1) and a
cosine classifier over the task's classes (A2) are trained with cross-entropy (A3), on
the official random resized crops and flips (A7). Then
the encoder is frozen for good, and every image is represented by the pre-trained
encoder's feature and the adapted encoder's feature side by side (A4); each class, the
first task's included, gets the mean of those merged features of its training images as
its prototype (A5), and a test image goes to the seen class whose prototype has the
largest cosine with its merged feature (A6). The pre-trained branch is the same encoder
with its adapters switched off; the merged features are computed once per image after the
first task (exact: the encoder no longer changes).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.simplecil import SimpleCIL
from utils.adapter import AdapterCheckpoint, adapter_parameters, adapters_disabled, apply_adapters
from utils.augment import seeded
from utils.clip_backbone import autocast
from utils.clip_ops import build_backbone, make_loader, progress, task_data
from utils.config import require
from utils.errors import checked_step
from utils.prototypes import cosine_scores

logger = logging.getLogger(__name__)

OFFICIAL_EPOCHS = 20  # "tuned_epoch" of the official configs


@dataclass
class APEROptions:
    """APER-Adapter's own options; defaults are the official configs' (CIFAR-100 B0 Inc10:
    ``exps/adam_adapter.json`` before upstream commit 34c68f4 renamed it; now
    ``exps/aper_adapter/*.json``). Shared keys it reads: ``lr`` (init_lr, 0.01 there),
    ``batch_size`` (48 there), ``epochs`` ("auto" = the official 20, first task only),
    ``eval_batch_size``, ``precision``."""
    adapter_bottleneck: int = field(default=64, metadata={"help": "the adapters' hidden width (ffn_num)"})
    adapter_scale: float = field(default=0.1, metadata={"help": "multiplies the adapters' output (ffn_adapter_scalar)"})
    adapter_dropout: float = field(default=0.1, metadata={"help": "dropout inside the adapters"})
    optimizer: Literal["sgd", "adam"] = field(default="sgd", metadata={"help": "sgd (momentum 0.9) or adam (AdamW)"})
    weight_decay: float = field(default=0.0005, metadata={"help": "the optimiser's weight decay"})
    min_lr: float = field(default=0.0, metadata={"help": "the cosine schedule's end"})
    train_augment: Literal["official", "none"] = field(default="official", metadata={
        "help": "official: random resized crop (scale 0.05-1) + flip (A7); none: CLIP's centre crop"})

    def validate(self) -> None:
        for key, ok, allowed in [
                ("adapter_bottleneck", self.adapter_bottleneck >= 1, "an integer >= 1"),
                ("adapter_scale", math.isfinite(self.adapter_scale), "a finite number"),
                ("adapter_dropout", 0 <= self.adapter_dropout < 1, "a number in [0, 1)"),
                ("optimizer", self.optimizer in ("sgd", "adam"), "'sgd' or 'adam'"),
                ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
                ("min_lr", self.min_lr >= 0, "a number >= 0"),
                ("train_augment", self.train_augment in ("official", "none"), "'official' or 'none'")]:
            require(ok, key, getattr(self, key), allowed)


class CosineHead(nn.Module):
    """A2: ``sigma * cos(x, w_c)`` per class; w uniform in +-1/sqrt(d), sigma learned from 1."""

    def __init__(self, d: int, classes: int):
        super().__init__()
        bound = 1.0 / math.sqrt(d)
        self.weight = nn.Parameter(torch.empty(classes, d).uniform_(-bound, bound))
        self.sigma = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigma * cosine_scores(x, self.weight)


class APER(AdapterCheckpoint, SimpleCIL):
    """SimpleCIL on merged features, after adapting a copy of the encoder on the first task."""
    options_class = APEROptions
    release = "mgclip"  # 'released' class orders and names: MG-CLIP's files (APER's own: seeded shuffles)
    trains = "adapters in CLIP's image encoder and a cosine classifier, on the first task only"

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self.epochs = OFFICIAL_EPOCHS if self.cfg.epochs == "auto" else int(self.cfg.epochs)
        self.record = {"epochs": {"mode": "fixed", "chosen": self.epochs}, "trainable_parameters": None}

    def _build(self):
        net = build_backbone(self.cfg, self._device)
        apply_adapters(net, self.opts.adapter_bottleneck, self.opts.adapter_scale, self.opts.adapter_dropout)  # A1
        return net.to(self._device).eval()

    def _feature_dim(self) -> int:
        return 2 * self._network.embed_dim

    def _adapted(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self._device, self.cfg.precision):
            return self._network.encode_image(images).float()

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """A4: [pre-trained feature, adapted feature] (N, 2D), neither normalised."""
        with adapters_disabled(self._network):
            plain = self._adapted(images)
        return torch.cat([plain, self._adapted(images)], dim=1)

    def _before_prototypes(self, data_manager, new: range) -> None:
        if self._cur_task == 0:
            with self._timed("adapt"):
                self._adapt(data_manager, new)

    def _adapt(self, data_manager, new: range) -> None:
        """A2-A3: the adapters and a cosine head on the first task's classes, cross-entropy,
        SGD (momentum 0.9) or AdamW with weight decay, cosine schedule per epoch to min_lr."""
        net, opts = self._network, self.opts
        head = CosineHead(net.embed_dim, len(new)).to(self._device)
        params = adapter_parameters(net) + list(head.parameters())
        self.record["trainable_parameters"] = sum(p.numel() for p in params)
        if opts.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.9, weight_decay=opts.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=opts.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs, eta_min=opts.min_lr)
        # A7: the official training transform (prototypes, later, use the deterministic one, as the official
        # ``train_loader_for_protonet`` with mode "test")
        augment = seeded("aper", net.input_resolution) if opts.train_augment == "official" else None
        data = task_data(data_manager, new, "train", net.input_resolution, self.cfg, self._device, transform=augment)
        loader = make_loader(data, self.cfg.batch_size, True, self.cfg.num_workers, self._device)
        net.train()
        for epoch in range(self.epochs):
            if augment is not None:
                augment.reseed()  # this epoch's crops and flips, from the run's seeded stream
            for step, (_, x, y) in enumerate(progress(loader, f"adapt {epoch + 1}/{self.epochs}")):
                loss = F.cross_entropy(head(self._adapted(x)), y - self._known_classes)
                checked_step(opt, loss, f"task {self._cur_task}, epoch {epoch + 1}, step {step + 1}")
            sched.step()
        net.eval()
        net.requires_grad_(False)  # frozen from here on

    # ------------------------------------------------------------------ analysis views (models/base.py)
    def _pretrained(self):
        return adapters_disabled(self._network)  # the pre-trained branch; trained: the adapted one

    def visual_classifier(self) -> Optional[torch.Tensor]:
        return None  # its prototypes live in the merged 2D space, not CLIP's
