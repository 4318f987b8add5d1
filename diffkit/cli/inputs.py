"""What the editing commands share: which run, which input images, and how scores are shown and saved."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from torch import Tensor

from diffkit.cli.common import console
from diffkit.data import parse_source, read_image
from diffkit.editing import Scores
from diffkit.errors import DiffkitError
from diffkit.runs import LoadedRun
from diffkit.settings import resolve_data_dir


def one_of(given: dict[str, object]) -> str:
    """The single option given among mutually exclusive ones ({"--image": value, ...}), else a one-line error."""
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) != 1:
        got = f" (got {' and '.join(chosen)})" if chosen else ""
        raise DiffkitError(f"give exactly one of {', '.join(given)}{got}")
    return chosen[0]


def read_images(image: Path | None, source: str | None, loaded: LoadedRun) -> tuple[Tensor, Tensor | None, str]:
    """--image PNG or --from SOURCE as (images in [-1, 1], labels or None, a description); notes conversions."""
    d = loaded.settings.data
    if image is not None:
        x, note = read_image(image, image_size=d.image_size, channels=d.channels)
        if note:
            console.print(f"[yellow]note:[/yellow] {note}")
        return x, None, str(image)
    assert source is not None
    data = parse_source(
        source, data_dir=resolve_data_dir(loaded.settings.data_dir), image_size=d.image_size, channels=d.channels
    )
    labelled = bool((data.labels >= 0).all()) and data.num_classes > 0
    return data.floats(), data.labels if labelled else None, source


def scores_table(title: str, rows: dict[str, Scores]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("PSNR (dB)", justify="right")
    table.add_column("SSIM", justify="right")
    for name, s in rows.items():
        mean = s.mean()
        table.add_row(name, f"{mean['psnr']:.2f}", f"{mean['ssim']:.4f}")
    return table
