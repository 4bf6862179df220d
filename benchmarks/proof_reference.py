"""PROOF with the official code's cost structure, for speed comparisons only: the same
method as ``models.proof.PROOF``, but like the official code it runs the frozen image
encoder over the task's training images and exemplars in every epoch, encodes the seen
classes' prompts and the batch's label prompts on every batch, re-encodes the test images
at each evaluation, and runs the evaluations the official code computes but never reports
(a test evaluation after every epoch; once per task a pass over the test images of every
class, seen or not). Only the cost differs."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset

from models.proof import PROOF
from utils.clip_backbone import clip_transform


class ReferencePROOF(PROOF):
    def _images(self, source: str, classes):
        """The images as PIL-preprocessed tensors, with the transform the run's features use."""
        transform = self.cache.transform or clip_transform(self._network.input_resolution)
        return self.data_manager.get_dataset(classes, source=source, mode="test", transform=transform)

    @torch.no_grad()
    def _encode_all(self, dataset) -> None:
        loader = DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=False, num_workers=self.cfg.num_workers)
        for _, x, _ in loader:
            self._encode(x.to(self._device))

    def _train(self, feats, labels):
        rows = Subset(self._images("train", range(self.data_manager.get_total_classnum())),
                      self._train_rows.tolist())
        for _ in range(self.epochs):
            self._encode_all(rows)  # the epoch's images through the encoder
            self._encode_all(self._images("test", range(self._total_classes)))  # the unreported epoch evaluation
        super()._train(feats, labels)

    def _losses(self, f, y):
        with torch.no_grad():  # the official code encodes the prompts on every batch
            self._train_text = self._raw_text(self.opts.templates[0], self._names)
            self._raw_text(self.opts.templates[0], [self._names[int(c)] for c in y])
        return super()._losses(f, y)

    def incremental_train(self, data_manager):
        super().incremental_train(data_manager)
        self._encode_all(self._images("test", range(data_manager.get_total_classnum())))  # unreported zero-shot pass

    def eval_task(self):
        self._encode_all(self._images("test", range(self._total_classes)))  # evaluation re-encodes the test images
        return super().eval_task()
