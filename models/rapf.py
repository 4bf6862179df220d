"""RAPF: "Class-Incremental Learning with CLIP: Adaptive Representation Adjustment and
Parameter Fusion" (Huang et al., ECCV 2024), as its official code behaves.

CLIP stays frozen; one linear adapter (d x d, no bias, PyTorch's default initialisation)
maps image features before the cosine logits against the prompts of all seen classes.
Per task (items R1-R10 of docs/methods/rapf.md): text-neighbour "hard pairs" between old and new
classes (R1); training on the task's real features plus features replayed from the old
classes' Gaussians (R3-R4) with a hinge that keeps old classes on their own text feature
away from a similar new class's (R5-R7); the new classes' statistics (R8); then the
trained adapter is fused with the previous one in the old weight's singular basis (R9).

Faster than the official code and equal in value: the frozen image features are computed
once per image (``utils.feature_cache``), the prompts once per task, and each class's
Cholesky factor once (``utils.gaussian``).
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.base import BaseLearner
from utils.clip_ops import (
    CLIPLearner,
    begin_task,
    build_backbone,
    prompts,
    scores_result,
    shuffled_batches,
    text_features,
)
from utils.config import require
from utils.errors import checked_step
from utils.feature_cache import FeatureCache
from utils.gaussian import ClassGaussians
from utils.parameter_fusion import svd_fusion

logger = logging.getLogger(__name__)


@dataclass
class RAPFOptions:
    """RAPF's own options; defaults are the official CIFAR-100 10-10 values (the other
    protocols' values are in ``exps/rapf_*.json``). Shared keys used by RAPF: ``lr``
    (1e-3), ``batch_size`` (train batch), ``eval_batch_size``, ``epochs`` ("auto" = the
    official 15), ``precision`` ("auto" = the official fp16 encoder and logits on CUDA)."""
    beta: float = field(default=2.0, metadata={
        "help": "replay: floor(10 beta) draws per old class per batch, floor(20 beta) per hard pair"})
    old_per_batch: int = field(default=0, metadata={
        "help": "old classes replayed per batch; 0 = the official value for the dataset"})
    hard_pair_threshold: float = field(default=0.55, metadata={
        "help": "delta: old/new prompt pairs closer than this (L2, normalised) are hard pairs"})
    mix_bias: float = field(default=0.6, metadata={"help": "b of the parameter fusion of the adapters"})
    shrink: bool = field(default=False, metadata={
        "help": "RAPF's additive covariance shrinkage (official: ImageNet-R, CUB-200)"})
    hinge_margin: float = field(default=0.1, metadata={
        "help": "margin of the hinge loss on the hard pairs' edge features"})
    milestones: List[int] = field(default_factory=lambda: [4, 10], metadata={
        "help": "epochs where MultiStepLR multiplies the learning rate by lr_gamma (stepped per epoch)"})
    lr_gamma: float = field(default=0.1, metadata={"help": "the learning rate's factor at each milestone"})
    covariance_ridge: float = field(default=1e-4, metadata={
        "help": "ridge added to each class covariance's diagonal (the sampled Gaussians)"})
    # on the official fp16 path (CUDA, precision auto), which values are held in fp16:
    # "official" = every point the official code has in fp16 (its clip.load model is half on
    # CUDA): the text encoder's output, the class means and covariances, the adapter output,
    # the logits and the hinge; "encoder_and_logits" = only the image features, adapter output
    # and logits (text, statistics and hinge in fp32). No effect off that path (CPU: all fp32).
    fp16_points: Literal["official", "encoder_and_logits"] = field(default="official", metadata={
        "help": "what is held in fp16 on CUDA with precision auto: official (the official code's points) or "
                "encoder_and_logits"})

    def validate(self) -> None:
        require(self.fp16_points in ("official", "encoder_and_logits"), "fp16_points", self.fp16_points,
                "'official' or 'encoder_and_logits'")
        checks = [("beta", self.beta > 0, "a number > 0"),
                  ("old_per_batch", self.old_per_batch >= 0, "an integer >= 0"),
                  ("hard_pair_threshold", self.hard_pair_threshold >= 0, "a number >= 0"),
                  ("mix_bias", self.mix_bias >= 0, "a number >= 0"),
                  ("hinge_margin", self.hinge_margin >= 0, "a number >= 0"),
                  ("milestones", all(m >= 1 for m in self.milestones), "a list of epochs >= 1"),
                  ("lr_gamma", 0 < self.lr_gamma <= 1, "a number in (0, 1]"),
                  ("covariance_ridge", self.covariance_ridge >= 0, "a number >= 0")]
        for key, ok, allowed in checks:
            require(ok, key, getattr(self, key), allowed)


OFFICIAL_EPOCHS = 15


def official_old_per_batch(dataset: str, increment: int) -> int:
    """The official code's old classes per batch, hard-coded by dataset name (about 2,000
    replayed features per epoch and every old class visited once per epoch)."""
    if dataset == "cifar100":
        return 4 if increment == 5 else 2
    return {"imagenet_r": 5, "cub200": 10}.get(dataset, 2)


def hard_pairs(old_text: torch.Tensor, new_text: torch.Tensor, threshold: float, offset: int) -> List[Tuple[int, int]]:
    """R1: (old class k, new class offset + j) whose normalised prompt features are closer
    than ``threshold`` in L2, old-major order. ``old_text`` (K_old, d), ``new_text`` (K_new, d)."""
    dist = torch.cdist(F.normalize(old_text.float(), dim=1), F.normalize(new_text.float(), dim=1))
    return [(int(k), offset + int(j)) for k, j in (dist < threshold).nonzero().tolist()]


def fp16(x: torch.Tensor) -> torch.Tensor:
    """``x`` as fp16 storage holds it (rounded to float16), kept in fp32: the official fp16
    points, computed the same on the CPU and on CUDA."""
    return x.half().float()


def fp16_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / x.norm()`` row-wise on fp16 tensors: the input, the norm and the quotient each rounded to fp16."""
    x = fp16(x)
    return fp16(x / fp16(x.norm(dim=1, keepdim=True)))


