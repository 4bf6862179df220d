"""Shared plumbing for CLIP learners: ``CLIPLearner`` (the setup, bookkeeping, timing and
checkpoint parts every learner shares), reading ``args``, building the backbone, loaders,
feature extraction, prompts and minibatches. Learners (``models/``) use these; nothing here
knows a particular method."""
from __future__ import annotations

import contextlib
import copy
import logging
import sys
import time
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from utils.class_names import CIFAR100_CLASSES
from utils.clip_backbone import ClipBackbone, autocast, clip_transform, load_clip, resolve_device, set_matmul_precision
from utils.config import DATASETS, Config, map_c3box_keys
from utils.lora import apply_lora
from utils.metrics import accuracy_dict
from utils.preprocess import DevicePreprocess

logger = logging.getLogger(__name__)


def read_args(args: Dict[str, Any], options_cls=None) -> Tuple[Config, torch.device]:
    """Typed config and device from a learner's ``args`` dict; ``cfg.options`` is the
    learner's own options object (``options_cls``, its defaults for keys not given), built
    and validated here, once.

    Works with this toolbox's args and with a PyCIL fork's: its ``device`` is a list of
    devices (``cuda:<entry>`` whatever the machine: without CUDA the learner runs on the
    CPU and says so), its extra keys and dataset names are not ours, and a C3Box user's
    ``mind.json`` keys are read as ours (each mapping logged)."""
    args, notes = map_c3box_keys(dict(args))
    for note in notes:
        logger.info("%s", note)
    device = args.pop("device", "auto")
    in_fork = isinstance(device, (list, tuple))
    if in_fork:
        device = device[0]
    if args.get("dataset") not in DATASETS:  # a fork's dataset: its data manager owns data and split
        for key in ("dataset", "init_cls", "increment"):
            args.pop(key, None)
    cfg = Config.from_dict(args, ignore_unknown=True, options_cls=options_cls)
    if not isinstance(device, torch.device):
        device = torch.device(str(device)) if in_fork else resolve_device(str(device))
    if in_fork and device.type == "cuda" and not torch.cuda.is_available():
        logger.warning("the fork's trainer made device %s, but this machine has no CUDA: running on the CPU", device)
        device = torch.device("cpu")
    return cfg, device


