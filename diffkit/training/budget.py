"""What a time-budgeted run must keep in reserve besides its steps: validation, grids, FID, checkpoints.

`diffkit.clock.plan_steps` turns these seconds and the measured step time into the run's length;
this module estimates them from one timed forward pass of the network as the run uses it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from diffkit import clock
from diffkit.clock import ClockPlan
from diffkit.precision import PrecisionChoice
from diffkit.previews import preview_images
from diffkit.settings import Settings

if TYPE_CHECKING:
    from diffkit.training.guidance import GuidanceSweep

SAVE_S = 1.0  # a checkpoint, curves.png and the metrics: about a second on a laptop
SAMPLE_TIMING_BATCH = 64  # the batch sampling is timed at: grids and the guidance sweep draw 50 or more at once
# the guidance sweep takes at most this share of a budget, with fewer samples if need be, and is left
# out below MIN_SWEEP_SAMPLES per scale: training steps matter more than a finely chosen guidance
MAX_SWEEP_SHARE = 0.15
MIN_SWEEP_SAMPLES = 100
# the sweep's seconds per network pass (as counted, `GuidanceSweep.count_passes`) against the forward pass timed
# at a batch of 64: the sampler's own arithmetic and the digit CNN's scoring on top. Measured on the demo's
# weights (200 samples at guidance 1 and 1.25, sampled and scored as the sweep does): 1.08 on an Intel Xeon
# emulating AVX2 at 1 thread, 1.05-1.16 on the same Xeon at 2 threads in bf16. 1.4 (an earlier reading taken
# while the machine slowed down) left 12 s of the slow end's 6 minutes unused; the plan's 3 % margin covers that
SWEEP_OVERHEAD = 1.2


@dataclass(frozen=True)
class Reserve:
    epoch_end_s: float  # validation and checkpoint at every epoch end, with grids and FID amortised
    final_s: float  # the last epoch end, its grid and FID, and the guidance sweep
    sweep_s: float = 0.0  # the guidance sweep alone


@dataclass(frozen=True)
class PlanInputs:
    """What a run's clock plan depends on, as the run stands when it plans (`Trainer.plan_inputs`)."""

    settings: Settings
    net: nn.Module  # timed for the reserve: the EMA, as grids and validation run it
    precision: PrecisionChoice
    device: torch.device
    batch_size: int
    budget_s: float
    elapsed_s: Callable[[], float]  # the budget spent so far, read after the network is timed
    step: int
    steps_per_epoch: int
    step_cap: int | None
    val_images: int
    timesteps: int
    with_fid: bool
    sweep: GuidanceSweep | None


@torch.no_grad()
def forward_seconds_per_image(
    net: nn.Module, settings: Settings, precision: PrecisionChoice, device: torch.device, batch: int
) -> float:
    """Inference cost of the network (best of two timed passes), for the grids and validation to leave time for."""
    n = min(batch, SAMPLE_TIMING_BATCH)
    size, channels = settings.data.image_size, settings.data.channels
    x = precision.layout(torch.zeros(n, channels, size, size, device=device))
    steps = torch.zeros(n, dtype=torch.long, device=device)
    classes = torch.zeros(n, dtype=torch.long, device=device) if settings.model.num_classes else None
    extra = {"cond": x} if settings.model.cond_channels else {}
    best = math.inf
    for _ in range(2):
        start = time.perf_counter()
        with precision.autocast(device):
            net(x, steps, classes, **extra)
        best = min(best, time.perf_counter() - start)
    return best / n


def reserve(
    settings: Settings,
    per_image_s: float,
    *,
    val_images: int,
    timesteps: int,
    with_fid: bool,
    sweep_passes: float = 0,
    sample_image_s: float | None = None,
) -> Reserve:
    """The seconds each epoch end and the final one cost, from the network's seconds per image in
    validation's batches (`per_image_s`) and in sampling's (`sample_image_s`, default the same);
    `sweep_passes`: images the guidance sweep puts through the network after the last step."""
    t, s = settings.train, settings.sample
    sampled = per_image_s if sample_image_s is None else sample_image_s
    guided = 2 if settings.model.num_classes and s.cfg not in (0.0, 1.0) else 1
    steps = min(t.grid_steps, timesteps)
    grid_s = steps * preview_images(settings.model.num_classes or 0) * guided * sampled
    fid_s = steps * t.fid_samples * guided * sampled
    val_s = val_images * per_image_s + SAVE_S
    epoch_end_s = val_s
    if t.sample_every_epochs:
        epoch_end_s += grid_s / t.sample_every_epochs
    if with_fid and t.fid_every_epochs:
        epoch_end_s += fid_s / t.fid_every_epochs
    sweep_s = sweep_passes * sampled * SWEEP_OVERHEAD
    return Reserve(epoch_end_s, val_s + grid_s + (fid_s if with_fid else 0.0) + sweep_s, sweep_s)


