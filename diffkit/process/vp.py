"""`vp`: the discrete variance-preserving chain of DDPM (Ho et al. 2020), T integer timesteps.

x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε; training draws t uniformly from 0 .. T-1; the network sees x_t and t
itself and predicts ε, x0 or v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x0; the loss is optionally weighted by min-SNR-γ.
Its grid is its own schedule, and its state is already the VP state: runs trained before processes existed
are this process, and sample the same pixels as they did.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from diffkit.choices import Objective
from diffkit.denoiser import Prediction
from diffkit.process.base import DiffusionProcess, Example
from diffkit.schedules import NoiseSchedule, gather

# ------------------------------------------------------------------------------ objective algebra
# With x_t = a x0 + s ε (a = sqrt(ᾱ), s = sqrt(1 - ᾱ), a² + s² = 1) and v = a ε - s x0:
#   x0 = (x_t - s ε) / a,   ε = (x_t - a x0) / s,   x0 = a x_t - s v,   ε = s x_t + a v.


def training_target(objective: Objective, x0: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """What the network is trained to output for clean images x0 noised with eps."""
    if objective == "eps":
        return eps
    if objective == "x0":
        return x0
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return a * eps - s * x0


def split_prediction(objective: Objective, output: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Prediction:
    """Network output -> (x̂0, ε̂). alpha_bar broadcasts against x_t."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if objective == "eps":
        return Prediction((x_t - s * output) / a.clamp_min(1e-8), output)
    if objective == "x0":
        return Prediction(output, (x_t - a * output) / s.clamp_min(1e-8))
    return Prediction(a * x_t - s * output, s * x_t + a * output)


def min_snr_weight(objective: Objective, snr: Tensor, gamma: float) -> Tensor:
    """Hang et al. 2023: per-sample loss weight min(SNR, γ) expressed for each objective's loss.

    For an ε loss the x0-space weight min(SNR, γ) becomes min(SNR, γ)/SNR; for v it is
    min(SNR, γ)/(SNR + 1); for x0 it is min(SNR, γ).
    """
    clipped = snr.clamp(max=gamma)
    if objective == "eps":
        return clipped / snr
    if objective == "v":
        return clipped / (snr + 1)
    return clipped


class VPProcess(DiffusionProcess):
    name: ClassVar[str] = "vp"
    summary: ClassVar[str] = "DDPM's discrete variance-preserving chain (ε / x0 / v objective)"

    def __init__(self, schedule: NoiseSchedule, objective: Objective = "eps", min_snr_gamma: float | None = None):
        self.schedule = schedule
        self.objective: Objective = objective
        self.min_snr_gamma = min_snr_gamma

    @property
    def grid(self) -> NoiseSchedule:
        return self.schedule

    def draw_levels(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        return torch.randint(0, self.schedule.timesteps, (n,), generator=generator, device=device)

    def path(self, level: Tensor) -> tuple[Tensor, Tensor]:
        ab = self.schedule.alpha_bar_at(level.cpu().double()).to(level.device)
        return ab.sqrt(), (1 - ab).sqrt()

    def example(self, x0: Tensor, level: Tensor, noise: Tensor) -> Example:
        x_t = self.schedule.q_sample(x0, level, noise)
        target = training_target(self.objective, x0, noise, gather(self.schedule.alpha_bar, level, x0))
        weight = None
        if self.min_snr_gamma:
            snr = gather(self.schedule.snr, level, x0).reshape(-1)
            weight = min_snr_weight(self.objective, snr, self.min_snr_gamma)
        return Example(x_t, level, target, weight)

    def network_inputs(self, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
        return x_vp, t  # the network was trained on the timestep itself

    def predict(self, output: Tensor, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> Prediction:
        return split_prediction(self.objective, output, x_vp, alpha_bar)

    def output_for(self, x0: Tensor, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> Tensor:
        eps = (x_vp - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt().clamp_min(1e-8)
        return training_target(self.objective, x0, eps, alpha_bar)

    def describe(self) -> str:
        weight = f", min-SNR-γ {self.min_snr_gamma:g}" if self.min_snr_gamma else ""
        return f"vp: T = {self.schedule.timesteps}, predicts {self.objective}{weight}"
