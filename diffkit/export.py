"""Export samples the way FID tools read them: one folder, files 00001.png, 00002.png, ... and nothing else.

`diffkit sample --export-dir` labels the images with `generation.cycled_classes`: on a class-conditional
model without --class the classes cycle 0, 1, ..., K-1, 0, 1, ..., so any number of images covers the
classes as evenly as it can (the first N mod K classes get one more).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.generation import Generated, generate
from diffkit.progress import Progress
from diffkit.sampling import SamplingPlan
from diffkit.viz import save_images


def export_digits(num: int) -> int:
    """Five digits (00001.png), more only when the count needs them (100000.png)."""
    return max(5, len(str(num)))


def check_export_dir(directory: Path) -> None:
    """Refuse anything but a new or empty folder, so earlier exports are never mixed or overwritten."""
    if directory.exists() and not directory.is_dir():
        raise DiffkitError(f"--export-dir {directory} is a file: give a new or empty folder")
    if directory.is_dir() and any(directory.iterdir()):
        raise DiffkitError(f"--export-dir {directory} is not empty: give a new or empty folder (nothing was written)")


def export_samples(
    denoiser: Denoiser,
    plan: SamplingPlan,
    directory: Path,
    *,
    num: int,
    classes: Tensor | None,
    rgb: bool = False,
    progress: Progress | None = None,
) -> Generated:
    """Generate `num` images and write each batch as soon as it is done (a stopped export keeps its files);
    one batch is held at a time, so any number can be exported (the result holds no images)."""
    check_export_dir(directory)  # the folder itself appears with the first batch
    digits = export_digits(num)

    def write(first: int, images: Tensor) -> None:
        save_images(images, directory, start=first + 1, digits=digits, rgb=rgb)

    return generate(denoiser, plan, num=num, classes=classes, progress=progress, on_batch=write, keep=0)
