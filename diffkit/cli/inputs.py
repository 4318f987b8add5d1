"""What the editing commands share: which input images, and how scores are shown and saved."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from torch import Tensor

from diffkit.cli.common import console
from diffkit.data import read_image, source_images
from diffkit.editing import Scores
from diffkit.runs import LoadedRun


def read_images(image: Path | None, source: str | None, loaded: LoadedRun) -> tuple[Tensor, Tensor | None, str]:
    """--image PNG or --from SOURCE as (images in [-1, 1], labels or None, a description); notes conversions."""
    d = loaded.settings.data
    if image is not None:
        x, note = read_image(image, image_size=d.image_size, channels=d.channels)
        if note:
            console.print(f"[yellow]note:[/yellow] {note}")
        return x, None, str(image)
    assert source is not None
    images, labels = source_images(source, loaded.settings)
    return images, labels, source


def scores_table(title: str, rows: dict[str, Scores]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("PSNR (dB)", justify="right")
    table.add_column("SSIM", justify="right")
    for name, s in rows.items():
        mean = s.mean()
        table.add_row(name, f"{mean['psnr']:.2f}", f"{mean['ssim']:.4f}")
    return table
