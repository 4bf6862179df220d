"""SimpleCIL (Zhou et al., IJCV 2024, "Revisiting Class-Incremental Learning with
Pre-Trained Models"), as its official code behaves (zhoudw-zdw/RevisitingCIL), on CLIP's
image encoder: items S1-S3 of docs/methods/simplecil.md.

Nothing is trained. Each new class gets a prototype, the mean of the frozen encoder's
features of its training images (S1); a test image goes to the seen class whose prototype
has the largest cosine with its feature (S2). The frozen features are computed once per
image (``utils.feature_cache``): exact, as the encoder never changes (S3). APER-Adapter
(``models/aper_adapter.py``) is this learner with an adapted branch beside the frozen one.
"""
from __future__ import annotations

import contextlib
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
    uses_text = False  # classifies without prompts: class names only label the results
    trains = ""

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._setup(args)
        self._network = self._build()
        self.cache = FeatureCache(self._features, self._network.input_resolution, self.cfg, self._device)
        self.prototypes = torch.zeros(0, self._feature_dim(), device=self._device)

    def _build(self):
        return build_backbone(self.cfg, self._device).eval()

    def _feature_dim(self) -> int:
        return self._network.embed_dim

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """The features prototypes and predictions use: the frozen encoder's (N, D)."""
        with autocast(self._device, self.cfg.precision):
            return self._network.encode_image(images).float()

    def incremental_train(self, data_manager) -> None:
        new = begin_task(self, data_manager)
        self.data_manager = data_manager
        self._before_prototypes(data_manager, new)
        with self._timed("prototypes"):
            feats, labels = self.cache.get(data_manager, "train", new)
            self.prototypes = torch.cat([self.prototypes, class_means(feats, labels, new)])  # S1
        self.timings["features"] = self.cache.seconds

    def _before_prototypes(self, data_manager, new: range) -> None:
        """Nothing: the encoder is used as it is."""

    @torch.no_grad()
    def eval_task(self):
        with self._timed("eval"):
            feats, labels = self.cache.get(self.data_manager, "test", range(self._total_classes))
            scores = cosine_scores(feats, self.prototypes)  # S2
        return scores_result(self, scores, labels)

    # ------------------------------------------------------------------ analysis views (models/base.py)
    def _pretrained(self):
        return contextlib.nullcontext()  # CLIP never changes

    def visual_classifier(self) -> Optional[torch.Tensor]:
        return self.prototypes.detach().float() if len(self.prototypes) else None

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        return {**state, "prototypes": self.prototypes[:state["known_classes"]].cpu()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prototypes = state["prototypes"].to(self._device)
