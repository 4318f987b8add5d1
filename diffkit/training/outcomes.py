"""What training reports: the hooks the CLI draws progress with, the result, and the two ways it stops early."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffkit.clock import ClockPlan
from diffkit.errors import DiffkitError
from diffkit.interrupts import StopRequest

if TYPE_CHECKING:
    from diffkit.training.guidance import GuidanceChoice, GuidanceSweep


class TrainHooks:
    """What the loop reports; the CLI overrides these to draw rich progress. Defaults do nothing."""

    def start(self, total_steps: int, start_step: int, info: dict[str, Any]) -> None: ...

    def step(self, step: int, loss: float, lr: float, images_per_s: float) -> None: ...

    def epoch(self, epoch: int, step: int, val_loss: float | None, grid: str | None) -> None: ...

    def plan(self, plan: ClockPlan) -> None: ...

    def ran_out(self, step: int, planned: int) -> None: ...

    def stale_lock(self, run_dir: Path, pid: int) -> None: ...

    def sweeping(self, sweep: GuidanceSweep, samples: int) -> None: ...

    def guidance(self, choice: GuidanceChoice) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass
class TrainResult:
    steps: int
    epochs: int
    final_loss: float
    best_val_loss: float | None
    images_per_s: float
    seconds: float
    losses: list[float] = field(default_factory=list)  # every step's training loss, for checks


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM, acted on between steps: `last` holds the exact state after step `step`."""

    def __init__(self, step: int, signum: int | None = None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step, self.signum = step, signum

    @property
    def exit_code(self) -> int:
        return StopRequest(self.signum).exit_code if self.signum else 130


class TrainingDiverged(DiffkitError):
    """A non-finite loss or gradient: the step is not applied and nothing is saved from it."""

    def __init__(self, step: int, what: str, saved_step: int | None, run_dir: Path) -> None:
        kept = (
            f"the last good checkpoint (step {saved_step:,}) is kept"
            if saved_step is not None
            else "no checkpoint was saved yet"
        )
        super().__init__(
            f"training diverged at step {step + 1:,}: the {what} is not finite, so the step was not applied and "
            f"nothing was saved from it ({kept}); lower train.lr or set train.grad_clip, and start again "
            f"(diffkit train --force --run-dir {run_dir})"
        )
        self.step = step


class LossWindow:
    """Every step's loss, and the losses and images since the last log line (their mean, images/s)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.images_per_s = 0.0
        self._window: list[float] = []
        self._seen, self._start = 0, time.perf_counter()

    def add(self, loss: float, images: int) -> None:
        self.losses.append(loss)
        self._window.append(loss)
        self._seen += images

    def flush(self, lr: float) -> dict[str, float]:
        """The log line's numbers; starts a new window."""
        self.images_per_s = self._seen / max(time.perf_counter() - self._start, 1e-9)
        record = {"loss": sum(self._window) / len(self._window), "lr": lr, "images_per_s": round(self.images_per_s, 1)}
        self._window, self._seen, self._start = [], 0, time.perf_counter()
        return record
