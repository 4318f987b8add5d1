"""The Trainer's parts talk in plain data: the saved state read back, the clock plan's inputs, no import cycle."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from diffkit.precision import FP32
from diffkit.settings import Settings, load_settings, parse_overrides
from diffkit.training import train_run
from diffkit.training.budget import PlanInputs, measure_plan, recheck_plan
from diffkit.training.state import read_saved

TRAINING = Path(__file__).resolve().parents[1] / "diffkit" / "training"


def tiny(*extra: str) -> Settings:
    fixed = ["data.limit=64", "train.batch_size=8", "train.max_steps=10", "train.sample_every_epochs=0"]
    return load_settings("tiny", parse_overrides([*fixed, "sample.steps=2", "train.threads=1", *extra]))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        return x


def test_no_part_of_the_trainer_imports_the_trainer() -> None:
    """state, budget, guidance, outcomes, the data and the epoch end take data or arguments, not a Trainer."""
    for name in ("state", "budget", "guidance", "outcomes", "batches", "epoch_end"):
        tree = ast.parse((TRAINING / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "diffkit.training.trainer" not in imported, name


def test_read_saved_is_what_the_run_saved(tmp_path: Path) -> None:
    trainer, result = train_run(tiny(), tmp_path / "run", stop_after=4)
    saved = read_saved(trainer.paths)
    assert result.steps == saved.step == 4 and saved.precision is not None
    assert saved.precision.name == trainer.precision.name and saved.clock_plan is None
    model = trainer.model.state_dict()
    assert saved.model.keys() == model.keys() and all(torch.equal(saved.model[k], model[k]) for k in model)
    assert torch.equal(saved.gen_rng, trainer.gen.get_state())  # the noise generator after step 4
    assert saved.train_seconds > 0 and math.isinf(saved.best_val)  # no epoch end yet: nothing validated


def test_the_clock_plan_comes_from_explicit_numbers() -> None:
    settings = tiny("train.max_minutes=1")

    def plan_for(step_s: float, cap: int | None, step: int = 0) -> int:
        inputs = PlanInputs(
            settings, Identity(), FP32, torch.device("cpu"), 8, 60.0, lambda: 10.0, step, 7, cap, 8, 100, False, None
        )
        return measure_plan(inputs, step_s).planned_steps

    assert plan_for(0.001, cap=30) == 30  # fast: the cap decides
    slow = plan_for(1.0, cap=None)
    assert 20 < slow < 50  # 50 s left at about 1 s a step, less the reserve for epoch ends
    assert plan_for(1.0, cap=None, step=5) >= 5  # never behind the step already reached


def test_the_re_check_re_plans_on_epoch_ends_that_cost_other_than_estimated() -> None:
    """A step at the planned speed, but epoch ends far cheaper than the reserve guessed: the rest of the run is
    re-planned with the measured epoch end (more steps); one close to the guess keeps the plan."""
    settings = tiny("train.max_minutes=1")
    inputs = PlanInputs(
        settings, Identity(), FP32, torch.device("cpu"), 8, 60.0, lambda: 10.0, 0, 7, None, 8, 100, False, None
    )
    first = measure_plan(inputs, 0.1)
    assert first.epoch_end_s > 0.5  # the estimate: validation and a second for the checkpoint and curves
    spent = 10.0 + 70 * 0.1 + 10 * first.epoch_end_s  # 70 steps and 10 epoch ends later, as planned
    at = dataclasses.replace(inputs, step=70, elapsed_s=lambda: spent)
    kept = recheck_plan(at, first, 0.1, first.epoch_end_s * 0.999)
    assert kept.planned_steps == first.planned_steps and kept.rechecked_at == 70 and kept.first_planned_steps is None
    slower = recheck_plan(at, first, 0.102, first.epoch_end_s)  # 2 % slower steps: within REPLAN_SHARE
    assert slower.planned_steps == first.planned_steps and slower.first_planned_steps is None
    cheap = recheck_plan(at, first, 0.1, 0.05)
    assert cheap.epoch_end_s == 0.05 and cheap.first_planned_steps == first.planned_steps
    left = 60.0 * 0.97 - spent - cheap.final_s  # clock.plan_steps with the measured epoch end
    assert cheap.planned_steps == 70 + math.floor(left / (0.1 + 0.05 / 7)) > first.planned_steps
    unseen = recheck_plan(at, first, 0.1, None)  # no epoch end since the plan: the estimate stands
    assert unseen.planned_steps == first.planned_steps
