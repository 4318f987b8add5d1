"""Pieces every command shares: the console, progress bars, option types, output-folder naming."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from diffkit.errors import DiffkitError

console = Console(highlight=False, soft_wrap=True)  # long paths stay on one line, copy-pasteable

RunOption = Annotated[Path | None, typer.Option("--run", help="Run directory (default: the most recent run).")]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Random seed (default: the run's sample.seed).")]
OutOption = Annotated[Path | None, typer.Option("--out", help="Output directory (default: inside the run).")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]


def progress_bar(*extra: Any) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


@contextmanager
def progress_task(description: str, total: int) -> Iterator[Any]:
    """A one-task rich progress bar; yields `advance(done)` that sets the completed count."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        yield lambda done, total_=None: bar.update(task, completed=done, total=total_ or total)


def fresh_dir(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, ... so earlier outputs are never overwritten."""
    candidate, n = path, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def parse_csv(text: str, kind: type, option: str) -> list[Any]:
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DiffkitError(
            f"{option} {text!r} is not a comma-separated list of {kind.__name__}s: e.g. 10,20,50"
        ) from None


def done(what: str, where: Path | str) -> None:
    console.print(f"[green]✓[/green] {what}: [bold]{where}[/bold]")


ClipOption = Annotated[
    str | None, typer.Option("--clip", help="x̂0 clipping: none, clip (to [-1, 1]) or dynamic (Imagen).")
]
RescaleOption = Annotated[
    float | None, typer.Option("--rescale", help="CFG-rescale φ in [0, 1] (Lin et al. 2023), for --cfg > 1.")
]


def denoiser_options(clip: str | None, rescale: float | None) -> dict[str, Any]:
    """--clip and --rescale as `Denoiser` fields, checked."""
    from typing import get_args

    from diffkit.denoiser import Clipping

    options: dict[str, Any] = {}
    if clip is not None:
        if clip not in get_args(Clipping):
            raise DiffkitError(f"unknown --clip {clip!r}: choose one of {', '.join(get_args(Clipping))}")
        options["clipping"] = clip
    if rescale is not None:
        if not 0.0 <= rescale <= 1.0:
            raise DiffkitError(f"--rescale {rescale} is out of range: use 0 (off) to 1 (full; 0.7 is typical)")
        options["rescale_phi"] = rescale
    return options
