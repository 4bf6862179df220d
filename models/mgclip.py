"""MG-CLIP: "Mind the Gap" (Huang et al., ICCV 2025), as its released code behaves.

Per task: LoRA fine-tuning of CLIP's image and text encoders (SPEC 4-8) for an epoch
budget E that keeps the modality gap near zero-shot CLIP's (SPEC 9-12, chosen once on the
first task by a probe), then a visual cosine classifier grown by one prototype-initialised
block (SPEC 13-15); inference fuses both classifiers (SPEC 16). ``SPEC n`` is item n of
docs/methods/mgclip.md (the released behaviour item by item, each with the test that pins
it); every deviation is an option that is off by default, among them the
supplementary's replay (``memory_size``), EMA of the LoRA weights (``lora_ema``) and
per-task epoch estimation (``epochs_per_task``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from models.base import BaseLearner
from utils.clip_backbone import autocast
from utils.clip_ops import (
    CLIPLearner,
    begin_task,
    build_backbone,
    encode_dataset,
    eval_result,
    make_loader,
    progress,
    prompts,
    shuffled_batches,
    task_data,
    text_features,
)
from utils.config import ConfigError, require
from utils.cosine_linear import CosineLinear
from utils.errors import NonFiniteError, checked_step
from utils.gap import EpochProbe, gap_order, gap_statistic
from utils.lora import (
    LORA_ENCODERS,
    LORA_TARGETS,
    load_lora_state_dict,
    lora_disabled,
    lora_parameters,
    lora_state_dict,
)
from utils.metrics import accuracy_dict
from utils.replay import replay_loss, update_memory
from utils.rng import rng_state, set_rng_state

logger = logging.getLogger(__name__)


@dataclass
class MGCLIPOptions:
    """MG-CLIP's own options; defaults are the released code's values. Shared keys it
    reads: ``lr`` (LoRA's Adam), ``batch_size``, ``eval_batch_size``, ``epochs`` ("auto" =
    the epoch probe; or a fixed E), ``precision``, ``prompt_template``."""
    # LoRA (SPEC 4-5, 8)
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank (SPEC 4)"})
    lora_alpha: float = field(default=1.0, metadata={
        "help": "LoRA alpha; the update is scaled by alpha / rank (SPEC 4)"})
    lora_targets: List[str] = field(default_factory=lambda: ["k", "v"], metadata={
        "help": "the attention projections that get LoRA, from q, k, v, out (SPEC 4: k and v)"})
    lora_encoders: List[str] = field(default_factory=lambda: ["visual", "text"], metadata={
        "help": "the encoders that get LoRA: visual, text or both (SPEC 4: both)"})
    min_lr_ratio: float = field(default=0.01, metadata={
        "help": "cosine schedules end at this fraction of their learning rate (SPEC 8, 15)"})
    # gap preservation (SPEC 9-12)
    gap_preservation: bool = field(default=True, metadata={
        "help": "the epoch probe picks E (SPEC 9-12); false = ablation 'no preservation' (needs an integer epochs)"})
    probe_max_epochs: int = field(default=10, metadata={
        "help": "the longest probe on the first task; also its schedule's length (SPEC 11)"})
    gap_alpha: float = field(default=0.10, metadata={
        "help": "the probe's tolerance: relative change of the gap statistic, 0.10 = 10 % (SPEC 11)"})
    track_gap: bool = field(default=True, metadata={
        "help": "also measure each later task's gap statistic before training (one evaluation pass)"})
    # gap compensation (SPEC 13-16)
    compensation: bool = field(default=True, metadata={
        "help": "fuse a visual cosine classifier with the text one (SPEC 13-16); false = ablation 'no compensation'"})
    visual_lr: float = field(default=5e-4, metadata={"help": "the visual classifier's Adam learning rate (SPEC 15)"})
    visual_batch_size: int = field(default=64, metadata={"help": "the visual classifier's batch size (SPEC 15)"})
    visual_epochs: int = field(default=3, metadata={"help": "epochs of the visual classifier per task (SPEC 15)"})
    visual_scale: float = field(default=1.0, metadata={
        "help": "multiplies the cosine logits; 1.0 = no temperature (SPEC 14)"})
    fusion_beta: float = field(default=4.0, metadata={
        "help": "weight of the visual probabilities in the fused prediction (SPEC 16)"})
    # options the supplementary evaluates (off by default)
    memory_size: int = field(default=0, metadata={
        "help": "replay: random exemplars kept in total over the seen classes; 0 = none (paper: 2000)"})
    replay_weight: float = field(default=0.1, metadata={
        "help": "replay: weight of the exemplars' cross-entropy over all seen classes"})
    lora_ema: float = field(default=0.0, metadata={
        "help": "after each later task LoRA <- a * LoRA(task start) + (1 - a) * LoRA; 0 = off (e.g. 0.2)"})
    epochs_per_task: bool = field(default=False, metadata={
        "help": "repeat the epoch probe on every task (needs epochs 'auto')"})

    def validate(self) -> None:
        for key, ok, allowed in [
                ("lora_rank", self.lora_rank >= 1, "an integer >= 1 (LoRA rank)"),
                ("lora_alpha", self.lora_alpha > 0, "a number > 0"),
                ("lora_targets", len(self.lora_targets) > 0 and set(self.lora_targets) <= set(LORA_TARGETS),
                 f"a non-empty list from {list(LORA_TARGETS)}"),
                ("lora_encoders", len(self.lora_encoders) > 0 and set(self.lora_encoders) <= set(LORA_ENCODERS),
                 f"a non-empty list from {list(LORA_ENCODERS)}"),
                ("visual_lr", self.visual_lr > 0 and math.isfinite(self.visual_lr), "a finite number > 0"),
                ("visual_batch_size", self.visual_batch_size >= 1, "an integer >= 1"),
                ("probe_max_epochs", self.probe_max_epochs >= 1, "an integer >= 1"),
                ("visual_epochs", self.visual_epochs >= 0, "an integer >= 0"),
                ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]"),
                ("gap_alpha", 0 < self.gap_alpha, "a number > 0 (relative change, 0.10 = 10 %)"),
                ("fusion_beta", self.fusion_beta >= 0, "a number >= 0"),
                ("visual_scale", self.visual_scale > 0, "a number > 0"),
                ("memory_size", self.memory_size >= 0, "an integer >= 0 (0: no replay; the paper's replay uses 2000)"),
                ("replay_weight", self.replay_weight >= 0 and math.isfinite(self.replay_weight),
                 "a finite number >= 0"),
                ("lora_ema", 0 <= self.lora_ema < 1, "a number in [0, 1) (0: off)")]:
            require(ok, key, getattr(self, key), allowed)

    def validate_with(self, cfg) -> None:
        """Checks that involve the shared ``epochs``."""
        require(not self.epochs_per_task or cfg.epochs == "auto", "epochs_per_task", self.epochs_per_task,
                "true only with epochs 'auto' (it repeats the epoch probe on every task)")
        require(self.gap_preservation or cfg.epochs != "auto", "epochs", cfg.epochs,
                "an integer when gap_preservation is false (the probe is the gap preservation)")


def fuse_predictions(text_logits: torch.Tensor, visual_logits: Optional[torch.Tensor], beta: float) -> torch.Tensor:
    """SPEC 16: (softmax(softmax(text_logits)) + beta * softmax(visual_logits)) / (1 + beta).

    The double softmax on the text side is the released code's and the published numbers
    depend on it. Without a visual classifier: the text probabilities."""
    p_text = F.softmax(F.softmax(text_logits.float(), dim=1), dim=1)
    if visual_logits is None:
        return p_text
    return (p_text + beta * F.softmax(visual_logits.float(), dim=1)) / (1.0 + beta)


@dataclass
class TaskData:
    """One task's data as MG-CLIP uses it (``MGCLIP._prepare_task``)."""
    train_dataset: Any           # the task's training images alone (the replay memory draws from them)
    train_loader: Any            # shuffled, for LoRA: the task's images plus the exemplars when replaying
    ordered_train_loader: Any    # the task's images in order (the gap statistic, the features)
    test_loader: Any             # the test images of every seen class
    task_tokens: torch.Tensor    # the current task's prompts (SPEC 7; the gap statistic, SPEC 9)
    loss_tokens: torch.Tensor    # the prompts the loss scores: the task's, or every seen class's when replaying
    replaying: bool              # ``memory_size`` > 0 and there are exemplars


