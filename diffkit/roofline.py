"""Speed figures shared by `diffkit.bench` and the network sizing at the start of a run: one timed training
step, its FLOPs by torch's own counter, and the measured peak GFLOP/s of the kernels a UNet runs on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffkit.models import UNet


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of `repeats` timings (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def train_step(model: UNet, batch: int, bf16: bool, channels_last: bool) -> Callable[[], None]:
    """One training step of `model` (forward, backward, AdamW) on a fixed random batch; it changes the weights."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, model.in_channels, model.image_size, model.image_size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (batch,))
    classes = torch.randint(0, max(model.num_classes, 1), (batch,)) if model.num_classes else None

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t, classes)
        loss = (out.float() - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def training_flops(model: UNet, batch: int) -> int:
    """FLOPs of one training step (forward + backward), counted by torch's own FLOP counter."""
    step = train_step(model, batch, bf16=False, channels_last=False)
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def peak_gflops(repeats: int, formats: Iterable[str] = ("fp32", "bf16")) -> dict[str, float]:
    """Measured GFLOP/s of a large matmul and a 3x3 convolution in each format: the roofline the network sees."""
    out: dict[str, float] = {}
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    x, w = torch.randn(64, 64, 28, 28), torch.randn(64, 64, 3, 3)
    conv_flops = 2 * 64 * 64 * 28 * 28 * 64 * 9
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for name in formats:
        dtype = dtypes[name]
        a_, b_, x_, w_ = a.to(dtype), b.to(dtype), x.to(dtype), w.to(dtype)
        torch.mm(a_, b_)
        out[f"matmul_{name}"] = round(2 * n**3 / best_of(lambda: torch.mm(a_, b_), repeats) / 1e9, 1)  # noqa: B023
        torch.conv2d(x_, w_, padding=1)
        out[f"conv3x3_{name}"] = round(
            conv_flops / best_of(lambda: torch.conv2d(x_, w_, padding=1), repeats) / 1e9,  # noqa: B023
            1,
        )
    return out
