"""The denoising loss, as a free function (as EDM's loss classes and lucidrains' `p_losses`).

One batch: draw timesteps and noise, noise the images with `NoiseSchedule.q_sample`, drop labels to
teach the unconditional model, and score the network's output against the objective's target with
per-sample MSE, optionally weighted by min-SNR-γ. Training and validation both call it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffkit.denoiser import Objective, min_snr_weight, training_target
from diffkit.distributed import Rows, draw_rows
from diffkit.precision import FP32, PrecisionChoice
from diffkit.schedules import NoiseSchedule, gather

# extra input channels for the batch (super-resolution's degraded images), drawn from the same generator;
# the third argument is the batch's `rows` (see diffusion_loss)
Condition = Callable[[Tensor, torch.Generator, Rows | None], Tensor | None]


def diffusion_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: Tensor,
    labels: Tensor,
    generator: torch.Generator,
    *,
    objective: Objective = "eps",
    min_snr_gamma: float | None = None,
    num_classes: int = 0,
    p_uncond: float = 0.0,
    condition: Condition | None = None,
    precision: PrecisionChoice = FP32,
    rows: Rows | None = None,
) -> Tensor:
    """The mean weighted denoising loss of clean images `x0` (N, C, H, W) with labels (N,).

    Every random draw comes from `generator`, in a fixed order (t, noise, label dropout, condition),
    so a resumed run draws exactly what an unbroken one would. With `rows`, `x0` is this process's
    part of a global batch and every draw is the global batch's, sliced (`Rows`).
    """
    n, device = x0.shape[0], x0.device
    t = draw_rows(rows, n, lambda k: torch.randint(0, schedule.timesteps, (k,), generator=generator, device=device))
    noise = draw_rows(rows, n, lambda k: torch.randn((k, *x0.shape[1:]), generator=generator, device=device))
    classes = None
    if num_classes:
        drop = draw_rows(rows, n, lambda k: torch.rand(k, generator=generator, device=device)) < p_uncond
        classes = torch.where(drop, torch.full_like(labels, num_classes), labels)
    x_t = precision.layout(schedule.q_sample(x0, t, noise))  # the memory format the probe chose
    cond = condition(x0, generator, rows) if condition is not None else None
    with precision.autocast(device):
        out = model(x_t, t, classes) if cond is None else model(x_t, t, classes, cond=cond)
    target = training_target(objective, x0, noise, gather(schedule.alpha_bar, t, x0))
    per_sample = F.mse_loss(out.float(), target, reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:
        per_sample = per_sample * min_snr_weight(objective, gather(schedule.snr, t, x0).reshape(-1), min_snr_gamma)
    return per_sample.mean()
