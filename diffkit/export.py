"""Export samples the way FID tools read them: one folder, files 00001.png, 00002.png, ... and nothing else.

`diffkit sample --export-dir` labels the images with `generation.cycled_classes`: on a class-conditional
model without --class the classes cycle 0, 1, ..., K-1, 0, 1, ..., so any number of images covers the
classes as evenly as it can (the first N mod K classes get one more).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from diffkit.denoiser import Denoiser
from diffkit.generation import Generated, generate
from diffkit.outputs import staged_folder
from diffkit.progress import Progress
from diffkit.sampling import SamplingPlan
from diffkit.viz import save_images


def export_digits(num: int) -> int:
    """Five digits (00001.png), more only when the count needs them (100000.png)."""
    return max(5, len(str(num)))


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
    """Generate `num` images and write each batch as soon as it is done, into a staging folder renamed to
    `directory` once all are written (`outputs.staged_folder`: one writer, and a stopped export leaves no
    folder that looks complete); one batch is held at a time, so any number can be exported (the result
    holds no images)."""
    digits = export_digits(num)
    with staged_folder(directory, "--export-dir") as staging:

        def write(first: int, images: Tensor) -> None:
            save_images(images, staging, start=first + 1, digits=digits, rgb=rgb)

        return generate(denoiser, plan, num=num, classes=classes, progress=progress, on_batch=write, keep=0)
