"""The exact state of a run between two steps (`last.state.pt` beside `last.safetensors`), and restoring it.

Everything a step depends on is here: model and EMA weights, optimiser, LR schedule, gradient scaler,
both random generators, the step and the clock plan, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from diffkit.clock import ClockPlan, read_plan
from diffkit.errors import DiffkitError
from diffkit.precision import PrecisionChoice
from diffkit.runs import load_state, load_weights, read_checkpoint, same_pair, split_weights

if TYPE_CHECKING:
    from diffkit.training.trainer import Trainer


def training_state(trainer: Trainer) -> dict[str, Any]:
    """What `last.state.pt` holds besides the weights."""
    return {
        "step": trainer.step,
        "best_val": trainer.best_val,
        "optimizer": trainer.opt.state_dict(),
        "lr_schedule": trainer.lr_sched.state_dict(),
        "grad_scaler": trainer.scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "gen_rng": trainer.gen.get_state(),
        "total_steps": trainer.total_steps,
        "planned": trainer.clock_plan is not None,
        "precision": trainer.precision.name,
        "processes": trainer.world.size,
        "train_seconds": trainer.spent_before + (time.perf_counter() - trainer.clock_start),
    }


def restore(trainer: Trainer) -> None:
    """Load `last` (weights and state) into `trainer`, with the precision and plan the run was trained with."""
    tensors, meta = read_checkpoint(trainer.paths.weights("last"))
    state = load_state(trainer.paths.state("last"))
    if not same_pair(meta, state):  # recover_pair found no complete pair to go back to
        raise DiffkitError(
            f"{trainer.paths.checkpoints}: last.safetensors and last.state.pt were not saved together and no "
            "earlier pair is left; sample from best.safetensors, or start again with --force"
        )
    try:
        load_weights(trainer.model, split_weights(tensors, "model"), trainer.paths.weights("last"))
        load_weights(trainer.ema, split_weights(tensors, "ema"), trainer.paths.weights("last"))
        trainer.opt.load_state_dict(state["optimizer"])
        trainer.lr_sched.load_state_dict(state["lr_schedule"])
        torch.set_rng_state(state["torch_rng"])
        trainer.gen.set_state(state["gen_rng"])
        trainer.step, trainer.best_val = int(state["step"]), float(state["best_val"])
        trainer.spent_before = float(state.get("train_seconds", 0.0))
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise DiffkitError(
            f"{trainer.paths.checkpoints}: the last checkpoint does not fit this run ({type(exc).__name__}: "
            f"{reason}); start again with --force"
        ) from None
    trainer.saved_step = trainer.step
    trainer.runlog.truncate(trainer.step)
    plan = read_plan(trainer.paths.plan)
    try:
        if "precision" in plan:  # the format the run was trained in, not a fresh probe: resume stays exact
            trainer.precision = PrecisionChoice.from_dict(plan["precision"])
            trainer.apply_precision()
        else:
            trainer.choose_precision()
        if state.get("grad_scaler") and trainer.scaler.is_enabled():
            trainer.scaler.load_state_dict(state["grad_scaler"])
        if state.get("planned") and isinstance(plan.get("clock"), dict):
            trainer.clock_plan = ClockPlan(**plan["clock"])
            trainer.total_steps = int(state["total_steps"])
    except (TypeError, KeyError, ValueError, AttributeError) as exc:  # a plan.json of the wrong shape
        raise DiffkitError(
            f"{trainer.paths.plan} is damaged ({type(exc).__name__}); restore it, or start again with --force"
        ) from None
