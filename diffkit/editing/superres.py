"""Super-resolution in the manner of SR3 (Saharia et al. 2021): the UNet also receives the bicubic
upsample of the low-resolution image as extra input channels (`Denoiser.cond`), and samples the
high-resolution image given it with any registered sampler.

Degradation, shared by training and evaluation so they agree: area-average downsampling by the
scale (each low-resolution pixel is the mean of a scale x scale block), then bicubic upsampling back
to the model's size, clipped to [-1, 1]. The bicubic image is also the baseline the result is
compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.generation import generate
from diffkit.settings import Settings

Progress = Callable[[int, int], None]


def degrade(images: Tensor, scale: int) -> Tensor:
    """(N, C, H, W) -> (N, C, H/scale, W/scale) by area averaging."""
    h, w = images.shape[-2:]
    if h % scale or w % scale:
        raise DiffkitError(f"scale {scale} does not divide the image size {w}x{h}: use a scale that does")
    return F.interpolate(images, size=(h // scale, w // scale), mode="area")


def upsample(low: Tensor, size: int) -> Tensor:
    """Bicubic upsampling to size x size, clipped to [-1, 1] (bicubic overshoots at edges)."""
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def random_condition(images: Tensor, scales: list[int], generator: torch.Generator) -> Tensor:
    """Training conditioning: each image degraded by a scale drawn uniformly from `scales`, upsampled back."""
    pick = torch.randint(len(scales), (images.shape[0],), generator=generator, device=generator.device)
    cond = torch.empty_like(images)
    for i, scale in enumerate(scales):
        chosen = pick.to(images.device) == i
        if chosen.any():
            cond[chosen] = upsample(degrade(images[chosen], scale), images.shape[-1])
    return cond


def require_superres(settings: Settings, root: Path | str, scale: int) -> None:
    """A run trained for super-resolution at `scale`, or a one-line error saying what to use instead."""
    m = settings.model
    if m.task != "super-res" or not m.cond_channels:
        raise DiffkitError(
            f"run {root} is an image generator (model.task = {m.task}), not a super-resolution "
            "model: train one with `diffkit train --preset mnist-sr` and pass --run runs/mnist-sr"
        )
    if scale not in m.sr_scales:
        raise DiffkitError(
            f"--scale {scale} was not trained in run {root}: use one of {', '.join(map(str, m.sr_scales))}"
        )


@dataclass
class SuperResolved:
    images: Tensor  # (N, C, H, W) diffusion result in [-1, 1], on the CPU
    bicubic: Tensor  # the baseline, and the model's conditioning
    low: Tensor  # (N, C, H/scale, W/scale)
    nfe: int
    seconds: float


def super_resolve(
    denoiser: Denoiser,
    low: Tensor,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    batch_size: int = 250,
    progress: Progress | None = None,
    **options: Any,
) -> SuperResolved:
    """Upsample low-resolution images (N, C, h, w) to the model's size with the conditional model."""
    model: Any = denoiser.model
    size = int(model.image_size)
    if not getattr(model, "cond_channels", 0):
        raise DiffkitError(
            "this model has no conditioning channels, so it cannot do super-resolution: "
            "use a run trained with --preset mnist-sr"
        )
    if low.shape[1] != model.in_channels or low.shape[-1] > size or size % low.shape[-1]:
        raise DiffkitError(
            f"low-resolution images of shape {tuple(low.shape[1:])} do not fit the model "
            f"({model.in_channels} channel(s), {size}x{size}): give a size that divides {size}"
        )
    start = time.perf_counter()
    bicubic = upsample(low.float().cpu(), size)
    out = generate(
        replace(denoiser, cond=bicubic),
        num=len(low),
        classes=None,
        sampler=sampler,
        steps=steps,
        guidance=1.0,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        **options,
    )
    return SuperResolved(out.images, bicubic, low.cpu(), out.nfe, time.perf_counter() - start)


def read_superres_input(
    path: str | Path, *, image_size: int, channels: int, scale: int
) -> tuple[Tensor | None, Tensor, str | None]:
    """An image file as (ground truth or None, low-resolution image, conversion note).

    A file of the model's full size is ground truth and is degraded by `scale`; any other size is the
    low-resolution input itself, converted to image_size / scale (with a note) when it is not already.
    """
    from PIL import Image, UnidentifiedImageError

    from diffkit.data import read_image

    path = Path(path)
    try:
        with Image.open(path) as img:
            full = img.size == (image_size, image_size)
    except FileNotFoundError:
        raise DiffkitError(f"image {path} does not exist: give the path of a PNG or JPEG file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise DiffkitError(f"{path} is not an image file diffkit can read: give a PNG or JPEG") from None
    if full:
        truth, note = read_image(path, image_size=image_size, channels=channels)
        return truth, degrade(truth, scale), note
    low, note = read_image(path, image_size=image_size // scale, channels=channels)
    return None, low, note
