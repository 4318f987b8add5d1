"""Pieces every command shares: the console, progress bars, option types, output-folder naming."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import rich.progress
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from diffkit.checks import check_output_dir
from diffkit.outputs import fresh_dir
from diffkit.progress import Progress
from diffkit.runlock import SharedRunLock
from diffkit.runs import LoadedRun, latest_run, load_run
from diffkit.samplers import SAMPLERS
from diffkit.schedules import SPACINGS
from diffkit.settings import MAX_SEED

console = Console(highlight=False, soft_wrap=True)  # long paths stay on one line, copy-pasteable

# Options several commands share, defined once (a command with a different meaning defines its own).
RunOption = Annotated[Path | None, typer.Option("--run", help="Run directory (default: the most recent run).")]
CheckpointOption = Annotated[str | None, typer.Option("--checkpoint", help="best, last or a .safetensors path.")]
SeedOption = Annotated[
    int | None,
    typer.Option("--seed", min=0, max=MAX_SEED, help="Random seed (default: the run's sample.seed)."),
]
DEVICES = "auto, cpu, cuda or cuda:N"
OutOption = Annotated[Path | None, typer.Option("--out", help="Output directory (default: inside the run).")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda (cuda:N).")]
SamplerOption = Annotated[str | None, typer.Option("--sampler", help=f"One of: {', '.join(SAMPLERS)}.")]
StepsOption = Annotated[int | None, typer.Option("--steps", help="Sampler steps (default: the run's sample.steps).")]
CfgOption = Annotated[
    float | None,
    typer.Option("--cfg", help="Guidance scale: 0 unconditional, 1 conditional, >1 stronger (default: sample.cfg)."),
]
EtaOption = Annotated[float | None, typer.Option("--eta", help="DDIM noise: 0 deterministic ... 1 DDPM-like.")]
SpacingOption = Annotated[
    str | None,
    typer.Option("--spacing", help=f"Timesteps visited ({', '.join(SPACINGS)}), for the samplers that take it."),
]
BatchSizeOption = Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
ClipOption = Annotated[
    str | None, typer.Option("--clip", help="x̂0 clipping: none, clip (to [-1, 1]) or dynamic (Imagen).")
]
RescaleOption = Annotated[
    float | None, typer.Option("--rescale", help="CFG-rescale φ in [0, 1] (Lin et al. 2023), for --cfg > 1.")
]

AutoguidanceOption = Annotated[
    float | None,
    typer.Option(
        "--autoguidance",
        help="Autoguidance weight w >= 1 (Karras et al. 2024): steer away from the run's weaker guide network, "
        "kept during training (train.autoguide_at); 1: off (default: sample.autoguidance).",
    ),
]
CfgIntervalOption = Annotated[
    str | None,
    typer.Option(
        "--cfg-interval",
        help="Guide only at noise levels σ in LOW,HIGH (e.g. 0.3,5; Kynkäänniemi et al. 2024); all: every step.",
    ),
]


def open_run(run: Path | None, checkpoint: str | None, device: str, *, use_ema: bool = True) -> LoadedRun:
    """The run given, else the most recent one under the runs directory (saying which); prints its precision."""
    if run is None:
        run = latest_run()  # DIFFKIT_RUNS_DIR, else runs/: where `train` writes
        console.print(f"using the most recent run: [bold]{run}[/bold]")
    loaded = load_run(run, checkpoint or "best", use_ema=use_ema, device=device)
    console.print(f"precision {loaded.precision.summary()}")
    return loaded


@dataclass(frozen=True)
class RunArgs:
    """--run, --checkpoint, --device, --seed and --out: what every command that samples a run takes.

    A command declares `args: RunArgs` as its first parameter and is wrapped by `run_command`, which
    puts these five options in its place; `--out` is checked before the command's body runs, and a run
    the command writes inside is held (shared, see `runlock`) until it returns.
    """

    run: Path | None = None
    checkpoint: str | None = None
    device: str = "auto"
    seed: int | None = None
    out: Path | None = None
    held: ExitStack = field(default_factory=ExitStack, compare=False, repr=False)

    def open(self, *, use_ema: bool = True, output: Path | None = None) -> LoadedRun:
        """The run; its lock is shared from here to the command's end when the outputs go inside it
        (--out, else `output`, e.g. --export-dir, else the run's own folder)."""
        loaded = open_run(self.run, self.checkpoint, self.device, use_ema=use_ema)
        hold_runs_written(self.held, [loaded.root], [self.out or output or loaded.root])
        return loaded

    def folder(self, loaded: LoadedRun, *default: str) -> Path:
        """--out, else `<run>/<default...>`, as a new or empty folder claimed until the command ends (see
        `outputs.fresh_dir`): call it before the work, so a second writer or a read-only place is found first."""
        return fresh_dir(self.out or loaded.root.joinpath(*default), self.held)


def hold_runs_written(held: ExitStack, roots: Iterable[Path], places: Iterable[Path | None]) -> None:
    """Take, on `held`, the shared lock of each run that one of `places` (outputs) lies inside: a command
    then never writes into a run being trained, and no training starts in a run being written into."""
    inside = [p.resolve() for p in places if p is not None]
    for root in roots:
        if any(p.is_relative_to(root.resolve()) for p in inside):
            held.enter_context(SharedRunLock(root))


_RUN_OPTIONS = {  # RunArgs field -> its Typer option and default, in the order --help lists them
    "run": (RunOption, None),
    "checkpoint": (CheckpointOption, None),
    "device": (DeviceOption, "auto"),
    "seed": (SeedOption, None),
    "out": (OutOption, None),
}


def run_command(command: Callable[..., None]) -> Callable[..., None]:
    """`command(args: RunArgs, ...)` as Typer sees it: the five shared options where `args` stood.

    Typer reads a command's signature, so the wrapper shows it one with those options, gathers them
    into a `RunArgs` and calls the command with it.
    """
    params = list(inspect.signature(command, eval_str=True).parameters.values())
    if not params or params[0].annotation is not RunArgs:
        raise TypeError(f"{command.__name__}: run_command needs `args: RunArgs` as the first parameter")
    shared = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=option)
        for name, (option, default) in _RUN_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(**given: Any) -> None:
        args = RunArgs(**{name: given.pop(name) for name in _RUN_OPTIONS})
        check_output_dir(args.out)
        with args.held:
            command(args, **given)

    signature = inspect.Signature([*shared, *params[1:]], return_annotation=None)
    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return wrapper


def progress_bar(*extra: Any) -> rich.progress.Progress:
    return rich.progress.Progress(
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
def progress_task(description: str, total: int | None = None) -> Iterator[Progress]:
    """A one-task rich progress bar; yields the library's `Progress`: (done, total[, message])."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)

        def advance(done: int, total_: int, message: str = "", /) -> None:
            bar.update(task, completed=done, total=total_, description=(message or description)[:70])

        yield advance


def done(what: str, where: Path | str) -> None:
    console.print(f"[green]✓[/green] {what}: [bold]{where}[/bold]")