class MGCLIP(CLIPLearner, BaseLearner):
    options_class = MGCLIPOptions
    release = "mgclip"
    trains = "LoRA on CLIP's image and text encoders; a visual cosine classifier"

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._setup(args)
        if self.cfg.epochs == "auto" and int(args.get("init_cls", 2)) < 2:
            raise ConfigError(f"config key 'init_cls' = {args['init_cls']} is not allowed with epochs 'auto': the "
                              f"epoch probe's gap statistic averages the non-target logits of the first task's "
                              f"classes, so it needs at least 2 (or give an integer 'epochs')")
        self._network = build_backbone(self.cfg, self._device, lora=self.opts)
        self.visual = CosineLinear(self._network.embed_dim, scale=self.opts.visual_scale).to(self._device)
        self.epochs: Optional[int] = None if self.cfg.epochs == "auto" else int(self.cfg.epochs)
        self._gap_ref: Optional[Dict[str, float]] = None  # neg0 of the last probe (for a task resumed after it)
        self._probed_task: Optional[int] = None  # the task whose probe chose self.epochs
        self._last_metrics: Dict[str, float] = {}
        self._task: Optional[TaskData] = None  # the current task's loaders and prompts
        mode = "fixed" if self.epochs is not None else "probe_per_task" if self.opts.epochs_per_task else "probe"
        self.record = {"epochs": {"mode": mode, "chosen": self.epochs}, "gap": []}

    # ------------------------------------------------------------------ task loop
    def incremental_train(self, data_manager) -> None:
        """One task of Algorithm 1: probe E (SPEC 10-12), train LoRA (SPEC 4-8), encode the
        task's images, record the gap (SPEC 9), grow the visual classifier (SPEC 13-15)."""
        new = begin_task(self, data_manager)
        self._task = self._prepare_task(data_manager, new)
        before = self._probe_or_measure_gap()
        self._train_task()
        with self._timed("features"):
            feats, labels = encode_dataset(self._network, self.ordered_train_loader, self._device,
                                           self.cfg.precision, "features")
        self._record_gap(before, feats, labels)
        if self.opts.compensation:
            with self._timed("classifier"):
                self._train_visual(feats, labels)
        if self.opts.memory_size > 0:
            self._update_memory(self._task.train_dataset)

    # PyCIL's loaders, and the ordered one the gap and the features read: the current task's
    @property
    def train_loader(self):
        return None if self._task is None else self._task.train_loader

    @property
    def ordered_train_loader(self):
        return None if self._task is None else self._task.ordered_train_loader

    @property
    def test_loader(self):
        return None if self._task is None else self._task.test_loader

    def _measurable(self) -> bool:
        """The statistic averages non-target logits: a task of one class has none."""
        return self._total_classes - self._known_classes >= 2

    def _probe_or_measure_gap(self) -> Optional[Dict[str, float]]:
        """The gap statistic before training: the probe's reference where this task probes
        (it also chooses E), else a plain measurement with ``track_gap``; None: not measured."""
        probe_now = self.cfg.epochs == "auto" and (self._cur_task == 0 or self.opts.epochs_per_task)
        if probe_now and not self._measurable():
            logger.warning("task %d has one class: no gap statistic, so no probe; it trains the previous E = %d",
                           self._cur_task, self.epochs)
        elif probe_now and self._probed_task == self._cur_task:  # resumed right after this task's probe
            return dict(self._gap_ref)
        elif probe_now:
            return self._probe_epochs()
        elif self.opts.track_gap and self._measurable():
            return self._task_gap()
        return None

    def _train_task(self) -> None:
        """LoRA for E epochs (SPEC 8); with ``lora_ema`` (later tasks) blended with the task's start."""
        start_lora = lora_state_dict(self._network) if self.opts.lora_ema > 0 and self._cur_task > 0 else None
        self._train_lora(self.epochs)
        if start_lora is not None:
            self._blend_lora(start_lora, self.opts.lora_ema)

    def _record_gap(self, before: Optional[Dict[str, float]], feats: torch.Tensor, labels: torch.Tensor) -> None:
        """The task's ``record["gap"]`` entry: the statistic before training (if measured) and
        after it, on the features just encoded."""
        gap: Dict[str, Any] = {"task": self._cur_task}
        if before is not None:
            gap["before"] = before
        if self._measurable():
            gap["after"] = self._task_gap(feats, labels)
            logger.info("task %d gap (mean non-target logit): before %s, after %.4f", self._cur_task,
                        f"{gap['before']['neg']:.4f}" if "before" in gap else "-", gap["after"]["neg"])
        self.record["gap"].append(gap)

    def _prepare_task(self, data_manager, new: range) -> TaskData:
        """The task's loaders and prompt tokens."""
        res, cfg, dev = self._network.input_resolution, self.cfg, self._device
        train_set = task_data(data_manager, new, "train", res, cfg, dev)
        test_set = task_data(data_manager, range(self._total_classes), "test", res, cfg, dev)
        memory = self._get_memory() if self.opts.memory_size > 0 else None
        # LoRA trains on the task's images plus the exemplars (replay); the gap, the prototypes
        # and the visual classifier use the task's images alone, as released
        lora_set = train_set if memory is None else task_data(data_manager, new, "train", res, cfg, dev,
                                                              appendent=memory)
        # Only the current task's prompts enter the loss (SPEC 7): encoding just those is exact.
        # With exemplars, every seen class's prompt (their cross-entropy is over all seen classes).
        task_tokens = self._network.tokenize(prompts(cfg.prompt_template, self._names[new.start:])).to(dev)
        return TaskData(
            train_dataset=train_set[0],
            train_loader=make_loader(lora_set, cfg.batch_size, True, cfg.num_workers, dev),
            ordered_train_loader=make_loader(train_set, cfg.batch_size, False, cfg.num_workers, dev),
            test_loader=make_loader(test_set, cfg.eval_batch_size, False, cfg.num_workers, dev),
            task_tokens=task_tokens,
            loss_tokens=task_tokens if memory is None else self._network.tokenize(
                prompts(cfg.prompt_template, self._names)).to(dev),
            replaying=memory is not None)

    # ------------------------------------------------------------------ LoRA training
    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the current task's classes (SPEC 6-7); on the first task these
        are all seen classes. Text is re-encoded with LoRA on every call.

        Replaying (``memory_size``): ``utils.replay.replay_loss`` over all seen classes."""
        net = self._network
        with autocast(self._device, self.cfg.precision):
            img = net.encode_image(x)
        img = F.normalize(img.float(), dim=1)
        txt = text_features(net, self._task.loss_tokens, self._device, self.cfg.precision)
        logits = net.logit_scale * img @ txt.t()
        if self._task.replaying:
            return replay_loss(logits, y, self._known_classes, self.opts.replay_weight)
        return F.cross_entropy(logits, y - self._known_classes)

    def _train_lora(self, epochs: int, probe: Optional[EpochProbe] = None) -> List[Dict[str, float]]:
        """Adam on the LoRA weights, cosine schedule per epoch to min_lr_ratio * lr over
        ``epochs`` (SPEC 8). With ``probe``: measure the gap after each epoch and stop when
        the probe has its budget (SPEC 11). Returns the probe's log, one entry per epoch
        (empty without ``probe``)."""
        log: List[Dict[str, float]] = []
        net = self._network
        params = lora_parameters(net)
        opt = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs,
                                                           eta_min=self.cfg.lr * self.opts.min_lr_ratio)
        phase = "probe" if probe else "train"
        for epoch in range(epochs):
            with self._timed(phase):
                net.train()
                batches = progress(self.train_loader, f"task {self._cur_task} {phase} {epoch + 1}/{epochs}")
                for step, (_, x, y) in enumerate(batches):
                    checked_step(opt, self._loss(x, y),
                                 f"task {self._cur_task}, {phase} epoch {epoch + 1}, step {step + 1}")
                sched.step()
            if probe is not None:
                stat = self._task_gap()
                stop = probe.update(stat["neg"])
                logger.info("probe epoch %d: gap %.4f, relative change %.2f %%", epoch + 1, stat["neg"],
                            100 * probe.changes[-1])
                log.append({"epoch": epoch + 1, **stat, "change": probe.changes[-1]})
                if stop:
                    break
        return log

    def _probe_epochs(self) -> Dict[str, float]:
        """SPEC 10-12: reference gap with LoRA off, probe epochs until the gap moves more than
        alpha, then restore the LoRA weights the task started with (zero-shot CLIP on the
        first task). Returns the reference statistic.

        The first task's probe is recorded in ``record["epochs"]``; with ``epochs_per_task``
        each task's probe also gets an entry in ``record["epochs"]["per_task"]`` (its
        reference is zero-shot CLIP on that task's images and classes)."""
        net = self._network
        # The released probe is a separate process, so its main run starts from a fresh random
        # state: the real run continues from the state before the probe, exactly as a run given E.
        random_state = rng_state()
        with lora_disabled(net):
            ref = self._task_gap()
        logger.info("task %d gap reference neg0 (LoRA off): %.4f (mean target logit %.4f)", self._cur_task,
                    ref["neg"], ref["pos"])
        if self._cur_task == 0:
            self.record["epochs"].update({"neg0": ref["neg"], "pos0": ref["pos"], "alpha": self.opts.gap_alpha})
        start_state = lora_state_dict(net)
        probe = EpochProbe(ref["neg"], self.opts.gap_alpha, self.opts.probe_max_epochs)
        log = self._train_lora(self.opts.probe_max_epochs, probe=probe)
        self.epochs = probe.budget
        entry = {"task": self._cur_task, "neg0": ref["neg"], "pos0": ref["pos"], "probe": log, "chosen": self.epochs}
        if self._cur_task == 0:
            self.record["epochs"].update({"probe": entry["probe"], "chosen": self.epochs})
        if self.opts.epochs_per_task:
            self.record["epochs"].setdefault("per_task", []).append(entry)
        logger.info("task %d epoch budget E = %d (from %d probe epochs)", self._cur_task, self.epochs,
                    len(probe.values))
        load_lora_state_dict(net, start_state)  # back to the task's starting point for the real run
        set_rng_state(random_state)
        self._gap_ref, self._probed_task = ref, self._cur_task
        if self.on_checkpoint is not None:
            self.on_checkpoint()
        return ref

    @torch.no_grad()
    def _blend_lora(self, start: Dict[str, torch.Tensor], a: float) -> None:
        """``lora_ema``: LoRA <- a * (LoRA at the task's start) + (1 - a) * (LoRA after training)."""
        now = lora_state_dict(self._network)
        load_lora_state_dict(self._network, {k: a * start[k] + (1 - a) * now[k] for k in now})

    def _update_memory(self, dataset) -> None:
        """Replay: the task's exemplars join the memory, old classes give up theirs to fit."""
        self._data_memory, self._targets_memory = update_memory(
            self._data_memory, self._targets_memory, dataset.images, dataset.labels,
            range(self._known_classes, self._total_classes), self.opts.memory_size)
        logger.info("replay memory: %d exemplars", len(self._targets_memory))

    def _task_gap(self, feats: Optional[torch.Tensor] = None,
                  labels: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """Gap statistic on the current task's training images over its classes (SPEC 9),
        in eval mode, batches in the task's seeded shuffled order; reuses ``feats`` when the
        caller already has them."""
        net = self._network
        with self._timed("gap"):
            if feats is None:
                feats, labels = encode_dataset(net, self.ordered_train_loader, self._device, self.cfg.precision, "gap")
            with torch.no_grad():
                txt = text_features(net.eval(), self._task.task_tokens, self._device, self.cfg.precision)
            order = gap_order(len(labels), self._seed, self._cur_task)
            neg, pos = gap_statistic(feats, labels - self._known_classes, txt, float(net.logit_scale),
                                     self.cfg.batch_size, order)
        if not (math.isfinite(neg) and math.isfinite(pos)):
            raise NonFiniteError(f"non-finite gap statistic ({neg}, {pos}) in task {self._cur_task}")
        return {"neg": neg, "pos": pos}

    # ------------------------------------------------------------------ gap compensation
    def _train_visual(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """SPEC 13-15: new prototype rows, then ``visual_epochs`` of Adam on the new block
        only, cross-entropy over the current task's columns, cosine schedule per iteration."""
        cfg = self.opts
        num_new = self._total_classes - self._known_classes
        block = self.visual.add_classes(feats, labels, num_new, self._known_classes)
        steps_per_epoch = math.ceil(len(labels) / cfg.visual_batch_size)
        opt = torch.optim.Adam([block], lr=cfg.visual_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, steps_per_epoch * cfg.visual_epochs), eta_min=cfg.visual_lr * cfg.min_lr_ratio)
        for _ in range(cfg.visual_epochs):
            feats, labels = self._classifier_features(feats, labels)
            target = labels - self._known_classes
            for idx in shuffled_batches(len(labels), cfg.visual_batch_size, labels.device):
                loss = F.cross_entropy(self.visual.block_logits(feats[idx], -1), target[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()

    def _classifier_features(self, feats: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features for one classifier epoch: CLIP is frozen here, so those computed once
        for the prototypes are exact for every epoch (SPEC 15). An identity seam: only
        ``benchmarks/reference.py`` overrides it (the released cost: re-encoded every epoch)."""
        return feats, labels

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_logits(self, loader) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """(text logits 100*cos (N, seen), visual cosine logits (N, seen) or None, labels)."""
        net = self._network.eval()
        txt = text_features(net, net.tokenize(prompts(self.cfg.prompt_template, self._names)), self._device,
                            self.cfg.precision)
        feats, labels = encode_dataset(net, loader, self._device, self.cfg.precision, "eval")
        text_logits = net.logit_scale * feats @ txt.t()
        visual_logits = self.visual(feats) if self.opts.compensation else None
        return text_logits, visual_logits, labels

    def eval_task(self):
        with self._timed("eval"):
            text_logits, visual_logits, labels = self.predict_logits(self.test_loader)
            probs = fuse_predictions(text_logits, visual_logits, self.opts.fusion_beta)
            y_true = labels.cpu().numpy()
            y_pred = torch.topk(probs, k=min(self.topk, probs.shape[1]), dim=1).indices.cpu().numpy()
            cnn_accy = accuracy_dict(y_pred, y_true, self._task_ranges, self._known_classes, self.topk)
            # each classifier on its own (the paper's text-only and visual-only rows)
            self._last_metrics = {"text_accuracy": float((text_logits.argmax(1) == labels).float().mean() * 100)}
            if visual_logits is not None:
                self._last_metrics["visual_accuracy"] = float((visual_logits.argmax(1) == labels).float().mean() * 100)
        return eval_result(self, cnn_accy)

    def task_metrics(self) -> Dict[str, float]:
        return dict(self._last_metrics)

    # ------------------------------------------------------------------ analysis views (models/base.py)
    def _pretrained(self):
        return lora_disabled(self._network)  # zero-shot CLIP: the LoRA update off

    def visual_classifier(self) -> Optional[torch.Tensor]:
        if not self.opts.compensation or not len(self.visual.blocks):
            return None
        return torch.cat([b.detach() for b in self.visual.blocks]).float()

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs (completed tasks only; see BaseLearner.state_dict)."""
        state = super().state_dict()
        memory = self._get_memory()
        if memory is not None:  # tensors and lists of paths load with weights_only=True
            data, targets = memory
            memory = {"data": torch.from_numpy(np.ascontiguousarray(data)) if isinstance(data, np.ndarray)
                      else list(data), "targets": torch.from_numpy(np.asarray(targets, dtype=np.int64))}
        return {**state, "lora": lora_state_dict(self._network),
                "visual": [b.detach().cpu().clone() for b in self.visual.blocks][:len(state["task_ranges"])],
                "epochs": self.epochs, "gap_ref": self._gap_ref, "probed_task": self._probed_task,
                "memory": memory}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        load_lora_state_dict(self._network, state["lora"])
        self.visual.load_blocks(state["visual"], self._device)
        self.epochs, self._gap_ref = state["epochs"], state["gap_ref"]
        self._probed_task = state.get("probed_task", None if state["gap_ref"] is None else 0)
        memory = state.get("memory")
        if memory is not None:
            data = memory["data"]
            self._data_memory = data.numpy() if isinstance(data, torch.Tensor) else list(data)
            self._targets_memory = memory["targets"].numpy()
