"""The grids drawn while a run trains: a fixed-seed picture of what the model makes now.

Generation models get a class grid (a row per class, or a square grid); super-resolution models
rows per trained scale (bicubic, then diffusion) over the ground truth. Both go through the same
`SamplingPlan` as `diffkit sample`, at `train.grid_steps`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from diffkit.data import degrade
from diffkit.denoiser import Denoiser
from diffkit.editing.superres import super_resolve
from diffkit.generation import class_layout, generate
from diffkit.sampling import SamplingPlan
from diffkit.viz import save_grid

PER_CLASS = 8  # images per class row (64 in a square grid for unconditional models)


def preview_images(num_classes: int) -> int:
    """How many images a class grid holds: what the clock planner must leave time for."""
    return PER_CLASS * num_classes if num_classes else 64


def class_grid(denoiser: Denoiser, plan: SamplingPlan, path: Path) -> Path:
    """A row per class (or an 8-wide grid for an unconditional model) from the plan's seed."""
    k = denoiser.num_classes
    classes, num = class_layout(k, None, PER_CLASS if k else preview_images(0))
    out = generate(denoiser, plan, num=num, classes=classes)
    return save_grid(out.images, path, nrow=PER_CLASS, scale=2)


def superres_grid(denoiser: Denoiser, plan: SamplingPlan, truth: Tensor, scales: list[int], path: Path) -> Path:
    """For each scale a bicubic row and a diffusion row; the last row is the ground truth."""
    rows = []
    for scale in scales:
        out = super_resolve(denoiser, degrade(truth, scale), plan)
        rows += [out.bicubic, out.images]
    return save_grid(torch.cat([*rows, truth]), path, nrow=len(truth), scale=2)
