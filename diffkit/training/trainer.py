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
from diffkit.clock import ClockPlan, ClockWatch, read_plan
from diffkit.data import ImageSet, random_condition, resolve_data, to_float, train_val_split
from diffkit.denoiser import Denoiser
from diffkit.devices import configure, resolve_device, to_device
from diffkit.distributed import Rows, World, draw_rows
from diffkit.errors import DiffkitError
from diffkit.evaluation import training_fid
from diffkit.interrupts import StopRequest, deferred_signals
from diffkit.loss import diffusion_loss
from diffkit.models import count_parameters
from diffkit.optim import ema_decay_at, ema_update, lr_factor, param_groups, power_ema_decay, power_ema_gamma
from diffkit.precision import FP32, PrecisionChoice, choose_precision, cpu_kind, machine_description
from diffkit.previews import class_grid, superres_grid
from diffkit.process import build_process
from diffkit.runlog import RunLog
from diffkit.runs import (
    RunPaths,
    build_model,
    make_denoiser,
    save_checkpoint,
)
from diffkit.sampling import SamplingPlan
from diffkit.settings import Settings, settings_to_dict
from diffkit.training.budget import measure_plan
from diffkit.training.guidance import GuidanceChoice, GuidanceSweep, guidance_sweep, sweep_after_training
from diffkit.training.outcomes import (
    LossWindow,
    TrainHooks,
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
)
from diffkit.training.state import restore, training_state
from diffkit.viz import plot_training_curves


class _StopRequested(Exception):
    """Raised inside an epoch end's FID when a stop was requested: the measurement is dropped."""


VAL_SEED = 12345  # validation noise: fixed per batch, so epochs (and any number of processes) compare fairly


