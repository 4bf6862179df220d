"""MagMax (Marczak et al., ECCV 2024, "MagMax: Leveraging Model Merging for Seamless
Continual Learning"), as its official class-incremental code behaves (danielm1405/magmax:
``finetune_splitted.py --sequential-finetuning`` then ``merge_splitted.py``; re-implemented,
that repository has no licence): items M1-M7 of docs/methods/magmax.md.

The whole image encoder is fine-tuned on each task in turn, starting from the previous
task's fine-tuned weights (M1), against a frozen classifier of the task's classes built from
prompt templates (M2), with AdamW, a per-step warm-up-then-cosine rate and gradient
clipping (M3). After task t the task vectors tau_i = theta_i - theta_0 (each task's
fine-tuned encoder minus the pre-trained one) are merged element by element keeping the one
of largest magnitude, a later task winning a tie (M4), and the model evaluated is theta_0 +
0.5 * merge (M5), on the prompts of every seen class (M6). The merge is kept as one running
vector, updated with tau_t after each task, instead of one checkpoint per task: the official
merge is the same left fold, so this is exact (M7; tests/test_magmax.py).
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from models.base import BaseLearner
from utils.augment import seeded
from utils.clip_backbone import autocast
from utils.clip_ops import CLIPLearner, begin_task, build_backbone, make_loader, progress, scores_result, task_data
from utils.config import require
from utils.errors import NonFiniteError

logger = logging.getLogger(__name__)

# M2: the prompt lists of OpenAI's CLIP (openai/CLIP, MIT licence: data/prompts.md, CIFAR-100's
# 18 and ImageNet's 80), which MagMax's classification heads average for CIFAR100 and ImageNetR
# (its src/datasets/templates.py maps ImageNetR to the ImageNet list). Same order as there.
CIFAR100_TEMPLATES = tuple(f"{p} {{}}." for p in (
    "a photo of a", "a blurry photo of a", "a black and white photo of a", "a low contrast photo of a",
    "a high contrast photo of a", "a bad photo of a", "a good photo of a", "a photo of a small", "a photo of a big",
    "a photo of the", "a blurry photo of the", "a black and white photo of the", "a low contrast photo of the",
    "a high contrast photo of the", "a bad photo of the", "a good photo of the", "a photo of the small",
    "a photo of the big"))
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.")
DATASET_TEMPLATES = {"cifar100": CIFAR100_TEMPLATES, "imagenet_r": IMAGENET_TEMPLATES}


@dataclass
class MagMaxOptions:
    """MagMax's own options; defaults are the official code's (``src/args.py``,
    ``finetune_splitted.py``, ``merge_splitted.py``). Shared keys it reads: ``lr`` (1e-5),
    ``batch_size`` (128), ``epochs`` ("auto" = the official 10 per task), ``prompt_template``
    (only where ``templates`` is "dataset" and the dataset has no official list)."""
    merge_scale: float = field(default=0.5, metadata={
        "help": "the merged task vector's scale: evaluated weights = pre-trained + scale * max-magnitude merge (M5)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW's weight decay (M3)"})
    warmup_steps: int = field(default=500, metadata={
        "help": "linear warm-up steps of the per-step cosine schedule, restarted each task (M3)"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clipping before each step (M3)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing (the official 'ls')"})
    templates: List[str] = field(default_factory=lambda: ["dataset"], metadata={
        "help": "prompt templates averaged into each class's classifier row (M2), each with one '{}'; 'dataset': "
                "CLIP's 18 for cifar100, its 80 ImageNet ones for imagenet_r, else prompt_template"})
    train_augment: Literal["official", "none"] = field(default="official", metadata={
        "help": "official: open_clip's training crop, RandomResizedCrop (scale 0.9-1, bicubic); none: centre crop"})

    def validate(self) -> None:
        for key, ok, allowed in [
                ("merge_scale", math.isfinite(self.merge_scale), "a finite number"),
                ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
                ("warmup_steps", self.warmup_steps >= 1, "an integer >= 1 (the official schedule divides by it)"),
                ("grad_clip", self.grad_clip > 0, "a number > 0"),
                ("label_smoothing", 0 <= self.label_smoothing < 1, "a number in [0, 1)"),
                ("templates", self.templates == ["dataset"] or (len(self.templates) > 0 and all(
                    isinstance(t, str) and t.count("{}") == 1 for t in self.templates)),
                 "'dataset' or a list of templates, each with one '{}'"),
                ("train_augment", self.train_augment in ("official", "none"), "'official' or 'none'")]:
            require(ok, key, getattr(self, key), allowed)


def warmup_cosine(base_lr: float, warmup: int, steps: int, step: int) -> float:
    """M3: the official ``src/utils.py`` ``cosine_lr`` at ``step``: ``base (step + 1) / warmup``
    during the warm-up, then ``base (1 + cos(pi (step - warmup) / (steps - warmup))) / 2``.
    With fewer steps than the warm-up (CIFAR-100 B0 Inc10: 40 x 10 = 400 < 500) the rate
    never leaves the warm-up, as in the official runs."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))) * base_lr