class CLIPLearner:
    """Mixed in ahead of a PyCIL ``BaseLearner`` (this toolbox's or a fork's, which may set
    neither ``args`` nor ``_task_ranges``): ``class MGCLIP(CLIPLearner, BaseLearner)``.

    ``_setup(args)`` gives the learner ``args`` (PyCIL's dict, as given), ``cfg`` (the one
    typed config, built once: a ``Config`` whose ``options`` is the ``options_class``
    instance, or None; ``opts`` names the same object), ``_device``, ``_seed``,
    ``_names`` (class names of the seen classes), ``record`` (its results.json records) and
    ``timings`` (seconds per phase, ``with self._timed("train"):``). Checkpoints carry the
    names, records and timings besides the learner's own state."""

    options_class: Optional[type] = None

    def _setup(self, args: Dict[str, Any]) -> None:
        self.args = args  # the BaseLearners of PROOF's repository and C3Box do not set it
        self._task_ranges: List[range] = []  # nor does every PyCIL fork's keep task ranges
        self._names: List[str] = []
        self.record: Dict[str, Any] = {}
        self.timings: Dict[str, float] = defaultdict(float)
        self.on_checkpoint: Optional[Callable[[], None]] = None
        self.cfg, self._device = read_args(args, self.options_class)
        seed = args.get("seed", 0)
        self._seed = int(seed[0] if isinstance(seed, (list, tuple)) else seed)

    @property
    def opts(self) -> Any:
        """The method's options: ``cfg.options`` (one object, built and validated once)."""
        return self.cfg.options

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] += time.perf_counter() - start

    def after_task(self) -> None:  # defined here: PyCIL's BaseLearner.after_task does nothing
        self._known_classes = self._total_classes

    def results_extra(self) -> Dict[str, Any]:
        return self.record

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        return {**state, "names": self._names[:state["known_classes"]], "record": copy.deepcopy(self.record),
                "timings": dict(self.timings)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._names = list(state["names"])
        self.record = copy.deepcopy(state.get("record", {}))
        self.timings = defaultdict(float, state.get("timings", {}))

    # ------------------------------------------------------------------ analysis views (models/base.py)
    def _pretrained(self):
        """A context in which the backbone is zero-shot CLIP again (LoRA or adapters off);
        ``contextlib.nullcontext()`` for a learner that never changes CLIP."""
        raise NotImplementedError(f"{type(self).__name__} does not say how to see its backbone as zero-shot CLIP: "
                                  f"define _pretrained() (or image_view / text_view; see models/base.py)")

    def image_view(self, images: torch.Tensor, trained: bool) -> torch.Tensor:
        with contextlib.nullcontext() if trained else self._pretrained():
            return self.backbone_image_view(images)

    def text_view(self, names: Sequence[str], trained: bool) -> torch.Tensor:
        with contextlib.nullcontext() if trained else self._pretrained():
            return self.backbone_text_view(names)

    # the backbone as it is now
    @torch.no_grad()
    def backbone_image_view(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self._device, self.cfg.precision):
            return F.normalize(self._network.encode_image(images).float(), dim=1)

    @torch.no_grad()
    def backbone_text_view(self, names: Sequence[str]) -> torch.Tensor:
        tokens = self._network.tokenize(prompts(self.cfg.prompt_template, names)).to(self._device)
        return text_features(self._network.eval(), tokens, self._device, self.cfg.precision)


def begin_task(learner, data_manager) -> range:
    """The PyCIL bookkeeping at a task's start: next task, its classes (returned, as
    incremental labels), the seen-class count and the new classes' names."""
    learner._cur_task += 1
    learner._total_classes = learner._known_classes + data_manager.get_task_size(learner._cur_task)
    new = range(learner._known_classes, learner._total_classes)
    learner._task_ranges.append(new)
    learner._names += class_names(data_manager, new, learner.args.get("dataset", ""))
    return new


def scores_result(learner, scores: torch.Tensor, labels: torch.Tensor) -> tuple:
    """``eval_task``'s return value from class scores (N, seen) and labels (N,): top-k
    predictions -> PyCIL's accuracy dict (per task) -> the fork's or this toolbox's tuple."""
    y_pred = torch.topk(scores, k=min(learner.topk, scores.shape[1]), dim=1).indices.cpu().numpy()
    return eval_result(learner, accuracy_dict(y_pred, labels.cpu().numpy(), learner._task_ranges,
                                              learner._known_classes, learner.topk))


def eval_result(learner, cnn_accy: Dict[str, Any]) -> tuple:
    """What the trainer unpacks from ``eval_task``: ``(cnn, nme)`` in this toolbox and
    PyCIL; six values in PROOF's repository and C3Box (cnn, nme and four zero-shot results
    their trainers ignore). Their BaseLearner is told apart by its zero-shot evaluation."""
    if hasattr(learner, "_eval_zero_shot"):
        return cnn_accy, None, None, None, None, None
    return cnn_accy, None


def class_names(data_manager, indices: Sequence[int], dataset_name: str = "") -> List[str]:
    """Names of the (remapped) classes ``indices``, from the data manager (ours, or a fork's
    ``_class_to_label``); for a fork's DataManager without names, from a table this toolbox
    knows (CIFAR-100)."""
    if hasattr(data_manager, "get_class_names"):
        return data_manager.get_class_names(indices)
    labels = getattr(data_manager, "_class_to_label", None)  # PROOF's repository, C3Box: incremental order
    if isinstance(labels, (list, tuple)) and len(labels) > max(indices, default=-1):
        return [str(labels[i]) for i in indices]
    order = getattr(data_manager, "_class_order", None)
    if order is not None and "cifar" in (dataset_name or getattr(data_manager, "dataset_name", "")):
        return [CIFAR100_CLASSES[order[i]] for i in indices]
    source = type(data_manager).__module__.replace(".", "/") + ".py"  # the fork's own file (PyCIL: utils/...)
    raise RuntimeError(f"the data manager ({type(data_manager).__name__} in {source}) has no get_class_names() "
                       f"and no known name table fits dataset '{dataset_name}': add to it get_class_names(indices), "
                       "the class names of the incremental labels indices (in the fork's class order)")


class Batches:
    """A DataLoader whose batches arrive on the device, preprocessed: ``(idx, images, labels)``
    with images (N, 3, R, R) normalized float and labels (N,) on ``device``."""

    def __init__(self, loader: DataLoader, prepare: Callable[[torch.Tensor], torch.Tensor], device: torch.device):
        self.loader, self.prepare, self.device = loader, prepare, device

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for idx, x, y in self.loader:
            yield idx, self.prepare(x), y.to(self.device, non_blocking=True)


def task_data(data_manager, indices: Sequence[int], source: str, resolution: int, cfg: Config,
              device: torch.device, appendent=None,
              transform: Optional[Callable] = None) -> Tuple[Dataset, Callable[[torch.Tensor], torch.Tensor]]:
    """The images of classes ``indices`` (plus ``appendent=(images, labels)``, e.g. replay
    exemplars taken from an earlier call's dataset) and the function that turns a loaded
    batch into CLIP input on ``device``: batched device preprocessing of uint8 images where
    the data manager offers them (``preprocess: device``), else CLIP's PIL pipeline per image.
    A method's own PIL ``transform`` (e.g. PROOF's squash resize) replaces both."""
    extra = {} if appendent is None else {"appendent": appendent}
    if transform is None and cfg.preprocess == "device" and hasattr(data_manager, "supports_raw") and \
            data_manager.supports_raw(resolution, cfg.cache_images, cfg.cache_max_gb):
        ds = data_manager.get_dataset(indices, source=source, mode="test", raw=True, resolution=resolution,
                                      num_workers=cfg.num_workers, **extra)
        return ds, DevicePreprocess(resolution, device)
    try:
        ds = data_manager.get_dataset(indices, source=source, mode="test",
                                      transform=transform or clip_transform(resolution), **extra)
    except TypeError:  # a fork's DataManager: no transform argument, its own transforms
        ds = data_manager.get_dataset(indices, source=source, mode="test", **extra)
        _use_clip_preprocessing(ds, resolution)
    return ds, lambda x: x.to(device, non_blocking=True)


_told: set = set()


def _use_clip_preprocessing(dataset: Dataset, resolution: int) -> None:
    """A fork's dataset (PyCIL's ``DummyDataset``: images, labels, ``trsf``) gets CLIP's
    preprocessing in place of the fork's transforms (PyCIL's CIFAR: 32 px with CIFAR
    statistics; PROOF's / C3Box's: a squashing 224 x 224 resize)."""
    if hasattr(dataset, "trsf"):
        dataset.trsf = clip_transform(resolution)
        message = (f"the fork's datasets use CLIP's preprocessing (resize {resolution}, centre crop, CLIP "
                   f"mean/std) instead of the fork's own transforms")
    else:
        message = "the fork's dataset has no 'trsf' transform to replace: its own transforms are used"
    if message not in _told:
        _told.add(message)
        logger.info("%s", message)


def make_loader(data: Tuple[Dataset, Callable], batch_size: int, shuffle: bool, num_workers: int,
                device: torch.device) -> Batches:
    dataset, prepare = data
    # In-memory uint8 images come fastest from this process (workers change only the speed:
    # the sampler, and so every batch, is the same).
    if getattr(dataset, "in_memory", False):
        num_workers = 0
    # An ordered loader gets its own generator: iterating a DataLoader draws a seed, and
    # evaluation passes (gap statistic, features, test) must not move the global random
    # stream, so that the training shuffles do not depend on how often we measured.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        generator=None if shuffle else torch.Generator().manual_seed(0))
    return Batches(loader, prepare, device)


def build_backbone(cfg: Config, device: torch.device, lora=None) -> ClipBackbone:
    """The run's CLIP on ``device``: frozen, or with LoRA layers as ``lora`` says (options
    with ``lora_rank``, ``lora_alpha``, ``lora_targets``, ``lora_encoders``)."""
    backbone = load_clip(cfg.backbone, cfg.clip_cache)
    if lora is not None:
        apply_lora(backbone, lora.lora_rank, lora.lora_alpha, lora.lora_targets, lora.lora_encoders)
    else:
        backbone.requires_grad_(False)
    if cfg.compile:
        compile_image_encoder(backbone)
    set_matmul_precision(device, cfg.precision)
    return backbone.to(device)


def compile_image_encoder(backbone: ClipBackbone) -> None:
    """``torch.compile`` the image encoder's forward in place (module and state-dict names
    stay as they are, so LoRA checkpoints still fit). Dynamic shapes: a short last batch
    does not trigger a recompile; switching LoRA off compiles a second graph once."""
    visual = backbone.model.visual
    visual.forward = torch.compile(visual.forward, dynamic=True)


@torch.no_grad()
def encode_dataset(backbone: ClipBackbone, loader: Batches, device: torch.device, precision: str = "auto",
                   desc: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """L2-normalized image features (N, D) float32 and labels (N,), in loader order, eval mode."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for _, x, y in progress(loader, desc):
        with autocast(device, precision):
            f = backbone.encode_image(x)
        feats.append(F.normalize(f.float(), dim=1))
        labels.append(y)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def text_features(backbone: ClipBackbone, tokens: torch.Tensor, device: torch.device,
                  precision: str = "auto") -> torch.Tensor:
    """L2-normalized text features (n, D) float32 of token ids ``tokens`` (grad flows if enabled)."""
    with autocast(device, precision):
        t = backbone.encode_text(tokens.to(device))
    return F.normalize(t.float(), dim=1)


def shuffled_batches(n: int, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """One epoch of minibatch indices over ``n`` items in a fresh random order (torch's
    global stream; the last batch partial), as index tensors on ``device``."""
    order = torch.randperm(n).to(device)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def prompts(template: str, names: Sequence[str]) -> List[str]:
    return [template.format(n) for n in names]


def progress(iterable, desc: Optional[str] = None, **kwargs):
    """tqdm on a terminal, the plain iterable otherwise (logs stay clean)."""
    if desc is None or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, **kwargs)
