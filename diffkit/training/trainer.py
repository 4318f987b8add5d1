"""The Trainer: a run's model, EMA, optimiser and data, and the loop that steps them.

One code path for one process and for N (`diffkit.distributed.World`): every rank builds the same
model from the same seed and draws the same global batch and noise; DDP averages the gradients, so
the weights and the EMA stay identical on every rank; rank 0 alone prints, logs and writes files.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from diffkit.atomic import write_json
from diffkit.clock import MAX_RECHECKS, ClockPlan, ClockWatch, read_plan, recheck_due
from diffkit.data import random_condition
from diffkit.devices import configure, resolve_device
from diffkit.distributed import Rows, World
from diffkit.evaluation import training_fid
from diffkit.interrupts import StopRequest, deferred_signals
from diffkit.loss import diffusion_loss
from diffkit.models import count_parameters
from diffkit.optim import (
    build_optimizer,
    describe_optimizer,
    ema_decay_at,
    ema_update,
    lr_factor,
    power_ema_decay,
    power_ema_gamma,
)
from diffkit.precision import FP32, PrecisionChoice, choose_precision, cpu_kind, machine_description
from diffkit.process import build_process
from diffkit.runlog import RunLog
from diffkit.runs import RunPaths, build_model, load_weights, save_checkpoint
from diffkit.settings import Settings, settings_to_dict
from diffkit.training.batches import TrainingData
from diffkit.training.budget import PlanInputs, measure_plan, recheck_plan
from diffkit.training.epoch_end import EpochEnds
from diffkit.training.guidance import (
    GuidanceChoice,
    GuidanceSweep,
    count_sweep_passes,
    guidance_sweep,
    sweep_after_training,
)
from diffkit.training.outcomes import (
    LossWindow,
    TrainHooks,
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
)
from diffkit.training.state import checkpoint_fits, plan_intact, read_saved, training_state


class Trainer(EpochEnds):
    def __init__(
        self,
        settings: Settings,
        paths: RunPaths,
        hooks: TrainHooks | None = None,
        *,
        clock_start: float | None = None,
        world: World | None = None,
    ) -> None:
        """Load data and build everything; writes nothing (see `diffkit.runs.create_run_dir`).

        `clock_start` (a `time.perf_counter()` value) is when the time budget began: `train_run` passes
        its own start, so loading and probing count against `train.max_minutes` too.
        """
        self.world = world or World()
        self.settings, self.paths = settings, paths
        self.hooks = (hooks or TrainHooks()) if self.world.is_main else TrainHooks()
        self.clock_start = time.perf_counter() if clock_start is None else clock_start
        self.spent_before = 0.0  # training seconds of earlier sessions of this run (resume)
        t = settings.train
        # metrics.jsonl (+ TensorBoard), written lazily by rank 0 alone; built there first, so a missing
        # tensorboard package stops every rank
        self.runlog = self.world.main_first(
            lambda: RunLog(paths, tensorboard=t.tensorboard, enabled=self.world.is_main)
        )
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = self.world.device(resolve_device(settings.device))
        configure(self.device)
        self.data = TrainingData(settings, self.world, self.device)
        d = self.data  # read by subclasses, tests and the CLI under these names
        self.train_set, self.val_set, self.batch_size, self.rows = d.train_set, d.val_set, d.batch_size, d.rows
        self.steps_per_epoch, self.step_cap = d.steps_per_epoch, d.step_cap
        self.total_steps = self.step_cap or 10**9
        self.clock_plan: ClockPlan | None = None
        self.num_classes = settings.model.num_classes or 0  # after the data: a dataset's classes fill it in

        torch.manual_seed(t.seed)
        self.model = build_model(settings).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.guide: nn.Module | None = None  # the EMA as it was at train.autoguide_at of the run (autoguidance)
        self.net: nn.Module = self.model  # what the training forward runs through (DDP under several processes)
        self.process = build_process(settings.diffusion)
        self.opt = build_optimizer(self.model, t)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, self.total_steps, t.warmup_steps, t.lr_schedule, t.min_lr_ratio)
        )
        self.precision: PrecisionChoice = FP32  # set by choose_precision() or resume()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)  # on for fp16 only
        self.gen = torch.Generator(device=self.device).manual_seed(t.seed + 1)  # noise, timesteps, label dropout
        self.step, self.best_val = 0, math.inf
        self.stop = StopRequest()  # set by deferred_signals() in train(): stop at the next step boundary
        self.saved_step: int | None = None  # the step of the newest `last` checkpoint
        self.last_saved_at = time.perf_counter()
        # built now, so a setting that cannot work fails before the first step; rank 0 measures FID alone
        self.fid = self.world.on_main(lambda: training_fid(settings)) if t.fid_every_epochs else None
        # the guidance sweep after the last step (rank 0): its digit CNN is loaded now, before the plan
        sweep = self.world.on_main(lambda: guidance_sweep(settings, self.val_set))
        self.sweep: GuidanceSweep | None = sweep[0] if sweep else None
        self.sweep_note = sweep[1] if sweep else ""
        self.guidance: GuidanceChoice | None = None  # what the sweep chose
        self.sizing: dict[str, Any] | None = None  # the network chosen by speed (diffkit.training.sizing), if any

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.model)

    @property
    def budget_s(self) -> float | None:
        minutes = self.settings.train.max_minutes
        return None if minutes is None else 60.0 * minutes

    # --- precision and the plan ------------------------------------------------------------------
    def choose_precision(self) -> PrecisionChoice:
        """train.precision, with "auto" timed on this machine (cached) by rank 0, then saved in plan.json."""
        choice = self.world.on_main(
            lambda: choose_precision(
                self.settings.train.precision,
                self.model,
                mode="train",
                device=self.device,
                batch=min(self.batch_size, 32),
            )
        )
        self.precision = self.world.from_main(choice) or FP32
        self.apply_precision()
        self.write_plan()
        return self.precision

    def apply_precision(self) -> None:
        for net in (self.model, self.ema, self.guide):
            if net is not None:
                self.precision.prepare(net)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_grad_scaler)

    def write_plan(self) -> None:
        """plan.json: what this machine chose for the run (precision and, with a budget, the length)."""
        if not self.world.is_main:
            return
        record: dict[str, Any] = {
            "cpu_kind": cpu_kind(),
            "machine": machine_description(),
            "precision": self.precision.to_dict(),
            "total_steps": None if self.total_steps >= 10**9 else self.total_steps,
            "processes": self.world.size,
        }
        if self.budget_s is not None:
            record["budget_minutes"] = self.settings.train.max_minutes
            record["clock"] = self.clock_plan.to_dict() if self.clock_plan else None
        if self.settings.train.autoguide_at:  # the guide autoguidance samples against, and when it is taken
            record["autoguidance"] = {
                "guide_at": self.settings.train.autoguide_at,
                "guide_step": self.guide_step,
                "taken": self.guide is not None,
                "weight": self.settings.sample.autoguidance,
            }
        if self.guidance is not None:  # diffkit.runs.load_run makes it the run's sample.cfg
            record["guidance"] = self.guidance.to_dict()
        sizing = self.sizing or read_plan(self.paths.plan).get("sizing")  # a resumed run keeps its record
        if sizing:
            record["sizing"] = sizing
        write_json(self.paths.plan, record)

    # --- state -----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return training_state(
            step=self.step,
            best_val=self.best_val,
            optimizer=self.opt.state_dict(),
            lr_schedule=self.lr_sched.state_dict(),
            grad_scaler=self.scaler.state_dict(),
            gen_rng=self.gen.get_state(),
            total_steps=self.total_steps,
            planned=self.clock_plan is not None,
            precision=self.precision.name,
            processes=self.world.size,
            train_seconds=self.elapsed_s(),
        )

    def resume(self) -> None:
        """Continue from `last` with the precision and plan the run trained with: every rank reads the same
        state, whatever the number of processes then (`diffkit.training.state` reads and checks it)."""
        saved = read_saved(self.paths)
        with checkpoint_fits(self.paths):
            load_weights(self.model, saved.model, saved.weights_path)
            load_weights(self.ema, saved.ema, saved.weights_path)
            if saved.guide is not None:
                self.guide = copy.deepcopy(self.ema)
                load_weights(self.guide, saved.guide, saved.weights_path)
            self.opt.load_state_dict(saved.optimizer)
            self.lr_sched.load_state_dict(saved.lr_schedule)
            torch.set_rng_state(saved.torch_rng)
            self.gen.set_state(saved.gen_rng)
        self.step, self.best_val, self.spent_before = saved.step, saved.best_val, saved.train_seconds
        self.saved_step = self.step
        self.runlog.truncate(self.step)
        with plan_intact(self.paths):
            if saved.precision is not None:  # the format the run was trained in, not a fresh probe: exact
                self.precision = saved.precision
                self.apply_precision()
            else:
                self.choose_precision()
            if saved.grad_scaler and self.scaler.is_enabled():
                self.scaler.load_state_dict(saved.grad_scaler)
        if saved.clock_plan is not None and saved.total_steps is not None:
            self.clock_plan, self.total_steps = saved.clock_plan, saved.total_steps

    def _save(self, name: str, with_state: bool, val_loss: float | None = None) -> None:
        if not self.world.is_main:
            return
        meta = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "val_loss": val_loss}
        state = self._state() if with_state else None
        save_checkpoint(self.paths, name, self.model, self.ema, meta, state, guide=self.guide)
        if name == "last":
            self.saved_step, self.last_saved_at = self.step, time.perf_counter()

    def _check_finite(self, loss: float, grad_norm: Tensor | None) -> None:
        """Finite or stop: a NaN / inf loss or gradient ends the run before the step is applied."""
        if not math.isfinite(loss):
            raise TrainingDiverged(self.step, f"loss ({loss})", self.saved_step, self.paths.root)
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            raise TrainingDiverged(self.step, f"gradient norm ({float(grad_norm)})", self.saved_step, self.paths.root)

    def _periodic_save_due(self) -> bool:
        t = self.settings.train
        if t.checkpoint_every_steps and self.step % t.checkpoint_every_steps == 0:
            return True
        minutes = t.checkpoint_every_minutes
        return bool(minutes) and time.perf_counter() - self.last_saved_at >= 60.0 * minutes

    # --- one step --------------------------------------------------------------------------------
    def loss(
        self,
        model: nn.Module,
        x0: Tensor,
        labels: Tensor,
        gen: torch.Generator,
        p_uncond: float,
        rows: Rows | None = None,
    ) -> Tensor:
        """The weighted denoising loss of one batch (`diffkit.loss.diffusion_loss` with this run's settings)."""
        m = self.settings.model
        return diffusion_loss(
            model,
            self.process,
            x0,
            labels,
            gen,
            num_classes=self.num_classes,
            p_uncond=p_uncond,
            condition=(lambda x, g, r: random_condition(x, m.sr_scales, g, r)) if m.task == "super-res" else None,
            precision=self.precision,
            rows=rows,
        )

    def _optimise_step(self) -> tuple[float, float, int]:
        """One optimiser step on batch `self.step`, then EMA: (mean loss over all ranks, its LR, images)."""
        t = self.settings.train
        x0, labels = self.data.batch(self.step, self.gen)
        loss = self.loss(self.net, x0, labels, self.gen, t.p_uncond, self.rows)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # under DDP the gradients are averaged over the ranks here
        self.scaler.unscale_(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), t.grad_clip or math.inf, error_if_nonfinite=False
        )
        mean_loss = self.world.mean(float(loss.detach()))
        # with fp16 an overflowing gradient is routine: the scaler skips that step and lowers its scale
        self._check_finite(mean_loss, None if self.scaler.is_enabled() else grad_norm)
        lr = self.opt.param_groups[0]["lr"]
        self.scaler.step(self.opt)
        self.scaler.update()
        with warnings.catch_warnings():  # after a step the fp16 scaler skipped, torch warns of a wrong order
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.lr_sched.step()
        ema_update(self.ema, self.model, self.ema_decay(self.step))
        self.step += 1
        if self.guide is None and (at := self.guide_step) is not None and self.step >= at:
            self.guide = copy.deepcopy(self.ema)  # >=: a re-plan may have moved the step behind us
            self.write_plan()  # plan.json says it was taken
        return mean_loss, lr, x0.shape[0] * self.world.size

    @property
    def guide_step(self) -> int | None:
        """The step after which the EMA is kept as autoguidance's guide (train.autoguide_at of the run's
        steps, at least 1), or None: no guide, or no known length yet (a clocked run before its plan)."""
        at = self.settings.train.autoguide_at
        if not at or self.total_steps >= 10**9:
            return None
        return max(1, round(at * self.total_steps))

    def ema_decay(self, step: int) -> float:
        """The EMA's decay for the update after step `step` (0-based): train.ema decides which average."""
        t = self.settings.train
        if t.ema == "power":
            return power_ema_decay(step, power_ema_gamma(t.ema_sigma_rel))
        return ema_decay_at(step, t.ema_decay, t.ema_warmup)

    # --- the loop --------------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> TrainResult:
        """Run to total_steps (or `stop_after`): a step, its log line, the clock plan, checkpoints, epoch ends."""
        self.hooks.start(self.total_steps, self.step, self._start_info())
        self.net = self._wrap()
        self.model.train()
        window, run_start = LossWindow(), time.perf_counter()
        # times the first steps to plan on, then the steps after the plan or a check to check it (diffkit.clock)
        watch = ClockWatch() if self.budget_s is not None and self._checks_left() else None
        self.last_saved_at = time.perf_counter()
        with deferred_signals() as self.stop:
            while self.step < self._end(stop_after):
                # one decision for all ranks: a signal seen by any, the budget as rank 0 reads it
                stop, out_of_time = self.world.agree(bool(self.stop), self._out_of_time())
                if stop:  # between steps: the state is exactly that after step `self.step`
                    self._save("last", with_state=True)
                    raise TrainingInterrupted(self.step, self.stop.signum)
                if out_of_time:
                    self._finish_early()
                    break
                step_start = time.perf_counter()
                loss, lr, images = self._optimise_step()
                window.add(loss, images)
                if self.step % self.settings.train.log_every == 0 or self.step == self._end(stop_after):
                    self._log({"step": self.step, "epoch": self.step / self.steps_per_epoch, **window.flush(lr)})
                self.hooks.step(self.step, loss, lr, window.images_per_s)
                if watch is not None:
                    watch.add(time.perf_counter() - step_start)
                    if self.world.agree(False, self._plan_due(watch))[1]:
                        self._make_plan(watch.step_s, recheck=self.clock_plan is not None)
                        watch = ClockWatch() if self._checks_left() else None
                self._after_step()
            if self.step == self.total_steps:
                self._sweep_guidance()
        if self.step < self.total_steps or self.step % self.steps_per_epoch:
            self._save("last", with_state=True)  # stopped early or mid-epoch: keep the exact place
        self.runlog.hparams(settings_to_dict(self.settings))
        return TrainResult(
            self.step,
            math.ceil(self.step / self.steps_per_epoch),
            window.losses[-1] if window.losses else math.nan,
            None if math.isinf(self.best_val) else self.best_val,
            window.images_per_s,
            time.perf_counter() - run_start,
            window.losses,
        )

    def _wrap(self) -> nn.Module:
        """The model as the training forward sees it: DDP over the process group, or itself."""
        if not self.world.distributed:
            return self.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers are equal on every rank by construction (same seed): no need to re-send them each step
        return DistributedDataParallel(self.model, device_ids=ids, forward_sync_buffers=False)

    def _end(self, stop_after: int | None) -> int:
        return min(self.total_steps, stop_after or self.total_steps)

    def _after_step(self) -> None:
        """Periodic checkpoints, and the epoch end (validation, FID, grid, checkpoints, curves)."""
        every = self.settings.train.checkpoint_every_steps
        if every and self.step % every == 0:
            self._save(f"step_{self.step:06d}", with_state=False)
        if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
            self._end_epoch()  # saves `last`
        elif self._periodic_save_due():  # so that kill -9 loses little
            self._save("last", with_state=True)

    def _start_info(self) -> dict[str, Any]:
        return {
            "parameters": self.num_parameters,
            "train_images": len(self.train_set),
            "val_images": len(self.val_set),
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.batch_size,
            "processes": self.world.size,
            "device": str(self.device),
            "classes": self.num_classes,
            "precision": self.precision.summary(),
            "cpu": cpu_kind() if self.device.type == "cpu" else str(self.device),
            "budget_minutes": self.settings.train.max_minutes,
            "process": self.process.describe(),
            "optimizer": describe_optimizer(self.opt),
            "guidance": self.sweep.describe() if self.sweep else self.sweep_note,
            "sizing": self.sizing,
        }

    # --- the clock -------------------------------------------------------------------------------
    def elapsed_s(self) -> float:
        """Seconds of this run's budget spent so far, earlier sessions (before a resume) included."""
        return self.spent_before + time.perf_counter() - self.clock_start

    def _out_of_time(self) -> bool:
        """A planned run whose machine slowed down stops (resumable) rather than overrun its budget."""
        if self.clock_plan is None or self.budget_s is None:
            return False
        return self.elapsed_s() + self.clock_plan.final_s + self.clock_plan.step_s > self.budget_s

    def _finish_early(self) -> None:
        """The machine slowed down after planning: end the run now, with its final validation and grid."""
        assert self.clock_plan is not None
        self.hooks.ran_out(self.step, self.total_steps)
        self.clock_plan.ended_early_at = self.step
        self.total_steps = self.step
        self.write_plan()
        self._end_epoch()

    def _checks_left(self) -> bool:
        """Whether the clock has a plan to make or re-checks left (a resumed run carries on its count)."""
        return self.clock_plan is None or self.clock_plan.rechecks < MAX_RECHECKS

    def _plan_due(self, watch: ClockWatch) -> bool:
        plan = self.clock_plan
        return watch.ready(self.budget_s or 0.0) and (plan is None or recheck_due(plan, self.step, self.elapsed_s()))

    def _epoch_end_s(self, step_s: float) -> float | None:
        """One epoch end as measured since the plan: the budget spent beyond `step_s` a step, over the epoch
        ends passed; None when none was (the estimate stands)."""
        plan = self.clock_plan
        assert plan is not None
        ends = self.step // self.steps_per_epoch - plan.planned_at_step // self.steps_per_epoch
        if ends < 1:
            return None
        beyond = self.elapsed_s() - plan.elapsed_s - (self.step - plan.planned_at_step) * step_s
        return max(0.0, beyond) / ends

    def _make_plan(self, step_s: float, recheck: bool = False) -> None:
        """Fix total_steps (rank 0 decides) so that the rest of the run, its last epoch end and grid fit;
        `recheck`: the plan exists and `step_s` is the speed measured since, which may re-plan it."""

        def decide() -> ClockPlan:
            if recheck and self.clock_plan is not None:
                return recheck_plan(self.plan_inputs(), self.clock_plan, step_s, self._epoch_end_s(step_s))
            if self.sweep is not None and not self.sweep.passes:  # what the sweep will cost, counted once
                count_sweep_passes(self.sweep, self.settings, self.ema, self.process, self.precision)
            return measure_plan(self.plan_inputs(), step_s)

        before = self.clock_plan
        plan = self.world.from_main(decide() if self.world.is_main else None)
        assert plan is not None
        self.clock_plan, self.total_steps = plan, plan.planned_steps
        self.write_plan()
        if before is None or plan.planned_at_step != before.planned_at_step:  # a first plan, or a new one
            self.hooks.plan(plan)

    def plan_inputs(self) -> PlanInputs:
        """What the clock plan depends on, now (`diffkit.training.budget`)."""
        return PlanInputs(
            self.settings,
            self.ema,
            self.precision,
            self.device,
            self.batch_size,
            self.budget_s or 0.0,
            self.elapsed_s,
            self.step,
            self.steps_per_epoch,
            self.step_cap,
            len(self.val_set),
            self.process.grid.timesteps,
            self.fid is not None,
            self.sweep,
        )

    def _sweep_guidance(self) -> None:
        """After the last step, rank 0 picks the run's default guidance; the choice goes to plan.json and
        metrics.jsonl (`diffkit.training.guidance`)."""
        if self.sweep is None or not self.world.is_main:
            return
        outcome = sweep_after_training(
            self.sweep,
            self.clock_plan,
            settings=self.settings,
            ema=self.ema,
            run_dir=self.paths.root,
            process=self.process,
            precision=self.precision,
            stopped=lambda: bool(self.stop),
            starting=self.hooks.sweeping,
        )
        if isinstance(outcome, str):
            self._log({"step": self.step, "skipped": outcome})
            return
        self.guidance = outcome
        self._log({"step": self.step, **outcome.metrics()})
        self.write_plan()
        self.hooks.guidance(outcome)
