"""The exact state of a run between two steps (`last.state.pt` beside `last.safetensors`), and reading it back.

Everything a step depends on is here: model and EMA weights, optimiser, LR schedule, gradient scaler,
both random generators, the step and the clock plan, so a resumed run continues bit for bit. This module
knows the format; `Trainer.resume` applies what `read_saved` returns to its own objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffkit.clock import ClockPlan, read_plan
from diffkit.errors import DiffkitError
from diffkit.precision import PrecisionChoice
from diffkit.runs import GUIDE, RunPaths, load_state, read_checkpoint, same_pair, split_weights

# a state that does not fit the run's objects, or a plan.json of the wrong shape, raises one of these
_MISFIT = (RuntimeError, ValueError, KeyError, TypeError, IndexError)


def training_state(
    *,
    step: int,
    best_val: float,
    optimizer: dict[str, Any],
    lr_schedule: dict[str, Any],
    grad_scaler: dict[str, Any],
    gen_rng: Tensor,
    total_steps: int,
    planned: bool,
    precision: str,
    processes: int,
    train_seconds: float,
) -> dict[str, Any]:
    """What `last.state.pt` holds besides the weights (the global torch RNG is read here)."""
    return {
        "step": step,
        "best_val": best_val,
        "optimizer": optimizer,
        "lr_schedule": lr_schedule,
        "grad_scaler": grad_scaler,
        "torch_rng": torch.get_rng_state(),
        "gen_rng": gen_rng,
        "total_steps": total_steps,
        "planned": planned,
        "precision": precision,
        "processes": processes,
        "train_seconds": train_seconds,
    }


@dataclass(frozen=True)
class SavedState:
    """`last` as read back: plain data for `Trainer.resume` to apply, in the order it does."""

    weights_path: Path
    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    guide: dict[str, Tensor] | None  # autoguidance's guide, once the run took it
    optimizer: dict[str, Any]
    lr_schedule: dict[str, Any]
    torch_rng: Tensor
    gen_rng: Tensor
    step: int
    best_val: float
    train_seconds: float  # of earlier sessions: they count against the budget
    grad_scaler: dict[str, Any] | None
    precision: PrecisionChoice | None  # the format the run trained in (plan.json); None: choose it again
    clock_plan: ClockPlan | None  # the run's length by the clock, when it planned one
    total_steps: int | None  # with `clock_plan`


@contextmanager
def checkpoint_fits(paths: RunPaths) -> Iterator[None]:
    """Loading `last` into this run's objects: a checkpoint of another shape is one line, not a traceback."""
    try:
        yield
    except _MISFIT as exc:
        reason = " ".join(str(exc).split())[:120]
        raise DiffkitError(
            f"{paths.checkpoints}: the last checkpoint does not fit this run ({type(exc).__name__}: "
            f"{reason}); start again with --force"
        ) from None


@contextmanager
def plan_intact(paths: RunPaths) -> Iterator[None]:
    """Reading and applying plan.json's precision and clock: a damaged file is one line."""
    try:
        yield
    except (*_MISFIT, AttributeError) as exc:
        raise DiffkitError(
            f"{paths.plan} is damaged ({type(exc).__name__}); restore it, or start again with --force"
        ) from None


def read_saved(paths: RunPaths) -> SavedState:
    """`last` (weights and state) and the precision and plan the run was trained with, checked."""
    tensors, meta = read_checkpoint(paths.weights("last"))
    state = load_state(paths.state("last"))
    if not same_pair(meta, state):  # recover_pair found no complete pair to go back to
        raise DiffkitError(
            f"{paths.checkpoints}: last.safetensors and last.state.pt were not saved together and no "
            "earlier pair is left; sample from best.safetensors, or start again with --force"
        )
    plan = read_plan(paths.plan)
    with plan_intact(paths):
        precision = PrecisionChoice.from_dict(plan["precision"]) if "precision" in plan else None
        planned = bool(state.get("planned")) and isinstance(plan.get("clock"), dict)
        clock_plan = ClockPlan(**plan["clock"]) if planned else None
        total_steps = int(state["total_steps"]) if planned else None
    with checkpoint_fits(paths):
        return SavedState(
            weights_path=paths.weights("last"),
            model=split_weights(tensors, "model"),
            ema=split_weights(tensors, "ema"),
            guide=split_weights(tensors, GUIDE) or None,
            optimizer=state["optimizer"],
            lr_schedule=state["lr_schedule"],
            torch_rng=state["torch_rng"],
            gen_rng=state["gen_rng"],
            step=int(state["step"]),
            best_val=float(state["best_val"]),
            train_seconds=float(state.get("train_seconds", 0.0)),
            grad_scaler=state.get("grad_scaler") or None,
            precision=precision,
            clock_plan=clock_plan,
            total_steps=total_steps,
        )
