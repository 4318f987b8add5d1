"""`diffkit train`: settings from preset / environment / flags, then the training loop with rich progress."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TextColumn

from diffkit.cli.common import DeviceOption, console, done, progress_bar
from diffkit.distributed import launched_rank
from diffkit.errors import DiffkitError
from diffkit.settings import (
    Settings,
    load_saved_settings,
    load_settings,
    parse_overrides,
    resolve_runs_dir,
    set_nested,
)
from diffkit.training import ClockPlan, Trainer, TrainHooks, TrainingInterrupted, TrainResult, train_run


class RichHooks(TrainHooks):
    def __init__(self) -> None:
        self.bar = progress_bar(
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("lr {task.fields[lr]:.2e}"),
            TextColumn("{task.fields[its]:.2f} it/s"),
            TextColumn("{task.fields[ips]:.0f} img/s"),
            TextColumn("{task.fields[budget]}"),
        )
        self.task: Any = None
        self.deadline: float | None = None  # perf_counter() at which a time budget runs out

    def start(self, total_steps: int, start_step: int, info: dict[str, Any]) -> None:
        console.print(
            f"UNet with [bold]{info['parameters']:,}[/bold] parameters on {info['device']}; "
            f"{info['train_images']:,} training / {info['val_images']:,} validation images, "
            f"{info['classes'] or 'no'} classes, {info['steps_per_epoch']} steps per epoch, "
            f"batch {info['batch_size']}" + _split(info)
        )
        console.print(f"CPU: {info['cpu']}" if info["device"] == "cpu" else f"device: {info['cpu']}")
        console.print(f"precision {info['precision']}")
        if info.get("budget_minutes") and start_step == 0:
            console.print(
                f"time budget {info['budget_minutes']:g} min: the number of steps is planned after a few "
                "seconds of timing"
            )
        if start_step:
            console.print(f"resuming at step {start_step:,} of {total_steps:,}")
        self.bar.start()
        self.task = self.bar.add_task(
            "training", total=total_steps, completed=start_step, loss=0.0, lr=0.0, ips=0.0, its=0.0, budget=""
        )
        self.batch = max(1, info.get("batch_size", 1))

    def step(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        budget = ""
        if self.deadline is not None:
            left = max(0, round(self.deadline - time.perf_counter()))
            budget = f"budget left {left // 60}:{left % 60:02d}"
        self.bar.update(
            self.task, completed=step, loss=loss, lr=lr, ips=images_per_s, its=images_per_s / self.batch, budget=budget
        )

    def plan(self, plan: ClockPlan) -> None:
        self.bar.update(self.task, total=plan.planned_steps)
        left = plan.budget_s - plan.elapsed_s
        self.deadline = time.perf_counter() + left
        self.bar.console.print(
            f"planned [bold]{plan.planned_steps:,}[/bold] steps at {plan.step_s:.3f} s/step to end within "
            f"{plan.budget_s / 60:g} min ({left:.0f} s left, {plan.final_s:.0f} s kept for the final "
            f"validation and grid)"
        )

    def ran_out(self, step: int, planned: int) -> None:
        self.bar.console.print(
            f"[yellow]the time budget ran out at step {step:,} of the {planned:,} planned[/yellow] (the machine "
            "slowed down after planning): ending the run here, with its final validation and grid"
        )

    def epoch(self, epoch: int, step: int, val_loss: float | None, grid: str | None) -> None:
        val = f"val loss {val_loss:.4f}" if val_loss is not None else "no validation split"
        self.bar.console.print(f"epoch {epoch} (step {step:,}): {val}" + (f", grid {grid}" if grid else ""))

    def stale_lock(self, run_dir: Path, pid: int) -> None:
        console.print(
            f"[yellow]note:[/yellow] {run_dir} had a stale lock from process {pid}, which ended without "
            "releasing it (killed or crashed): taking it over"
        )

    def note(self, message: str) -> None:
        console.print(f"[yellow]note:[/yellow] {message}")

    def stop(self) -> None:
        self.bar.stop()


def _split(info: dict[str, Any]) -> str:
    processes = int(info.get("processes", 1))
    if processes <= 1:
        return ""
    return f" (global: {processes} processes x {info['batch_size'] // processes} images each)"


def train_command(
    preset: Annotated[
        str, typer.Option("--preset", "-p", help="Preset name (see `diffkit presets`) or a .toml path.")
    ] = "demo",
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default: runs/<preset>).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting: --set train.lr=1e-4 (repeatable).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Train for this many steps.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Train for this many epochs.")] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            "--minutes",
            min=0.1,
            help="Train for this many minutes (start-up and the final grid included): the steps are planned "
            "from the measured speed, so the LR schedule ends with the budget.",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an existing run exactly where it stopped.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run directory.")] = False,
    device: DeviceOption = "auto",
    stop_after: Annotated[
        int | None,
        typer.Option(
            "--stop-after",
            min=1,
            help="Stop at this step (the schedule still plans the full run); continue later with --resume.",
        ),
    ] = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option(
            "--tensorboard/--no-tensorboard",
            help="Also log scalars, grids and hparams to <run>/tb/ for TensorBoard (train.tensorboard).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train a diffusion model from a preset."""
    if resume and force:
        raise DiffkitError("--resume and --force contradict each other: give one")
    overrides = parse_overrides(set_ or [])
    length = _length(max_steps, epochs, minutes, resume)
    if tensorboard is not None:  # logging, not maths: like the length, a resumed run may change it
        set_nested(length, "train.tensorboard", tensorboard)
    settings = (
        _resume_settings(run_dir, preset, overrides, length, device)
        if resume
        else load_settings(preset, _merge(_merge(overrides, length), {"device": device} if device != "auto" else {}))
    )
    root = run_dir or resolve_runs_dir(settings.runs_dir) / (settings.name or preset)
    if launched_rank() != 0:  # under torchrun only rank 0 shows progress and prints
        console.quiet = True
    hooks = RichHooks()
    try:
        trainer, result = train_run(settings, root, resume=resume, force=force, hooks=hooks, stop_after=stop_after)
    except TrainingInterrupted as stop:
        hooks.stop()
        why = f" by {signal.Signals(stop.signum).name}" if stop.signum else ""
        console.print(
            f"[yellow]interrupted{why} at step {stop.step:,}[/yellow]: saved the exact state after it as "
            f"{root / 'checkpoints' / 'last.safetensors'}; continue with: diffkit train --run-dir {root} --resume"
        )
        raise typer.Exit(stop.exit_code) from None
    finally:
        hooks.stop()
    _report(trainer, result, root)


