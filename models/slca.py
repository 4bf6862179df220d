"""SLCA (Zhang et al., ICCV 2023, "SLCA: Slow Learner with Classifier Alignment for Continual
Learning on a Pre-trained Model"), as its official code behaves (GengDavid/SLCA, MIT,
``models/slca.py``), on CLIP's image encoder: items S1-S7 of docs/methods/slca.md.

Every task fine-tunes the whole image encoder at the slow rate ``lr * bcb_lrscale`` beside a
new linear head for the task's classes (S1-S3); the loss sees only the new classes' logits
(S3). Each new class then keeps the mean and covariance of its features (S4). From the
second task on, all heads are aligned on features drawn from every seen class's Gaussian
(S5), with per-task normalised logits (S6); the aligned heads classify the task's test
images, and the heads as they were before the alignment carry over to the next task (S7).
"""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.base import BaseLearner
from utils.augment import SeededAugment
from utils.clip_backbone import CLIP_MEAN, CLIP_STD, autocast
from utils.clip_ops import CLIPLearner, begin_task, build_backbone, make_loader, progress, scores_result, task_data
from utils.config import require
from utils.errors import checked_step
from utils.gaussian import ClassGaussians

logger = logging.getLogger(__name__)

OFFICIAL_EPOCHS = 20  # exps/slca/slca_cifar.json (ImageNet-R: 50)
COV_RIDGE = 1e-4  # base.py _compute_class_mean: torch.cov(...) + 1e-4 I for the new classes


@dataclass
class SLCAOptions:
    """SLCA's own options; defaults are the official CIFAR-100 config's
    (``exps/slca/slca_cifar.json`` and the module constants of ``models/slca.py``). Shared keys
    it reads: ``lr`` (0.01), ``batch_size`` (128), ``epochs`` ("auto" = 20), ``eval_batch_size``."""
    bcb_lrscale: float = field(default=0.01, metadata={
        "help": "the image encoder's learning rate is lr times this (the slow learner, S2); 0 freezes it"})
    milestones: List[int] = field(default_factory=lambda: [18], metadata={
        "help": "epochs after which MultiStepLR multiplies the rates by lr_decay (S2)"})
    lr_decay: float = field(default=0.1, metadata={"help": "MultiStepLR's gamma"})
    weight_decay: float = field(default=0.0005, metadata={"help": "SGD's weight decay, both stages"})
    ca_epochs: int = field(default=5, metadata={"help": "classifier-alignment epochs per task (S5); 0: none"})
    ca_samples_per_class: int = field(default=256, metadata={
        "help": "features drawn per class and alignment epoch; also the alignment batch (num_sampled_pcls)"})
    ca_logit_norm: float = field(default=0.1, metadata={
        "help": "temperature of the per-task logit normalisation in the alignment (S6); 0: plain logits"})
    train_augment: Literal["official", "none"] = field(default="official", metadata={
        "help": "official: random resized crop (bicubic), flip, brightness jitter (S1); none: CLIP's centre crop"})
    brightness: float = field(default=63 / 255, metadata={
        "help": "ColorJitter brightness of the training images (CIFAR 63/255; ImageNet-R 0: none)"})

    def validate(self) -> None:
        for key, ok, allowed in [
                ("bcb_lrscale", self.bcb_lrscale >= 0, "a number >= 0"),
                ("milestones", all(m >= 1 for m in self.milestones), "a list of epochs >= 1"),
                ("lr_decay", self.lr_decay > 0, "a number > 0"),
                ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
                ("ca_epochs", self.ca_epochs >= 0, "an integer >= 0"),
                ("ca_samples_per_class", self.ca_samples_per_class >= 1, "an integer >= 1"),
                ("ca_logit_norm", self.ca_logit_norm >= 0, "a number >= 0 (0: no normalisation)"),
                ("train_augment", self.train_augment in ("official", "none"), "'official' or 'none'"),
                ("brightness", 0 <= self.brightness <= 1, "a number in [0, 1]")]:
            require(ok, key, getattr(self, key), allowed)


