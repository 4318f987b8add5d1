"""`diffkit plot-schedules`: β_t, ᾱ_t, √ᾱ_t, √(1-ᾱ_t) and log-SNR of noise schedules as PNGs, key values as a table."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from diffkit.atomic import write_json
from diffkit.cli.common import OutOption, console, done, hold_runs_written, parse_csv
from diffkit.cli.flags import check_output_dir
from diffkit.outputs import fresh_dir
from diffkit.runs import RunPaths, build_schedule
from diffkit.schedules import SCHEDULE_KINDS, NoiseSchedule, named_schedules, schedule_curves, schedule_key_values
from diffkit.settings import load_saved_settings
from diffkit.viz import plot_schedules


def plot_schedules_command(
    schedules: Annotated[
        str | None,
        typer.Option(
            "--schedules",
            help=f"Comma-separated, from: {', '.join(SCHEDULE_KINDS)} "
            "(default: all of them, or none when --run is given).",
        ),
    ] = None,
    timesteps: Annotated[int, typer.Option("--timesteps", help="T for the named schedules.")] = 1000,
    zero_terminal_snr: Annotated[
        bool, typer.Option("--zero-terminal-snr", help="Add each named schedule's zero-terminal-SNR variant.")
    ] = False,
    run: Annotated[Path | None, typer.Option("--run", help="Also plot this run's own schedule.")] = None,
    out: OutOption = None,
) -> None:
    """Plot noise schedules and print ᾱ at T/4, T/2, 3T/4 and the terminal SNR."""
    check_output_dir(out)
    names = parse_csv(schedules, str, "--schedules") if schedules else ([] if run else list(SCHEDULE_KINDS))
    chosen = named_schedules(names, timesteps, zero_terminal_snr=zero_terminal_snr)
    if run is not None:
        chosen[f"run {run.name}"] = _run_schedule(run)
    with ExitStack() as held:  # the default --out is inside the run
        hold_runs_written(held, [run] if run else [], [out or run])
        folder = fresh_dir(out or (run / "schedules" if run else Path("schedules")), held)
        plots = plot_schedules({name: schedule_curves(s) for name, s in chosen.items()}, folder)
        values = {name: {"timesteps": s.timesteps, **schedule_key_values(s)} for name, s in chosen.items()}
        report = write_json(folder / "schedules.json", values)
    console.print(_table(values))
    done("plots", plots[0])
    done("one plot per quantity", folder)
    done("key values", report)


def _run_schedule(run: Path) -> NoiseSchedule:
    return build_schedule(load_saved_settings(RunPaths(run).config))  # a missing config.toml is a one-line error


def _table(values: dict[str, dict[str, float]]) -> Table:
    table = Table(title="noise schedules (ᾱ after t of T steps)", title_justify="left")
    table.add_column("schedule")
    for name in ("T", "ᾱ(T/4)", "ᾱ(T/2)", "ᾱ(3T/4)", "terminal SNR"):
        table.add_column(name, justify="right")
    for name, v in values.items():
        table.add_row(
            name,
            str(v["timesteps"]),
            f"{v['alpha_bar(T/4)']:.4f}",
            f"{v['alpha_bar(T/2)']:.4f}",
            f"{v['alpha_bar(3T/4)']:.4f}",
            f"{v['terminal_snr']:.3g}",
        )
    return table
