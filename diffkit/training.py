"""The training loop: AdamW, warm-up + cosine LR, gradient clipping, EMA, measured precision, validation.

Resuming is exact: the run's data order is a pure function of (seed, epoch), and the state saved
with `last` holds the model, EMA, optimiser, LR schedule, both random generators and the step, so
an interrupted run continues with the same losses as an uninterrupted one. A run with a time budget
(`train.max_minutes`) measures its speed over its first seconds and then fixes its length once
(`plan.json`), so the LR schedule ends with the budget and a resumed run follows the same plan.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffkit.atomic import write_json
from diffkit.clock import ClockPlan, ClockWatch, plan_steps, read_plan
from diffkit.data import random_condition, resolve_data, train_val_split
from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.evaluation import training_fid
from diffkit.interrupts import StopRequest, deferred_signals
from diffkit.loss import diffusion_loss
from diffkit.models import count_parameters
from diffkit.optim import ema_decay_at, ema_update, lr_factor, param_groups
from diffkit.precision import FP32, PrecisionChoice, choose_precision, cpu_kind, machine_description
from diffkit.previews import class_grid, preview_images, superres_grid
from diffkit.runlock import RunLock, check_not_in_use
from diffkit.runlog import RunLog, truncate_metrics
from diffkit.runs import (
    RunPaths,
    build_model,
    build_schedule,
    check_run_dir,
    create_run_dir,
    load_state,
    make_denoiser,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
    split_weights,
)
from diffkit.sampling import SamplingPlan
from diffkit.settings import Settings, settings_to_dict
from diffkit.viz import plot_training_curves


class TrainHooks:
    """What the loop reports; the CLI overrides these to draw rich progress. Defaults do nothing."""

    def start(self, total_steps: int, start_step: int, info: dict[str, Any]) -> None: ...

    def step(self, step: int, loss: float, lr: float, images_per_s: float) -> None: ...

    def epoch(self, epoch: int, step: int, val_loss: float | None, grid: str | None) -> None: ...

    def plan(self, plan: ClockPlan) -> None: ...

    def ran_out(self, step: int, planned: int) -> None: ...

    def stale_lock(self, run_dir: Path, pid: int) -> None: ...


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


@dataclass
class TrainResult:
    steps: int
    epochs: int
    final_loss: float
    best_val_loss: float | None
    images_per_s: float
    seconds: float
    losses: list[float] = field(default_factory=list)  # every step's training loss, for checks


class Trainer:
    def __init__(
        self,
        settings: Settings,
        paths: RunPaths,
        hooks: TrainHooks | None = None,
        *,
        clock_start: float | None = None,
    ) -> None:
        """Load data and build everything; writes nothing (see `diffkit.runs.create_run_dir`).

        `clock_start` (a `time.perf_counter()` value) is when the time budget began: `train_run` passes
        its own start, so loading and probing count against `train.max_minutes` too.
        """
        self.settings, self.paths, self.hooks = settings, paths, hooks or TrainHooks()
        self.clock_start = time.perf_counter() if clock_start is None else clock_start
        self.spent_before = 0.0  # training seconds of earlier sessions of this run (resume)
        t = settings.train
        self.runlog = RunLog(paths, tensorboard=t.tensorboard)  # metrics.jsonl (+ TensorBoard); writes lazily
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(settings.device)
        data = resolve_data(settings)
        self.train_set, self.val_set = train_val_split(data, settings.data.val_fraction)
        if len(self.train_set) < 1:
            raise DiffkitError("no training images left after the validation split: lower data.val_fraction")
        self.batch_size = min(t.batch_size, len(self.train_set))
        self.steps_per_epoch = max(1, len(self.train_set) // self.batch_size)
        # with a budget the clock fixes the length and only max_steps caps it (a parent preset's epochs do not)
        if t.max_minutes is not None:
            self.step_cap = t.max_steps
        else:
            self.step_cap = t.max_steps or (t.epochs or 1) * self.steps_per_epoch
        self.total_steps = self.step_cap or 10**9
        self.clock_plan: ClockPlan | None = None
        self.precision: PrecisionChoice = FP32  # set by choose_precision() or resume()
        self.num_classes = settings.model.num_classes or 0

        torch.manual_seed(t.seed)
        self.model = build_model(settings).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.schedule = build_schedule(settings)
        self.opt = torch.optim.AdamW(
            param_groups(self.model, t.weight_decay), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2)
        )
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, self.total_steps, t.warmup_steps, t.lr_schedule, t.min_lr_ratio)
        )
        self.gen = torch.Generator(device=self.device).manual_seed(t.seed + 1)  # noise, timesteps, label dropout
        self.step, self.best_val = 0, math.inf
        self.stop = StopRequest()  # set by deferred_signals() in train(): stop at the next step boundary
        self.saved_step: int | None = None  # the step of the newest `last` checkpoint
        self.last_saved_at = time.perf_counter()
        self.fid = None  # built now, so a setting that cannot work fails before the first step
        if t.fid_every_epochs:
            self.fid = training_fid(settings)

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.model)

    @property
    def budget_s(self) -> float | None:
        minutes = self.settings.train.max_minutes
        return None if minutes is None else 60.0 * minutes

    def choose_precision(self) -> PrecisionChoice:
        """train.precision, with "auto" timed on this machine (cached), then saved in plan.json."""
        self.precision = choose_precision(
            self.settings.train.precision,
            self.model,
            mode="train",
            device=self.device,
            batch=min(self.batch_size, 32),
        )
        self._apply_precision()
        self._write_plan()
        return self.precision

    def _apply_precision(self) -> None:
        for net in (self.model, self.ema):
            self.precision.prepare(net)

    def _write_plan(self) -> None:
        """plan.json: what this machine chose for the run (precision and, with a budget, the length)."""
        record: dict[str, Any] = {
            "cpu_kind": cpu_kind(),
            "machine": machine_description(),
            "precision": self.precision.to_dict(),
            "total_steps": None if self.total_steps >= 10**9 else self.total_steps,
        }
        if self.budget_s is not None:
            record["budget_minutes"] = self.settings.train.max_minutes
            record["clock"] = self.clock_plan.to_dict() if self.clock_plan else None
        write_json(self.paths.plan, record)

    # --- state -----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best_val": self.best_val,
            "optimizer": self.opt.state_dict(),
            "lr_schedule": self.lr_sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "gen_rng": self.gen.get_state(),
            "total_steps": self.total_steps,
            "planned": self.clock_plan is not None,
            "precision": self.precision.name,
            "train_seconds": self.spent_before + (time.perf_counter() - self.clock_start),
        }

    def resume(self) -> None:
        tensors, meta = read_checkpoint(self.paths.weights("last"))
        state = load_state(self.paths.state("last"))
        if meta.get("step") != state.get("step"):
            raise DiffkitError(
                f"{self.paths.checkpoints}: last.safetensors and last.state.pt are from different steps; "
                "start again with --force"
            )
        try:
            self.model.load_state_dict(split_weights(tensors, "model"))
            self.ema.load_state_dict(split_weights(tensors, "ema"))
            self.opt.load_state_dict(state["optimizer"])
            self.lr_sched.load_state_dict(state["lr_schedule"])
            torch.set_rng_state(state["torch_rng"])
            self.gen.set_state(state["gen_rng"])
            self.step, self.best_val = int(state["step"]), float(state["best_val"])
            self.spent_before = float(state.get("train_seconds", 0.0))
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            reason = " ".join(str(exc).split())[:120]
            raise DiffkitError(
                f"{self.paths.checkpoints}: the last checkpoint does not fit this run ({type(exc).__name__}: "
                f"{reason}); start again with --force"
            ) from None
        self.saved_step = self.step
        self.runlog.truncate(self.step)
        plan = read_plan(self.paths.plan)
        if "precision" in plan:  # the format the run was trained in, not a fresh probe: resume stays exact
            self.precision = PrecisionChoice.from_dict(plan["precision"])
            self._apply_precision()
        else:
            self.choose_precision()
        if state.get("planned") and isinstance(plan.get("clock"), dict):
            self.clock_plan = ClockPlan(**plan["clock"])
            self.total_steps = int(state["total_steps"])

    def _save(self, name: str, with_state: bool, val_loss: float | None = None) -> None:
        meta = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "val_loss": val_loss}
        save_checkpoint(self.paths, name, self.model, self.ema, meta, self._state() if with_state else None)
        if name == "last":
            self.saved_step, self.last_saved_at = self.step, time.perf_counter()

    def _check_finite(self, loss: Tensor, grad_norm: Tensor | None) -> None:
        """Finite or stop: a NaN / inf loss or gradient ends the run before the step is applied."""
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDiverged(self.step, f"loss ({value})", self.saved_step, self.paths.root)
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            raise TrainingDiverged(self.step, f"gradient norm ({float(grad_norm)})", self.saved_step, self.paths.root)

    def _periodic_save_due(self) -> bool:
        t = self.settings.train
        if t.checkpoint_every_steps and self.step % t.checkpoint_every_steps == 0:
            return True
        minutes = t.checkpoint_every_minutes
        return bool(minutes) and time.perf_counter() - self.last_saved_at >= 60.0 * minutes

    # --- the loop --------------------------------------------------------------------------------
    def _batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Batch `step`: the data order is a fixed permutation per epoch, so resuming mid-epoch is exact."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        order = torch.randperm(
            len(self.train_set),
            generator=torch.Generator().manual_seed(self.settings.train.seed * 1_000_003 + epoch),
        )
        idx = order[pos * self.batch_size : (pos + 1) * self.batch_size]
        x0 = self.train_set.floats(idx).to(self.device)
        if self.settings.data.hflip:
            flip = torch.rand(len(idx), generator=self.gen, device=self.device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        return x0, self.train_set.labels[idx].to(self.device)

    def loss(self, model: nn.Module, x0: Tensor, labels: Tensor, gen: torch.Generator, p_uncond: float) -> Tensor:
        """The weighted denoising loss of one batch (`diffkit.loss.diffusion_loss` with this run's settings)."""
        d, m = self.settings.diffusion, self.settings.model
        return diffusion_loss(
            model,
            self.schedule,
            x0,
            labels,
            gen,
            objective=d.objective,
            min_snr_gamma=d.min_snr_gamma,
            num_classes=self.num_classes,
            p_uncond=p_uncond,
            condition=(lambda x, g: random_condition(x, m.sr_scales, g)) if m.task == "super-res" else None,
            precision=self.precision,
        )

    @torch.no_grad()
    def validate(self) -> float | None:
        """Loss of the EMA weights on the held-out images, with fixed noise so epochs compare fairly."""
        if len(self.val_set) == 0:
            return None
        gen = torch.Generator(device=self.device).manual_seed(12345)
        total, count = 0.0, 0
        for lo in range(0, len(self.val_set), self.batch_size):
            idx = torch.arange(lo, min(lo + self.batch_size, len(self.val_set)))
            x0, labels = self.val_set.floats(idx).to(self.device), self.val_set.labels[idx].to(self.device)
            total += float(self.loss(self.ema, x0, labels, gen, p_uncond=0.0)) * len(idx)
            count += len(idx)
        return total / count

    @property
    def grid_plan(self) -> SamplingPlan:
        """The run's [sample] settings at train.grid_steps: how the grids during training are drawn."""
        plan = SamplingPlan.from_settings(self.settings.sample, self.num_classes)
        return plan.but(steps=min(self.settings.train.grid_steps, self.schedule.timesteps))

    def ema_denoiser(self) -> Denoiser:
        return make_denoiser(self.settings, self.ema, self.schedule, precision=self.precision)

    def draw_grid(self, name: str) -> str:
        """A fixed-seed grid from the EMA weights (a row per class for conditional models)."""
        path = self.paths.samples / f"{name}.png"
        if self.settings.model.task == "super-res":
            truth = (self.val_set if len(self.val_set) else self.train_set).floats(slice(0, 8))
            superres_grid(self.ema_denoiser(), self.grid_plan, truth, self.settings.model.sr_scales, path)
        else:
            class_grid(self.ema_denoiser(), self.grid_plan, path)
        return str(path)

    def _log(self, record: dict[str, Any]) -> None:
        self.runlog.append(record)

    def train(self, stop_after: int | None = None) -> TrainResult:
        """Run to total_steps (or `stop_after`): a step, its log line, the clock plan, checkpoints, epoch ends."""
        self.hooks.start(self.total_steps, self.step, self._start_info())
        self.model.train()
        window, run_start = _LossWindow(), time.perf_counter()
        clock = ClockWatch() if self.budget_s is not None and self.clock_plan is None else None
        self.last_saved_at = time.perf_counter()
        with deferred_signals() as self.stop:
            while self.step < self._end(stop_after):
                if self.stop:  # between steps: the state is exactly that after step `self.step`
                    self._save("last", with_state=True)
                    raise TrainingInterrupted(self.step, self.stop.signum)
                if self._out_of_time():
                    self._finish_early()
                    break
                step_start = time.perf_counter()
                loss, lr, images = self._optimise_step()
                if clock is not None:
                    clock.add(time.perf_counter() - step_start)
                window.add(loss, images)
                if self.step % self.settings.train.log_every == 0 or self.step == self._end(stop_after):
                    self._log({"step": self.step, "epoch": self.step / self.steps_per_epoch, **window.flush(lr)})
                self.hooks.step(self.step, loss, lr, window.images_per_s)
                if clock is not None and clock.ready(self.budget_s or 0.0):
                    self._make_plan(clock.step_s)
                    clock = None
                self._after_step()
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

    def _end(self, stop_after: int | None) -> int:
        return min(self.total_steps, stop_after or self.total_steps)

    def _optimise_step(self) -> tuple[float, float, int]:
        """One optimiser step on batch `self.step`, then EMA: (loss, the LR it used, images)."""
        t = self.settings.train
        x0, labels = self._batch(self.step)
        loss = self.loss(self.model, x0, labels, self.gen, t.p_uncond)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), t.grad_clip or math.inf, error_if_nonfinite=False
        )
        self._check_finite(loss, grad_norm)
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.lr_sched.step()
        ema_update(self.ema, self.model, ema_decay_at(self.step, t.ema_decay, t.ema_warmup))
        self.step += 1
        return loss.item(), lr, x0.shape[0]

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
            "device": str(self.device),
            "classes": self.num_classes,
            "precision": self.precision.summary(),
            "cpu": cpu_kind() if self.device.type == "cpu" else str(self.device),
            "budget_minutes": self.settings.train.max_minutes,
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
        self._write_plan()
        self._end_epoch()

    @torch.no_grad()
    def _forward_seconds_per_image(self) -> float:
        """Inference cost of the network, for the grids and validation the plan must leave time for."""
        n = min(self.batch_size, 64)
        size, channels = self.settings.data.image_size, self.settings.data.channels
        x = self.precision.layout(torch.zeros(n, channels, size, size, device=self.device))
        steps = torch.zeros(n, dtype=torch.long, device=self.device)
        classes = torch.zeros(n, dtype=torch.long, device=self.device) if self.num_classes else None
        extra = {"cond": x} if self.settings.model.cond_channels else {}
        best = math.inf
        for _ in range(2):
            start = time.perf_counter()
            with self.precision.autocast(self.device):
                self.ema(x, steps, classes, **extra)
            best = min(best, time.perf_counter() - start)
        return best / n

    def _make_plan(self, step_s: float) -> None:
        """Fix total_steps so that the rest of the run, its last epoch end and grid fit the budget."""
        t, s = self.settings.train, self.settings.sample
        per_image = self._forward_seconds_per_image()
        guided = 2 if self.num_classes and s.cfg not in (0.0, 1.0) else 1
        grid_images = preview_images(self.num_classes)
        grid_s = min(t.grid_steps, self.schedule.timesteps) * grid_images * guided * per_image
        fid_s = min(t.grid_steps, self.schedule.timesteps) * t.fid_samples * guided * per_image
        save_s = 1.0  # checkpoint, curves.png, metrics: about a second on a laptop
        val_s = len(self.val_set) * per_image + save_s
        epoch_end_s = val_s
        if t.sample_every_epochs:
            epoch_end_s += grid_s / t.sample_every_epochs
        if self.fid is not None:
            epoch_end_s += fid_s / t.fid_every_epochs
        final_s = val_s + grid_s + (fid_s if self.fid is not None else 0.0)
        elapsed = self.elapsed_s()
        total = plan_steps(
            budget_s=self.budget_s or 0.0,
            elapsed_s=elapsed,
            step=self.step,
            step_s=step_s,
            epoch_end_s=epoch_end_s,
            steps_per_epoch=self.steps_per_epoch,
            final_s=final_s,
            cap=self.step_cap,
        )
        self.total_steps = max(total, self.step)
        self.clock_plan = ClockPlan(
            self.budget_s or 0.0, self.total_steps, self.step, step_s, epoch_end_s, final_s, elapsed
        )
        self._write_plan()
        self.hooks.plan(self.clock_plan)

    def _end_epoch(self) -> None:
        epoch = math.ceil(self.step / self.steps_per_epoch)
        val = self.validate()
        if val is not None:
            self._log({"step": self.step, "epoch": epoch, "val_loss": val})
        fid_every = self.settings.train.fid_every_epochs
        if self.fid is not None and (epoch % fid_every == 0 or self.step == self.total_steps):
            self._log({"step": self.step, "epoch": epoch, **self.fid(self.ema_denoiser())})
        every = self.settings.train.sample_every_epochs
        final = self.step == self.total_steps
        grid = None
        if final or (every and epoch % every == 0):
            self.model.eval()
            grid = self.draw_grid(f"epoch_{epoch:04d}")
            self.runlog.image("samples/grid", grid, self.step)
            self.model.train()
        improved = val is not None and val < self.best_val
        if improved:  # best before last: killed in between, the resumed run redoes this epoch end
            self._save("best", with_state=False, val_loss=val)
            self.best_val = val  # type: ignore[assignment]
        self._save("last", with_state=True, val_loss=val)
        plot_training_curves(self.paths.metrics, self.paths.curves)
        self.hooks.epoch(epoch, self.step, val, grid)


