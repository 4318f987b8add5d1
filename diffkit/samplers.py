"""Samplers: short functions over a denoise function (x_t, t) -> Prediction and a schedule.

Every sampler has the signature

    sampler(denoise, x_T, schedule, steps, *, generator=None, callback=None, **options) -> x_0

and goes through the registry, so `sample()` can count model evaluations (NFE) exactly and the CLI
can list them. `callback(step)` is called after every step with the new state; it may return a
replacement state (a per-step constraint such as inpainting's known pixels) or None.
States handed to callbacks are always variance-preserving x_t, whatever the sampler uses inside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffkit.denoiser import DenoiseFn, Prediction
from diffkit.errors import DiffkitError
from diffkit.schedules import SPACINGS, NoiseSchedule


@dataclass
class Step:
    index: int  # 0-based
    total: int
    t: float  # timestep of `x` after this step; -1 means clean
    x: Tensor  # the new state x_t
    x0: Tensor  # the clean-image prediction made during this step


Callback = Callable[[Step], Tensor | None]
SamplerFn = Callable[..., Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fn: SamplerFn
    stochastic: bool
    summary: str
    options: tuple[str, ...] = field(default_factory=tuple)


SAMPLERS: dict[str, SamplerSpec] = {}


def register(name: str, *, stochastic: bool, summary: str, options: tuple[str, ...] = ()) -> Callable[[SamplerFn], SamplerFn]:
    def add(fn: SamplerFn) -> SamplerFn:
        SAMPLERS[name] = SamplerSpec(name, fn, stochastic, summary, options)
        return fn

    return add


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise DiffkitError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


@dataclass
class SampleResult:
    images: Tensor
    nfe: int  # denoiser evaluations (one batched conditional+unconditional call counts once)


def sample(
    name: str,
    denoise: DenoiseFn,
    x_T: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    **options: Any,
) -> SampleResult:
    """Run a registered sampler and count its denoiser evaluations."""
    spec = get_sampler(name)
    if not 1 <= steps <= schedule.timesteps:
        raise DiffkitError(f"--steps {steps} is out of range: use 1 to {schedule.timesteps} (the model's T)")
    unknown = set(options) - set(spec.options)
    if unknown:
        raise DiffkitError(f"sampler {name} takes no option {', '.join(sorted(unknown))}")
    calls = 0

    def counted(x: Tensor, t: Tensor) -> Prediction:
        nonlocal calls
        calls += 1
        return denoise(x, t)

    images = spec.fn(counted, x_T, schedule, steps, generator=generator, callback=callback, **options)
    return SampleResult(images, calls)


# ------------------------------------------------------------------------------------- helpers


def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _report(callback: Callback | None, index: int, total: int, t: float, x: Tensor, x0: Tensor) -> Tensor:
    if callback is None:
        return x
    replaced = callback(Step(index, total, t, x, x0))
    return x if replaced is None else replaced


def _timestep_pairs(schedule: NoiseSchedule, steps: int, spacing: str) -> list[tuple[int, int]]:
    """(t, t_prev) from noisiest to clean; the last t_prev is -1, where ᾱ = 1."""
    if spacing not in SPACINGS:
        raise DiffkitError(f"unknown timestep spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
    ts = schedule.spaced_timesteps(steps, spacing).tolist()  # type: ignore[arg-type]
    return list(zip(ts, [*ts[1:], -1], strict=True))


def _ab(schedule: NoiseSchedule, t: int) -> float:
    return 1.0 if t < 0 else float(schedule.alpha_bar[t])


def _at(t: int, like: Tensor) -> Tensor:
    return torch.full((like.shape[0],), float(t), device=like.device)


# ------------------------------------------------------------------------------------ samplers


@register("ddpm", stochastic=True, summary="ancestral sampling (Ho et al. 2020), strided when steps < T",
          options=("variance", "spacing"))
def ddpm(denoise: DenoiseFn, x: Tensor, schedule: NoiseSchedule, steps: int, *,
         generator: torch.Generator | None = None, callback: Callback | None = None,
         variance: str = "small", spacing: str = "leading") -> Tensor:
    """Sample q(x_{t'} | x_t, x̂0) step by step; `variance` is β̃ ("small") or β ("large").

    With fewer steps than T the chain is respaced (Nichol & Dhariwal 2021): β between two visited
    timesteps is 1 - ᾱ_t / ᾱ_t'.
    """
    if variance not in ("small", "large"):
        raise DiffkitError(f"unknown DDPM variance {variance!r}: choose small (β̃) or large (β)")
    pairs = _timestep_pairs(schedule, steps, spacing)
    for i, (t, t_prev) in enumerate(pairs):
        pred = denoise(x, _at(t, x))
        ab, ab_prev = _ab(schedule, t), _ab(schedule, t_prev)
        beta = 1.0 - ab / ab_prev
        mean = (beta * ab_prev**0.5 / (1 - ab)) * pred.x0 + ((1 - ab_prev) * (1 - beta) ** 0.5 / (1 - ab)) * x
        var = beta * (1 - ab_prev) / (1 - ab) if variance == "small" else beta
        x = mean + var**0.5 * _noise(x, generator) if t_prev >= 0 else mean
        x = _report(callback, i, len(pairs), t_prev, x, pred.x0)
    return x


@register("ddim", stochastic=True, summary="DDIM (Song et al. 2021); deterministic at eta=0",
          options=("eta", "spacing"))
def ddim(denoise: DenoiseFn, x: Tensor, schedule: NoiseSchedule, steps: int, *,
         generator: torch.Generator | None = None, callback: Callback | None = None,
         eta: float = 0.0, spacing: str = "leading") -> Tensor:
    """x_{t'} = sqrt(ᾱ_t') x̂0 + sqrt(1 - ᾱ_t' - σ²) ε̂ + σ z, σ = eta · sqrt(β̃ of the jump)."""
    if not 0.0 <= eta <= 1.0:
        raise DiffkitError(f"--eta {eta} is out of range: use a value from 0 (deterministic) to 1")
    pairs = _timestep_pairs(schedule, steps, spacing)
    for i, (t, t_prev) in enumerate(pairs):
        pred = denoise(x, _at(t, x))
        ab, ab_prev = _ab(schedule, t), _ab(schedule, t_prev)
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
        x = ab_prev**0.5 * pred.x0 + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * pred.eps
        if sigma > 0:
            x = x + sigma * _noise(x, generator)
        x = _report(callback, i, len(pairs), t_prev, x, pred.x0)
    return x
