"""The denoising loss, as a free function (as EDM's loss classes and lucidrains' `p_losses`).

One batch: the process draws noise levels, the noise is drawn, labels are dropped to teach the
unconditional model, and the network's output is scored against the process's target with per-sample
MSE times the process's loss weight. Training and validation both call it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffkit.distributed import Rows, draw_rows
from diffkit.precision import FP32, PrecisionChoice
from diffkit.process import DiffusionProcess

# extra input channels for the batch (super-resolution's degraded images), drawn from the same generator;
# the third argument is the batch's `rows` (see diffusion_loss)
Condition = Callable[[Tensor, torch.Generator, Rows | None], Tensor | None]


def diffusion_loss(
    model: nn.Module,
    process: DiffusionProcess,
    x0: Tensor,
    labels: Tensor,
    generator: torch.Generator,
    *,
    num_classes: int = 0,
    p_uncond: float = 0.0,
    condition: Condition | None = None,
    precision: PrecisionChoice = FP32,
    rows: Rows | None = None,
) -> Tensor:
    """The mean weighted denoising loss of clean images `x0` (N, C, H, W) with labels (N,).

    Every random draw comes from `generator`, in a fixed order (levels, noise, label dropout, condition),
    so a resumed run draws exactly what an unbroken one would. With `rows`, `x0` is this process's
    part of a global batch and every draw is the global batch's, sliced (`Rows`).
    """
    n, device = x0.shape[0], x0.device
    level = draw_rows(rows, n, lambda k: process.draw_levels(k, generator, device))
    noise = draw_rows(rows, n, lambda k: torch.randn((k, *x0.shape[1:]), generator=generator, device=device))
    classes = None
    if num_classes:
        drop = draw_rows(rows, n, lambda k: torch.rand(k, generator=generator, device=device)) < p_uncond
        classes = torch.where(drop, torch.full_like(labels, num_classes), labels)
    example = process.example(x0, level, noise)
    x_in = precision.layout(example.x_in)  # the memory format the probe chose
    cond = condition(x0, generator, rows) if condition is not None else None
    with precision.autocast(device):
        t = example.noise_input
        out = model(x_in, t, classes) if cond is None else model(x_in, t, classes, cond=cond)
    per_sample = F.mse_loss(out.float(), example.target, reduction="none").mean(dim=(1, 2, 3))
    if example.weight is not None:
        per_sample = per_sample * example.weight
    return per_sample.mean()