def hinge_loss(edge: torch.Tensor, text: torch.Tensor, pairs_of_rows: torch.Tensor, margin: float,
               half: bool = False) -> torch.Tensor:
    """R5: mean over edge samples of max(0, cos(u, g_new) - cos(u, g_old) + margin), u the
    adapted edge sample. ``edge`` (M, d) adapted, ``text`` (C, d) normalised (detached),
    ``pairs_of_rows`` (M, 2): (old class, new class) of each sample. ``half``: the official
    fp16 points: the adapter output cast to fp16 and normalised (models.py:132-134), again
    (main.py:113), the texts cast to fp16 and normalised (main.py:114-117), products, sums,
    difference, margin and mean each rounded to fp16 (main.py:118)."""
    if half:
        u = fp16_normalize(fp16_normalize(edge))
        old, new = fp16_normalize(text[pairs_of_rows[:, 0]]), fp16_normalize(text[pairs_of_rows[:, 1]])
        cos_old, cos_new = fp16(fp16(u * old).sum(1)), fp16(fp16(u * new).sum(1))
        return fp16(F.relu(fp16(fp16(cos_new - cos_old) + margin)).mean())
    u = F.normalize(edge, dim=1)
    cos_new = (u * text[pairs_of_rows[:, 1]]).sum(1)
    cos_old = (u * text[pairs_of_rows[:, 0]]).sum(1)
    return F.relu(cos_new - cos_old + margin).mean()