def sweep_samples(wanted: int, per_sample_s: float, budget_s: float) -> int:
    """Samples per scale for the guidance sweep: `wanted`, or as many as fit in MAX_SWEEP_SHARE of the
    budget at `per_sample_s` (all scales together); 0 (no sweep) when fewer than MIN_SWEEP_SAMPLES fit."""
    fit = math.floor(MAX_SWEEP_SHARE * budget_s / per_sample_s) if per_sample_s > 0 else wanted
    samples = min(wanted, fit)
    return samples if samples >= min(MIN_SWEEP_SAMPLES, wanted) else 0


def measure_plan(run: PlanInputs, step_s: float, epoch_end_s: float | None = None) -> ClockPlan:
    """The plan for the rest of the run's budget: its steps at `step_s` each, and the reserve (with
    `epoch_end_s`, an epoch end as measured, instead of as estimated from the timed forward pass)."""
    per_image = forward_seconds_per_image(run.net, run.settings, run.precision, run.device, run.batch_size)
    sample_image = (  # grids and the sweep draw 50 or more at a time: small training batches cost more per image
        per_image
        if run.batch_size >= SAMPLE_TIMING_BATCH
        else forward_seconds_per_image(run.net, run.settings, run.precision, run.device, SAMPLE_TIMING_BATCH)
    )
    elapsed, samples, passes, sweep = run.elapsed_s(), 0, 0.0, run.sweep
    if sweep is not None:
        per_sample_s = sweep.network_passes(run.settings.sample.steps, 1) * sample_image * SWEEP_OVERHEAD
        samples = sweep_samples(sweep.samples, per_sample_s, run.budget_s)
        passes = sweep.network_passes(run.settings.sample.steps, samples)
    costs = reserve(
        run.settings,
        per_image,
        val_images=run.val_images,
        timesteps=run.timesteps,
        with_fid=run.with_fid,
        sweep_passes=passes,
        sample_image_s=sample_image,
    )
    if epoch_end_s is not None:
        costs = dataclasses.replace(costs, epoch_end_s=epoch_end_s)
    total = clock.plan_steps(
        budget_s=run.budget_s,
        elapsed_s=elapsed,
        step=run.step,
        step_s=step_s,
        epoch_end_s=costs.epoch_end_s,
        steps_per_epoch=run.steps_per_epoch,
        final_s=costs.final_s,
        cap=run.step_cap,
    )
    total = max(total, run.step)
    return ClockPlan(
        run.budget_s,
        total,
        run.step,
        step_s,
        costs.epoch_end_s,
        costs.final_s,
        elapsed,
        sweep_s=costs.sweep_s,
        sweep_samples=samples if sweep is not None else None,
    )


def recheck_plan(run: PlanInputs, old: ClockPlan, step_s: float, epoch_end_s: float | None = None) -> ClockPlan:
    """The plan after measuring the speed again: `step_s` a training step since the last plan or check and,
    when epoch ends were seen since the plan, `epoch_end_s` one of them. The rest of the budget is planned
    again from them; the same plan `old`, marked re-checked, while the new one's length is within
    `clock.REPLAN_SHARE` of it, else the new plan, which remembers the first one. (An epoch end's estimate
    guesses a second for the checkpoint and curves: the demo on the AMX Xeon, whose epoch ends cost less,
    ended 56 s early.)"""
    fresh = measure_plan(run, step_s, epoch_end_s)
    follow = fresh if clock.plan_changed(old.planned_steps, fresh.planned_steps) else old
    checked = dataclasses.replace(
        follow,
        rechecked_at=run.step,
        recheck_step_s=step_s,
        rechecks=old.rechecks + 1,
        rechecked_elapsed_s=fresh.elapsed_s,
    )
    if follow is old:
        return checked
    first_steps = old.planned_steps if old.first_planned_steps is None else old.first_planned_steps
    first_step_s = old.step_s if old.first_step_s is None else old.first_step_s
    return dataclasses.replace(checked, first_planned_steps=first_steps, first_step_s=first_step_s)
