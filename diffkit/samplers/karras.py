"""Euler and Heun on the probability-flow ODE over Karras et al. (2022) sigmas."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from diffkit.denoiser import DenoiseFn
from diffkit.samplers.loop import at, report
from diffkit.samplers.registry import Callback, SamplerFn, register
from diffkit.schedules import NoiseSchedule


def _sigma_to_t(schedule: NoiseSchedule, sigma: float) -> float:
    return float(schedule.sigma_to_t(torch.tensor(sigma, dtype=torch.float64)))


def run_karras(
    denoise: DenoiseFn,
    x: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    rho: float,
    callback: Callback | None,
    heun: bool,
) -> Tensor:
    """Karras et al. 2022, Algorithm 1 without churn: dx/dσ = (x - x̂0(x; σ)) / σ on x_σ = x_0 + σ ε.

    The denoiser and the callback see the VP state x_t = x_σ / sqrt(1 + σ²) at the fractional t whose
    σ_t = σ. Heun's correction is skipped on the last step: at σ = 0 the slope is undefined, and the
    Euler step there lands exactly on x̂0.
    """
    sigmas = schedule.karras_sigmas(steps, rho).tolist()

    def slope(x_sigma: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        pred = denoise(x_sigma / (1 + sigma**2) ** 0.5, at(_sigma_to_t(schedule, sigma), x_sigma))
        return (x_sigma - pred.x0) / sigma, pred.x0

    x = x * (1 + sigmas[0] ** 2) ** 0.5  # x_T is the VP state at σ_max
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
        d, x0 = slope(x, sigma)
        x_next = x + (sigma_next - sigma) * d
        if heun and sigma_next > 0:
            d_next, _ = slope(x_next, sigma_next)
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        t_next = _sigma_to_t(schedule, sigma_next) if sigma_next > 0 else -1.0
        scale = (1 + sigma_next**2) ** 0.5
        x = report(callback, i, steps, t_next, x_next / scale, x0) * scale
    return x


def _solver(*, heun: bool) -> SamplerFn:
    """The sampler function over Karras sigmas; `rho` bends the σ grid towards low noise."""

    def solve(
        denoise: DenoiseFn,
        x: Tensor,
        schedule: NoiseSchedule,
        steps: int,
        *,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
        rho: float = 7.0,
    ) -> Tensor:
        return run_karras(denoise, x, schedule, steps, rho, callback, heun=heun)

    return solve


# (name, Heun's correction, summary): Euler is first order, one call per step; Heun second order, two
# calls per step except the last (Euler to σ = 0): NFE = 2 · steps - 1
VARIANTS = (
    ("euler", False, "Euler on the probability-flow ODE, Karras sigmas (Karras et al. 2022)"),
    ("heun", True, "Heun (2nd order) on the probability-flow ODE, Karras sigmas (Karras et al. 2022)"),
)
for _name, _heun, _summary in VARIANTS:
    register(_name, stochastic=False, summary=_summary, options=("rho",))(_solver(heun=_heun))