class Trainer:
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
        self._load_data()
        self.num_classes = settings.model.num_classes or 0  # after the data: a dataset's classes fill it in

        torch.manual_seed(t.seed)
        self.model = build_model(settings).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.net: nn.Module = self.model  # what the training forward runs through (DDP under several processes)
        self.process = build_process(settings.diffusion)
        self.opt = torch.optim.AdamW(
            param_groups(self.model, t.weight_decay), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2)
        )
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

    def _load_data(self) -> None:
        """The training and validation images, the global batch, and the run's length in steps."""
        settings, t = self.settings, self.settings.train
        data = self.world.main_first(lambda: resolve_data(settings))  # rank 0 downloads, then the rest read
        self.train_set, self.val_set = train_val_split(data, settings.data.val_fraction)
        if len(self.train_set) < 1:
            raise DiffkitError("no training images left after the validation split: lower data.val_fraction")
        self.batch_size = min(t.batch_size, len(self.train_set))  # the global batch, all processes together
        self.rows: Rows | None = self.world.split(self.batch_size) if self.world.distributed else None
        self.steps_per_epoch = max(1, len(self.train_set) // self.batch_size)
        # with a budget the clock fixes the length and only max_steps caps it (a parent preset's epochs do not)
        if t.max_minutes is not None:
            self.step_cap = t.max_steps
        else:
            self.step_cap = t.max_steps or (t.epochs or 1) * self.steps_per_epoch
        self.total_steps = self.step_cap or 10**9
        self.clock_plan: ClockPlan | None = None
        self._order: tuple[int, Tensor] | None = None  # (epoch, its data order), see _epoch_order

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
        for net in (self.model, self.ema):
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
        if self.guidance is not None:  # diffkit.runs.load_run makes it the run's sample.cfg
            record["guidance"] = self.guidance.to_dict()
        sizing = self.sizing or read_plan(self.paths.plan).get("sizing")  # a resumed run keeps its record
        if sizing:
            record["sizing"] = sizing
        write_json(self.paths.plan, record)

    # --- state -----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return training_state(self)

    def resume(self) -> None:
        """Continue from `last`: every rank reads the same state, whatever the number of processes then."""
        restore(self)

    def _save(self, name: str, with_state: bool, val_loss: float | None = None) -> None:
        if not self.world.is_main:
            return
        meta = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "val_loss": val_loss}
        save_checkpoint(self.paths, name, self.model, self.ema, meta, self._state() if with_state else None)
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
    def _batch(self, step: int) -> tuple[Tensor, Tensor]:
        """This process's rows of global batch `step`: the data order is a fixed permutation per epoch
        (so resuming mid-epoch is exact), the same on every rank."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        idx = self._epoch_order(epoch)[pos * self.batch_size : (pos + 1) * self.batch_size]
        flip = None
        if self.settings.data.hflip:
            flip = draw_rows(self.rows, len(idx), lambda k: torch.rand(k, generator=self.gen, device=self.device))
        if self.rows is not None:
            idx = idx[self.rows.start : self.rows.stop]
        x0, labels = self._on_device(self.train_set, idx)
        if flip is not None:
            x0 = torch.where((flip < 0.5)[:, None, None, None], x0.flip(-1), x0)
        return x0, labels

    def _epoch_order(self, epoch: int) -> Tensor:
        """The permutation of the training images in `epoch` (a pure function of seed and epoch), made
        once per epoch rather than at every step."""
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.settings.train.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.train_set), generator=gen))
        return self._order[1]

    def _on_device(self, images: ImageSet, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Images `idx` of `images` on the run's device as floats in [-1, 1] (sent as uint8), and their labels."""
        return to_float(to_device(images.images[idx], self.device)), to_device(images.labels[idx], self.device)

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
        x0, labels = self._batch(self.step)
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
        return mean_loss, lr, x0.shape[0] * self.world.size

    def ema_decay(self, step: int) -> float:
        """The EMA's decay for the update after step `step` (0-based): train.ema decides which average."""
        t = self.settings.train
        if t.ema == "power":
            return power_ema_decay(step, power_ema_gamma(t.ema_sigma_rel))
        return ema_decay_at(step, t.ema_decay, t.ema_warmup)

    # --- validation and grids --------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float | None:
        """Loss of the EMA weights on the held-out images; each rank takes every size-th batch, with
        noise fixed per batch, so the value is the same for any number of processes."""
        if len(self.val_set) == 0:
            return None
        total, count = 0.0, 0
        batches = math.ceil(len(self.val_set) / self.batch_size)
        for b in range(self.world.rank, batches, self.world.size):
            gen = torch.Generator(device=self.device).manual_seed(VAL_SEED + b)
            idx = torch.arange(b * self.batch_size, min((b + 1) * self.batch_size, len(self.val_set)))
            x0, labels = self._on_device(self.val_set, idx)
            total += float(self.loss(self.ema, x0, labels, gen, p_uncond=0.0)) * len(idx)
            count += len(idx)
        total, count_all = self.world.sum([total, count])
        return total / count_all

    @property
    def grid_plan(self) -> SamplingPlan:
        """The run's [sample] settings at train.grid_steps: how the grids during training are drawn."""
        plan = SamplingPlan.from_settings(self.settings.sample, self.num_classes)
        return plan.but(steps=min(self.settings.train.grid_steps, self.process.grid.timesteps))

    def ema_denoiser(self) -> Denoiser:
        return make_denoiser(self.settings, self.ema, self.process, precision=self.precision)

    def draw_grid(self, name: str) -> str:
        """A fixed-seed grid from the EMA weights (a row per class for conditional models)."""
        path = self.paths.samples / f"{name}.png"
        if self.settings.model.task == "super-res":
            truth = (self.val_set if len(self.val_set) else self.train_set).floats(slice(0, 8))
            superres_grid(self.ema_denoiser(), self.grid_plan, truth, self.settings.model.sr_scales, path)
        else:
            class_grid(self.ema_denoiser(), self.grid_plan, path)
        return str(path)

    def _unless_stopped(self, done: int = 0, total: int = 0, message: str = "", /) -> None:
        """A `Progress` for the epoch end's measurements that ends them once a stop is requested."""
        if self.stop:
            raise _StopRequested

    def _log(self, record: dict[str, Any]) -> None:
        self.runlog.append(record)  # writes nothing on ranks other than 0

    # --- the loop --------------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> TrainResult:
        """Run to total_steps (or `stop_after`): a step, its log line, the clock plan, checkpoints, epoch ends."""
        self.hooks.start(self.total_steps, self.step, self._start_info())
        self.net = self._wrap()
        self.model.train()
        window, run_start = LossWindow(), time.perf_counter()
        watch = ClockWatch() if self.budget_s is not None and self.clock_plan is None else None
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
                    if self.world.agree(False, watch.ready(self.budget_s or 0.0))[1]:
                        self._make_plan(watch.step_s)
                        watch = None
                self._after_step()
            if self.step == self.total_steps:
                sweep_after_training(self)
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

    def _make_plan(self, step_s: float) -> None:
        """Fix total_steps (rank 0 decides) so that the rest of the run, its last epoch end and grid fit."""
        self.clock_plan = self.world.from_main(measure_plan(self, step_s) if self.world.is_main else None)
        assert self.clock_plan is not None
        self.total_steps = self.clock_plan.planned_steps
        self.write_plan()
        self.hooks.plan(self.clock_plan)

    def _end_epoch(self) -> None:
        epoch = math.ceil(self.step / self.steps_per_epoch)
        val = self.validate()  # every rank: validation is sharded
        if val is not None:
            self._log({"step": self.step, "epoch": epoch, "val_loss": val})
        final = self.step == self.total_steps
        # the FID and the grid are measurements, not training: a stop request drops them (the saved state
        # stays exact) instead of making Ctrl-C wait for them; the FID checks between its batches
        skipped = []
        fid_every = self.settings.train.fid_every_epochs
        if self.fid is not None and (epoch % fid_every == 0 or final):
            try:
                self._unless_stopped()
                self._log({"step": self.step, "epoch": epoch, **self.fid(self.ema_denoiser(), self._unless_stopped)})
            except _StopRequested:
                skipped.append("fid")
        every = self.settings.train.sample_every_epochs
        grid = None
        if self.world.is_main and (final or (every and epoch % every == 0)):
            if self.stop:
                skipped.append("grid")
            else:
                self.model.eval()
                grid = self.draw_grid(f"epoch_{epoch:04d}")
                self.runlog.image("samples/grid", grid, self.step)
                self.model.train()
        if skipped:
            self._log({"step": self.step, "epoch": epoch, "skipped": f"{', '.join(skipped)}: stop requested"})
        improved = val is not None and val < self.best_val
        if improved:  # best before last: killed in between, the resumed run redoes this epoch end
            self._save("best", with_state=False, val_loss=val)
            self.best_val = val  # type: ignore[assignment]
        self._save("last", with_state=True, val_loss=val)
        if self.world.is_main:
            plot_training_curves(self.paths.metrics, self.paths.curves)
        self.hooks.epoch(epoch, self.step, val, grid)