def new_head(d: int, classes: int) -> nn.Linear:
    """S3 (convs/linears.py ``SimpleContinualLinear.update``): a task's linear head, weights
    truncated normal (std 0.02, cut at +-2 absolute as
    timm's ``trunc_normal_``: in effect untruncated), bias zero."""
    head = nn.Linear(d, classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


def normalised_logits(logits: torch.Tensor, task_sizes: List[int], temperature: float) -> torch.Tensor:
    """S6 (``_stage2_compact_classifier`` with ``ca_with_logit_norm``): the L2 norm of each
    task's slice of the logits (+1e-7), averaged over tasks, divides every logit, and the
    temperature divides again."""
    norms, start = [], 0
    for size in task_sizes:
        norms.append(logits[:, start:start + size].norm(p=2, dim=-1, keepdim=True) + 1e-7)
        start += size
    return logits / torch.cat(norms, dim=-1).mean(dim=-1, keepdim=True) / temperature


def mean_scale(c: int, task_size: int, cur_task: int) -> float:
    """S5: the official sampling shrinks the mean of class ``c`` by 0.9 + 0.1 (t + 1) / (T + 1),
    t = c // (the current task's size) its task, T the current task (1 for the current task's
    classes)."""
    return 0.9 + (c // task_size + 1) / (cur_task + 1) * 0.1


def slca_augment(resolution: int, brightness: float) -> SeededAugment:
    """S1: ``iCIFAR100_224`` / ``iImageNetR``'s train_trsf (utils/data.py): RandomResizedCrop
    (bicubic, default scale and ratio), horizontal flip, ColorJitter(brightness) on CIFAR;
    here to the encoder's resolution with CLIP's normalisation, seeded per image."""
    from torchvision import transforms as T

    steps = [T.RandomResizedCrop(resolution, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip()]
    if brightness > 0:
        steps.append(T.ColorJitter(brightness=brightness))
    steps += [T.Lambda(lambda im: im.convert("RGB")), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]
    return SeededAugment(T.Compose(steps))


def slow_learner_optimizer(encoder: nn.Module, head: nn.Module, lr: float, bcb_lrscale: float, weight_decay: float,
                           milestones: List[int], gamma: float):
    """S2 (``_stage1_training``): SGD (momentum 0.9) with the encoder at ``lr * bcb_lrscale``
    and the new head at ``lr``, both with weight decay; MultiStepLR per epoch. A scale of 0
    freezes the encoder (the official ``fix_bcb``)."""
    groups = [{"params": [p for p in head.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}]
    if bcb_lrscale > 0:
        groups.insert(0, {"params": list(encoder.parameters()), "lr": lr * bcb_lrscale, "weight_decay": weight_decay})
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma)


class SLCA(CLIPLearner, BaseLearner):
    options_class = SLCAOptions
    release = "mgclip"  # 'released' class orders and names: MG-CLIP's files (SLCA's own: seeded shuffles)
    uses_text = False  # a linear head on image features: class names only label the results
    trains = "the whole image encoder (at lr x bcb_lrscale) and a linear head per task, then the heads' alignment"

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._setup(args)
        self.epochs = OFFICIAL_EPOCHS if self.cfg.epochs == "auto" else int(self.cfg.epochs)
        self._network = build_backbone(self.cfg, self._device).eval()
        self.encoder = self._network.model.visual
        # zero-shot CLIP's image encoder, for the analysis views (the fine-tuned one replaces it)
        self._zero_shot = {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
        self.heads = nn.ModuleList().to(self._device)
        self.task_sizes: List[int] = []
        self.stats = ClassGaussians(ridge=COV_RIDGE, seed=self._seed)
        self._before_ca: Optional[Dict[str, torch.Tensor]] = None
        self.record = {"epochs": {"mode": "fixed", "chosen": self.epochs}, "trainable_parameters": None}

    # ------------------------------------------------------------------ features and logits
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self._device, self.cfg.precision):
            return self.encoder(images).float()

    def _logits(self, feats: torch.Tensor) -> torch.Tensor:
        """S3: every head's logits side by side (``SimpleContinualLinear.forward``)."""
        return torch.cat([h(feats) for h in self.heads], dim=1)

    # ------------------------------------------------------------------ a task
    def incremental_train(self, data_manager) -> None:
        new = begin_task(self, data_manager)
        self.data_manager = data_manager
        self.task_sizes.append(len(new))
        for p in self.heads.parameters():  # S3: earlier heads frozen in the slow learner (update(freeze_old=True))
            p.requires_grad_(False)
        self.heads.append(new_head(self._network.embed_dim, len(new)).to(self._device))
        with self._timed("train"):
            self._slow_learner(data_manager, new)
        with self._timed("statistics"):
            self._class_statistics(data_manager, new)
        # S7: the heads before the alignment, which the next task continues from (fc.backup / fc.recall)
        self._before_ca = {k: v.detach().clone() for k, v in self.heads.state_dict().items()}
        if self._cur_task > 0 and self.opts.ca_epochs > 0:
            with self._timed("alignment"):
                self._align(len(new))

    def _slow_learner(self, data_manager, new: range) -> None:
        """S1-S3: cross-entropy on the new classes' logits only, SGD with the slow encoder."""
        o, R = self.opts, self._network.input_resolution
        head = self.heads[-1]
        opt, sched = slow_learner_optimizer(self.encoder, head, self.cfg.lr, o.bcb_lrscale, o.weight_decay,
                                            o.milestones, o.lr_decay)
        trainable = [p for g in opt.param_groups for p in g["params"]]
        self.record["trainable_parameters"] = sum(p.numel() for p in trainable)
        self.encoder.requires_grad_(o.bcb_lrscale > 0)
        augment = slca_augment(R, o.brightness) if o.train_augment == "official" else None
        data = task_data(data_manager, new, "train", R, self.cfg, self._device, transform=augment)
        loader = make_loader(data, self.cfg.batch_size, True, self.cfg.num_workers, self._device)
        self.encoder.train()
        for epoch in range(self.epochs):
            if augment is not None:
                augment.reseed()  # this epoch's crops, flips and jitter, from the run's seeded stream
            for step, (_, x, y) in enumerate(progress(loader, f"task {self._cur_task} epoch {epoch + 1}")):
                feats = self._encode(x) if o.bcb_lrscale > 0 else self._frozen(x)
                # S3: the loss sees the current task's logits only (old classes' targets would be -100)
                loss = F.cross_entropy(head(feats), y - self._known_classes)
                checked_step(opt, loss, f"task {self._cur_task}, epoch {epoch + 1}, step {step + 1}")
            sched.step()
        self.encoder.eval()
        self.encoder.requires_grad_(False)

    @torch.no_grad()
    def _frozen(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x)

    @torch.no_grad()
    def _class_statistics(self, data_manager, new: range) -> None:
        """S4 (``_compute_class_mean``): each new class's features of its training images under
        the test transform, after the slow learner: mean, unbiased covariance in fp64 + 1e-4 I.
        Earlier classes keep the statistics of their own task's encoder."""
        data = task_data(data_manager, new, "train", self._network.input_resolution, self.cfg, self._device)
        loader = make_loader(data, self.cfg.eval_batch_size, False, self.cfg.num_workers, self._device)
        feats, labels = [], []
        for _, x, y in progress(loader, "statistics"):
            feats.append(self._encode(x))
            labels.append(y)
        feats, labels = torch.cat(feats), torch.cat(labels)
        for c in new:
            self.stats.add(c, feats[labels == c], double=True)

    def _align(self, task_size: int) -> None:
        """S5-S6 (``_stage2_compact_classifier``): every head trains on features drawn from the
        seen classes' Gaussians: per epoch ``ca_samples_per_class`` draws per class, shuffled,
        as many batches of that size as there are classes; SGD (momentum 0.9, weight decay) at
        ``lr`` with a cosine schedule over ``ca_epochs`` epochs."""
        o, n, m = self.opts, self._total_classes, self.opts.ca_samples_per_class
        for p in self.heads.parameters():
            p.requires_grad_(True)
        opt = torch.optim.SGD(self.heads.parameters(), lr=self.cfg.lr, momentum=0.9, weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.ca_epochs)
        gen = self.stats.generator
        for epoch in range(o.ca_epochs):
            inputs = torch.cat([self.stats.sample(c, m, mean_scale(c, task_size, self._cur_task)) for c in range(n)])
            targets = torch.arange(n, device=inputs.device).repeat_interleave(m)
            order = torch.randperm(inputs.shape[0], generator=gen).to(inputs.device)
            inputs, targets = inputs[order].to(self._device), targets[order].to(self._device)
            for it in range(n):
                logits = self._logits(inputs[it * m:(it + 1) * m])
                if o.ca_logit_norm > 0:
                    logits = normalised_logits(logits, self.task_sizes, o.ca_logit_norm)
                loss = F.cross_entropy(logits, targets[it * m:(it + 1) * m])
                checked_step(opt, loss, f"task {self._cur_task}, alignment epoch {epoch + 1}, step {it + 1}")
            sched.step()
        for p in self.heads.parameters():
            p.requires_grad_(False)

    def after_task(self) -> None:
        super().after_task()
        if self._before_ca is not None:  # S7: back to the heads before the alignment (fc.recall)
            self.heads.load_state_dict(self._before_ca)
            self._before_ca = None

    @torch.no_grad()
    def eval_task(self):
        with self._timed("eval"):
            data = task_data(self.data_manager, range(self._total_classes), "test", self._network.input_resolution,
                             self.cfg, self._device)
            loader = make_loader(data, self.cfg.eval_batch_size, False, self.cfg.num_workers, self._device)
            scores, labels = [], []
            for _, x, y in progress(loader, "eval"):
                scores.append(self._logits(self._encode(x)))
                labels.append(y)
        return scores_result(self, torch.cat(scores), torch.cat(labels))

    # ------------------------------------------------------------------ analysis views (models/base.py)
    @contextlib.contextmanager
    def _pretrained(self):
        """Zero-shot CLIP: the pre-trained image encoder's weights swapped in, then back."""
        tuned = {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}
        self.encoder.load_state_dict(self._zero_shot)
        try:
            yield
        finally:
            self.encoder.load_state_dict(tuned)

    def visual_classifier(self) -> Optional[torch.Tensor]:
        return torch.cat([h.weight for h in self.heads]).detach().float() if len(self.heads) else None

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        done = len(state["task_ranges"])
        return {**state, "encoder": {k: v.cpu() for k, v in self.encoder.state_dict().items()},
                "heads": [{k: v.cpu() for k, v in h.state_dict().items()} for h in self.heads[:done]],
                "task_sizes": self.task_sizes[:done], "stats": self.stats.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.encoder.load_state_dict(state["encoder"])
        self.task_sizes = list(state["task_sizes"])
        self.heads = nn.ModuleList()
        for h in state["heads"]:
            head = nn.Linear(h["weight"].shape[1], h["weight"].shape[0])
            head.load_state_dict(h)
            self.heads.append(head.requires_grad_(False))
        self.heads.to(self._device)
        self.stats.load_state_dict(copy.deepcopy(state["stats"]), self._device)
