"""CLAP4CLIP (Jha et al., NeurIPS 2024, "CLAP4CLIP: Continual Learning with Probabilistic
Finetuning for Vision-Language Models"), as its official code runs the base CLAP model
(srvCodes/clap4clip, ``classifier/continual_clip_variational.py``, model ``clclip_var``
with ``--use-vga --expandable-adapter --variational --lasp --beta 15 --finetuning
--method er --exemplar-selector random --forward-times 20``): items C1-C10 of
docs/methods/clap4clip.md. Re-implemented (the official code has no licence).

CLIP stays frozen. The class text features (CLIP's prompt ensemble, C1) attend to the
batch's image features through a one-layer transformer decoder whose self-attention is
masked to each task's classes (the visual-guided attention, VGA, C2). Each task has a
variational adapter, a linear mean head and a softplus standard-deviation head over the
visual-guided text features of its classes (C3), initialised from the prompt ensemble's
statistics (C4); the classifier of a class is its visual-guided text feature plus a
reparameterised sample of its adapter's Gaussian, 20 samples, and a test image's scores are
the mean over samples of the logits (C5). The loss is the cross-entropy over all samples,
plus 0.001 x the KL of the current task's Gaussians to a standard normal (C6), plus 15 x the
language-aware regulariser of the samples against the hand-made prompts (C7). SGD with a
warm-up-then-cosine rate per step (C8). An exemplar memory (C9) is replayed with the next
task's data, and after every task but the first all adapters are fine-tuned on it, class
balanced (C10). ``clap4clip_star`` is the same learner without the memory (MG-CLIP's CLAP*).
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.base import BaseLearner
from models.magmax import DATASET_TEMPLATES  # the OpenAI CLIP prompt ensembles (CIFAR-100: 18, ImageNet: 80)
from utils.clip_backbone import autocast
from utils.clip_ops import CLIPLearner, begin_task, build_backbone, scores_result, text_features
from utils.config import require
from utils.errors import checked_step
from utils.feature_cache import FeatureCache

logger = logging.getLogger(__name__)


@dataclass
class CLAPOptions:
    """CLAP4CLIP's own options; defaults are the official base CLAP model's (README command,
    ``main_incremental_submit.py`` defaults). Shared keys it reads: ``lr`` (1e-3, scaled by
    batch_size / 20 as the official code does), ``batch_size`` (32; also the test batch the
    visual guidance attends over), ``epochs`` ("auto" = 5, the README's command)."""
    forward_times: int = field(default=20, metadata={
        "help": "Monte-Carlo samples of each adapter's Gaussian, in training and at test (C5)"})
    kl_weight: float = field(default=0.001, metadata={
        "help": "weight of the KL of the adapters' Gaussians to the standard normal prior (C6)"})
    lasp: bool = field(default=True, metadata={
        "help": "the language-aware regulariser of the samples against the hand-made prompts (C7, --lasp)"})
    lasp_beta: float = field(default=15.0, metadata={"help": "its weight (--beta)"})
    templates: Literal["dataset", "single"] = field(default="dataset", metadata={
        "help": "dataset: the official prompt ensemble (CIFAR-100: 18, ImageNet-R: 80 templates); single: "
                "prompt_template alone (C1)"})
    adapter_init: Literal["text", "default"] = field(default="text", metadata={
        "help": "text: a new adapter's weights from the prompt ensemble's statistics (C4); default: PyTorch's"})
    vga: bool = field(default=True, metadata={"help": "the visual-guided attention over the text features (C2)"})
    vga_dropout: float = field(default=0.1, metadata={
        "help": "dropout inside the VGA decoder layer (PyTorch's default, active while training)"})
    vga_ffn: int = field(default=2048, metadata={"help": "the VGA decoder layer's feed-forward width"})
    memory_size: int = field(default=2000, metadata={
        "help": "exemplars over all seen classes (C9; 0 and memory_per_class 0: no memory, no fine-tuning)"})
    memory_per_class: int = field(default=0, metadata={
        "help": "> 0: this many exemplars per class instead of the total budget (official ImageNet-R: 20)"})
    memory_selection: Literal["first", "random"] = field(default="first", metadata={
        "help": "first: a new class keeps its first training images (the official 'random' selector); random: "
                "a seeded draw"})
    finetune: bool = field(default=True, metadata={
        "help": "class-balanced fine-tuning of all adapters on the memory after each task but the first (C10)"})
    finetune_epochs: int = field(default=2, metadata={"help": "its epochs (README: 2)"})
    finetune_lr_scale: float = field(default=0.1, metadata={"help": "its rate, times the training rate"})
    lr_reference_batch: int = field(default=20, metadata={
        "help": "the rate used is lr * batch_size / this (official: 20)"})
    warmup_fraction: float = field(default=0.3, metadata={
        "help": "share of a task's training steps in the linear warm-up (C8; none in fine-tuning)"})
    weight_decay: float = field(default=0.0, metadata={"help": "SGD's weight decay"})
    train_flip: bool = field(default=True, metadata={
        "help": "the official random horizontal flip of training images (frozen features of both views)"})
    eval_grouping: Literal["task", "mixed"] = field(default="task", metadata={
        "help": "task: test batches hold one task's images, as the official per-task test loaders; mixed: any"})

    def validate(self) -> None:
        for key, ok, allowed in [
                ("forward_times", self.forward_times >= 1, "an integer >= 1"),
                ("kl_weight", self.kl_weight >= 0, "a number >= 0"),
                ("lasp_beta", self.lasp_beta >= 0, "a number >= 0"),
                ("templates", self.templates in ("dataset", "single"), "'dataset' or 'single'"),
                ("adapter_init", self.adapter_init in ("text", "default"), "'text' or 'default'"),
                ("vga_dropout", 0 <= self.vga_dropout < 1, "a number in [0, 1)"),
                ("vga_ffn", self.vga_ffn >= 1, "an integer >= 1"),
                ("memory_size", self.memory_size >= 0, "an integer >= 0"),
                ("memory_per_class", self.memory_per_class >= 0, "an integer >= 0"),
                ("memory_selection", self.memory_selection in ("first", "random"), "'first' or 'random'"),
                ("finetune_epochs", self.finetune_epochs >= 0, "an integer >= 0"),
                ("finetune_lr_scale", self.finetune_lr_scale > 0, "a number > 0"),
                ("lr_reference_batch", self.lr_reference_batch >= 1, "an integer >= 1"),
                ("warmup_fraction", 0 <= self.warmup_fraction < 1, "a number in [0, 1)"),
                ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
                ("eval_grouping", self.eval_grouping in ("task", "mixed"), "'task' or 'mixed'")]:
            require(ok, key, getattr(self, key), allowed)


@dataclass
class CLAPStarOptions(CLAPOptions):
    """CLAP* of MG-CLIP's Table 2: CLAP without the exemplar memory (so without replay and
    without the class-balanced fine-tuning)."""
    memory_size: int = field(default=0, metadata={
        "help": "exemplars over all seen classes (C9; 0 and memory_per_class 0: no memory, no fine-tuning)"})


# ---------------------------------------------------------------------------- the method's pieces
class VariationalAdapter(nn.Module):
    """C3 (official ``Adapter`` pair, ``get_variational_adapter_features``): a task's Gaussian
    over its classes' text-feature offsets: mean ``W_mu x + b_mu``, standard deviation
    ``0.999 softplus(W_sigma x + b_sigma) + 0.001``."""

    def __init__(self, dim: int):
        super().__init__()
        self.mu = nn.Linear(dim, dim)
        self.sigma = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.mu(x), F.softplus(self.sigma(x)) * 0.999 + 0.001


@torch.no_grad()
def init_from_text(adapter: VariationalAdapter, per_template: torch.Tensor) -> None:
    """C4 (official ``init_new_heads``): ``per_template`` (C, P, D) are the L2-normalised
    features of every seen class under each template. The mean head's weight is E^T E / D
    with E (C, D) the mean over templates (not renormalised); the deviation head's the same
    of the unbiased variance over templates (0 for one template). Biases keep PyTorch's initialisation."""
    d = per_template.shape[-1]
    var = per_template.var(1, correction=1 if per_template.shape[1] > 1 else 0)  # one template: 0, not NaN
    for lin, stat in ((adapter.mu, per_template.mean(1)), (adapter.sigma, var)):
        lin.weight.copy_(stat.t() @ stat / d)


def task_mask(sizes: Sequence[int], device=None) -> torch.Tensor:
    """C2 (official ``get_attention_mask`` without task tokens): (C, C) boolean, True where
    class i may not attend to class j, i.e. j is of another task."""
    task = torch.repeat_interleave(torch.arange(len(sizes)), torch.as_tensor(list(sizes)))
    return (task[:, None] != task[None, :]).to(device)


def reparameterised(mu: torch.Tensor, sigma: torch.Tensor, samples: int,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """C5 (``Normal(mu, sigma).rsample([samples])``): mu + sigma * eps, eps ~ N(0, I) of shape
    (samples, *mu.shape) drawn from ``generator`` (torch's global stream when None)."""
    eps = torch.randn((samples,) + tuple(mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + sigma * eps


def kl_to_standard_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """C6 (``kl_divergence(qdist, Normal(0, 1)).mean(0).sum()``): the closed-form KL of each
    diagonal Gaussian (rows: classes) to N(0, I), summed over dimensions, mean over classes."""
    kl = 0.5 * (sigma ** 2 + mu ** 2 - 1) - torch.log(sigma)
    return kl.mean(0).sum()


def lasp_loss(per_template: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """C7 (the ``--lasp`` term): ``per_template`` (n, P, D) the task's classes' hand-made prompt
    features, ``samples`` (S, n, D) the adapter's sampled offsets. Similarity of class i's
    prompts to class j's sample, averaged over templates and samples, (n, n); cross-entropy
    of each row against its own class."""
    sims = torch.einsum("ipd,sjd->sipj", per_template, samples).mean(2).mean(0)
    return F.cross_entropy(sims, torch.arange(sims.shape[0], device=sims.device))


def combine_samples(logits: torch.Tensor) -> torch.Tensor:
    """C5 (the official evaluator: ``pred.mean(0)``, then softmax and top-k): a test image's
    scores are the mean over the Monte-Carlo samples (dim 0) of its logits."""
    return logits.mean(0)


def warmup_cosine_rates(lr: float, total: int, warmup: int) -> np.ndarray:
    """C8 (official ``build_cosine_scheduler``): per-step rates, ``warmup`` steps rising
    linearly from 0 (exclusive) to ``lr`` (exclusive), then a cosine from ``lr`` to
    ``lr / 1000`` over the remaining steps."""
    rise = np.linspace(0, lr, warmup + 2)[1:-1] if warmup > 0 else np.zeros(0)
    steps = np.arange(total - warmup)
    final = lr * 1e-3
    fall = final + 0.5 * (lr - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate([rise, fall])


def memory_after_task(mem_index: np.ndarray, mem_label: np.ndarray, new_index: np.ndarray, new_label: np.ndarray,
                      seen: int, new_classes: Sequence[int], per_class: int,
                      selection: str = "first") -> Tuple[np.ndarray, np.ndarray]:
    """C9 (official ``RandomExemplarsSelector.select_indices``): each old class keeps the
    first ``per_class`` of its exemplars; each new class takes ``per_class`` of its training
    images: the first in dataset order (official) or a draw of torch's global stream.
    Indices refer to the training set; returns (indices, labels), class by class."""
    index, label = [], []
    for c in range(seen):
        keep = mem_index[mem_label == c][:per_class]
        index.append(keep)
        label.append(np.full(len(keep), c, np.int64))
    for c in new_classes:
        pool = new_index[new_label == c]
        if selection == "random":
            pool = pool[torch.randperm(len(pool)).numpy()]
        take = pool[:per_class]
        index.append(take)
        label.append(np.full(len(take), c, np.int64))
    return (np.concatenate(index + [np.zeros(0, np.int64)]).astype(np.int64),
            np.concatenate(label + [np.zeros(0, np.int64)]).astype(np.int64))


def make_vga(dim: int, ffn: int, dropout: float) -> nn.TransformerDecoder:
    """C2 (official ``ClClipVariational.__init__``): one post-norm transformer decoder layer,
    one head, GELU; queries the text features, keys and values the images."""
    layer = nn.TransformerDecoderLayer(d_model=dim, nhead=1, dim_feedforward=ffn, dropout=dropout,
                                       activation="gelu", batch_first=True)
    return nn.TransformerDecoder(layer, 1)


class CLAPHead(nn.Module):
    """The trained parts: the VGA decoder and one variational adapter per task."""

    def __init__(self, dim: int, ffn: int, dropout: float, use_vga: bool):
        super().__init__()
        self.vga = make_vga(dim, ffn, dropout) if use_vga else None
        self.adapters = nn.ModuleList()

    def forward(self, images: torch.Tensor, text: torch.Tensor, sizes: Sequence[int], samples: int,
                scale: float, generator: Optional[torch.Generator] = None, loss_tasks: Sequence[int] = (),
                per_template: Optional[torch.Tensor] = None, lasp: bool = False):
        """Official ``CLIP.forward``: images (B, D), text (C, D), both L2-normalised; logits
        (samples, B, C); and, for the tasks in ``loss_tasks``, the summed KL (C6) and LASP (C7)
        terms (unweighted)."""
        guided = text
        if self.vga is not None:  # C2: attend over the whole batch of images, within each task's classes
            guided = text + self.vga(text[None], images[None], tgt_mask=task_mask(sizes, text.device))[0]
        logits, kl, lasp_term, start = [], text.new_zeros(()), text.new_zeros(()), 0
        for t, n in enumerate(sizes):
            x = guided[start:start + n]
            mu, sigma = self.adapters[t](x)  # C3
            offsets = reparameterised(mu, sigma, samples, generator)  # C5
            feats = x[None] + offsets
            logits.append(scale * torch.einsum("bd,scd->sbc", images, feats))
            if t in loss_tasks:
                kl = kl + kl_to_standard_normal(mu, sigma)  # C6
                if lasp:
                    lasp_term = lasp_term + lasp_loss(per_template[start:start + n], offsets)  # C7
            start += n
        return torch.cat(logits, -1), kl, lasp_term


class CLAP4CLIP(CLIPLearner, BaseLearner):
    options_class = CLAPOptions
    release = "mgclip"  # 'released' class orders and names: MG-CLIP's files (one order beside MG-CLIP)
    trains = "a visual-guided attention decoder and one variational adapter per task over the text features"

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._setup(args)
        o = self.opts
        self.epochs = 5 if self.cfg.epochs == "auto" else int(self.cfg.epochs)
        self._network = build_backbone(self.cfg, self._device).eval()
        self.dim = self._network.embed_dim
        self.head = CLAPHead(self.dim, o.vga_ffn, o.vga_dropout, o.vga).to(self._device)
        R = self._network.input_resolution
        self.cache = FeatureCache(self._encode, R, self.cfg, self._device)
        self.flip_cache = FeatureCache(lambda x: self._encode(x.flip(-1)), R, self.cfg, self._device)
        self.mem_index = np.zeros(0, np.int64)
        self.mem_label = np.zeros(0, np.int64)
        self._text: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (ensemble, per template) of seen classes
        self.record = {"epochs": {"mode": "fixed", "chosen": self.epochs}, "memory": [],
                       "trainable_parameters": []}

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self._device, self.cfg.precision):
            return F.normalize(self._network.encode_image(images).float(), dim=1)

    def _templates(self) -> List[str]:
        if self.opts.templates == "dataset":
            return list(DATASET_TEMPLATES.get(self.args.get("dataset", ""), (self.cfg.prompt_template,)))
        return [self.cfg.prompt_template]

    @torch.no_grad()
    def _text_features(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """C1 (official ``prior_text_features``): per-template L2-normalised features (C, P, D)
        of the seen classes, and their mean over templates, renormalised (C, D)."""
        if self._text is None or len(self._text[0]) != len(self._names):
            net, temps = self._network, self._templates()
            per = torch.stack([text_features(net, net.tokenize([t.format(n) for t in temps]).to(self._device),
                                             self._device, self.cfg.precision) for n in self._names])
            self._text = (F.normalize(per.mean(1), dim=-1), per)
        return self._text

    def _sizes(self) -> List[int]:
        return [len(r) for r in self._task_ranges]

    @property
    def _uses_memory(self) -> bool:
        return self.opts.memory_size > 0 or self.opts.memory_per_class > 0

    # ------------------------------------------------------------------ training
    def incremental_train(self, data_manager) -> None:
        new = begin_task(self, data_manager)
        self.data_manager = data_manager
        o = self.opts
        with self._timed("features"):
            feats, labels = self.cache.all(data_manager, "train")
            flipped = self.flip_cache.all(data_manager, "train")[0] if o.train_flip else None
        self.timings["features"] = self.cache.seconds + self.flip_cache.seconds
        ensemble, per_template = self._text_features()
        adapter = VariationalAdapter(self.dim).to(self._device)
        if o.adapter_init == "text":
            init_from_text(adapter, per_template)  # C4: from every seen class's prompts
        self.head.adapters.append(adapter)
        labels_np = labels.cpu().numpy()
        new_index = np.nonzero((labels_np >= new.start) & (labels_np < new.stop))[0]
        lr = self.cfg.lr * self.cfg.batch_size / o.lr_reference_batch  # official: lr * train_batch / 20
        # C2, C3: the VGA and the new adapter train; the old adapters are frozen
        params = ([] if self.head.vga is None else list(self.head.vga.parameters())) + list(adapter.parameters())
        self.record["trainable_parameters"].append(sum(p.numel() for p in params))
        with self._timed("train"):
            self._run(np.concatenate([self.mem_index, new_index]), feats, labels, flipped, params, lr,
                      self.epochs, o.warmup_fraction, loss_tasks=[self._cur_task], vga_train=True, phase="train")
        if self._uses_memory:
            per_class = o.memory_per_class or o.memory_size // self._total_classes
            self.mem_index, self.mem_label = memory_after_task(  # C9
                self.mem_index, self.mem_label, new_index, labels_np[new_index], self._known_classes, new,
                per_class, o.memory_selection)
            self.record["memory"].append(len(self.mem_index))
            if o.finetune and self._cur_task > 0 and o.finetune_epochs > 0 and len(self.mem_index):
                with self._timed("finetune"):  # C10: every adapter, the VGA frozen, on the class-balanced memory
                    self._run(self.mem_index, feats, labels, flipped, list(self.head.adapters.parameters()),
                              lr * o.finetune_lr_scale, o.finetune_epochs, 0.0,
                              loss_tasks=list(range(self._cur_task + 1)), vga_train=False, phase="finetune")

    def _run(self, index: np.ndarray, feats: torch.Tensor, labels: torch.Tensor, flipped: Optional[torch.Tensor],
             params: List[torch.Tensor], lr: float, epochs: int, warmup_fraction: float, loss_tasks: List[int],
             vga_train: bool, phase: str) -> None:
        """Official ``fit`` / ``finetuning``: SGD on ``params`` over the images ``index`` in
        shuffled batches (torch's global stream), the rate of C8 set before every step."""
        o, head = self.opts, self.head
        ensemble, per_template = self._text_features()
        head.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        head.eval()
        if head.vga is not None:
            head.vga.train(vga_train)
        opt = torch.optim.SGD(params, lr=lr, weight_decay=o.weight_decay)
        index_t = torch.as_tensor(index, device=self._device)
        bs = self.cfg.batch_size
        per_epoch = math.ceil(len(index) / bs)
        total = epochs * per_epoch
        rates = warmup_cosine_rates(lr, total, int(warmup_fraction * total))
        scale = float(self._network.logit_scale)
        step = 0
        for epoch in range(epochs):
            order = index_t[torch.randperm(len(index_t)).to(self._device)]
            for b in range(per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                x = feats[idx]
                if flipped is not None:  # the official RandomHorizontalFlip, per image
                    flip = (torch.rand(len(idx)) < 0.5).to(self._device)
                    x = torch.where(flip[:, None], flipped[idx], x)
                y = labels[idx]
                for group in opt.param_groups:
                    group["lr"] = float(rates[step])
                logits, kl, lasp_term = head(x, ensemble, self._sizes(), o.forward_times, scale,
                                             loss_tasks=loss_tasks, per_template=per_template,
                                             lasp=o.lasp and o.lasp_beta > 0)
                # C5-C7: cross-entropy over every sample, + KL weight x KL, + beta x LASP
                ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(o.forward_times))
                loss = ce + o.kl_weight * kl + o.lasp_beta * lasp_term
                checked_step(opt, loss, f"task {self._cur_task}, {phase} epoch {epoch + 1}, step {step + 1}")
                step += 1
        head.requires_grad_(False)
        head.eval()

    # ------------------------------------------------------------------ evaluation
    def eval_batches(self, labels: torch.Tensor) -> List[torch.Tensor]:
        """The test batches (index tensors): official per-task test loaders, each task's images
        in a fixed shuffled order (seeded by the run's seed and the task), ``batch_size`` each
        (the official test batch is the training batch); or all tasks mixed."""
        bs, out = self.cfg.batch_size, []
        groups = ([r for r in self._task_ranges] if self.opts.eval_grouping == "task"
                  else [range(0, self._total_classes)])
        for k, r in enumerate(groups):
            idx = torch.nonzero((labels >= r.start) & (labels < r.stop)).flatten().cpu()
            g = torch.Generator().manual_seed(self._seed * 1_000_003 + k)
            idx = idx[torch.randperm(len(idx), generator=g)]
            out += [idx[i:i + bs] for i in range(0, len(idx), bs)]
        return out

    @torch.no_grad()
    def eval_task(self):
        with self._timed("eval"):
            feats, labels = self.cache.get(self.data_manager, "test", range(self._total_classes))
            ensemble, _ = self._text_features()
            self.head.eval()
            gen = torch.Generator(device=self._device).manual_seed(self._seed * 7919 + self._cur_task)
            scale = float(self._network.logit_scale)
            scores = torch.zeros(len(labels), self._total_classes, device=self._device)
            for idx in self.eval_batches(labels):
                idx = idx.to(self._device)
                logits, _, _ = self.head(feats[idx], ensemble, self._sizes(), self.opts.forward_times, scale,
                                         generator=gen)
                scores[idx] = combine_samples(logits)  # C5
        return scores_result(self, scores, labels)

    # ------------------------------------------------------------------ analysis views (models/base.py)
    def _pretrained(self):
        return contextlib.nullcontext()  # CLIP never changes

    @torch.no_grad()
    def text_view(self, names: Sequence[str], trained: bool) -> torch.Tensor:
        """Zero-shot: the prompt ensemble of C1 (or prompt_template). Trained: a seen class's
        ensemble feature plus its task adapter's mean; the visual guidance needs a batch of
        images, so this view leaves it out. Other names keep the zero-shot feature."""
        net, temps = self._network, self._templates()
        per = torch.stack([text_features(net, net.tokenize([t.format(n) for t in temps]).to(self._device),
                                         self._device, self.cfg.precision) for n in names])
        base = F.normalize(per.mean(1), dim=-1)
        if not trained:
            return base
        task_of = {n: t for t, r in enumerate(self._task_ranges[:len(self.head.adapters)])
                   for n in self._names[r.start:r.stop]}
        rows = [base[i] + self.head.adapters[task_of[n]](base[i:i + 1])[0][0] if n in task_of else base[i]
                for i, n in enumerate(names)]
        return F.normalize(torch.stack(rows), dim=-1)

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        tasks = len(state["task_ranges"])
        head = {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()
                if not k.startswith("adapters.") or int(k.split(".")[1]) < tasks}
        return {**state, "head": head, "mem_index": torch.from_numpy(self.mem_index.copy()),
                "mem_label": torch.from_numpy(self.mem_label.copy())}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.head.adapters = nn.ModuleList(VariationalAdapter(self.dim) for _ in state["task_ranges"])
        self.head.load_state_dict(state["head"])
        self.head.to(self._device).eval()
        self.mem_index = state["mem_index"].numpy().astype(np.int64)
        self.mem_label = state["mem_label"].numpy().astype(np.int64)
        self._text = None


class CLAP4CLIPStar(CLAP4CLIP):
    """MG-CLIP's CLAP* (our reading, docs/methods/clap4clip.md): CLAP without the exemplar
    memory, hence without replay and without the class-balanced fine-tuning."""
    options_class = CLAPStarOptions
