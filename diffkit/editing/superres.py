"""Super-resolution in the manner of SR3 (Saharia et al. 2021): the UNet also receives the bicubic
upsample of the low-resolution image as extra input channels (`Denoiser.cond`), and samples the
high-resolution image given it with any registered sampler.

Degradation (`diffkit.data.degrade` / `upsample`, shared by training and evaluation so they agree):
area-average downsampling by the scale, then bicubic upsampling back to the model's size, clipped to
[-1, 1]. The bicubic image is also the baseline the result is compared with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch import Tensor

from diffkit.data import degrade, random_condition, read_image, upsample
from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.generation import generate
from diffkit.progress import Progress
from diffkit.sampling import SamplingPlan
from diffkit.settings import Settings

__all__ = [
    "SuperResolved",
    "degrade",
    "random_condition",
    "read_superres_input",
    "require_superres",
    "super_resolve",
    "upsample",
]


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
    denoiser: Denoiser, low: Tensor, plan: SamplingPlan, *, progress: Progress | None = None
) -> SuperResolved:
    """Upsample low-resolution images (N, C, h, w) to the model's size with the conditional model."""
    channels, size, _ = denoiser.image_shape
    if not denoiser.network.cond_channels:
        raise DiffkitError(
            "this model has no conditioning channels, so it cannot do super-resolution: "
            "use a run trained with --preset mnist-sr"
        )
    if low.shape[1] != channels or low.shape[-1] > size or size % low.shape[-1]:
        raise DiffkitError(
            f"low-resolution images of shape {tuple(low.shape[1:])} do not fit the model "
            f"({channels} channel(s), {size}x{size}): give a size that divides {size}"
        )
    start = time.perf_counter()
    bicubic = upsample(low.float().cpu(), size)
    out = generate(replace(denoiser, cond=bicubic), plan.but(cfg=1.0), num=len(low), classes=None, progress=progress)
    return SuperResolved(out.images, bicubic, low.cpu(), out.nfe, time.perf_counter() - start)


def read_superres_input(
    path: str | Path, *, image_size: int, channels: int, scale: int
) -> tuple[Tensor | None, Tensor, str | None]:
    """An image file as (ground truth or None, low-resolution image, conversion note).

    A file of the model's full size is ground truth and is degraded by `scale`; any other size is the
    low-resolution input itself, converted to image_size / scale (with a note) when it is not already.
    """
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
