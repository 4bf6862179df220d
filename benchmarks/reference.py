"""MG-CLIP with the released code's cost structure, for side-by-side timing only.

Same algorithm and results as ``models.mgclip.MGCLIP`` (up to float rounding); what it
does differently is what the released code spends time on:
- every training step encodes the prompts of **all** seen classes with the full 77-token
  context, then slices the current task's columns;
- the visual classifier's training features are recomputed for the prototypes and again
  for each of its epochs (four passes per task);
- the benchmark runs it in the released numerics (``precision: auto``: fp32, with TF32
  matrix products on CUDA, which the released code's PyTorch 1.8 used by default) with PIL
  preprocessing (``preprocess: pil``).
It still uses this toolbox's SDPA attention, so it understates the released code's cost.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.mgclip import MGCLIP
from utils.clip_backbone import autocast
from utils.clip_ops import encode_dataset, prompts, text_features


class ReferenceMGCLIP(MGCLIP):
    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        net = self._network
        with autocast(self._device, self.cfg.precision):
            img = net.encode_image(x)
        img = F.normalize(img.float(), dim=1)
        tokens = net.tokenize(prompts(self.cfg.prompt_template, self._names), trim=False).to(self._device)
        txt = text_features(net, tokens, self._device, self.cfg.precision)
        logits = net.logit_scale * img @ txt.t()
        return F.cross_entropy(logits[:, self._known_classes:self._total_classes], y - self._known_classes)

    def _classifier_features(self, feats: torch.Tensor, labels: torch.Tensor):
        # the released code runs CLIP over the task's images again in every classifier epoch
        return encode_dataset(self._network, self.ordered_train_loader, self._device, self.cfg.precision)
