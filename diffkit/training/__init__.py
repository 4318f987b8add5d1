"""Training: AdamW, warm-up + cosine LR, gradient clipping, EMA, measured precision, validation, DDP.

Resuming is exact: the run's data order is a pure function of (seed, epoch), and the state saved
with `last` holds the model, EMA, optimiser, LR schedule, gradient scaler, both random generators and
the step, so an interrupted run continues with the same losses as an uninterrupted one, under any
number of processes (the batch is global and its random draws are the global batch's). A run with a
time budget (`train.max_minutes`) measures its speed over its first seconds and then fixes its length
once (`plan.json`), so the LR schedule ends with the budget and a resumed run follows the same plan.

| module      | what                                                                    |
| trainer     | `Trainer`: model, EMA, optimiser; one step, the loop, `resume`          |
| epoch_end   | the Trainer's base: validation, training-time FID, grid, best / last    |
| batches     | `TrainingData`: the split, the global batch, each step's rows           |
| run         | `train_run`: directory checks, the lock, start or resume, under torchrun |
| state       | the exact state between two steps (`last.state.pt`), read back as data  |
| budget      | what a time-budgeted run keeps in reserve (validation, grids, FID, sweep)|
| guidance    | the guidance sweep after training: the run's own default guidance        |
| outcomes    | hooks for progress, the result, interrupted / diverged                   |
"""

from diffkit.clock import ClockPlan, plan_steps
from diffkit.optim import ema_decay_at, ema_update, lr_factor, param_groups
from diffkit.runlog import truncate_metrics
from diffkit.training.outcomes import (
    TrainHooks,
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
)
from diffkit.training.run import train_run
from diffkit.training.trainer import Trainer

__all__ = [
    "ClockPlan",
    "TrainHooks",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "ema_decay_at",
    "ema_update",
    "lr_factor",
    "param_groups",
    "plan_steps",
    "train_run",
    "truncate_metrics",
]
