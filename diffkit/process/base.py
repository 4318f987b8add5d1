"""What every process provides (`DiffusionProcess`) and what the continuous ones share (`ContinuousProcess`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from diffkit.denoiser import Prediction
from diffkit.schedules import NoiseSchedule

GRID_POINTS = 1000  # ᾱ values on a continuous process's sampling grid (the most steps a sampler can take)
NOISE_INPUT_SCALE = 1000.0  # the UNet's time embedding was made for inputs spanning about 0 .. 1000


class Example(NamedTuple):
    """One training batch as the network meets it: its inputs, the output it should give, the loss weight."""

    x_in: Tensor  # (N, C, H, W)
    noise_input: Tensor  # (N,) c_noise
    target: Tensor  # (N, C, H, W)
    weight: Tensor | None  # (N,) per-sample loss weight, None = 1


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """(N,) values shaped (N, 1, 1, 1) in `like`'s dtype, to broadcast against an image batch."""
    return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class DiffusionProcess(ABC):
    """A formulation: the path, the training draw, the parametrisation, the loss weight, the noise-level input."""

    name: ClassVar[str]
    summary: ClassVar[str]

    @property
    @abstractmethod
    def grid(self) -> NoiseSchedule:
        """The ᾱ grid samplers step on (its `timesteps` bounds the steps a sampler may take)."""

    # --- training --------------------------------------------------------------------------------
    @abstractmethod
    def draw_levels(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """`n` training noise levels, from `generator` only (so a resumed run draws the same)."""

    @abstractmethod
    def path(self, level: Tensor) -> tuple[Tensor, Tensor]:
        """α and σ (float64, shaped as `level`) of x = α x0 + σ ε."""

    @abstractmethod
    def example(self, x0: Tensor, level: Tensor, noise: Tensor) -> Example:
        """Clean images noised to `level` with `noise`: the network's inputs, its target and the loss weight."""

    # --- sampling, in the variance-preserving domain -----------------------------------------------
    @abstractmethod
    def network_inputs(self, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
        """(x_in, c_noise) for VP states at grid positions `t` (fractional) whose ᾱ is `alpha_bar` (N, 1, 1, 1)."""

    @abstractmethod
    def predict(self, output: Tensor, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> Prediction:
        """The network's output at those states -> (x̂0, ε̂)."""

    @abstractmethod
    def output_for(self, x0: Tensor, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> Tensor:
        """The output that `predict` turns into this x̂0 (the inverse of `predict`): a target from a clean image."""

    def grid_levels(self) -> Tensor:
        """The process's own level at each grid point (vp: the timesteps themselves)."""
        return torch.arange(self.grid.timesteps, dtype=torch.float64)

    def describe(self) -> str:
        """One line for start-up messages and the app."""
        return f"{self.name}: {self.summary}"


@dataclass(frozen=True)
class Level:
    """A continuous process's level at VP states: α and σ of its own state x = scale · x_vp."""

    level: Tensor  # (N, 1, 1, 1)
    alpha: Tensor
    sigma: Tensor

    @property
    def scale(self) -> Tensor:
        return (self.alpha**2 + self.sigma**2).sqrt()


class ContinuousProcess(DiffusionProcess):
    """A process with a continuous level: it maps ᾱ to its level, and its own state to and from x_vp."""

    @abstractmethod
    def level_of(self, alpha_bar: Tensor) -> Tensor:
        """The level whose ᾱ = α² / (α² + σ²) is `alpha_bar` (the grid's ᾱ, any shape)."""

    @abstractmethod
    def noise_input(self, level: Tensor) -> Tensor:
        """c_noise for levels (N,)."""

    @abstractmethod
    def input_scale(self, level: Tensor) -> Tensor:
        """c_in for levels (N,): the network sees c_in · x."""

    @abstractmethod
    def split(self, output: Tensor, x: Tensor, at: Level) -> Prediction:
        """Output at own states x -> (x̂0, ε̂)."""

    @abstractmethod
    def target(self, x0: Tensor, eps: Tensor, x: Tensor, at: Level) -> Tensor:
        """The output a perfect network gives for the pair (x0, ε) at own states x."""

    def grid_levels(self) -> Tensor:
        return self.level_of(self.grid.alpha_bar)

    def _at_alpha_bar(self, alpha_bar: Tensor, like: Tensor) -> Level:
        level = self.level_of(alpha_bar.to(torch.float64).reshape(-1))
        alpha, sigma = self.path(level)
        return Level(per_sample(level, like), per_sample(alpha, like), per_sample(sigma, like))

    def _at_level(self, level: Tensor, like: Tensor) -> Level:
        alpha, sigma = self.path(level)
        return Level(per_sample(level.double(), like), per_sample(alpha, like), per_sample(sigma, like))

    def example(self, x0: Tensor, level: Tensor, noise: Tensor) -> Example:
        at = self._at_level(level, x0)
        x = at.alpha * x0 + at.sigma * noise
        x_in = per_sample(self.input_scale(level), x0) * x
        return Example(x_in, self.noise_input(level).to(x0), self.target(x0, noise, x, at), None)

    def network_inputs(self, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
        at = self._at_alpha_bar(alpha_bar, x_vp)
        level = at.level.reshape(-1)
        x_in = per_sample(self.input_scale(level), x_vp) * (x_vp * at.scale)
        return x_in, self.noise_input(level).to(x_vp.device, torch.float32)

    def predict(self, output: Tensor, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> Prediction:
        at = self._at_alpha_bar(alpha_bar, x_vp)
        return self.split(output, x_vp * at.scale, at)

    def output_for(self, x0: Tensor, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> Tensor:
        at = self._at_alpha_bar(alpha_bar, x_vp)
        x = x_vp * at.scale
        eps = (x - at.alpha * x0) / at.sigma
        return self.target(x0, eps, x, at)

    def _grid_from_levels(self, levels: Tensor) -> NoiseSchedule:
        """The grid through levels ordered from least to most noise."""
        alpha, sigma = self.path(levels.to(torch.float64))
        return NoiseSchedule.from_alpha_bar(alpha**2 / (alpha**2 + sigma**2))
