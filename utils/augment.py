"""The official codes' image augmentation, as torchvision PIL pipelines, seeded per image.

Each method's official transform (verified against its code; docs/methods/*.md):

- ``prompts`` (L2P++, DualPrompt, CODA-Prompt; GT-RIPL/CODA-Prompt
  ``dataloaders/utils.py`` ``get_transform``, phase "train"): ``RandomResizedCrop(224)``
  with torchvision's defaults (scale 0.08-1, ratio 3/4-4/3, bilinear), then
  ``RandomHorizontalFlip()`` (p 0.5), then ``ToTensor`` and ``Normalize`` (with mean 0 and
  std 1 there: no change; here CLIP's mean and std, as CLIP's encoder expects). No padding.
- ``aper`` (zhoudw-zdw/RevisitingCIL ``utils/data.py`` ``build_transform(True)``, the
  training transform of ``iCIFAR224`` and ``iImageNetR``): ``RandomResizedCrop(224,
  scale=(0.05, 1.0), ratio=(3/4, 4/3))`` (bilinear), ``RandomHorizontalFlip(p=0.5)``,
  ``ToTensor`` (no normalisation there; CLIP's here).
- ``moe`` (JiazuoYu/MoE-Adapters4CL ``cil/clip/clip.py`` ``_transform(n_px, is_train=True)``,
  which ``cil/continual_clip/models.py`` keeps as ``self.transforms`` and ``cil/main.py``
  hands to the training and the evaluation scenarios alike): ``RandomResizedCrop(n_px,
  scale=(0.9, 1.0), interpolation=BICUBIC)`` (ratio 3/4-4/3), RGB, ``ToTensor``, CLIP's
  ``Normalize``. No flip.

The crop is taken from the image as stored (CIFAR's 32 x 32 array, a JPEG as decoded) and
resized to the encoder's resolution, as the official pipelines do; so an augmented
dataset always goes through PIL per image (never through the decode-once cache).

Seeding (``SeededAugment``): item ``i`` of a pass is transformed under the torch seed
``base + i``; ``base`` is drawn from the run's global torch generator before each training
epoch (``reseed``), which the checkpoints save and restore, so a resumed run draws the
same crops as an uninterrupted one, and the draws do not depend on ``num_workers``.
``fixed(seed)`` sets the base without drawing (MoE's random test crops: seeded by the run's
seed and the task, so a rerun evaluates on the same crops).
"""
from __future__ import annotations

from typing import Callable

import torch

from utils.clip_backbone import CLIP_MEAN, CLIP_STD

KINDS = ("prompts", "aper", "moe")


def official_geometry(kind: str, resolution: int) -> list:
    """The random geometric transforms of ``kind``'s official training pipeline."""
    from torchvision import transforms as T

    if kind == "prompts":
        return [T.RandomResizedCrop(resolution), T.RandomHorizontalFlip()]
    if kind == "aper":
        return [T.RandomResizedCrop(resolution, scale=(0.05, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)),
                T.RandomHorizontalFlip(p=0.5)]
    if kind == "moe":
        return [T.RandomResizedCrop(resolution, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC)]
    raise ValueError(f"unknown augmentation kind {kind!r} (one of {KINDS})")


def official_pipeline(kind: str, resolution: int) -> Callable:
    """PIL image -> normalised tensor (3, R, R): ``kind``'s random transforms, RGB, tensor,
    CLIP's normalisation."""
    from torchvision import transforms as T

    return T.Compose([*official_geometry(kind, resolution), T.Lambda(lambda im: im.convert("RGB")), T.ToTensor(),
                      T.Normalize(CLIP_MEAN, CLIP_STD)])


class SeededAugment:
    """A PIL pipeline applied to item ``idx`` under the torch seed ``base + idx`` (the data
    set passes the index: ``takes_index``), leaving the global random stream untouched."""
    takes_index = True

    def __init__(self, pipeline: Callable):
        self.pipeline = pipeline
        self.base = 0

    def reseed(self) -> int:
        """A new base from the global torch generator (the run's seeded, checkpointed stream)."""
        self.base = int(torch.randint(0, 2 ** 62, (1,)).item())
        return self.base

    def fixed(self, seed: int) -> "SeededAugment":
        self.base = int(seed)
        return self

    def item_seed(self, idx: int) -> int:
        return (self.base + int(idx)) % 2 ** 63

    def __call__(self, image, idx: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.item_seed(idx))
            return self.pipeline(image)


def seeded(kind: str, resolution: int) -> SeededAugment:
    return SeededAugment(official_pipeline(kind, resolution))
