"""`diffkit.train`: `diffkit train` from Python, with its progress printed as plain lines (a notebook
shows them as they come), returning the trained run."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from diffkit.api.run import Run, load
from diffkit.clock import ClockPlan
from diffkit.errors import DiffkitError
from diffkit.settings import set_nested
from diffkit.training import TrainHooks, TrainingInterrupted, train_run
from diffkit.training.request import (
    epoch_line,
    interrupted_line,
    merge,
    plan_line,
    ran_out_line,
    result_lines,
    stale_lock_line,
    start_lines,
    training_settings,
)


class PrintedHooks(TrainHooks):
    """Training's progress as printed lines; the step line is redrawn in place at most once a second."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.total = 0
        self.deadline: float | None = None
        self._shown = 0.0
        self._open = False  # a step line is on screen without its newline

    def _say(self, line: str) -> None:
        print(("\n" if self._open else "") + line, flush=True)
        self._open = False

    def start(self, total_steps: int, start_step: int, info: dict[str, Any]) -> None:
        self.total = total_steps
        for line in start_lines(total_steps, start_step, info):
            self._say(line)

    def step(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        now = time.perf_counter()
        if step < self.total and now - self._shown < self.every_s:
            return
        self._shown = now
        budget = ""
        if self.deadline is not None:
            left = max(0, round(self.deadline - now))
            budget = f" · budget left {left // 60}:{left % 60:02d}"
        line = f"\rstep {step:,}/{self.total:,} · loss {loss:.4f} · lr {lr:.2e} · {images_per_s:.0f} img/s{budget}"
        print(line, end="", flush=True)
        self._open = True

    def plan(self, plan: ClockPlan) -> None:
        self.total = plan.planned_steps
        self.deadline = time.perf_counter() + plan.budget_s - plan.elapsed_s
        self._say(plan_line(plan))

    def ran_out(self, step: int, planned: int) -> None:
        self._say(ran_out_line(step, planned))

    def epoch(self, epoch: int, step: int, val_loss: float | None, grid: str | None) -> None:
        self._say(epoch_line(epoch, step, val_loss, grid))

    def stale_lock(self, run_dir: Path, pid: int) -> None:
        self._say(stale_lock_line(run_dir, pid))

    def end(self) -> None:
        if self._open:
            print(flush=True)
            self._open = False


def overrides_of(given: dict[str, Any]) -> dict[str, Any]:
    """Keyword overrides as the nested dict `--set` builds: `train__lr=1e-3` is train.lr, and
    `train={"lr": 1e-3}` a group given at once."""
    nested: dict[str, Any] = {}
    for key, value in given.items():
        dotted = key.replace("__", ".")
        if isinstance(value, dict):
            nested = merge(nested, _at(dotted, value))
        else:
            set_nested(nested, dotted, value)
    return nested


def _at(dotted: str, value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def train(
    preset_or_path: str | Path = "demo",
    run_dir: str | Path | None = None,
    minutes: float | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    *,
    force: bool = False,
    epochs: int | None = None,
    device: str = "auto",
    stop_after: int | None = None,
    tensorboard: bool | None = None,
    **overrides: Any,
) -> Run:
    """Train a run as `diffkit train` does, and return it loaded (see `diffkit.load`).

    `preset_or_path` is a preset name or a .toml file; settings are overridden as keywords, `train__lr=1e-3`
    (= `--set train.lr=1e-3`) or a group as a dict, `model={"dropout": 0.0}`. An existing run directory is
    refused unless `resume=True` (continue it) or `force=True` (replace it). Interrupting the kernel stops
    at the next step with `last` saved, and returns the run as it is then."""
    for name, value in (("minutes", minutes), ("max_steps", max_steps), ("epochs", epochs), ("stop_after", stop_after)):
        if value is not None and (isinstance(value, bool) or not value > 0):
            raise DiffkitError(f"--{name.replace('_', '-')} {value} is out of range: give a positive number")
    settings, root = training_settings(
        str(preset_or_path),
        run_dir=Path(run_dir) if run_dir is not None else None,
        overrides=overrides_of(overrides),
        max_steps=max_steps,
        epochs=epochs,
        minutes=minutes,
        resume=resume,
        force=force,
        device=device,
        tensorboard=tensorboard,
    )
    hooks = PrintedHooks()
    try:
        trainer, result = train_run(settings, root, resume=resume, force=force, hooks=hooks, stop_after=stop_after)
    except TrainingInterrupted as stop:
        hooks.end()
        print(interrupted_line(stop.step, signal.Signals(stop.signum).name if stop.signum else None, root))
        return load(root, checkpoint="last")
    finally:
        hooks.end()
    for line in result_lines(trainer, result, root):
        print(line)
    print(f"run: {root}")
    return load(root)
