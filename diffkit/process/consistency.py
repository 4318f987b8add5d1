"""A consistency student's parametrisation: its teacher's process with the boundary condition f(x, σ_min) = x.

Song et al. 2023 write a consistency function f(x, σ) = c_skip(σ) x + c_out(σ) F(x, σ) with c_skip(σ_min) = 1 and
c_out(σ_min) = 0, so that f is the identity at the least noise. Here the inner part is the process's own denoiser
D (the teacher's parametrisation, so a student that starts from the teacher's weights starts as the teacher):
in EDM terms (x = x0 + σ ε = x_vp / sqrt(ᾱ), σ = sqrt((1 - ᾱ) / ᾱ))

    f(x, σ) = (σ_min / σ) x + (1 - σ_min / σ) D(x; σ).

With EDM's D this is c_out = (σ - σ_min) σ_d / sqrt(σ² + σ_d²), Song et al.'s own, and a c_skip within O(σ_min / σ)
of theirs. In the VP domain (σ_min / σ) x = σ_min x_vp / sqrt(1 - ᾱ), finite at ᾱ = 0 (flow's pure noise).
σ_min is the grid's least noisy point (position 0): there f returns x = x_vp / sqrt(ᾱ_0) exactly.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from diffkit.denoiser import Prediction
from diffkit.errors import DiffkitError
from diffkit.process.base import DiffusionProcess, Example
from diffkit.schedules import NoiseSchedule


class ConsistencyProcess(DiffusionProcess):
    """`inner` with x̂0 replaced by the consistency function f above; everything else is `inner`'s."""

    name: ClassVar[str] = "consistency"
    summary: ClassVar[str] = "a consistency student: its teacher's process with f(x, σ_min) = x (Song et al. 2023)"

    def __init__(self, inner: DiffusionProcess) -> None:
        self.inner = inner
        # ᾱ_0 as the samplers and the Denoiser see it (float32), so that r below is exactly 0 there
        ab0 = float(inner.grid.alpha_bar[0].float())
        if not 0.0 < ab0 < 1.0:
            raise DiffkitError(
                f"the grid's least noisy point has ᾱ = {ab0:g}: a consistency student needs 0 < ᾱ < 1 there "
                "(σ_min > 0); distil a run whose schedule starts with some noise"
            )
        self.snr_min = ab0 / (1.0 - ab0)  # 1 / σ_min²
        self.sigma_min = math.sqrt((1.0 - ab0) / ab0)

    @property
    def grid(self) -> NoiseSchedule:
        return self.inner.grid

    def draw_levels(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        return self.inner.draw_levels(n, generator, device)

    def path(self, level: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner.path(level)

    def example(self, x0: Tensor, level: Tensor, noise: Tensor) -> Example:
        return self.inner.example(x0, level, noise)

    def network_inputs(self, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner.network_inputs(x_vp, t, alpha_bar)

    def grid_levels(self) -> Tensor:
        return self.inner.grid_levels()

    def mix(self, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
        """(skip, r) with f = skip · x_vp + r · D: skip = σ_min / sqrt(1 - ᾱ), r = 1 - σ_min / σ (float64 maths;
        σ_min / σ as sqrt(SNR / SNR_min), which is exactly 1 at ᾱ_0)."""
        ab = alpha_bar.double()
        skip = self.sigma_min / (1 - ab).sqrt()
        r = 1 - (ab / (1 - ab) / self.snr_min).sqrt()
        return skip.to(alpha_bar.dtype), r.to(alpha_bar.dtype)

    def predict(self, output: Tensor, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> Prediction:
        skip, r = self.mix(alpha_bar)
        x0 = skip * x_vp + r * self.inner.predict(output, x_vp, t, alpha_bar).x0
        return Prediction(x0, (x_vp - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt())

    def output_for(self, x0: Tensor, x_vp: Tensor, t: Tensor, alpha_bar: Tensor) -> Tensor:
        skip, r = self.mix(alpha_bar)  # r = 0 at σ_min, where f ignores the network: any output will do there
        return self.inner.output_for((x0 - skip * x_vp) / r.clamp_min(1e-12), x_vp, t, alpha_bar)

    def describe(self) -> str:
        return f"{self.inner.describe()}; consistency student, f(x, σ_min = {self.sigma_min:.3g}) = x"