class RAPF(CLIPLearner, BaseLearner):
    options_class = RAPFOptions
    release = "rapf"
    trains = "a linear adapter on frozen CLIP image features"

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._setup(args)
        self.epochs = OFFICIAL_EPOCHS if self.cfg.epochs == "auto" else int(self.cfg.epochs)
        self._network = build_backbone(self.cfg, self._device).eval()
        d = self._network.embed_dim
        self.adapter = nn.Linear(d, d, bias=False).to(self._device)  # default init: not the identity (R1.1)
        self.stats = ClassGaussians(self.opts.covariance_ridge, self.opts.shrink, seed=self._seed)
        self.cache = FeatureCache(self._encode, self._network.input_resolution, self.cfg, self._device)
        self.record = {"hard_pairs": [], "replayed_per_epoch": [], "edge_per_epoch": [],
                                       "epochs": {"mode": "fixed", "chosen": self.epochs}}

    # ------------------------------------------------------------------ numerics
    @property
    def _official_half(self) -> bool:
        """The official numerics on CUDA: clip.load's fp16 encoders, fp16 adapter output and logits."""
        return self._device.type == "cuda" and self.cfg.precision == "auto"

    @property
    def _fp16_points(self) -> bool:
        """On the official fp16 path, also the text features, class statistics and hinge in fp16."""
        return self._official_half and self.opts.fp16_points == "official"

    @torch.no_grad()
    def _prompt_texts(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """R1's prompt features of ``tokens``: (normalised in fp32: hard pairs and the hinge,
        the official ``class_name_features``; as the logits use them). With the official fp16
        points the encoder runs in fp16 and its output is fp16 (models.py:112-113), normalised
        in fp32 for the first (models.py:165) and in fp16 for the logits (models.py:118, 138)."""
        if not self._fp16_points:
            text = text_features(self._network, tokens, self._device, "fp32")
            return text, text
        with torch.autocast(self._device.type, dtype=torch.float16):
            raw = fp16(self._network.encode_text(tokens).float())
        return F.normalize(raw, dim=1), fp16_normalize(raw)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        if self._official_half:
            with torch.autocast(self._device.type, dtype=torch.float16):
                return self._network.encode_image(images).half().float()
        return self._network.encode_image(images).float()

    def _logits(self, feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """R2: s * cos(A f(x), g(c)) over the classes of ``text`` (normalised)."""
        z = self.adapter(feats.float())
        if self._official_half:
            z, text = z.half(), text.half()
        return self._network.logit_scale * F.normalize(z, dim=1) @ text.t()

    # ------------------------------------------------------------------ task loop
    def incremental_train(self, data_manager) -> None:
        new = begin_task(self, data_manager)
        self.data_manager = data_manager
        with torch.no_grad():  # R1: the prompts of all seen classes, once per task
            tokens = self._network.tokenize(prompts(self.cfg.prompt_template, self._names)).to(self._device)
            self._text, self._logit_text = self._prompt_texts(tokens)
        pairs = []
        if self._cur_task > 0:
            pairs = hard_pairs(self._text[:self._known_classes], self._text[self._known_classes:],
                               self.opts.hard_pair_threshold, self._known_classes)
        self.record["hard_pairs"].append({"task": self._cur_task, "count": len(pairs), "pairs": pairs})
        logger.info("task %d: %d hard pair(s) of old and new classes", self._cur_task, len(pairs))
        feats, labels = self.cache.get(data_manager, "train", new)
        old_weight = self.adapter.weight.detach().clone()
        with self._timed("train"):
            self._train(feats, labels, pairs)
        with self._timed("stats_fusion"):
            feats, labels = self._statistics_features(data_manager, new, feats, labels)
            for c in new:  # R8: statistics of the new classes, pre-adapter features
                self.stats.add(c, feats[labels == c], half=self._fp16_points)
            if self._cur_task > 0:  # R9
                with torch.no_grad():
                    self.adapter.weight.copy_(svd_fusion(old_weight, self.adapter.weight.detach(), self.opts.mix_bias))
        self.timings["features"] = self.cache.seconds

    def _train(self, feats: torch.Tensor, labels: torch.Tensor, pairs: List[Tuple[int, int]]) -> None:
        """R3-R7: Adam, MultiStepLR per epoch; batches of real features plus replayed old-class
        features in the cross-entropy; the hinge on edge samples of the hard pairs."""
        opts, known = self.opts, self._known_classes
        m_r, m_e = math.floor(10 * opts.beta), math.floor(20 * opts.beta)
        n_old = opts.old_per_batch or official_old_per_batch(self.args.get("dataset", ""), self.cfg.increment)
        opt = torch.optim.Adam(self.adapter.parameters(), lr=self.cfg.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(opts.milestones), gamma=opts.lr_gamma)
        pair_rows = torch.tensor([p for p in pairs for _ in range(m_e)], dtype=torch.long,
                                 device=self._device).view(-1, 2)
        self.adapter.train()
        for epoch in range(self.epochs):
            batches = self._batches(feats, labels)  # the shuffled loader
            old = list(range(known))
            random.shuffle(old)  # R3: the old labels, shuffled each epoch
            replayed = edge_count = 0
            for b, (x, y) in enumerate(batches):
                text, logit_text = self._batch_text()
                if known > 0:
                    chosen = [old[(b * n_old + k) % known] for k in range(n_old)]
                    x = torch.cat([x] + [self.stats.sample(c, m_r) for c in chosen])
                    y = torch.cat([y, torch.tensor(chosen, device=y.device).repeat_interleave(m_r)])
                    replayed += len(chosen) * m_r
                loss = F.cross_entropy(self._logits(x, logit_text), y)
                if pairs:
                    edge = torch.cat([self.stats.sample(k, m_e) for k, _ in pairs])
                    loss = loss + hinge_loss(self.adapter(edge), text, pair_rows, opts.hinge_margin, self._fp16_points)
                    edge_count += len(edge)
                checked_step(opt, loss, f"task {self._cur_task}, epoch {epoch + 1}, step {b + 1}")
            sched.step()
            if epoch == 0:
                self.record["replayed_per_epoch"].append(replayed)
                self.record["edge_per_epoch"].append(edge_count)
        self.adapter.eval()

    def _batches(self, feats: torch.Tensor, labels: torch.Tensor):
        """One epoch of shuffled batches (the last one partial) of the cached features.
        Only ``benchmarks/rapf_reference.py`` overrides it (the official cost: re-encoded every epoch)."""
        for idx in shuffled_batches(len(labels), self.cfg.batch_size, labels.device):
            yield feats[idx], labels[idx]

    def _batch_text(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The seen classes' normalised prompt features, for the hinge and for the logits
        (fixed within a task: encoded once). An identity seam: only ``benchmarks/rapf_reference.py``
        overrides it (the official cost: all prompts re-encoded for every batch)."""
        return self._text.detach(), self._logit_text.detach()

    def _statistics_features(self, data_manager, new: range, feats: torch.Tensor, labels: torch.Tensor):
        """The features R8's statistics are computed from: the task's cached ones. An identity
        seam: only ``benchmarks/rapf_reference.py`` overrides it (the official cost: re-encoded)."""
        return feats, labels

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def eval_task(self):
        """R10: argmax of the logits over all seen classes."""
        with self._timed("eval"):
            feats, labels = self.cache.get(self.data_manager, "test", range(self._total_classes))
            scores = torch.cat([self._logits(feats[i:i + 4096], self._logit_text).float()
                                for i in range(0, len(labels), 4096)])
        return scores_result(self, scores, labels)

    # ------------------------------------------------------------------ analysis views (models/base.py)
    @torch.no_grad()
    def image_view(self, images: torch.Tensor, trained: bool) -> torch.Tensor:
        """The frozen image features (the official numerics), through the adapter when ``trained``."""
        f = self._encode(images)
        return F.normalize((self.adapter(f) if trained else f).float(), dim=1)

    def text_view(self, names, trained: bool) -> torch.Tensor:
        return self.backbone_text_view(names)  # the text side is never trained

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "adapter": self.adapter.weight.detach().cpu(), "stats": self.stats.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.adapter.weight.copy_(state["adapter"].to(self._device))
        self.stats.load_state_dict(state["stats"], self._device)
