"""`diffkit distill`: a trained run becomes a few-step student (a new run), with the training loop's progress."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from diffkit.cli.common import DeviceOption, console, done
from diffkit.cli.train import RichHooks
from diffkit.distill import check_teacher, distill_run, get_method, student_settings
from diffkit.errors import DiffkitError
from diffkit.settings import load_saved_settings, parse_overrides, resolve_runs_dir
from diffkit.training import TrainingInterrupted
from diffkit.training.request import interrupted_line


def distill_command(
    run: Annotated[Path | None, typer.Option("--run", help="The teacher: a run made by diffkit train.")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="The student's sampling steps (e.g. 4, 2, 1).")] = 4,
    method: Annotated[
        str, typer.Option("--method", help="progressive (halves distill.teacher_steps) or consistency (1 to 4 steps).")
    ] = "progressive",
    minutes: Annotated[
        float | None, typer.Option("--minutes", min=0.1, help="Distil for this many minutes (default 8), by the clock.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Distil for this many steps.")] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="The student's run directory (default: runs/<teacher>-<method>-<steps>)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a student setting: --set distill.guidance_max=4 (repeatable)."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a student exactly where it stopped.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing student directory.")] = False,
    device: DeviceOption = "auto",
    stop_after: Annotated[
        int | None, typer.Option("--stop-after", min=1, help="Stop at this step; continue later with --resume.")
    ] = None,
) -> None:
    """Distil a trained run into a student that samples in a few steps (a new run every command reads)."""
    if resume and force:
        raise DiffkitError("--resume and --force contradict each other: give one")
    if minutes is not None and max_steps is not None:
        raise DiffkitError("--minutes and --max-steps both set the length: give one")
    if resume:
        if run_dir is None:
            raise DiffkitError("--resume needs --run-dir: the student directory to continue")
        if minutes is not None or max_steps is not None or set_:
            raise DiffkitError(
                "--resume continues with the student's saved settings: drop --minutes, --max-steps and --set"
            )
        settings = load_saved_settings(run_dir / "config.toml")
        if settings.distill is None:
            raise DiffkitError(f"{run_dir} is not a distilled student: continue it with diffkit train --resume")
        root = run_dir
    else:
        if run is None:
            raise DiffkitError("give the teacher with --run RUN_DIR (a run made by diffkit train)")
        teacher = check_teacher(run, method)
        settings = student_settings(
            teacher, run, steps, method, minutes=minutes, max_steps=max_steps, overrides=parse_overrides(set_ or [])
        )
        if device != "auto":
            settings.device = device  # type: ignore[assignment]
        root = run_dir or resolve_runs_dir(teacher.runs_dir) / (settings.name or "student")
    d = settings.distill
    assert d is not None
    rounds = get_method(d.method).rounds(d)
    console.print(
        f"distilling {d.teacher} with {d.method}: rounds of {' -> '.join(str(n) for n in rounds)} steps"
        + (
            f", guidance {d.guidance_min:g} to {d.guidance_max:g} as a network input"
            if settings.model.guidance_input
            else ""
        )
    )
    hooks = RichHooks()
    try:
        trainer, result = distill_run(settings, root, resume=resume, force=force, hooks=hooks, stop_after=stop_after)
    except TrainingInterrupted as stop:
        hooks.stop()
        name = signal.Signals(stop.signum).name if stop.signum else None
        console.print(f"[yellow]{interrupted_line(stop.step, name, root, 'distill')}[/yellow]")
        raise typer.Exit(stop.exit_code) from None
    finally:
        hooks.stop()
    cfg = trainer.guidance.chosen if trainer.guidance is not None else settings.sample.cfg  # the sweep's pick
    console.print(
        f"distilled {result.steps:,} of {trainer.total_steps:,} steps in {trainer.elapsed_s() / 60:.1f} min; "
        f"the student samples in {d.steps} step{'s' if d.steps > 1 else ''} "
        f"({settings.sample.sampler}, guidance {cfg:g}, one pass per step)"
    )
    if result.steps < trainer.total_steps:
        console.print(f"continue with: diffkit distill --run-dir {root} --resume")
    done("student run", root)
    done("checkpoints", trainer.paths.checkpoints)
    done("final grid", trainer.paths.samples)
    done("sample it", f"diffkit sample --run {root}")
