"""L2P++, DualPrompt and CODA-Prompt on CLIP's image encoder, as the official code of all
three behaves (GT-RIPL/CODA-Prompt: ``models/zoo.py``, ``models/vit.py``,
``learners/prompt.py``, ``learners/default.py``, ``configs/*_prompt.yaml``,
``experiments/*.sh``): items L1-L8 (L2P++ and what the three share), D1-D3 (DualPrompt)
and C1-C4 (CODA-Prompt) of docs/methods/prompts.md. The pools are ``utils/prompt_pool.py``.

What the three share (L4-L7). The image encoder stays frozen. An image's query is the
frozen encoder's final class token (after ``ln_post``, before CLIP's projection: width 768
on ViT-B/16, as the official ViT-B/16's final-norm class token); the method's pool turns
it into key/value prefixes for some blocks, the prompted encoder's final class token goes
through a linear head over every class seen so far (L4). Training (per task, a fresh Adam
with betas (0.9, 0.999) and weight decay 0 over the pool and the head, lr 1e-3 with the
official per-epoch cosine, batches of 128 with the last partial one dropped, 20 epochs on
CIFAR-100 and 50 on ImageNet-R; L5): cross-entropy over the seen classes with earlier
tasks' logits set to -inf, plus the pool's loss summed (L6). A test image goes to the seen
class of the largest logit (L7). Training images get the official random resized crop and
horizontal flip, drawn anew every step (``train_augment``, L9; ``utils/augment.py``), and
each step's query is the frozen forward of those augmented images (the official second
forward); test images get CLIP's deterministic preprocessing. With ``train_augment: none``
the query of an image never changes, so it can be computed once per image and reused for
every epoch and evaluation (``query_cache``, exact only then; L8).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset

from models.base import BaseLearner
from utils.augment import seeded
from utils.clip_backbone import autocast
from utils.clip_ops import CLIPLearner, begin_task, build_backbone, make_loader, progress, scores_result, task_data
from utils.config import DATASET_CLASSES, require
from utils.errors import checked_step
from utils.prompt_pool import CodaPool, KeyedPromptPool, official_cosine_lr, prefixed

OFFICIAL_EPOCHS = {"imagenet_r": 50}  # configs/imnet-r_prompt.yaml; every other dataset: 20 (cifar-100_prompt.yaml)


def number_of_tasks(cfg) -> Optional[int]:
    """Tasks of the run's split, where the config alone says (None for a fork's dataset)."""
    classes = DATASET_CLASSES.get(cfg.dataset, cfg.synthetic_classes if cfg.dataset == "synthetic" else None)
    if classes is None:
        return None
    return 1 + math.ceil(max(classes - cfg.init_cls, 0) / cfg.increment)


@dataclass
class PromptOptions:
    """Options the three share. Shared keys they read: ``lr`` (1e-3), ``batch_size`` (128),
    ``epochs`` ("auto" = 20, or 50 on ImageNet-R), ``eval_batch_size``, ``precision``."""
    pool_size: int = field(default=30, metadata={"help": "prompts in the pool"})
    prompt_length: int = field(default=20, metadata={
        "help": "tokens per prompt, even: half keys, half values (prefix tuning)"})
    prompt_layers: List[int] = field(default_factory=lambda: [0], metadata={
        "help": "image blocks whose attention gets the prompts"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam's weight decay"})
    train_augment: Literal["official", "none"] = field(default="official", metadata={
        "help": "official: random resized crop + flip per step (L9); none: CLIP's centre crop"})
    query_cache: bool = field(default=False, metadata={
        "help": "the frozen query once per image (L8); needs train_augment none (exact only then)"})
    # why the pool needs a prompt per task ("": it does not): DualPrompt's E-prompts, CODA's components
    pool_per_task: ClassVar[str] = ""

    def validate(self) -> None:
        for key, ok, allowed in [
                ("pool_size", self.pool_size >= 1, "an integer >= 1"),
                ("prompt_length", self.prompt_length >= 2 and self.prompt_length % 2 == 0,
                 "an even integer >= 2 (half the tokens are keys, half values)"),
                ("prompt_layers", len(self.prompt_layers) == len(set(self.prompt_layers))
                 and all(i >= 0 for i in self.prompt_layers), "distinct block indices >= 0"),
                ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
                ("train_augment", self.train_augment in ("official", "none"), "'official' or 'none'"),
                ("query_cache", not self.query_cache or self.train_augment == "none",
                 "true only with train_augment: 'none' (the query comes from each step's augmented image; "
                 "set query_cache: false, or train_augment: 'none' to cache it)")]:
            require(ok, key, getattr(self, key), allowed)

    def validate_with(self, cfg) -> None:
        self.validate_tasks(number_of_tasks(cfg))

    def validate_tasks(self, tasks: Optional[int]) -> None:
        """D3: at least one prompt per task (``tasks`` None: not known from the config alone)."""
        require(not self.pool_per_task or tasks is None or tasks <= self.pool_size, "pool_size", self.pool_size,
                f"at least the number of tasks ({tasks}): {self.pool_per_task}")


@dataclass
class L2POptions(PromptOptions):
    """L2P++ (``--prompt_param 30 20 -1``: pool 30, length 20, shallow = block 0 only;
    ``prompt_layers: [0, 1, 2, 3, 4]`` is the official "deep" variant)."""
    prompt_top_k: int = field(default=5, metadata={
        "help": "prompts chosen per image by key-query matching, at most pool_size"})

    def validate(self) -> None:
        super().validate()
        require(1 <= self.prompt_top_k <= self.pool_size, "prompt_top_k", self.prompt_top_k,
                "an integer in [1, pool_size]")


@dataclass
class DualPromptOptions(PromptOptions):
    """DualPrompt (``--prompt_param 10 20 6``): E-pool 10 of length 20 in blocks 2-4, a
    G-prompt of length 6 in blocks 0-1."""
    pool_size: int = field(default=10, metadata={
        "help": "E-prompts in the pool, one trained per task (at least the number of tasks)"})
    prompt_layers: List[int] = field(default_factory=lambda: [2, 3, 4], metadata={
        "help": "image blocks whose attention gets the E-prompt"})
    g_prompt_length: int = field(default=6, metadata={"help": "tokens of the G-prompt, shared by all tasks (even)"})
    g_prompt_layers: List[int] = field(default_factory=lambda: [0, 1], metadata={
        "help": "image blocks whose attention gets the G-prompt"})
    pool_per_task: ClassVar[str] = "DualPrompt trains one E-prompt per task"

    def validate(self) -> None:
        super().validate()
        require(self.g_prompt_length >= 2 and self.g_prompt_length % 2 == 0, "g_prompt_length",
                self.g_prompt_length, "an even integer >= 2")
        require(len(self.g_prompt_layers) == len(set(self.g_prompt_layers)) and all(i >= 0 for i in
                self.g_prompt_layers), "g_prompt_layers", self.g_prompt_layers, "distinct block indices >= 0")


@dataclass
class CODAOptions(PromptOptions):
    """CODA-Prompt (``--prompt_param 100 8 0.0``): 100 components of length 8 in blocks
    0-4, orthogonality penalty weight 0 (the current official code, which draws each task's
    components orthogonal to the earlier ones instead)."""
    pool_size: int = field(default=100, metadata={
        "help": "prompt components; each task gets pool_size // tasks of them"})
    prompt_length: int = field(default=8, metadata={"help": "tokens per component, even: half keys, half values"})
    prompt_layers: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={
        "help": "image blocks whose attention gets the prompts"})
    ortho_mu: float = field(default=0.0, metadata={
        "help": "weight of the orthogonality penalty (0: the official code, orthogonal components instead)"})
    pool_per_task: ClassVar[str] = "each task gets pool_size // tasks components"

    def validate(self) -> None:
        super().validate()
        require(self.ortho_mu >= 0, "ortho_mu", self.ortho_mu, "a number >= 0")


class SeenRows(Subset):
    """The items ``rows`` of a dataset (keeping each item's own index, as the query cache needs)."""

    @property
    def in_memory(self) -> bool:
        return getattr(self.dataset, "in_memory", False)


def linear_from(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """A linear layer holding ``weight`` (out, in) and ``bias`` (out,) as its parameters."""
    layer = nn.Linear(weight.shape[1], max(weight.shape[0], 1), device="meta")
    layer.weight, layer.bias = nn.Parameter(weight.detach().clone()), nn.Parameter(bias.detach().clone())
    layer.out_features = weight.shape[0]
    return layer


class PromptLearner(CLIPLearner, BaseLearner):
    """What L2P++, DualPrompt and CODA-Prompt share; a subclass builds its pool (``_make_pool``)."""
    release = "mgclip"  # 'released' class orders and names: MG-CLIP's files (the official runs: seeded shuffles)
    uses_text = False  # classifies without prompts: class names only label the results
    trains = "prompts (key/value prefixes of CLIP's image blocks) with their keys, and a linear head"

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._setup(args)
        self.epochs = OFFICIAL_EPOCHS.get(self.cfg.dataset, 20) if self.cfg.epochs == "auto" else int(self.cfg.epochs)
        self._network = build_backbone(self.cfg, self._device).eval()
        visual = self._network.model.visual
        self.width = visual.ln_post.normalized_shape[0]
        depth = len(visual.transformer.resblocks)
        for key in ("prompt_layers", "g_prompt_layers"):
            layers = getattr(self.opts, key, [])
            require(all(i < depth for i in layers), key, layers, f"block indices below {depth} (the image "
                    f"encoder's depth)")
        self.tasks: Optional[int] = None
        self.pool: Optional[nn.Module] = None
        self.head = linear_from(torch.zeros(0, self.width, device=self._device), torch.zeros(0, device=self._device))
        self._test: Optional[Tuple[Any, torch.Tensor, torch.Tensor]] = None  # every test image: data, queries, labels
        self.record = {"epochs": {"mode": "fixed", "chosen": self.epochs}, "trainable_parameters": None,
                       "query_images": 0}  # images through the frozen query forward (L8: once each with the cache)

    # ------------------------------------------------------------------ the encoder
    def _class_token(self, images: torch.Tensor, prefixes=None) -> torch.Tensor:
        """The final class token after ``ln_post`` (N, width), with ``prefixes`` in its blocks."""
        seen = {}
        hook = self._network.model.visual.ln_post.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
        try:
            with prefixed(self._network, prefixes or {}), autocast(self._device, self.cfg.precision):
                self._network.encode_image(images)
        finally:
            hook.remove()
        x = seen["x"]
        return (x[:, 0] if x.dim() == 3 else x).float()  # OpenCLIP may normalise every token

    @torch.no_grad()
    def _query(self, images: torch.Tensor) -> torch.Tensor:
        """L4: the frozen encoder's class token, no prompts."""
        self.record["query_images"] += len(images)
        return self._class_token(images)

    def _make_pool(self, tasks: int) -> nn.Module:
        raise NotImplementedError

    def _ensure_pool(self, tasks: int) -> None:
        if self.pool is None:
            self.opts.validate_tasks(tasks)  # a fork's split is known only now
            self.tasks = tasks
            self.pool = self._make_pool(tasks).to(self._device)

    def _start_task(self) -> None:
        """Before a task's training (CODA draws the task's components)."""

    # ------------------------------------------------------------------ training
    def incremental_train(self, data_manager) -> None:
        new = begin_task(self, data_manager)
        self.data_manager = data_manager
        self._ensure_pool(int(data_manager.nb_tasks))
        self._grow_head(len(new))
        self._start_task()
        params = list(self.pool.parameters()) + list(self.head.parameters())
        self.record["trainable_parameters"] = sum(p.numel() for p in params)
        with self._timed("train"):
            self._train(data_manager, new, params)

    def _grow_head(self, classes: int) -> None:
        """Rows for the task's classes, drawn as a fresh ``nn.Linear`` draws them (the
        official head has every class's row from the start; a row is used from its task on)."""
        fresh = nn.Linear(self.width, classes).to(self._device)
        with torch.no_grad():
            self.head = linear_from(torch.cat([self.head.weight, fresh.weight]),
                                    torch.cat([self.head.bias, fresh.bias]))

    @torch.no_grad()
    def _queries_of(self, data) -> Tuple[torch.Tensor, torch.Tensor]:
        """L8: the query and label of every item of ``data``, indexed by the item's own index
        (what a loader over it, or over a subset of it, yields), so they line up by construction."""
        loader = make_loader(data, self.cfg.eval_batch_size, False, self.cfg.num_workers, self._device)
        q = torch.zeros(len(loader.dataset), self.width, device=self._device)
        labels = torch.zeros(len(loader.dataset), dtype=torch.long, device=self._device)
        for idx, x, y in progress(loader, "queries"):
            idx = idx.to(self._device)
            q[idx], labels[idx] = self._query(x), y
        return q, labels

    def logits(self, images: torch.Tensor, queries: torch.Tensor, train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """Head logits over the seen classes (N, seen) and the pool's loss."""
        prefixes, loss = self.pool(queries, train, self._cur_task)
        return self.head(self._class_token(images, prefixes))[:, :self._total_classes], loss

    def _train(self, dm, new: range, params) -> None:
        """L5-L6: a fresh Adam per task, the official per-epoch cosine, shuffled batches with
        the last partial one dropped; CE over the seen classes, earlier ones at -inf, + pool loss."""
        cfg = self.cfg
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=self.opts.weight_decay)
        res = self._network.input_resolution
        augment = seeded("prompts", res) if self.opts.train_augment == "official" else None  # L9
        data = task_data(dm, new, "train", res, cfg, self._device, transform=augment)
        loader = make_loader(data, cfg.batch_size, True, cfg.num_workers, self._device)
        drop_last = len(loader.dataset) >= cfg.batch_size  # a task smaller than one batch still trains
        cached = self._queries_of(data)[0] if self.opts.query_cache else None
        self.pool.train()
        for epoch in range(self.epochs):
            if augment is not None:
                augment.reseed()  # this epoch's crops and flips, from the run's seeded stream
            for group in opt.param_groups:
                group["lr"] = official_cosine_lr(cfg.lr, self.epochs, epoch)
            for step, (idx, x, y) in enumerate(progress(loader, f"task {self._cur_task} epoch {epoch + 1}")):
                if drop_last and len(y) < cfg.batch_size:
                    continue
                # the query: the frozen forward of this step's (augmented) images, as the official second forward
                q = cached[idx.to(self._device)] if cached is not None else self._query(x)
                logits, pool_loss = self.logits(x, q, train=True)
                logits = logits.masked_fill(torch.arange(logits.shape[1], device=logits.device)
                                            < self._known_classes, float("-inf"))
                loss = F.cross_entropy(logits, y) + pool_loss
                checked_step(opt, loss, f"task {self._cur_task}, epoch {epoch + 1}, step {step + 1}")
        self.pool.eval()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def eval_task(self):
        """L7: the seen class with the largest head logit, prompts chosen without the task id."""
        with self._timed("eval"):
            dm, res, cfg = self.data_manager, self._network.input_resolution, self.cfg
            if self.opts.query_cache:
                if self._test is None:  # every test image's query once, for this and every later evaluation
                    every = task_data(dm, range(dm.get_total_classnum()), "test", res, cfg, self._device)
                    self._test = (every, *self._queries_of(every))
                every, cached, all_labels = self._test
                rows = torch.nonzero(all_labels < self._total_classes).flatten().tolist()
                data = (SeenRows(every[0], rows), every[1])
            else:
                data, cached = task_data(dm, range(self._total_classes), "test", res, cfg, self._device), None
            loader = make_loader(data, cfg.eval_batch_size, False, cfg.num_workers, self._device)
            scores, labels = [], []
            for idx, x, y in progress(loader, "eval"):
                q = cached[idx.to(self._device)] if cached is not None else self._query(x)
                scores.append(self.logits(x, q, train=False)[0])
                labels.append(y)
        return scores_result(self, torch.cat(scores), torch.cat(labels))

    # ------------------------------------------------------------------ analysis views (models/base.py)
    def _pretrained(self):
        return contextlib.nullcontext()  # CLIP's weights never change; see image_view

    def image_view(self, images: torch.Tensor, trained: bool) -> torch.Tensor:
        """Trained: CLIP's image feature with the prompts the query picks; else zero-shot CLIP's."""
        if not trained or self.pool is None:
            return self.backbone_image_view(images)
        with torch.no_grad():
            prefixes, _ = self.pool(self._query(images), False, self._cur_task)
        with prefixed(self._network, prefixes):
            return self.backbone_image_view(images)

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        n = state["known_classes"]
        return {**state, "tasks": self.tasks,
                "pool": None if self.pool is None else {k: v.cpu() for k, v in self.pool.state_dict().items()},
                "pool_task": getattr(self.pool, "task", None),
                "head": {"weight": self.head.weight[:n].detach().cpu(), "bias": self.head.bias[:n].detach().cpu()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state["pool"] is not None:
            self._ensure_pool(state["tasks"])
            self.pool.load_state_dict(state["pool"])
            if state["pool_task"] is not None:
                self.pool.task = state["pool_task"]
        self.head = linear_from(state["head"]["weight"].to(self._device), state["head"]["bias"].to(self._device))


class L2P(PromptLearner):
    """L2P++: a keyed pool, the top 5 prompts by query-key cosine (L1-L3)."""
    options_class = L2POptions

    def _make_pool(self, tasks: int) -> nn.Module:
        o = self.opts
        return KeyedPromptPool(self.width, self.width, o.pool_size, o.prompt_length, o.prompt_layers, o.prompt_top_k)


class DualPrompt(PromptLearner):
    """DualPrompt: G-prompts shared by all tasks, E-prompts one per task, picked by the task
    id in training and by the nearest key at test time (D1-D3)."""
    options_class = DualPromptOptions

    def _make_pool(self, tasks: int) -> nn.Module:
        o = self.opts
        return KeyedPromptPool(self.width, self.width, o.pool_size, o.prompt_length, o.prompt_layers, top_k=1,
                               task_bootstrap=True, g_length=o.g_prompt_length, g_layers=o.g_prompt_layers)


class CODAPrompt(PromptLearner):
    """CODA-Prompt: attention-weighted sums of prompt components, new components per task (C1-C4)."""
    options_class = CODAOptions

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._check_key_width(number_of_tasks(self.cfg))

    def _check_key_width(self, tasks: Optional[int]) -> None:
        """C2: every task's keys and attention vectors are drawn orthonormal to all earlier
        ones, so all tasks' components must fit the key width (the encoder's); past it the
        official Gram-Schmidt never ends (``tasks`` None: not known from the config alone)."""
        if tasks is None or tasks > self.opts.pool_size:
            return  # D3 refuses the second case
        rows = tasks * (self.opts.pool_size // tasks)
        require(rows <= self.width, "pool_size", self.opts.pool_size,
                f"components of all tasks ({tasks} x (pool_size // {tasks}) = {rows}) at most the key width "
                f"{self.width} (backbone {self.cfg.backbone!r}: its image encoder's width), as CODA-Prompt draws "
                f"every task's keys and attention vectors orthonormal to the earlier ones")

    def _make_pool(self, tasks: int) -> nn.Module:
        self._check_key_width(tasks)  # a fork's split is known only now
        o = self.opts
        return CodaPool(self.width, self.width, o.pool_size, o.prompt_length, o.prompt_layers, tasks, o.ortho_mu)

    def _start_task(self) -> None:
        self.pool.start_task(self._cur_task)  # C2
