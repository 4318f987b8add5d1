"""`flow`: rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022; Esser et al. 2024).

x_t = (1 - t) x0 + t ε for t in [0, 1]; the network sees x_t and 1000 t and predicts the velocity
v = dx_t/dt = ε - x0, so x̂0 = x_t - t v̂ and ε̂ = x_t + (1 - t) v̂. Training draws t logit-normally
(Esser et al. 2024: sigmoid of N(m, s²), which favours the middle) or uniformly; the loss is the plain MSE on v.
Its grid is t = 1/T .. 1, ending at pure noise (ᾱ = 0, as zero-terminal-SNR schedules do).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from diffkit.choices import TimeDistribution
from diffkit.denoiser import Prediction
from diffkit.process.base import GRID_POINTS, NOISE_INPUT_SCALE, ContinuousProcess, Level
from diffkit.schedules import NoiseSchedule


class FlowProcess(ContinuousProcess):
    name: ClassVar[str] = "flow"
    summary: ClassVar[str] = "rectified flow: (1 - t) x0 + tε, the network predicts the velocity ε - x0"

    def __init__(
        self, t_distribution: TimeDistribution = "logit-normal", logit_mean: float = 0.0, logit_std: float = 1.0
    ) -> None:
        self.t_distribution: TimeDistribution = t_distribution
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self._grid = self._grid_from_levels(torch.arange(1, GRID_POINTS + 1, dtype=torch.float64) / GRID_POINTS)

    @property
    def grid(self) -> NoiseSchedule:
        return self._grid

    def draw_levels(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        if self.t_distribution == "uniform":
            return torch.rand(n, generator=generator, device=device)
        z = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(self.logit_mean + self.logit_std * z)

    def path(self, level: Tensor) -> tuple[Tensor, Tensor]:
        t = level.to(torch.float64)
        return 1 - t, t

    def level_of(self, alpha_bar: Tensor) -> Tensor:
        # (1 - t) / t = sqrt(ᾱ / (1 - ᾱ)), written to stay exact at ᾱ = 0 (t = 1) and ᾱ = 1 (t = 0)
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        return s / (a + s)

    def noise_input(self, level: Tensor) -> Tensor:
        return level.to(torch.float64) * NOISE_INPUT_SCALE

    def input_scale(self, level: Tensor) -> Tensor:
        return torch.ones_like(level, dtype=torch.float64)

    def split(self, output: Tensor, x: Tensor, at: Level) -> Prediction:
        return Prediction(x - at.level * output, x + (1 - at.level) * output)

    def target(self, x0: Tensor, eps: Tensor, x: Tensor, at: Level) -> Tensor:
        return eps - x0

    def describe(self) -> str:
        draw = (
            "uniform t"
            if self.t_distribution == "uniform"
            else f"logit-normal t (m {self.logit_mean:g}, s {self.logit_std:g})"
        )
        return f"flow: velocity ε - x0, training draws {draw}"
