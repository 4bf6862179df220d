"""SimpleCIL (Zhou et al., IJCV 2024, "Revisiting Class-Incremental Learning with
Pre-Trained Models"), as its official code behaves (zhoudw-zdw/RevisitingCIL), on CLIP's
image encoder: items S1-S3 of docs/methods/simplecil.md.

Nothing is trained. Each new class gets a prototype, the mean of the frozen encoder's
features of its training images (S1); a test image goes to the seen class whose prototype
has the largest cosine with its feature (S2). The frozen features are computed once per
image (``utils.feature_cache``): exact, as the encoder never changes (S3).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch

from models.base import BaseLearner
from utils.clip_backbone import autocast
from utils.clip_ops import CLIPLearner, begin_task, build_backbone, scores_result
from utils.feature_cache import FeatureCache
from utils.prototypes import class_means, cosine_scores

logger = logging.getLogger(__name__)


class SimpleCIL(CLIPLearner, BaseLearner):
    release = "mgclip"  # 'released' class orders and names: MG-CLIP's files (SimpleCIL's own: seeded shuffles)
    trains = ""

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._setup(args)
        self._network = build_backbone(self.cfg, self._device).eval()
        self.cache = FeatureCache(self._encode, self._network.input_resolution, self.cfg, self._device)
        self.prototypes = torch.zeros(0, self._network.embed_dim, device=self._device)

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self._device, self.cfg.precision):
            return self._network.encode_image(images).float()

    def incremental_train(self, data_manager) -> None:
        new = begin_task(self, data_manager)
        self.data_manager = data_manager
        with self._timed("prototypes"):
            feats, labels = self.cache.get(data_manager, "train", new)
            self.prototypes = torch.cat([self.prototypes, class_means(feats, labels, new)])  # S1
        self.timings["features"] = self.cache.seconds

    @torch.no_grad()
    def eval_task(self):
        with self._timed("eval"):
            feats, labels = self.cache.get(self.data_manager, "test", range(self._total_classes))
            scores = cosine_scores(feats, self.prototypes)  # S2
        return scores_result(self, scores, labels)

    # ------------------------------------------------------------------ analysis views (models/base.py)
    def image_view(self, images: torch.Tensor, trained: bool) -> torch.Tensor:
        return self.backbone_image_view(images)

    def text_view(self, names, trained: bool) -> torch.Tensor:
        return self.backbone_text_view(names)

    def visual_classifier(self) -> Optional[torch.Tensor]:
        return self.prototypes.detach().float() if len(self.prototypes) else None

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        return {**state, "prototypes": self.prototypes[:state["known_classes"]].cpu()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prototypes = state["prototypes"].to(self._device)
