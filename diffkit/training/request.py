"""What `diffkit train` and `diffkit.train` share: the settings and directory of a run to train, and the
lines that report its progress (plain text: the CLI prints them through rich, a notebook with print)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from diffkit.clock import ClockPlan
from diffkit.errors import DiffkitError
from diffkit.settings import Settings, load_saved_settings, load_settings, resolve_runs_dir, set_nested
from diffkit.training.outcomes import TrainResult
from diffkit.training.sizing import sizing_lines
from diffkit.training.trainer import Trainer


def training_settings(
    preset: str,
    *,
    run_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    max_steps: int | None = None,
    epochs: int | None = None,
    minutes: float | None = None,
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
    tensorboard: bool | None = None,
) -> tuple[Settings, Path]:
    """The settings and run directory of `diffkit train` with these flags (overrides as `--set` gives them)."""
    if resume and force:
        raise DiffkitError("--resume and --force contradict each other: give one")
    overrides = overrides or {}
    length = _length(max_steps, epochs, minutes, resume)
    if tensorboard is not None:  # logging, not maths: like the length, a resumed run may change it
        set_nested(length, "train.tensorboard", tensorboard)
    settings = (
        _resume_settings(run_dir, preset, overrides, length, device)
        if resume
        else load_settings(preset, merge(merge(overrides, length), {"device": device} if device != "auto" else {}))
    )
    return settings, run_dir or resolve_runs_dir(settings.runs_dir) / (settings.name or preset)


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


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts: `b`'s values over `a`'s."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
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
    data = merge(saved.model_dump(), length)
    if device != "auto":
        data["device"] = device
    return Settings.model_validate(data)


# ------------------------------------------------------------------------------------ progress lines


def start_lines(total_steps: int, start_step: int, info: dict[str, Any]) -> list[str]:
    """What training says when it starts: the network, the data, the CPU, the precision and the length."""
    processes = int(info.get("processes", 1))
    split = f" (global: {processes} processes x {info['batch_size'] // processes} images each)" if processes > 1 else ""
    lines = [
        f"UNet with {info['parameters']:,} parameters on {info['device']}; "
        f"{info['train_images']:,} training / {info['val_images']:,} validation images, "
        f"{info['classes'] or 'no'} classes, {info['steps_per_epoch']} steps per epoch, "
        f"batch {info['batch_size']}" + split,
        f"diffusion process {info['process']}",
        *([f"optimiser {info['optimizer']}"] if info.get("optimizer") else []),
        f"CPU: {info['cpu']}" if info["device"] == "cpu" else f"device: {info['cpu']}",
        f"precision {info['precision']}",
    ]
    if info.get("sizing") and start_step == 0:
        lines[1:1] = sizing_lines(info["sizing"])
    if info.get("budget_minutes") and start_step == 0:
        lines.append(
            f"time budget {info['budget_minutes']:g} min: the number of steps is planned after a few seconds of timing"
        )
    if info.get("guidance"):
        lines.append(info["guidance"])
    if start_step:
        lines.append(f"resuming at step {start_step:,} of {total_steps:,}")
    return lines


def plan_line(plan: ClockPlan) -> str:
    left = plan.budget_s - plan.elapsed_s
    planned = "planned"
    if plan.first_planned_steps is not None and plan.first_step_s is not None:
        first = f"{plan.first_planned_steps:,} steps at {plan.first_step_s:.3f} s/step"
        planned = f"timed again (first plan: {first}), re-planned"
    return (
        f"{planned} {plan.planned_steps:,} steps at {plan.step_s:.3f} s/step to end within {plan.budget_s / 60:g} min "
        f"({left:.0f} s left, {plan.final_s:.0f} s kept for the final validation and grid{_sweep_words(plan)})"
    )


def _sweep_words(plan: ClockPlan) -> str:
    if plan.sweep_samples is None:
        return ""
    if plan.sweep_samples == 0:
        return "; no time for the guidance sweep: sample.cfg stays"
    return f", {plan.sweep_s:.0f} s of them for the guidance sweep at {plan.sweep_samples} samples per scale"


def ran_out_line(step: int, planned: int) -> str:
    return (
        f"the time budget ran out at step {step:,} of the {planned:,} planned (the machine slowed down after "
        "planning): ending the run here, with its final validation and grid"
    )


def epoch_line(epoch: int, step: int, val_loss: float | None, grid: str | None) -> str:
    val = f"val loss {val_loss:.4f}" if val_loss is not None else "no validation split"
    return f"epoch {epoch} (step {step:,}): {val}" + (f", grid {grid}" if grid else "")


def stale_lock_line(run_dir: Path, pid: int) -> str:
    return (
        f"note: {run_dir} had a stale lock from process {pid}, which ended without releasing it "
        "(killed or crashed): taking it over"
    )


def result_lines(trainer: Trainer, result: TrainResult, root: Path) -> list[str]:
    """What training says when it ends: steps, speed, losses, the time used, and how to continue."""
    best = f", best val loss {result.best_val_loss:.4f}" if result.best_val_loss is not None else ""
    last = f", last loss {result.final_loss:.4f}" if math.isfinite(result.final_loss) else ""  # none: nothing ran
    lines = [
        f"trained {result.steps:,} of {trainer.total_steps:,} steps in {result.seconds:.0f}s "
        f"({result.images_per_s:.0f} img/s){last}{best}"
    ]
    if trainer.budget_s is not None:
        lines.append(f"time used: {trainer.elapsed_s():.0f} s of the {trainer.budget_s:.0f} s budget")
    if result.steps < trainer.total_steps:
        lines.append(f"continue with: diffkit train --run-dir {root} --resume")
    return lines


def interrupted_line(step: int, signal_name: str | None, root: Path, command: str = "train") -> str:
    """What a stopped run tells its user; `command` continues it (`diffkit distill` for a student)."""
    why = f" by {signal_name}" if signal_name else ""
    return (
        f"interrupted{why} at step {step:,}: saved the exact state after it as "
        f"{root / 'checkpoints' / 'last.safetensors'}; continue with: diffkit {command} --run-dir {root} --resume"
    )
