"""Where the maths runs: `--device auto|cpu|cuda`, what a GPU is allowed to do, and how data gets there."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from diffkit.errors import DiffkitError


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is visible, else the CPU; `cuda` without a GPU is a one-line error."""
    if name not in ("auto", "cpu") and re.fullmatch(r"cuda(:\d+)?", name) is None:  # tpu, meta, gpu ...
        raise DiffkitError(f"--device {name} is not a device diffkit runs on: use auto, cpu or cuda (cuda:N)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DiffkitError(f"--device {name} was asked for but no CUDA GPU is available: use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def configure(device: torch.device) -> None:
    """On CUDA: TF32 for matmuls and convolutions (fp32 range, ~10-bit mantissa: the speed of tensor cores
    for what stays in fp32 under autocast), and cuDNN's autotuner (our shapes are fixed per run)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def to_device(batch: Tensor, device: torch.device) -> Tensor:
    """A CPU batch on `device`: through pinned memory and without blocking on CUDA (the copy overlaps
    the work already queued); unchanged on the CPU."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)
