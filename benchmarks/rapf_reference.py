"""RAPF with the official code's cost structure, for speed comparisons only: the same
method and values as ``models.rapf.RAPF``, but like the official code it runs the frozen
image encoder over the training images in every epoch (and once more for the statistics)
and over the test images at every evaluation, encodes all seen prompts at the full
77-token context for every batch, and factorises each class's covariance at every draw.
Only the cost differs; ``tests/test_benchmarks.py`` runs it in smoke mode."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.rapf import RAPF
from utils.clip_ops import make_loader, prompts, task_data, text_features
from utils.metrics import accuracy_dict


class ReferenceRAPF(RAPF):
    def __init__(self, args):
        super().__init__(args)
        self.stats.cache_cholesky = False

    def _loader(self, classes, source: str, shuffle: bool, batch_size: int):
        data = task_data(self.data_manager, classes, source, self._network.input_resolution, self.cfg, self._device)
        return make_loader(data, batch_size, shuffle, self.cfg.num_workers, self._device)

    @torch.no_grad()
    def _full_text(self) -> torch.Tensor:
        tokens = self._network.tokenize(prompts(self.cfg.prompt_template, self._names), trim=False).to(self._device)
        return text_features(self._network, tokens, self._device, "fp32")

    def _batches(self, feats, labels):
        new = range(self._known_classes, self._total_classes)
        for _, x, y in self._loader(new, "train", True, self.cfg.batch_size):
            with torch.no_grad():
                f = self._encode(x)
            yield f, y  # outside no_grad: the caller trains on it

    def _batch_text(self):
        text = F.normalize(self._full_text(), dim=1)
        return text, text

    @torch.no_grad()
    def _statistics_features(self, data_manager, new, feats, labels):
        out = [(self._encode(x), y) for _, x, y in self._loader(new, "train", False, self.cfg.eval_batch_size)]
        return torch.cat([f for f, _ in out]), torch.cat([y for _, y in out])

    @torch.no_grad()
    def eval_task(self):
        preds, ys = [], []
        for _, x, y in self._loader(range(self._total_classes), "test", False, self.cfg.eval_batch_size):
            scores = self._logits(self._encode(x), F.normalize(self._full_text(), dim=1)).float()
            preds.append(torch.topk(scores, k=min(self.topk, scores.shape[1]), dim=1).indices.cpu())
            ys.append(y.cpu())
        y_pred, y_true = torch.cat(preds).numpy(), torch.cat(ys).numpy()
        return accuracy_dict(y_pred, y_true, self._task_ranges, self._known_classes, self.topk), None
