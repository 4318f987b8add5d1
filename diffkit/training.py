"""The training loop: AdamW, warm-up + cosine LR, gradient clipping, EMA, bf16 autocast, validation.

Resuming is exact: the run's data order is a pure function of (seed, epoch), and the state saved
with `last` holds the model, EMA, optimiser, LR schedule, both random generators and the step, so
an interrupted run continues with the same losses as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffkit.data import ImageSet, load_images, train_val_split
from diffkit.denoiser import min_snr_weight, training_target
from diffkit.editing.superres import degrade, random_condition, super_resolve
from diffkit.errors import DiffkitError
from diffkit.generation import class_layout, generate
from diffkit.models import count_parameters
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
from diffkit.schedules import gather
from diffkit.settings import Settings
from diffkit.viz import plot_training_curves, save_grid


class TrainHooks:
    """What the loop reports; the CLI overrides these to draw rich progress. Defaults do nothing."""

    def start(self, total_steps: int, start_step: int, info: dict[str, Any]) -> None: ...

    def step(self, step: int, loss: float, lr: float, images_per_s: float) -> None: ...

    def epoch(self, epoch: int, step: int, val_loss: float | None, grid: str | None) -> None: ...


class TrainingInterrupted(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(f"interrupted at step {step}")
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


def resolve_data(settings: Settings) -> ImageSet:
    """Load the training images and settle model.num_classes from them (saved into config.toml)."""
    d = settings.data
    data = load_images(
        d.dataset,
        d.split,
        data_dir=settings.data_dir,
        image_size=d.image_size,
        channels=d.channels,
        path=d.path,
        limit=d.limit,
        download=d.download,
    )
    labelled = bool((data.labels >= 0).all()) and data.num_classes > 0
    if settings.model.num_classes is None:
        settings.model.num_classes = data.num_classes if labelled else 0
    elif settings.model.num_classes > 0 and not labelled:
        raise DiffkitError(
            f"model.num_classes={settings.model.num_classes} but dataset {d.dataset} has no labels: "
            "set model.num_classes=0 for an unconditional model"
        )
    elif settings.model.num_classes > 0 and int(data.labels.max()) >= settings.model.num_classes:
        raise DiffkitError(
            f"dataset {d.dataset} has {data.num_classes} classes but model.num_classes="
            f"{settings.model.num_classes}: leave model.num_classes unset"
        )
    return data


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases and embeddings (all 1-D parameters, and embedding tables)."""
    no_decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay: list[nn.Parameter] = []
    keep: list[nn.Parameter] = []
    for p in model.parameters():
        (keep if p.ndim <= 1 or id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total` (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, for every parameter and buffer."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.dtype.is_floating_point:
            e.lerp_(m, 1.0 - decay)
        else:
            e.copy_(m)


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """With warm-up the average forgets its random start quickly: min(decay, (1 + step)/(10 + step))."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class Trainer:
    def __init__(self, settings: Settings, paths: RunPaths, hooks: TrainHooks | None = None) -> None:
        """Load data and build everything; writes nothing (see `diffkit.runs.create_run_dir`)."""
        self.settings, self.paths, self.hooks = settings, paths, hooks or TrainHooks()
        t = settings.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(settings.device)
        data = resolve_data(settings)
        self.train_set, self.val_set = train_val_split(data, settings.data.val_fraction)
        if len(self.train_set) < 1:
            raise DiffkitError("no training images left after the validation split: lower data.val_fraction")
        self.batch_size = min(t.batch_size, len(self.train_set))
        self.steps_per_epoch = max(1, len(self.train_set) // self.batch_size)
        self.total_steps = t.max_steps or (t.epochs or 1) * self.steps_per_epoch
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
        self.alpha_bar = self.schedule.alpha_bar.float().to(self.device)
        self.snr = self.schedule.snr.float().to(self.device)
        self.fid = None  # built now, so a setting that cannot work fails before the first step
        if t.fid_every_epochs:
            from diffkit.evaluation import training_fid

            self.fid = training_fid(settings)

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.model)

    # --- state -----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best_val": self.best_val,
            "optimizer": self.opt.state_dict(),
            "lr_schedule": self.lr_sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "gen_rng": self.gen.get_state(),
        }

    def resume(self) -> None:
        tensors, meta = read_checkpoint(self.paths.weights("last"))
        state = load_state(self.paths.state("last"))
        if meta.get("step") != state.get("step"):
            raise DiffkitError(
                f"{self.paths.checkpoints}: last.safetensors and last.state.pt are from different steps; "
                "start again with --force"
            )
        self.model.load_state_dict(split_weights(tensors, "model"))
        self.ema.load_state_dict(split_weights(tensors, "ema"))
        self.opt.load_state_dict(state["optimizer"])
        self.lr_sched.load_state_dict(state["lr_schedule"])
        torch.set_rng_state(state["torch_rng"])
        self.gen.set_state(state["gen_rng"])
        self.step, self.best_val = int(state["step"]), float(state["best_val"])

    def _save(self, name: str, with_state: bool, val_loss: float | None = None) -> None:
        meta = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "val_loss": val_loss}
        save_checkpoint(self.paths, name, self.model, self.ema, meta, self._state() if with_state else None)

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
        """The weighted denoising loss of one batch (per-sample MSE, optional min-SNR-γ weights)."""
        n, d = x0.shape[0], self.settings.diffusion
        t = torch.randint(0, self.schedule.timesteps, (n,), generator=gen, device=self.device)
        noise = torch.randn(x0.shape, generator=gen, device=self.device)
        classes = None
        if self.num_classes:
            drop = torch.rand(n, generator=gen, device=self.device) < p_uncond
            classes = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        ab = gather(self.alpha_bar, t, x0)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        cond = self._sr_condition(x0, gen)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.settings.train.bf16):
            out = model(x_t, t, classes) if cond is None else model(x_t, t, classes, cond=cond)
        per_sample = F.mse_loss(out.float(), training_target(d.objective, x0, noise, ab), reduction="none")
        per_sample = per_sample.mean(dim=(1, 2, 3))
        if d.min_snr_gamma:
            per_sample = per_sample * min_snr_weight(d.objective, self.snr[t], d.min_snr_gamma)
        return per_sample.mean()

    def _sr_condition(self, x0: Tensor, gen: torch.Generator) -> Tensor | None:
        """Super-resolution runs (SR3) see x0 shrunk by a random trained scale and upsampled back."""
        m = self.settings.model
        return random_condition(x0, m.sr_scales, gen) if m.task == "super-res" else None

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

    def draw_grid(self, name: str) -> str:
        """A fixed-seed grid from the EMA weights (a row per class for conditional models)."""
        if self.settings.model.task == "super-res":
            return self._draw_superres_grid(name)
        s = self.settings.sample
        per_class = 8
        classes, num = class_layout(self.num_classes, None, per_class if self.num_classes else 64)
        denoiser = make_denoiser(self.settings, self.ema, self.schedule)
        out = generate(
            denoiser,
            num=num,
            classes=classes,
            sampler=s.sampler,
            steps=min(self.settings.train.grid_steps, self.schedule.timesteps),
            guidance=s.cfg if self.num_classes else 1.0,
            seed=s.seed,
            batch_size=s.batch_size,
        )
        path = self.paths.samples / f"{name}.png"
        save_grid(out.images, path, nrow=per_class, scale=2)
        return str(path)

    def _draw_superres_grid(self, name: str) -> str:
        """Rows per trained scale: bicubic, then diffusion; the last row is the ground truth."""
        s, images = self.settings.sample, (self.val_set if len(self.val_set) else self.train_set).floats(slice(0, 8))
        denoiser = make_denoiser(self.settings, self.ema, self.schedule)
        rows = []
        for scale in self.settings.model.sr_scales:
            out = super_resolve(
                denoiser,
                degrade(images, scale),
                sampler=s.sampler,
                steps=min(self.settings.train.grid_steps, self.schedule.timesteps),
                seed=s.seed,
                batch_size=s.batch_size,
            )
            rows += [out.bicubic, out.images]
        path = self.paths.samples / f"{name}.png"
        save_grid(torch.cat([*rows, images]), path, nrow=len(images), scale=2)
        return str(path)

    def _log(self, record: dict[str, Any]) -> None:
        with self.paths.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def train(self, stop_after: int | None = None) -> TrainResult:
        t = self.settings.train
        end = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        self.hooks.start(
            self.total_steps,
            self.step,
            {
                "parameters": self.num_parameters,
                "train_images": len(self.train_set),
                "val_images": len(self.val_set),
                "steps_per_epoch": self.steps_per_epoch,
                "batch_size": self.batch_size,
                "device": str(self.device),
                "classes": self.num_classes,
            },
        )
        self.model.train()
        losses: list[float] = []
        window, window_start, seen, run_start = [], time.perf_counter(), 0, time.perf_counter()
        images_per_s = 0.0
        try:
            while self.step < end:
                x0, labels = self._batch(self.step)
                loss = self.loss(self.model, x0, labels, self.gen, t.p_uncond)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if t.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                lr = self.opt.param_groups[0]["lr"]
                self.opt.step()
                self.lr_sched.step()
                ema_update(self.ema, self.model, ema_decay_at(self.step, t.ema_decay, t.ema_warmup))
                self.step += 1
                value = loss.item()
                losses.append(value)
                window.append(value)
                seen += x0.shape[0]
                if self.step % t.log_every == 0 or self.step == end:
                    elapsed = time.perf_counter() - window_start
                    images_per_s = seen / max(elapsed, 1e-9)
                    self._log(
                        {
                            "step": self.step,
                            "epoch": self.step / self.steps_per_epoch,
                            "loss": sum(window) / len(window),
                            "lr": lr,
                            "images_per_s": round(images_per_s, 1),
                        }
                    )
                    window, window_start, seen = [], time.perf_counter(), 0
                self.hooks.step(self.step, value, lr, images_per_s)
                if t.checkpoint_every_steps and self.step % t.checkpoint_every_steps == 0:
                    self._save(f"step_{self.step:06d}", with_state=False)
                if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                    self._end_epoch()
        except KeyboardInterrupt:
            self._save("last", with_state=True)
            raise TrainingInterrupted(self.step) from None
        if self.step < self.total_steps or self.step % self.steps_per_epoch:
            self._save("last", with_state=True)  # stopped early or mid-epoch: keep the exact place
        return TrainResult(
            self.step,
            math.ceil(self.step / self.steps_per_epoch),
            losses[-1] if losses else math.nan,
            None if math.isinf(self.best_val) else self.best_val,
            images_per_s,
            time.perf_counter() - run_start,
            losses,
        )

    def _end_epoch(self) -> None:
        epoch = math.ceil(self.step / self.steps_per_epoch)
        val = self.validate()
        if val is not None:
            self._log({"step": self.step, "epoch": epoch, "val_loss": val})
        fid_every = self.settings.train.fid_every_epochs
        if self.fid is not None and (epoch % fid_every == 0 or self.step == self.total_steps):
            denoiser = make_denoiser(self.settings, self.ema, self.schedule)
            self._log({"step": self.step, "epoch": epoch, **self.fid(denoiser)})
        every = self.settings.train.sample_every_epochs
        final = self.step == self.total_steps
        grid = None
        if final or (every and epoch % every == 0):
            self.model.eval()
            grid = self.draw_grid(f"epoch_{epoch:04d}")
            self.model.train()
        improved = val is not None and val < self.best_val
        if improved:
            self.best_val = val  # type: ignore[assignment]
        self._save("last", with_state=True, val_loss=val)
        if improved:
            self._save("best", with_state=False, val_loss=val)
        plot_training_curves(self.paths.metrics, self.paths.curves)
        self.hooks.epoch(epoch, self.step, val, grid)


def train_run(
    settings: Settings,
    run_dir: Path,
    *,
    resume: bool = False,
    force: bool = False,
    hooks: TrainHooks | None = None,
    stop_after: int | None = None,
) -> tuple[Trainer, TrainResult]:
    """What `diffkit train` does: check the run directory, load data, build, (re)start, train."""
    paths = check_run_dir(run_dir, resume=resume, force=force)
    trainer = Trainer(settings, paths, hooks)
    if resume:
        trainer.resume()
    else:
        create_run_dir(paths, settings)
    return trainer, trainer.train(stop_after)
