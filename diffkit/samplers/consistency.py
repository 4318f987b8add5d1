"""Multistep consistency sampling (Song et al. 2023, Algorithm 1), the sampler of consistency students.

Each step takes the denoiser's x̂0 (a consistency student's x̂0 is its consistency function f, which maps any
point of a trajectory to its start) and puts fresh noise on it at the next level: x_t' = sqrt(ᾱ_t') x̂0 +
sqrt(1 - ᾱ_t') z, a DDIM update whose ε is new noise. The last step returns x̂0 itself. Song et al. add
noise of variance τ² - σ_min² to f (f already carries σ_min); in the VP domain that difference is below
σ_min² ≈ 1e-5 and is left out. On an ordinary diffusion model it works as well: one denoising pass per
level, as a (blurrier) few-step sampler.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffkit.denoiser import Prediction
from diffkit.samplers.loop import DiscreteStep, alpha_bar, ddim_update, noise_like, register_discrete
from diffkit.schedules import NoiseSchedule


@register_discrete(
    "consistency",
    spacing="trailing",  # the first step starts at T - 1 (pure noise), as one-step generation does
    stochastic=True,
    summary="multistep consistency sampling (Song et al. 2023): x̂0, then fresh noise to the next level",
)
def consistency_step(schedule: NoiseSchedule, generator: torch.Generator | None) -> DiscreteStep:
    """Denoise to x̂0, re-noise to the next level with fresh noise; the last step returns x̂0."""

    def step(x: Tensor, pred: Prediction, t: int, t_next: int) -> tuple[Tensor, Tensor]:
        if t_next < 0:
            return pred.x0, pred.x0
        return ddim_update(pred.x0, noise_like(x, generator), alpha_bar(schedule, t_next)), pred.x0

    return step