def merge_step(running: Optional[torch.Tensor], tau: torch.Tensor) -> torch.Tensor:
    """M4/M7: one step of the official ``merge_max_abs`` (src/merging/task_vectors.py):
    keep ``tau`` where ``|tau| >= |running|`` (a tie goes to the later task), else ``running``."""
    if running is None:
        return tau.clone()
    return torch.where(tau.abs() >= running.abs(), tau, running)


def max_magnitude(vectors: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """M4: the max-magnitude merge of task vectors given all at once (the official function's
    fold over the list); the learner keeps the running value instead (M7)."""
    merged: Dict[str, torch.Tensor] = {}
    for key in vectors[0]:
        running = None
        for v in vectors:
            running = merge_step(running, v[key])
        merged[key] = running
    return merged


def float_state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The module's floating-point state (a copy): what a task vector covers. The official
    TaskVector skips int64/uint8 entries (they keep the pre-trained value); CLIP's ViT has none."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


class MagMax(CLIPLearner, BaseLearner):
    options_class = MagMaxOptions
    release = "mgclip"  # 'released' class orders and names: MG-CLIP's files (MagMax's own: fixed orders in code)
    trains = "the whole image encoder (sequential fine-tuning; evaluated as the max-magnitude merge of task vectors)"

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._setup(args)
        self.epochs = 10 if self.cfg.epochs == "auto" else int(self.cfg.epochs)
        self._network = build_backbone(self.cfg, self._device).eval()
        visual = self._network.model.visual
        visual.requires_grad_(True)  # M1: every image-encoder parameter trains; the text encoder stays frozen
        self.pretrained = float_state(visual)  # theta_0
        self.finetuned: Optional[Dict[str, torch.Tensor]] = None  # theta_t: where the next task starts (M1)
        self.merged_tau: Optional[Dict[str, torch.Tensor]] = None  # the running max-magnitude task vector (M7)
        self.class_text = torch.zeros(0, self._network.embed_dim, device=self._device)
        self.record = {"epochs": {"mode": "fixed", "chosen": self.epochs},
                       "trainable_parameters": sum(p.numel() for p in visual.parameters())}

    # ------------------------------------------------------------------ M2: the text classifier
    def templates(self) -> List[str]:
        t = self.opts.templates
        if t == ["dataset"]:
            return list(DATASET_TEMPLATES.get(self.args.get("dataset", ""), (self.cfg.prompt_template,)))
        return list(t)

    @torch.no_grad()
    def class_rows(self, names: Sequence[str]) -> torch.Tensor:
        """M2 (official ``build_subset_classification_head``): per class, the text features of
        every template, each L2-normalised, averaged, normalised again. (n, D)."""
        net, templates = self._network, self.templates()
        rows = []
        for name in names:
            tokens = net.tokenize([t.format(name) for t in templates]).to(self._device)
            with autocast(self._device, self.cfg.precision):
                feats = F.normalize(net.encode_text(tokens).float(), dim=1)
            rows.append(F.normalize(feats.mean(0), dim=0))
        return torch.stack(rows) if rows else torch.zeros(0, net.embed_dim, device=self._device)

    # ------------------------------------------------------------------ training
    def incremental_train(self, data_manager) -> None:
        new = begin_task(self, data_manager)
        cfg, R = self.cfg, self._network.input_resolution
        with self._timed("text"):
            self.class_text = torch.cat([self.class_text, self.class_rows(self._names[new.start:])])
        augment = seeded("moe", R) if self.opts.train_augment == "official" else None  # open_clip's train transform
        data = task_data(data_manager, new, "train", R, cfg, self._device, transform=augment)
        loader = make_loader(data, cfg.batch_size, True, cfg.num_workers, self._device)
        test = task_data(data_manager, range(self._total_classes), "test", R, cfg, self._device)
        self.test_loader = make_loader(test, cfg.eval_batch_size, False, cfg.num_workers, self._device)
        if self.finetuned is not None:
            self._load_visual(self.finetuned)  # M1: sequential, from theta_{t-1} (not from the merged model)
        with self._timed("train"):
            self._train(loader, augment)
        with self._timed("merge"):
            self._merge()

    def _train(self, loader, augment=None) -> None:
        """M3: a fresh AdamW per task over the image encoder, the rate set before each step,
        gradients clipped to norm ``grad_clip``; cross-entropy of the frozen head's logits
        (``logit_scale * cos``, official ``ClassificationHead`` with normalize=True) on the
        task's own classes (labels remapped to 0..k-1)."""
        net, opts = self._network, self.opts
        params = [p for p in net.model.visual.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=opts.weight_decay)
        head = net.logit_scale.detach() * self.class_text[self._known_classes:self._total_classes]
        steps = self.epochs * len(loader)
        net.train()
        step = 0
        for epoch in range(self.epochs):
            if augment is not None:
                augment.reseed()
            for _, x, y in progress(loader, f"task {self._cur_task} epoch {epoch + 1}/{self.epochs}"):
                for group in opt.param_groups:
                    group["lr"] = warmup_cosine(self.cfg.lr, opts.warmup_steps, steps, step)
                with autocast(self._device, self.cfg.precision):
                    feats = net.encode_image(x)
                logits = F.normalize(feats.float(), dim=1) @ head.t()
                loss = F.cross_entropy(logits, y - self._known_classes, label_smoothing=opts.label_smoothing)
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"non-finite loss {loss.item()} in task {self._cur_task}, "
                                         f"epoch {epoch + 1}, step {step + 1}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
                opt.step()
                step += 1
        net.eval()

    @torch.no_grad()
    def _merge(self) -> None:
        """M4/M5/M7: tau_t = theta_t - theta_0 folded into the running max-magnitude vector;
        the network then holds theta_0 + scale * merge (the model evaluated), theta_t is kept
        for the next task."""
        self.finetuned = float_state(self._network.model.visual)
        if self.merged_tau is None:
            self.merged_tau = {}
        for k in self.pretrained:  # key by key: never a second encoder-sized copy of the running vector
            self.merged_tau[k] = merge_step(self.merged_tau.get(k), self.finetuned[k] - self.pretrained[k])
        self._load_merged()

    @torch.no_grad()
    def _load_merged(self) -> None:
        """M5 (official ``TaskVector.apply_to``): pre-trained + scale * merged task vector into
        the image encoder, key by key."""
        visual_state = self._network.model.visual.state_dict()
        for k, theta0 in self.pretrained.items():
            visual_state[k].copy_(theta0 + self.opts.merge_scale * self.merged_tau[k])

    @torch.no_grad()
    def _load_visual(self, state: Dict[str, torch.Tensor]) -> None:
        visual_state = self._network.model.visual.state_dict()
        for k, v in state.items():
            visual_state[k].copy_(v)

    # ------------------------------------------------------------------ evaluation (M6)
    @torch.no_grad()
    def eval_task(self):
        with self._timed("eval"):
            net = self._network.eval()
            scores, labels = [], []
            for _, x, y in progress(self.test_loader, "eval"):
                with autocast(self._device, self.cfg.precision):
                    feats = net.encode_image(x)
                scores.append(F.normalize(feats.float(), dim=1) @ self.class_text.t())
                labels.append(y)
        return scores_result(self, torch.cat(scores), torch.cat(labels))

    # ------------------------------------------------------------------ analysis views (models/base.py)
    @contextlib.contextmanager
    def _pretrained(self) -> Iterator[None]:
        """Zero-shot CLIP: theta_0 in the image encoder for the block, the merged model back after."""
        current = float_state(self._network.model.visual)
        self._load_visual(self.pretrained)
        try:
            yield
        finally:
            self._load_visual(current)

    @torch.no_grad()
    def backbone_text_view(self, names: Sequence[str]) -> torch.Tensor:
        return self.class_rows(names)  # M2: the template ensemble (the text encoder never changes)

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        done = state["known_classes"] > 0
        return {**state, "class_text": self.class_text[:state["known_classes"]].cpu(),
                "finetuned": {k: v.cpu() for k, v in self.finetuned.items()} if done else None,
                "merged_tau": {k: v.cpu() for k, v in self.merged_tau.items()} if done else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.class_text = state["class_text"].to(self._device)
        if state["finetuned"] is None:
            self.finetuned = self.merged_tau = None
            self._load_visual(self.pretrained)
            return
        self.finetuned = {k: v.to(self._device) for k, v in state["finetuned"].items()}
        self.merged_tau = {k: v.to(self._device) for k, v in state["merged_tau"].items()}
        self._load_merged()
