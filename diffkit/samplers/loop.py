"""What every sampler shares: fresh noise, the callback, ᾱ lookups, the DDIM update, and the one
loop of the discrete-timestep samplers (DDPM, DDIM, PLMS, DPM-Solver++)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from diffkit.denoiser import DenoiseFn, Prediction
from diffkit.errors import DiffkitError
from diffkit.samplers.registry import Callback, SamplerFn, Step, register
from diffkit.schedules import SPACINGS, NoiseSchedule


def noise_like(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def report(callback: Callback | None, index: int, total: int, t: float, x: Tensor, x0: Tensor) -> Tensor:
    """Hand the new state to the callback; its return value (a per-step constraint) replaces it."""
    if callback is None:
        return x
    replaced = callback(Step(index, total, t, x, x0))
    return x if replaced is None else replaced


def timestep_pairs(schedule: NoiseSchedule, steps: int, spacing: str) -> list[tuple[int, int]]:
    """(t, t_prev) from noisiest to clean; the last t_prev is -1, where ᾱ = 1."""
    if spacing not in SPACINGS:
        raise DiffkitError(f"unknown timestep spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
    ts = schedule.spaced_timesteps(steps, spacing).tolist()  # type: ignore[arg-type]
    return list(zip(ts, [*ts[1:], -1], strict=True))


def alpha_bar(schedule: NoiseSchedule, t: int) -> float:
    """ᾱ_t, with ᾱ = 1 at t = -1 (the clean image)."""
    return 1.0 if t < 0 else float(schedule.alpha_bar[t])


def at(t: float, like: Tensor) -> Tensor:
    """The timestep `t` for every image of the batch `like`."""
    return torch.full((like.shape[0],), float(t), device=like.device)


def ddim_update(x0: Tensor, eps: Tensor, ab_next: float | Tensor, sigma: float = 0.0) -> Tensor:
    """Carry a consistent estimate (x̂0, ε̂) to ᾱ_next, leaving variance sigma² for fresh noise.

    Every discrete sampler ends its step with this; they differ only in how they estimate (x̂0, ε̂).
    `ab_next` may be per image, (N, 1, 1, 1) (the teacher steps of `diffkit.distill`).
    """
    if isinstance(ab_next, Tensor):
        return ab_next.sqrt() * x0 + (1.0 - ab_next - sigma**2).clamp_min(0.0).sqrt() * eps
    return ab_next**0.5 * x0 + max(1.0 - ab_next - sigma**2, 0.0) ** 0.5 * eps


# (x_t, this step's prediction, t, t_next) -> (x_{t_next}, the x̂0 the update used)
DiscreteStep = Callable[[Tensor, Prediction, int, int], tuple[Tensor, Tensor]]
# (schedule, generator, **sampler options) -> the step of one sampling run (it may keep a history)
StepFactory = Callable[..., DiscreteStep]


def run_discrete(
    denoise: DenoiseFn,
    x: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    spacing: str,
    callback: Callback | None,
    step: DiscreteStep,
) -> Tensor:
    """The loop shared by the discrete-timestep samplers: one denoiser call per step."""
    pairs = timestep_pairs(schedule, steps, spacing)
    for i, (t, t_next) in enumerate(pairs):
        pred = denoise(x, at(t, x))
        x, x0 = step(x, pred, t, t_next)
        x = report(callback, i, len(pairs), t_next, x, x0)
    return x


def discrete(make_step: StepFactory, *, spacing: str) -> SamplerFn:
    """A sampler over `run_discrete` from its step: `make_step(schedule, generator, **options)` makes
    the step of one run; `spacing` is the sampler's default grid (what `default_spacing` reports)."""

    def sampler(
        denoise: DenoiseFn,
        x: Tensor,
        schedule: NoiseSchedule,
        steps: int,
        *,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
        spacing: str = spacing,
        **options: Any,
    ) -> Tensor:
        step = make_step(schedule, generator, **options)
        return run_discrete(denoise, x, schedule, steps, spacing, callback, step)

    sampler.__doc__ = make_step.__doc__
    return sampler


def register_discrete(
    name: str, *, spacing: str, options: tuple[str, ...] = (), **spec: Any
) -> Callable[[StepFactory], StepFactory]:
    """Register the sampler `discrete(make_step, spacing=spacing)` as `name` (it takes --spacing too)."""

    def add(make_step: StepFactory) -> StepFactory:
        register(name, options=(*options, "spacing"), **spec)(discrete(make_step, spacing=spacing))
        return make_step

    return add
