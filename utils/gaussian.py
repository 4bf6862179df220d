"""Per-class Gaussian statistics of frozen features, and sampling from them.

Each class keeps the mean and the unbiased covariance of its features plus a ridge
(RAPF: 1e-4 I); sampling draws ``mu + L eps`` with ``L`` the lower Cholesky factor of the
(optionally shrunk) covariance, computed once per class and cached (the statistics of a
frozen encoder never change), and ``eps`` from the store's own seeded generator (the
global random stream is untouched; its state is part of ``state_dict`` for resuming).
"""
from __future__ import annotations

from typing import Dict, List

import torch


def shrunk_covariance(cov: torch.Tensor) -> torch.Tensor:
    """RAPF's additive shrinkage: cov + mean(diag cov) I + o (11^T - I), with o the mean of
    the non-zero off-diagonal entries (it inflates the variance; not a convex mix)."""
    d = cov.shape[0]
    off = cov[~torch.eye(d, dtype=torch.bool, device=cov.device)]
    nonzero = off[off != 0]
    o = nonzero.mean() if nonzero.numel() else cov.new_zeros(())
    return cov + torch.diagonal(cov).mean() * torch.eye(d, dtype=cov.dtype, device=cov.device) \
        + o * (torch.ones_like(cov) - torch.eye(d, dtype=cov.dtype, device=cov.device))


class ClassGaussians:
    """Class id -> (mean (d,), covariance (d, d)), fp32; ``sample(c, m)`` -> (m, d)."""

    def __init__(self, ridge: float = 1e-4, shrink: bool = False, seed: int = 0):
        self.ridge, self.shrink = ridge, shrink
        self.means: Dict[int, torch.Tensor] = {}
        self.covs: Dict[int, torch.Tensor] = {}
        self._chol: Dict[int, torch.Tensor] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self.cache_cholesky = True  # False: factorise at every draw (the official code's cost)

    def add(self, c: int, feats: torch.Tensor, half: bool = False, double: bool = False) -> None:
        """Statistics of class ``c`` from its features (N, d); N = 1 (a class of one image): its
        features as the mean and the ridge alone as the covariance (the unbiased covariance
        would divide by N - 1 = 0 and the Cholesky draw fail); N >= 2 as follows. ``half``: as
        ``torch.mean`` and ``torch.cov`` give them on fp16 features (RAPF's official numerics):
        the mean, the centred features, their Gram matrix and the covariance each rounded to
        fp16; the ridge added in fp32. ``double`` (SLCA's ``_compute_class_mean``): the fp32
        mean, the covariance in fp64 plus the ridge, then stored in fp32."""
        x = feats.float()
        if x.shape[0] == 1:
            self.means[c] = x[0].half().float() if half else x[0]
            self.covs[c] = self.ridge * torch.eye(x.shape[1], device=x.device)
            self._chol.pop(c, None)
            return
        if double:
            self.means[c] = x.mean(0)
            d = x.shape[1]
            # the ridge as the official ``torch.eye(d) * 1e-4``: an fp32 product, added to the fp64 covariance
            cov = torch.cov(x.double().t()) + torch.eye(d, device=x.device) * self.ridge
            self.covs[c] = cov.float()
            self._chol.pop(c, None)
            return
        if half:
            mean = x.mean(0).half().float()
            centred = (x - mean).half().float()
            self.means[c] = mean
            cov = ((centred.t() @ centred).half().float() / (x.shape[0] - 1)).half().float()
        else:
            self.means[c] = x.mean(0)
            cov = torch.cov(x.t())
        self.covs[c] = cov + self.ridge * torch.eye(x.shape[1], device=x.device)
        self._chol.pop(c, None)

    def cholesky(self, c: int) -> torch.Tensor:
        if c not in self._chol or not self.cache_cholesky:
            cov = shrunk_covariance(self.covs[c]) if self.shrink else self.covs[c]
            self._chol[c] = torch.linalg.cholesky(cov)
        return self._chol[c]

    def sample(self, c: int, m: int, scale: float = 1.0) -> torch.Tensor:
        """``m`` draws from N(scale * mean_c, cov_c) (shrunk if enabled), on the statistics'
        device (``scale``: SLCA's shrinking of older tasks' means; 1 leaves the mean as it is)."""
        mean = self.means[c] if scale == 1.0 else (self.means[c].double() * scale).float()
        eps = torch.randn(m, mean.shape[0], generator=self.generator).to(mean.device)
        return mean + eps @ self.cholesky(c).t()

    def classes(self) -> List[int]:
        return sorted(self.means)

    def state_dict(self) -> Dict[str, object]:
        cs = self.classes()
        return {"classes": cs, "means": [self.means[c].cpu() for c in cs], "covs": [self.covs[c].cpu() for c in cs],
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, object], device: torch.device) -> None:
        self.means = {c: m.to(device) for c, m in zip(state["classes"], state["means"])}
        self.covs = {c: v.to(device) for c, v in zip(state["classes"], state["covs"])}
        self._chol = {}
        self.generator.set_state(state["generator"])
