"""MoE-Adapters (Yu et al., CVPR 2024, "Boosting Continual Learning of Vision-Language
Models via Mixture-of-Experts Adapters"), as its official class-incremental code behaves
(JiazuoYu/MoE-Adapters4CL, ``cil/``): items M1-M5 of docs/methods/moe_adapters.md.

Mixture-of-experts adapters beside the MLP of every block of both CLIP encoders (M1) are
trained on every task, one epoch of cross-entropy between the images and the current
task's prompts (M2), with AdamW under a warm-up-then-cosine schedule per step (M3); the
adapters and routers carry over from task to task (M4). A test image goes to the seen
class whose prompt has the largest cosine with it (M5). Training and test images alike go
through the official RandomResizedCrop (scale 0.9-1, bicubic; M6), seeded.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Literal

import torch
import torch.nn.functional as F

from models.base import BaseLearner
from utils.adapter import AdapterCheckpoint, adapter_parameters, adapters_disabled
from utils.augment import seeded
from utils.clip_backbone import autocast
from utils.clip_ops import (
    CLIPLearner,
    begin_task,
    build_backbone,
    make_loader,
    progress,
    prompts,
    scores_result,
    task_data,
    text_features,
)
from utils.config import require
from utils.errors import checked_step
from utils.moe import apply_moe_adapters

logger = logging.getLogger(__name__)


@dataclass
class MoEOptions:
    """MoE-Adapters' own options; defaults are the official class-incremental code's
    (``cil/clip/model.py``, ``cil/continual_clip/models.py``, the CIFAR-100 configs).
    Shared keys it reads: ``lr`` (1e-3), ``batch_size`` (128), ``prompt_template`` ("a bad
    photo of a {}." in its configs), ``epochs`` ("auto" = the official 1 per task)."""
    experts: int = field(default=2, metadata={
        "help": "adapters per residual block of both encoders, mixed by a noisy top-k router (M1)"})
    top_k: int = field(default=2, metadata={"help": "experts the router mixes per sample, at most experts"})
    adapter_bottleneck: int = field(default=64, metadata={"help": "the adapters' hidden width (ffn_num)"})
    adapter_scale: float = field(default=0.1, metadata={"help": "multiplies the adapters' output"})
    adapter_dropout: float = field(default=0.1, metadata={"help": "dropout inside the adapters"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW's weight decay"})
    warmup_steps: int = field(default=30, metadata={
        "help": "linear warm-up steps before the per-step cosine schedule (M3)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing (the official 'ls')"})
    noise_at_test: bool = field(default=True, metadata={
        "help": "the official blocks draw gate noise at test time too (see utils/moe.py)"})
    train_augment: Literal["official", "none"] = field(default="official", metadata={
        "help": "official: RandomResizedCrop (scale 0.9-1, bicubic) for training (M6); none: CLIP's centre crop"})
    extra_step: bool = field(default=True, metadata={
        "help": "the official extra step after the epoch (M3; changes weights below warmup_steps)"})
    test_crop: Literal["random", "center"] = field(default="random", metadata={
        "help": "random: the official tests on the same seeded random crops (M6); center: CLIP's centre crop"})

    def validate(self) -> None:
        for key, ok, allowed in [
                ("experts", self.experts >= 1, "an integer >= 1"),
                ("top_k", 1 <= self.top_k <= self.experts, "an integer in [1, experts]"),
                ("adapter_bottleneck", self.adapter_bottleneck >= 1, "an integer >= 1"),
                ("adapter_scale", math.isfinite(self.adapter_scale), "a finite number"),
                ("adapter_dropout", 0 <= self.adapter_dropout < 1, "a number in [0, 1)"),
                ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
                ("warmup_steps", self.warmup_steps >= 0, "an integer >= 0"),
                ("label_smoothing", 0 <= self.label_smoothing < 1, "a number in [0, 1)"),
                ("train_augment", self.train_augment in ("official", "none"), "'official' or 'none'"),
                ("test_crop", self.test_crop in ("random", "center"), "'random' or 'center'")]:
            require(ok, key, getattr(self, key), allowed)


def warmup_cosine(base_lr: float, warmup: int, steps: int, step: int) -> float:
    """M3: the official per-step rate: linear warm-up ``base * (step + 1) / warmup`` for the
    first ``warmup`` steps, then ``base * (1 + cos(pi * (step - warmup) / (steps - warmup))) / 2``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))) * base_lr


class MoEAdapters(AdapterCheckpoint, CLIPLearner, BaseLearner):
    options_class = MoEOptions
    release = "mgclip"  # 'released' class orders and names: MG-CLIP's files (for one order beside MG-CLIP)
    trains = "mixture-of-experts adapters and their routers in both CLIP encoders"

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._setup(args)
        self.epochs = 1 if self.cfg.epochs == "auto" else int(self.cfg.epochs)
        self._network = build_backbone(self.cfg, self._device)
        o = self.opts
        apply_moe_adapters(self._network, o.experts, o.top_k, o.adapter_bottleneck, o.adapter_scale,
                           o.adapter_dropout, o.noise_at_test)  # M1
        self._network.to(self._device).eval()
        self.record = {"epochs": {"mode": "fixed", "chosen": self.epochs},
                       "trainable_parameters": sum(p.numel() for p in adapter_parameters(self._network))}

    def incremental_train(self, data_manager) -> None:
        new = begin_task(self, data_manager)
        net, cfg, R = self._network, self.cfg, self._network.input_resolution
        augment = seeded("moe", R) if self.opts.train_augment == "official" else None  # M6
        data = task_data(data_manager, new, "train", R, cfg, self._device, transform=augment)
        loader = make_loader(data, cfg.batch_size, True, cfg.num_workers, self._device)
        # M6: the official evaluation crops at random too; seeded by the run's seed and the task, so a rerun (or a
        # resumed run) evaluates on the same crops, without moving the training's random stream
        crops = seeded("moe", R).fixed(self.test_crop_seed()) if self.opts.test_crop == "random" else None
        test = task_data(data_manager, range(self._total_classes), "test", R, cfg, self._device, transform=crops)
        self.test_loader = make_loader(test, cfg.eval_batch_size, False, cfg.num_workers, self._device)
        tokens = net.tokenize(prompts(cfg.prompt_template, self._names[new.start:])).to(self._device)
        with self._timed("train"):
            self._train(loader, tokens, augment)

    def test_crop_seed(self) -> int:
        """The base seed of the current task's random test crops (test image i: base + i)."""
        return self._seed * 1_000_003 + self._cur_task

    def _train(self, loader, tokens: torch.Tensor, augment=None) -> None:
        """M2-M3: a fresh AdamW over the experts and routers of both encoders, the rate set
        before every step; cross-entropy of 100 * cos(image, current task's prompts)."""
        net, opts = self._network, self.opts
        params = adapter_parameters(net)
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=opts.weight_decay)
        steps = self.epochs * len(loader)
        net.train()
        step = 0
        for epoch in range(self.epochs):
            if augment is not None:
                augment.reseed()  # this epoch's crops, from the run's seeded stream
            for _, x, y in progress(loader, f"task {self._cur_task} epoch {epoch + 1}/{self.epochs}"):
                self._step(opt, tokens, x, y, warmup_cosine(self.cfg.lr, opts.warmup_steps, steps, step),
                           f"task {self._cur_task}, epoch {epoch + 1}, step {step + 1}")
                step += 1
        if opts.extra_step and steps < opts.warmup_steps:
            # M3: the official loop runs steps + 1 iterations; the last, on the first batch of a new shuffle, is
            # still in the warm-up when the task has fewer steps than it, at rate lr (steps + 1) / warmup
            if augment is not None:
                augment.reseed()
            _, x, y = next(iter(loader))
            self._step(opt, tokens, x, y, warmup_cosine(self.cfg.lr, opts.warmup_steps, steps, steps),
                       f"task {self._cur_task}, the extra step {steps + 1}")
        net.eval()

    def _step(self, opt, tokens: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float, where: str) -> None:
        net = self._network
        for group in opt.param_groups:
            group["lr"] = lr
        img = self._image_features(x)
        txt = text_features(net, tokens, self._device, self.cfg.precision)
        loss = F.cross_entropy(net.logit_scale * img @ txt.t(), y - self._known_classes,
                               label_smoothing=self.opts.label_smoothing)
        checked_step(opt, loss, where)

    @torch.no_grad()
    def eval_task(self):
        """M5: the prompts of every seen class; argmax of the cosines. With gate noise at
        test time (official) the prompts are encoded again for every batch of test images,
        as the official evaluation does (its noise is drawn anew each time)."""
        with self._timed("eval"):
            net = self._network.eval()
            tokens = net.tokenize(prompts(self.cfg.prompt_template, self._names)).to(self._device)
            txt = None if self.opts.noise_at_test else text_features(net, tokens, self._device, self.cfg.precision)
            scores, labels = [], []
            for _, x, y in progress(self.test_loader, "eval"):
                img = self._image_features(x)
                batch_txt = txt if txt is not None else text_features(net, tokens, self._device, self.cfg.precision)
                scores.append(img @ batch_txt.t())
                labels.append(y)
        return scores_result(self, torch.cat(scores), torch.cat(labels))

    def _image_features(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self._device, self.cfg.precision):
            return F.normalize(self._network.encode_image(x).float(), dim=1)

    # ------------------------------------------------------------------ analysis views (models/base.py)
    def _pretrained(self):
        return adapters_disabled(self._network)  # zero-shot CLIP: the experts off
