"""Zero-shot CLIP (the Continual-CLIP baseline): no training; classify the test images of
all seen classes by cosine similarity to the prompts of their names (docs/methods/zs_clip.md)."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict

import torch

from models.base import BaseLearner
from utils.clip_ops import (
    CLIPLearner,
    begin_task,
    build_backbone,
    encode_dataset,
    make_loader,
    prompts,
    scores_result,
    task_data,
    text_features,
)

logger = logging.getLogger(__name__)


class ZSCLIP(CLIPLearner, BaseLearner):
    release = "mgclip"  # the class orders and name tables of MG-CLIP's release
    trains = ""

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)
        self._setup(args)
        self._network = build_backbone(self.cfg, self._device).eval()

    def incremental_train(self, data_manager) -> None:
        begin_task(self, data_manager)
        test_set = task_data(data_manager, range(self._total_classes), "test", self._network.input_resolution,
                             self.cfg, self._device)
        self.test_loader = make_loader(test_set, self.cfg.eval_batch_size, False, self.cfg.num_workers, self._device)

    @torch.no_grad()
    def eval_task(self):
        net = self._network
        tokens = net.tokenize(prompts(self.cfg.prompt_template, self._names))
        text = text_features(net, tokens, self._device, self.cfg.precision)
        feats, labels = encode_dataset(net, self.test_loader, self._device, self.cfg.precision, desc="eval")
        return scores_result(self, feats @ text.t(), labels)

    def _pretrained(self):
        return contextlib.nullcontext()  # CLIP never changes
