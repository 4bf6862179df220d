"""Frozen image features, computed once per image and reused for every epoch and task.

Exact for a frozen encoder with a deterministic transform (RAPF, zero-shot CLIP): the
same image always gives the same feature, so encoding each image once replaces an
encoder pass per epoch (RAPF's official code: 15 per training image, plus one per task
for the statistics and one per evaluation)."""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from utils.clip_ops import make_loader, progress, task_data


class FeatureCache:
    """``get(dm, source, classes)`` -> (features (N, d) fp32, labels (N,)) on ``device``:
    the features of every image of ``source`` ("train"/"test") whose label is in
    ``classes``, in dataset order. ``encode(images) -> (N, d)`` is called once per image."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], resolution: int, cfg, device: torch.device,
                 transform: Optional[Callable] = None):
        self.encode, self.resolution, self.cfg, self.device = encode, resolution, cfg, device
        self.transform = transform  # a PIL transform of the method's own (e.g. PROOF's squash resize)
        self._store: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.seconds = 0.0
        self.images_encoded = 0

    @torch.no_grad()
    def _all(self, dm, source: str) -> Tuple[torch.Tensor, torch.Tensor]:
        if source not in self._store:
            start = time.perf_counter()
            data = task_data(dm, range(dm.get_total_classnum()), source, self.resolution, self.cfg, self.device,
                             transform=self.transform)
            loader = make_loader(data, self.cfg.eval_batch_size, False, self.cfg.num_workers, self.device)
            feats, labels = [], []
            for _, x, y in progress(loader, f"{source} features"):
                feats.append(self.encode(x).float())
                labels.append(y)
            self._store[source] = (torch.cat(feats), torch.cat(labels))
            self.images_encoded += len(self._store[source][1])
            self.seconds += time.perf_counter() - start
        return self._store[source]

    def all(self, dm, source: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Every image's features and labels of ``source``, in dataset order (stable indices)."""
        return self._all(dm, source)

    def get(self, dm, source: str, classes: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        feats, labels = self._all(dm, source)
        keep = torch.from_numpy(np.isin(labels.cpu().numpy(), np.asarray(list(classes)))).to(labels.device)
        return feats[keep], labels[keep]
