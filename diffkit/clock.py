"""Training by the clock: a run with `train.max_minutes` times its first steps, then fixes its length.

`ClockWatch` times training steps after a warm-up; `plan_steps` turns the measured seconds into the
number of steps that ends the run, final epoch end included, inside the budget; `ClockPlan` is what
was decided, saved in plan.json so that a resumed run follows the same plan. The first seconds can
mislead (another program busy, a laptop leaving its power-saving state), so the speed is measured once
again (up to MAX_RECHECKS times), each time at half the steps left or a quarter of the budget after the
plan or the last check, whichever comes first, and the rest of the run is planned again from it; when
that plan is more than REPLAN_SHARE longer or shorter than the one followed, the run follows the new one.
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
    rechecked_at: int | None = None  # the step where the speed was last measured again (None: not yet)
    recheck_step_s: float | None = None  # the speed measured then
    rechecks: int = 0  # how many times it was
    rechecked_elapsed_s: float | None = None  # the budget spent at the last re-check
    first_planned_steps: int | None = None  # set when the re-check re-planned: the first plan's length ...
    first_step_s: float | None = None  # ... and the speed it was made at

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


RECHECK_SHARE = 0.25  # re-check the speed by this share of the budget after the plan or the last check ...
# ... at most this often: the host's speed wanders (an emulated AVX2 run re-planned at a quarter of its budget,
# then ran faster and left 28 s of its 6 minutes unused)
MAX_RECHECKS = 3
# ... and follow the new plan when its length differs by more than this: a 10 % tolerance on the step time
# alone left the demo 28 s of its 6 minutes unused on an emulated AVX2 laptop (steps 5 % faster, epoch ends
# half the estimate); below 2 % the lr schedule is not worth moving for what timing noise can tell apart
REPLAN_SHARE = 0.02


def recheck_due(plan: ClockPlan, step: int, elapsed_s: float) -> bool:
    """Whether a run following `plan` should measure its speed again now: at half the steps left or a
    quarter of the budget after the plan or the last re-check, whichever comes first, MAX_RECHECKS times."""
    if plan.rechecks >= MAX_RECHECKS:
        return False
    # counted from the plan, not the start: a slow start-up (sizing, a busy probe) must not use up the window
    since_step = plan.planned_at_step if plan.rechecked_at is None else max(plan.rechecked_at, plan.planned_at_step)
    since_s = plan.elapsed_s if plan.rechecked_elapsed_s is None else max(plan.rechecked_elapsed_s, plan.elapsed_s)
    return 2 * (step - since_step) >= plan.planned_steps - since_step or (
        elapsed_s - since_s >= RECHECK_SHARE * plan.budget_s
    )


def plan_changed(planned_steps: int, replanned_steps: int) -> bool:
    """Whether a re-made plan differs enough from the one followed to follow it instead."""
    return abs(replanned_steps / max(1, planned_steps) - 1.0) > REPLAN_SHARE


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
