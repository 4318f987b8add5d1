"""`diffkit train`: settings from preset / environment / flags, then the training loop with rich progress."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import TextColumn

from diffkit.cli.common import DeviceOption, console, done, progress_bar
from diffkit.distributed import launched_rank
from diffkit.settings import parse_overrides
from diffkit.training import ClockPlan, TrainHooks, TrainingInterrupted, train_run
from diffkit.training.guidance import GuidanceChoice, GuidanceSweep
from diffkit.training.request import (
    epoch_line,
    interrupted_line,
    plan_line,
    ran_out_line,
    result_lines,
    stale_lock_line,
    start_lines,
    training_settings,
)


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
        for line in start_lines(total_steps, start_step, info):
            console.print(line)
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
        self.deadline = time.perf_counter() + plan.budget_s - plan.elapsed_s
        self.bar.console.print(plan_line(plan))

    def ran_out(self, step: int, planned: int) -> None:
        self.bar.console.print(f"[yellow]{ran_out_line(step, planned)}[/yellow]")

    def epoch(self, epoch: int, step: int, val_loss: float | None, grid: str | None) -> None:
        self.bar.console.print(epoch_line(epoch, step, val_loss, grid))

    def stale_lock(self, run_dir: Path, pid: int) -> None:
        console.print(stale_lock_line(run_dir, pid))

    def sweeping(self, sweep: GuidanceSweep, samples: int) -> None:
        self.bar.stop()
        scales = ", ".join(f"{s:g}" for s in sweep.scales)
        console.print(f"choosing the guidance: {samples} samples at each of {scales} ...")

    def guidance(self, choice: GuidanceChoice) -> None:
        rows = "; ".join(
            f"{r.cfg:g}: FID {r.fid:.1f}"
            + (f", {r.accuracy:.1%}" if r.accuracy is not None else "")
            + (f" of {r.judged}" if r.judged != choice.samples else "")  # a second look near the bar
            for r in choice.rows
        )
        console.print(
            f"guidance by FID / class accuracy ({choice.samples} samples, {choice.sampler}, against "
            f"{choice.reference}): {rows}"
        )
        style = "bold" if choice.met else "bold yellow"
        console.print(
            f"default guidance: [{style}]{choice.chosen:g}[/{style}] ({choice.reason}); `diffkit sample` uses it "
            "unless --cfg is given"
        )

    def note(self, message: str) -> None:
        console.print(f"[yellow]note:[/yellow] {escape(message)}")  # notes name settings: [model]

    def stop(self) -> None:
        self.bar.stop()


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
    settings, root = training_settings(
        preset,
        run_dir=run_dir,
        overrides=parse_overrides(set_ or []),
        max_steps=max_steps,
        epochs=epochs,
        minutes=minutes,
        resume=resume,
        force=force,
        device=device,
        tensorboard=tensorboard,
    )
    if launched_rank() != 0:  # under torchrun only rank 0 shows progress and prints
        console.quiet = True
    hooks = RichHooks()
    try:
        trainer, result = train_run(settings, root, resume=resume, force=force, hooks=hooks, stop_after=stop_after)
    except TrainingInterrupted as stop:
        hooks.stop()
        name = signal.Signals(stop.signum).name if stop.signum else None
        console.print(f"[yellow]{interrupted_line(stop.step, name, root)}[/yellow]")
        raise typer.Exit(stop.exit_code) from None
    finally:
        hooks.stop()
    for line in result_lines(trainer, result, root):
        console.print(line)
    done("run", root)
    done("checkpoints", trainer.paths.checkpoints)
    done("samples", trainer.paths.samples)
    done("training curves", trainer.paths.curves)
    done("precision and plan", trainer.paths.plan)
    if trainer.runlog.tensorboard:
        done("TensorBoard", f"{trainer.paths.tensorboard} (view: tensorboard --logdir {trainer.paths.tensorboard})")
