"""CLIP preprocessing on the device, in batches.

``DevicePreprocess`` takes uint8 images (N, H, W, 3) and does what CLIP's PIL pipeline
does (shorter side to R with bicubic, center crop R, /255, CLIP normalization), matching
PIL to within one grey level. PIL resamples in two passes, horizontal then vertical, and
rounds to uint8 after each; doing the same here (torch's antialiased bicubic uses PIL's
kernel, a = -0.5) is what keeps the difference at one grey level instead of tens on
high-contrast images. Images already R x R (decoded and resized once by PIL) are only
normalized, which is exact.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from utils.clip_backbone import CLIP_MEAN, CLIP_STD


def resized_size(h: int, w: int, resolution: int) -> Tuple[int, int]:
    """torchvision ``Resize(resolution)``: shorter side -> resolution, longer scaled and truncated."""
    if h <= w:
        return resolution, int(resolution * w / h)
    return int(resolution * h / w), resolution


def pil_like_resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """x (N, C, H, W) float in [0, 255] -> (N, C, *size), bicubic like PIL (two rounded passes)."""
    h, w = x.shape[-2:]
    if size[1] != w:
        x = F.interpolate(x, size=(h, size[1]), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    if size[0] != h:
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x


class DevicePreprocess:
    """uint8 (N, H, W, 3) on any device -> normalized float (N, 3, R, R) on ``device``."""

    def __init__(self, resolution: int, device: torch.device):
        self.resolution = resolution
        self.device = device
        self.mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        R = self.resolution
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        if (h, w) != (R, R):
            nh, nw = resized_size(h, w, R)
            x = pil_like_resize(x, (nh, nw))
            top, left = int(round((nh - R) / 2.0)), int(round((nw - R) / 2.0))
            x = x[..., top:top + R, left:left + R]
        return ((x - self.mean) / self.std).contiguous()
