"""PROOF: "Learning without Forgetting for Vision-Language Models" (Zhou et al., TPAMI
2025), as its official code behaves (items P1-P10 of docs/methods/proof.md).

CLIP stays frozen (its ``logit_scale`` is a trained copy). Each task adds an image and a
text projection (``Linear(d, d)`` with bias; the projected feature is the sum over all
tasks' projections) and three context prompts; one fusion module (single-head
self-attention + residual + LayerNorm) runs over [image; class texts; class prototypes;
context prompts] per sample, with the class text and prototype outputs averaged over the
batch. Three losses: image-text and image-prototype cross-entropy on the fused outputs, and
CLIP's contrastive loss. Exemplars are chosen by herding on the frozen features.

Frozen features are computed once per image (``utils.feature_cache``) and the prompts once
per task: the official code re-encodes them every step, and its logging-only evaluations
are not run here.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import transforms as T

from models.base import BaseLearner
from utils.clip_backbone import CLIP_MEAN, CLIP_STD
from utils.clip_ops import CLIPLearner, begin_task, build_backbone, scores_result, shuffled_batches
from utils.config import ConfigError, require
from utils.errors import checked_step
from utils.feature_cache import FeatureCache
from utils.herding import per_class_budget, update_herding_memory

logger = logging.getLogger(__name__)


@dataclass
class PROOFOptions:
    """PROOF's own options; defaults are the official CIFAR-100 B0 Inc10 config's. Shared
    keys it reads: ``lr`` (init_lr, 1e-3 there), ``batch_size`` (64 there; also the
    evaluation batch, as officially), ``epochs`` ("auto" = the official 5 for CIFAR-100, 10
    elsewhere)."""
    templates: List[str] = field(default_factory=lambda: ["a good photo of a {}."], metadata={
        "help": "prompt templates, each with one '{}'; the first trains, all are averaged at test; or 'released'"})
    context_prompts: int = field(default=3, metadata={"help": "context prompts added per task (P1)"})
    weight_decay: float = field(default=0.05, metadata={"help": "the optimiser's weight decay"})
    optimizer: Literal["sgd", "adam"] = field(default="sgd", metadata={"help": "sgd (momentum 0.9) or adam (AdamW)"})
    proof_memory_size: int = field(default=2000, metadata={
        "help": "exemplars kept over all seen classes (PyCIL's memory_size)"})
    fixed_memory: bool = field(default=False, metadata={
        "help": "keep memory_per_class exemplars per class instead of proof_memory_size in total"})
    memory_per_class: int = field(default=20, metadata={"help": "exemplars per class when fixed_memory is true"})
    squash_resize: bool = field(default=True, metadata={
        "help": "the official transform: resize to R x R (squashing), not CLIP's crop"})
    freeze_old_text_proj: bool = field(default=False, metadata={
        "help": "freeze earlier tasks' text projections: the paper's premise (the code trains them all)"})
    normalize_eval_image: bool = field(default=False, metadata={
        "help": "at test, the normalised image token, as in training (the code: unnormalised)"})
    per_sample_eval: bool = field(default=False, metadata={
        "help": "text/prototype outputs per sample, not averaged over the batch (P9)"})

    def validate(self) -> None:
        for key, ok, allowed in [
                ("optimizer", self.optimizer in ("sgd", "adam"), "'sgd' or 'adam'"),
                ("templates", self.templates == ["released"] or (len(self.templates) > 0 and all(
                    "{}" in t for t in self.templates)), "'released' (PROOF's templates.json for the dataset) or "
                                                         "a non-empty list of prompts with one '{}' each"),
                ("context_prompts", self.context_prompts >= 0, "an integer >= 0"),
                ("proof_memory_size", self.proof_memory_size >= 0, "an integer >= 0"),
                ("memory_per_class", self.memory_per_class >= 0, "an integer >= 0")]:
            require(ok, key, getattr(self, key), allowed)


class FusionBlock(nn.Module):
    """P4: single-head self-attention over d-dim tokens (Q/K/V without bias, N(0, 2/(2d))),
    scores / sqrt(d), softmax, dropout 0.1; output map (Xavier-normal weight, bias),
    dropout 0.1; residual; LayerNorm. Input and output (B, L, d)."""

    def __init__(self, d: int, dropout: float = 0.1):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(d, d, bias=False) for _ in range(3))
        for lin in (self.q, self.k, self.v):
            nn.init.normal_(lin.weight, mean=0.0, std=math.sqrt(2.0 / (d + d)))
        self.out = nn.Linear(d, d)
        nn.init.xavier_normal_(self.out.weight)
        self.attn_drop, self.out_drop = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)
        self.d = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(self.d), dim=-1)
        out = self.out_drop(self.out(self.attn_drop(attn) @ self.v(x)))
        return self.norm(out + x)


class ProofHead(nn.Module):
    """The trained parts: per-task projections and prompts, the fusion block, logit scale."""

    def __init__(self, d: int, logit_scale: float, prompts_per_task: int = 3):
        super().__init__()
        self.d, self.prompts_per_task = d, prompts_per_task
        self.img_proj, self.txt_proj = nn.ModuleList(), nn.ModuleList()
        self.prompts = nn.ParameterList()
        self.fusion = FusionBlock(d)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    def new_task(self, freeze_old_text: bool = False) -> None:
        """P1/P6: freeze the old image projections and prompts (the old text projections
        stay trainable, as in the official code, unless ``freeze_old_text``), add new ones."""
        for module in self.img_proj:
            module.requires_grad_(False)
        for module in self.txt_proj:
            module.requires_grad_(not freeze_old_text)
        for p in self.prompts:
            p.requires_grad_(False)
        device = self.logit_scale.device
        self.img_proj.append(nn.Linear(self.d, self.d).to(device))
        self.txt_proj.append(nn.Linear(self.d, self.d).to(device))
        self.prompts.append(nn.Parameter(torch.randn(self.prompts_per_task, self.d).to(device)))

    def project_image(self, f: torch.Tensor) -> torch.Tensor:
        return sum(p(f) for p in self.img_proj)

    def project_text(self, g: torch.Tensor) -> torch.Tensor:
        return sum(p(g) for p in self.txt_proj)

    def fuse(self, image: torch.Tensor, text: torch.Tensor, protos: torch.Tensor,
             per_sample: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """P4: per-sample sequences [image; C texts; C prototypes; prompts] -> (image output
        (B, d), text outputs (C, d) and prototype outputs (C, d) averaged over the batch;
        with ``per_sample`` (B, C, d) each)."""
        b, c = image.shape[0], text.shape[0]
        ctx = torch.cat(list(self.prompts)) if len(self.prompts) else image.new_zeros(0, self.d)
        seq = torch.cat([image[:, None], text.expand(b, c, -1), protos.expand(b, c, -1),
                         ctx.expand(b, len(ctx), -1)], dim=1)
        out = self.fusion(seq)
        o, w, p = out[:, 0], out[:, 1:1 + c], out[:, 1 + c:1 + 2 * c]
        return (o, w, p) if per_sample else (o, w.mean(0), p.mean(0))


class PROOF(CLIPLearner, BaseLearner):
    options_class = PROOFOptions
    release = "mgclip"  # as before: 'released' class orders and names are MG-CLIP's files (PROOF's own are shuffles)
    trains = "per-task image/text projections, context prompts, a fusion module and the logit scale, on frozen CLIP"

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._setup(args)
        if self.opts.templates == ["released"]:  # read before the learner is built: toolbox/released.py
            raise ConfigError("config key 'templates' = 'released' reached the learner unread: build it through "
                              "toolbox.registry.get_model (which reads PROOF's templates.json), or give the templates")
        self.epochs = (5 if self.cfg.dataset == "cifar100" else 10) if self.cfg.epochs == "auto" else \
            int(self.cfg.epochs)
        self._network = build_backbone(self.cfg, self._device).eval()
        d = self._network.embed_dim
        self.head = ProofHead(d, float(self._network.model.logit_scale), self.opts.context_prompts).to(self._device)
        self.cache = FeatureCache(self._encode, self._network.input_resolution, self.cfg, self._device,
                                  transform=self._squash_transform() if self.opts.squash_resize else None)
        self.prototypes = torch.zeros(0, d, device=self._device)
        self.memory: Dict[int, List[int]] = {}  # class -> indices into the cached training features
        self.record = {"trainable_parameters": [], "memory_per_class": [],
                                       "epochs": {"mode": "fixed", "chosen": self.epochs}}

    def _squash_transform(self):
        r = self._network.input_resolution
        return T.Compose([T.Resize((r, r), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(r),
                          T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._network.encode_image(images).float()

    @torch.no_grad()
    def _raw_text(self, template: str, names: List[str]) -> torch.Tensor:
        """Frozen, unnormalised prompt features g(p) (C, d)."""
        tokens = self._network.tokenize([template.format(n) for n in names]).to(self._device)
        return self._network.encode_text(tokens).float()

    # ------------------------------------------------------------------ task loop
    def incremental_train(self, data_manager) -> None:
        new = begin_task(self, data_manager)
        self.data_manager = data_manager
        self.head.new_task(self.opts.freeze_old_text_proj)  # P1
        self.record["trainable_parameters"].append(sum(p.numel() for p in self.head.parameters()
                                                       if p.requires_grad))
        feats, labels = self.cache.all(data_manager, "train")  # stable indices for the memory
        new_rows = (labels >= self._known_classes) & (labels < self._total_classes)
        protos = torch.stack([F.normalize(feats[labels == c], dim=1).mean(0) for c in new])  # P3
        self.prototypes = torch.cat([self.prototypes, protos])
        # the first template's prompts of all seen classes, frozen, once per task
        self._train_text = self._raw_text(self.opts.templates[0], self._names)
        rows = torch.nonzero(new_rows).flatten()
        if self.memory:
            rows = torch.cat([rows, torch.tensor([i for idx in self.memory.values() for i in idx],
                                                 dtype=torch.long, device=rows.device)])
        self._train_rows = rows  # indices into the cached training features (new classes + exemplars)
        with self._timed("train"):
            self._train(feats[rows], labels[rows])
        m = per_class_budget(self.opts.proof_memory_size, self.opts.fixed_memory, self.opts.memory_per_class,
                             self._total_classes)
        self.memory = update_herding_memory(self.memory, feats, labels, new, m)  # P8
        self.record["memory_per_class"].append(m)
        self.timings["features"] = self.cache.seconds

    def _losses(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """P5 on a batch of frozen image features ``f`` (B, d) with labels ``y``."""
        head = self.head
        z = F.normalize(head.project_image(f), dim=1)
        w = F.normalize(head.project_text(self._train_text), dim=1)
        protos = F.normalize(head.project_image(self.prototypes), dim=1)
        o, w_out, p_out = head.fuse(z, w, protos)
        loss = F.cross_entropy(o @ w_out.t(), y) + F.cross_entropy(o @ p_out.t(), y)
        logits = head.logit_scale.exp() * z @ w[y].t()  # each image against its own label's text
        target = torch.arange(len(y), device=y.device)
        return loss + (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2

    def _train(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """P6-P7: the trainable parts, fresh optimiser, cosine schedule per epoch to 0."""
        params = [p for p in self.head.parameters() if p.requires_grad]
        if self.opts.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.9, weight_decay=self.opts.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.opts.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs, eta_min=0.0)
        self.head.train()
        for epoch in range(self.epochs):
            for step, idx in enumerate(shuffled_batches(len(labels), self.cfg.batch_size, labels.device)):
                checked_step(opt, self._losses(feats[idx], labels[idx]),
                             f"task {self._cur_task}, epoch {epoch + 1}, step {step + 1}")
            sched.step()
        self.head.eval()

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _text_classifier(self, names: List[str]) -> torch.Tensor:
        """P9's w-bar: each template's projected prompt features, normalised, averaged, normalised (C, d)."""
        ensemble = torch.stack([F.normalize(self.head.project_text(self._raw_text(t, names)), dim=1)
                                for t in self.opts.templates])
        return F.normalize(ensemble.mean(0), dim=1)

    @torch.no_grad()
    def _eval_classes(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """What P9 needs of the classes, fixed during an evaluation: w-bar (C, d) and the
        projected, normalised prototypes (C, d). The official code re-encodes the prompts
        for every batch; the values are the same, so an evaluation computes them once."""
        return self._text_classifier(self._names), F.normalize(self.head.project_image(self.prototypes), dim=1)

    @torch.no_grad()
    def scores(self, f: torch.Tensor, classes: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """P9 on one evaluation batch of frozen features (B, d): o.w~ + o.P~ + Z.w-bar;
        ``classes``: ``_eval_classes()`` computed once for the evaluation (else here)."""
        head = self.head
        z = head.project_image(f)
        w_bar, protos = classes if classes is not None else self._eval_classes()
        token = F.normalize(z, dim=1) if self.opts.normalize_eval_image else z
        o, w_out, p_out = head.fuse(token, w_bar, protos, per_sample=self.opts.per_sample_eval)
        if self.opts.per_sample_eval:
            fused = (o[:, None] * w_out).sum(-1) + (o[:, None] * p_out).sum(-1)
        else:
            fused = o @ w_out.t() + o @ p_out.t()
        return fused + z @ w_bar.t()

    @torch.no_grad()
    def eval_task(self):
        with self._timed("eval"):
            feats, labels = self.cache.get(self.data_manager, "test", range(self._total_classes))
            order = torch.argsort(labels, stable=True)  # the official test set: class by class
            feats, labels = feats[order], labels[order]
            b = self.cfg.batch_size  # the official evaluation batches (predictions depend on them)
            classes = self._eval_classes()  # the prompts encoded once per evaluation, not per batch
            scores = torch.cat([self.scores(feats[i:i + b], classes) for i in range(0, len(labels), b)])
        return scores_result(self, scores, labels)

    # ------------------------------------------------------------------ analysis views (models/base.py)
    @torch.no_grad()
    def image_view(self, images: torch.Tensor, trained: bool) -> torch.Tensor:
        """Frozen CLIP's image features; trained: their sum of per-task projections, as the
        image-text term of P9 uses them (normalised here, as every view is)."""
        f = self._encode(images)
        return F.normalize(self.head.project_image(f) if trained else f, dim=1)

    @torch.no_grad()
    def text_view(self, names, trained: bool) -> torch.Tensor:
        """Zero-shot: the run's prompt; trained: P9's projected template ensemble w-bar."""
        return self._text_classifier(list(names)) if trained else self.backbone_text_view(names)

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        return {**state, "tasks": len(state["task_ranges"]),
                "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
                "prototypes": self.prototypes[:state["known_classes"]].cpu(),
                "memory": {int(c): list(idx) for c, idx in self.memory.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        for _ in range(state["tasks"]):
            self.head.new_task(self.opts.freeze_old_text_proj)
        self.head.load_state_dict(state["head"])
        self.prototypes = state["prototypes"].to(self._device)
        self.memory = {int(c): list(idx) for c, idx in state["memory"].items()}
