"""Super-resolution inputs: degrading images by a scale and bringing them back up, for training and for conditioning."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit.distributed import Rows, draw_rows
from diffkit.errors import DiffkitError


def degrade(images: Tensor, scale: int) -> Tensor:
    """(N, C, H, W) -> (N, C, H/scale, W/scale) by area averaging."""
    h, w = images.shape[-2:]
    if h % scale or w % scale:
        raise DiffkitError(f"scale {scale} does not divide the image size {w}x{h}: use a scale that does")
    return F.interpolate(images, size=(h // scale, w // scale), mode="area")


def upsample(low: Tensor, size: int) -> Tensor:
    """Bicubic upsampling to size x size, clipped to [-1, 1] (bicubic overshoots at edges)."""
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def random_condition(images: Tensor, scales: list[int], generator: torch.Generator, rows: Rows | None = None) -> Tensor:
    """Training conditioning: each image degraded by a scale drawn uniformly from `scales`, upsampled back.

    With `rows`, `images` are this process's rows of a global batch and the scales are drawn for all of it.
    """
    pick = draw_rows(
        rows, images.shape[0], lambda k: torch.randint(len(scales), (k,), generator=generator, device=generator.device)
    )
    cond = torch.empty_like(images)
    for i, scale in enumerate(scales):
        chosen = pick.to(images.device) == i
        if chosen.any():
            cond[chosen] = upsample(degrade(images[chosen], scale), images.shape[-1])
    return cond