class _LossWindow:
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


def train_run(
    settings: Settings,
    run_dir: Path,
    *,
    resume: bool = False,
    force: bool = False,
    hooks: TrainHooks | None = None,
    stop_after: int | None = None,
) -> tuple[Trainer, TrainResult]:
    """What `diffkit train` does: check the run directory, lock it, load data, build, (re)start, train.

    The run directory's lock (`diffkit.runlock`) is held throughout: a second process, or a `--force`
    from one, is refused. SIGINT / SIGTERM are deferred to the next step boundary (`TrainingInterrupted`).
    """
    clock_start = time.perf_counter()
    check_not_in_use(run_dir)
    check_run_dir(run_dir, resume=resume, force=force)  # before the lock creates anything
    with deferred_signals(), RunLock(run_dir) as lock:
        if lock.stale_pid is not None:
            (hooks or TrainHooks()).stale_lock(run_dir, lock.stale_pid)
        try:
            paths = check_run_dir(run_dir, resume=resume, force=force)  # again, now that it is ours
            trainer = Trainer(settings, paths, hooks, clock_start=clock_start)
        except BaseException:
            if lock.created_top is not None:  # a failed start leaves nothing behind
                lock.release()
                shutil.rmtree(lock.created_top, ignore_errors=True)
            raise
        if resume:
            trainer.resume()
        else:
            create_run_dir(paths, settings)
            trainer.choose_precision()
        try:
            return trainer, trainer.train(stop_after)
        finally:
            trainer.runlog.close()
