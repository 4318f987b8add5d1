"""Training by the clock: a run with `train.max_minutes` times its first steps, then fixes its length once.

`ClockWatch` times training steps after a warm-up; `plan_steps` turns the measured seconds into the
number of steps that ends the run, final epoch end included, inside the budget; `ClockPlan` is what
was decided, saved in plan.json so that a resumed run follows the same plan.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ClockPlan:
    """How a time-budgeted run fixed its length: measured seconds per step and the reserve for the rest."""

    budget_s: float
    planned_steps: int
    planned_at_step: int
    step_s: float
    epoch_end_s: float  # validation, checkpoint and curves at each epoch end (grids amortised)
    final_s: float  # the last epoch end and its grid
    elapsed_s: float  # spent when the plan was made, start-up included
    ended_early_at: int | None = None  # the step where a slowed-down machine ran out of budget
    sweep_s: float = 0.0  # of final_s: the guidance sweep after the last step (diffkit.training.guidance)
    sweep_samples: int | None = None  # its samples per scale as planned (0: no time for it); None: no sweep

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def plan_steps(
    *,
    budget_s: float,
    elapsed_s: float,
    step: int,
    step_s: float,
    epoch_end_s: float,
    steps_per_epoch: int,
    final_s: float,
    cap: int | None,
    margin: float = 0.97,
) -> int:
    """The total number of steps that ends the run, final epoch end included, within `margin` of the budget.

    Each remaining step costs `step_s` plus its share of an epoch end; the final epoch end (grid
    included) is reserved up front. Never fewer than `step` (already done), never more than `cap`.
    """
    per_step = step_s + epoch_end_s / max(1, steps_per_epoch)
    left = budget_s * margin - elapsed_s - final_s
    total = step + max(0, math.floor(left / per_step))
    return min(total, cap) if cap is not None else total


class ClockWatch:
    """Times training steps (epoch ends excluded) after a short warm-up, until there are enough to plan on."""

    SKIP = 2  # the first steps build oneDNN kernels and fill caches: slower than the rest
    MIN_STEPS = 3

    def __init__(self) -> None:
        self.skipped, self.count, self.seconds = 0, 0, 0.0

    def add(self, seconds: float) -> None:
        if self.skipped < self.SKIP:
            self.skipped += 1
        else:
            self.count, self.seconds = self.count + 1, self.seconds + seconds

    def ready(self, budget_s: float) -> bool:
        # long enough to average out noise, short against the budget: 2 % of it, 3 to 20 seconds
        return self.count >= self.MIN_STEPS and self.seconds >= min(max(0.02 * budget_s, 3.0), 20.0)

    @property
    def step_s(self) -> float:
        return self.seconds / self.count


def read_plan(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
