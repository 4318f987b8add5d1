"""`edm`: Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models").

x = x0 + σ ε. The denoiser is D(x; σ) = c_skip x + c_out F(c_in x, c_noise) with
c_skip = σ_d² / (σ² + σ_d²), c_out = σ σ_d / sqrt(σ² + σ_d²), c_in = 1 / sqrt(σ² + σ_d²), and
c_noise = ln(σ) / 4 (times 1000, the range our time embedding expects). Training draws ln σ ~ N(P_mean, P_std²)
and weights ||D - x0||² by λ(σ) = 1 / c_out², which is the plain MSE between F and (x0 - c_skip x) / c_out.
Its grid holds σ log-uniformly from σ_min to σ_max, so Euler/Heun on Karras σ are EDM's own samplers.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from diffkit.denoiser import Prediction
from diffkit.process.base import GRID_POINTS, NOISE_INPUT_SCALE, ContinuousProcess, Level
from diffkit.schedules import NoiseSchedule, sigma_of


class EDMProcess(ContinuousProcess):
    name: ClassVar[str] = "edm"
    summary: ClassVar[str] = "Karras et al. 2022: x0 + σε, preconditioned denoiser, log-normal σ in training"

    def __init__(
        self,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
    ) -> None:
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        levels = torch.linspace(math.log(sigma_min), math.log(sigma_max), GRID_POINTS, dtype=torch.float64).exp()
        self._grid = self._grid_from_levels(levels)

    @property
    def grid(self) -> NoiseSchedule:
        return self._grid

    def draw_levels(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        z = torch.randn(n, generator=generator, device=device)
        return (self.p_mean + self.p_std * z).exp()

    def path(self, level: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(level, dtype=torch.float64), level.to(torch.float64)

    def level_of(self, alpha_bar: Tensor) -> Tensor:
        return sigma_of(alpha_bar)

    def noise_input(self, level: Tensor) -> Tensor:
        return level.to(torch.float64).log() / 4 * NOISE_INPUT_SCALE

    def input_scale(self, level: Tensor) -> Tensor:
        return 1 / (level.to(torch.float64) ** 2 + self.sigma_data**2).sqrt()

    def _skip_out(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        total = sigma**2 + self.sigma_data**2
        return self.sigma_data**2 / total, sigma * self.sigma_data / total.sqrt()

    def split(self, output: Tensor, x: Tensor, at: Level) -> Prediction:
        c_skip, c_out = self._skip_out(at.sigma)
        x0 = c_skip * x + c_out * output
        return Prediction(x0, (x - x0) / at.sigma)

    def target(self, x0: Tensor, eps: Tensor, x: Tensor, at: Level) -> Tensor:
        c_skip, c_out = self._skip_out(at.sigma)
        return (x0 - c_skip * x) / c_out

    def describe(self) -> str:
        return (
            f"edm: σ_data {self.sigma_data:g}, training ln σ ~ N({self.p_mean:g}, {self.p_std:g}²), "
            f"sampling σ {self.sigma_min:g} .. {self.sigma_max:g}"
        )