def _length(max_steps: int | None, epochs: int | None, minutes: float | None, resume: bool) -> dict[str, Any]:
    """The run's length from the flags: each of --max-steps / --epochs / --minutes replaces a preset's others."""
    length: dict[str, Any] = {}
    if max_steps is not None:
        set_nested(length, "train.max_steps", max_steps)
    if epochs is not None:
        set_nested(length, "train.epochs", epochs)
        if max_steps is None:
            set_nested(length, "train.max_steps", None)
    if minutes is not None:
        if resume:
            raise DiffkitError("--minutes cannot change a resumed run: it follows the plan it made; drop --minutes")
        set_nested(length, "train.max_minutes", minutes)
        if max_steps is None:
            set_nested(length, "train.max_steps", None)  # the clock decides; --max-steps would cap it
    elif max_steps is not None or epochs is not None:
        set_nested(length, "train.max_minutes", None)  # an explicit length replaces a preset's budget
    return length


def _report(trainer: Trainer, result: TrainResult, root: Path) -> None:
    best = f", best val loss {result.best_val_loss:.4f}" if result.best_val_loss is not None else ""
    last = f", last loss {result.final_loss:.4f}" if math.isfinite(result.final_loss) else ""  # none: nothing ran
    console.print(
        f"trained {result.steps:,} of {trainer.total_steps:,} steps in {result.seconds:.0f}s "
        f"({result.images_per_s:.0f} img/s){last}{best}"
    )
    if trainer.budget_s is not None:
        console.print(f"time used: {trainer.elapsed_s():.0f} s of the {trainer.budget_s:.0f} s budget")
    if result.steps < trainer.total_steps:
        console.print(f"continue with: diffkit train --run-dir {root} --resume")
    done("run", root)
    done("checkpoints", trainer.paths.checkpoints)
    done("samples", trainer.paths.samples)
    done("training curves", trainer.paths.curves)
    done("precision and plan", trainer.paths.plan)
    if trainer.runlog.tensorboard:
        done("TensorBoard", f"{trainer.paths.tensorboard} (view: tensorboard --logdir {trainer.paths.tensorboard})")


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resume_settings(
    run_dir: Path | None, preset: str, overrides: dict[str, Any], length: dict[str, Any], device: str
) -> Settings:
    """A resumed run keeps its saved settings; only its length, device and TensorBoard logging may change."""
    if overrides:
        raise DiffkitError("--set cannot change an existing run's settings on --resume: drop --set, or start a new run")
    root = run_dir or resolve_runs_dir(load_settings(preset).runs_dir) / preset
    from diffkit.runs import RunPaths

    saved = load_saved_settings(RunPaths(root).config)
    data = _merge(saved.model_dump(), length)
    if device != "auto":
        data["device"] = device
    return Settings.model_validate(data)
