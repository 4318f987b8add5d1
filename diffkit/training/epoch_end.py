"""The Trainer's epoch end: validation, the training-time FID, the grid, then `best` and `last`.

A base class of `diffkit.training.trainer.Trainer` (the same object): the measurements here are not
training, so a stop request drops them between batches while the saved state stays exact.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from diffkit.denoiser import Denoiser
from diffkit.distributed import World
from diffkit.evaluation.quality import TrainingFid
from diffkit.interrupts import StopRequest
from diffkit.precision import PrecisionChoice
from diffkit.previews import class_grid, superres_grid
from diffkit.process import DiffusionProcess
from diffkit.runlog import RunLog
from diffkit.runs import RunPaths, make_denoiser
from diffkit.sampling import SamplingPlan
from diffkit.settings import Settings
from diffkit.training.batches import TrainingData
from diffkit.training.outcomes import TrainHooks
from diffkit.viz import plot_training_curves


class _StopRequested(Exception):
    """Raised inside an epoch end's FID when a stop was requested: the measurement is dropped."""


VAL_SEED = 12345  # validation noise: fixed per batch, so epochs (and any number of processes) compare fairly
# curves.png is redrawn at an epoch end at most this often (and always at the last): matplotlib takes 0.2-0.5 s,
# 4 s of the demo's 6 minutes when its 18 epochs of 15 s each redrew it
CURVES_EVERY_S = 60.0


class EpochEnds:
    """Validation, FID, grids and the epoch end's checkpoints; the Trainer provides what is declared here."""

    settings: Settings
    paths: RunPaths
    world: World
    hooks: TrainHooks
    runlog: RunLog
    data: TrainingData
    device: torch.device
    model: nn.Module
    ema: nn.Module
    guide: nn.Module | None
    process: DiffusionProcess
    precision: PrecisionChoice
    num_classes: int
    fid: TrainingFid | None
    stop: StopRequest
    step: int
    total_steps: int
    steps_per_epoch: int
    batch_size: int
    best_val: float
    curves_drawn_at: float | None = None  # time.monotonic() of the last curves.png

    if TYPE_CHECKING:

        def loss(
            self, model: nn.Module, x0: Tensor, labels: Tensor, gen: torch.Generator, p_uncond: float
        ) -> Tensor: ...

        def _save(self, name: str, with_state: bool, val_loss: float | None = None) -> None: ...

    @torch.no_grad()
    def validate(self) -> float | None:
        """Loss of the EMA weights on the held-out images; each rank takes every size-th batch, with
        noise fixed per batch, so the value is the same for any number of processes."""
        if len(self.data.val_set) == 0:
            return None
        total, count = 0.0, 0
        batches = math.ceil(len(self.data.val_set) / self.batch_size)
        for b in range(self.world.rank, batches, self.world.size):
            gen = torch.Generator(device=self.device).manual_seed(VAL_SEED + b)
            idx = torch.arange(b * self.batch_size, min((b + 1) * self.batch_size, len(self.data.val_set)))
            x0, labels = self.data.on_device(self.data.val_set, idx)
            total += float(self.loss(self.ema, x0, labels, gen, p_uncond=0.0)) * len(idx)
            count += len(idx)
        total, count_all = self.world.sum([total, count])
        return total / count_all

    @property
    def grid_plan(self) -> SamplingPlan:
        """The run's [sample] settings at train.grid_steps: how the grids during training are drawn."""
        plan = SamplingPlan.from_settings(self.settings.sample, self.num_classes)
        plan = plan.but(steps=min(self.settings.train.grid_steps, self.process.grid.timesteps))
        return plan.guided_by(self.guide)  # before the guide is taken: without autoguidance

    def ema_denoiser(self) -> Denoiser:
        plan = self.grid_plan
        return make_denoiser(self.settings, self.ema, self.process, plan, precision=self.precision, guide=self.guide)

    def draw_grid(self, name: str) -> str:
        """A fixed-seed grid from the EMA weights (a row per class for conditional models)."""
        path = self.paths.samples / f"{name}.png"
        if self.settings.model.task == "super-res":
            truth = (self.data.val_set if len(self.data.val_set) else self.data.train_set).floats(slice(0, 8))
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
        now = time.monotonic()
        due = final or self.curves_drawn_at is None or now - self.curves_drawn_at >= CURVES_EVERY_S
        if self.world.is_main and due:
            plot_training_curves(self.paths.metrics, self.paths.curves)
            self.curves_drawn_at = now
        self.hooks.epoch(epoch, self.step, val, grid)
