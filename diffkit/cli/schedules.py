"""`diffkit plot-schedules`: β_t, ᾱ_t, √ᾱ_t, √(1-ᾱ_t) and log-SNR of noise schedules as PNGs, key values as a
table; and the diffusion processes side by side (α, σ, log-SNR along each grid, training's noise-level density)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from diffkit.atomic import write_json
from diffkit.checks import check_output_dir, parse_csv
from diffkit.cli.common import OutOption, console, done, hold_runs_written
from diffkit.outputs import fresh_dir
from diffkit.process import PROCESSES, build_process
from diffkit.process.curves import process_curves, process_key_values
from diffkit.process.registry import default_processes
from diffkit.runs import RunPaths
from diffkit.schedules import SCHEDULE_KINDS, named_schedules, schedule_curves, schedule_key_values
from diffkit.settings import load_saved_settings
from diffkit.viz import plot_processes, plot_schedules


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
    processes: Annotated[
        str | None,
        typer.Option(
            "--processes",
            help=f"Diffusion processes to draw side by side, comma-separated from: {', '.join(PROCESSES)} "
            "with default options (default: all of them, or none when --run or --schedules is given).",
        ),
    ] = None,
    run: Annotated[Path | None, typer.Option("--run", help="Also plot this run's own schedule and process.")] = None,
    out: OutOption = None,
) -> None:
    """Plot noise schedules and processes; print ᾱ at T/4, T/2, 3T/4, the terminal SNR and each process's range."""
    check_output_dir(out)
    default = not (run or schedules)
    names = parse_csv(schedules, str, "--schedules") if schedules else (list(SCHEDULE_KINDS) if default else [])
    chosen = named_schedules(names, timesteps, zero_terminal_snr=zero_terminal_snr)
    process_names = parse_csv(processes, str, "--processes") if processes else (list(PROCESSES) if default else [])
    drawn = default_processes(process_names)
    if run is not None:
        run_process = build_process(load_saved_settings(RunPaths(run).config).diffusion)  # one-line error if missing
        chosen[f"run {run.name}"] = run_process.grid
        drawn[f"run {run.name} ({run_process.name})"] = run_process
    with ExitStack() as held:  # the default --out is inside the run
        hold_runs_written(held, [run] if run else [], [out or run])
        folder = fresh_dir(out or (run / "schedules" if run else Path("schedules")), held)
        plots = plot_schedules({name: schedule_curves(s) for name, s in chosen.items()}, folder) if chosen else []
        values = {name: {"timesteps": s.timesteps, **schedule_key_values(s)} for name, s in chosen.items()}
        curves = {name: process_curves(p) for name, p in drawn.items()}
        if curves:
            plots.append(plot_processes(curves, folder / "processes.png"))
        process_values = {name: process_key_values(c) for name, c in curves.items()}
        report = write_json(folder / "schedules.json", {**values, "processes": process_values})
    if values:
        console.print(_table(values))
    if process_values:
        console.print(_process_table(process_values))
    done("plots", plots[0])
    done("one plot per quantity", folder)
    done("key values", report)


def _process_table(values: dict[str, dict[str, float]]) -> Table:
    table = Table(title="diffusion processes (log-SNR)", title_justify="left")
    for name in ("process", "grid from", "grid to", "training median"):
        table.add_column(name, justify="left" if name == "process" else "right")
    for name, v in values.items():
        table.add_row(name, f"{v['log_snr_max']:.2f}", f"{v['log_snr_min']:.2f}", f"{v['training_median_log_snr']:.2f}")
    return table


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
