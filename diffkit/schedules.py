"""Noise schedules: numbers only (no networks).

Discrete variance-preserving diffusion with T steps, indexed t = 0 .. T-1:
    q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I),   ᾱ_t = prod_{s<=t} (1 - β_s).
The same process seen as x_0 + σ ε ("variance exploding" form used by Karras-style samplers) has
σ_t = sqrt((1 - ᾱ_t) / ᾱ_t); a state x_σ maps to x_t = x_σ / sqrt(1 + σ²).
Everything is computed in float64 and handed out as float32 for the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from diffkit.choices import SCHEDULE_KINDS, SPACINGS, ScheduleKind, Spacing
from diffkit.errors import DiffkitError

__all__ = ["SCHEDULE_KINDS", "SPACINGS", "NoiseSchedule", "ScheduleKind", "Spacing"]

ZTSNR_SUFFIX = " (ZTSNR)"  # names the zero-terminal-SNR variant of a schedule in plots and tables
MAX_BETA = 0.999  # Nichol & Dhariwal clip, avoids a singular last step


def sigma_of(alpha_bar: Tensor) -> Tensor:
    """σ = sqrt((1 - ᾱ)/ᾱ), the noise level of the x_0 + σ ε form (inf where ᾱ = 0): one number for every process."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al. 2020: β rises linearly."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def betas_from_alpha_bar_fn(timesteps: int, alpha_bar: Callable[[Tensor], Tensor]) -> Tensor:
    """β_t = 1 - ᾱ(t+1)/ᾱ(t) for a continuous ᾱ on [0, 1], clipped at MAX_BETA."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    values = alpha_bar(t)
    betas = 1.0 - values[1:] / values[:-1]
    return betas.clamp(0.0, MAX_BETA)


def cosine_alpha_bar(t: Tensor, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal 2021: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t + s)/(1 + s)) π/2)."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def sigmoid_alpha_bar(t: Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> Tensor:
    """Jabri et al. 2022 / Chen 2023: ᾱ(t) = (σ(end/τ) - σ((t(end-start)+start)/τ)) / (σ(end/τ) - σ(start/τ))."""
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    v = torch.sigmoid((t * (end - start) + start) / tau)
    return (v_end - v) / (v_end - v_start)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(ᾱ) so the last step has SNR exactly 0."""
    sqrt_ab = torch.cumprod(1.0 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


@dataclass(frozen=True)
class NoiseSchedule:
    """All per-timestep quantities of a discrete schedule (float64 tensors of length T).

    Each table is computed once, on first use, and kept (the betas never change): samplers, the
    denoiser and training read them on every call.
    """

    betas: Tensor

    @classmethod
    def create(
        cls,
        kind: ScheduleKind = "cosine",
        timesteps: int = 1000,
        *,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        cosine_s: float = 0.008,
        sigmoid_start: float = -3.0,
        sigmoid_end: float = 3.0,
        sigmoid_tau: float = 1.0,
        zero_terminal_snr: bool = False,
    ) -> NoiseSchedule:
        if kind == "linear":
            betas = linear_betas(timesteps, beta_start, beta_end)
        elif kind == "cosine":
            betas = betas_from_alpha_bar_fn(timesteps, lambda t: cosine_alpha_bar(t, cosine_s))
        elif kind == "sigmoid":
            betas = betas_from_alpha_bar_fn(
                timesteps, lambda t: sigmoid_alpha_bar(t, sigmoid_start, sigmoid_end, sigmoid_tau)
            )
        else:
            raise ValueError(f"unknown schedule {kind!r}")
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas)

    @classmethod
    def from_alpha_bar(cls, alpha_bar: Tensor) -> NoiseSchedule:
        """The discrete schedule through given ᾱ values (decreasing, in (0, 1]; a last 0 is zero terminal SNR):
        how a continuous-time process lays out the grid its samplers step on."""
        ab = alpha_bar.to(torch.float64)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return cls(1.0 - ab / prev)

    # --- per-step quantities -------------------------------------------------------------------
    @property
    def timesteps(self) -> int:
        return self.betas.shape[0]

    @cached_property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas

    @cached_property
    def alpha_bar(self) -> Tensor:
        return torch.cumprod(self.alphas, 0)

    @cached_property
    def alpha_bar_prev(self) -> Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])

    @cached_property
    def snr(self) -> Tensor:
        """Signal-to-noise ratio ᾱ / (1 - ᾱ)."""
        ab = self.alpha_bar
        return ab / (1.0 - ab)

    @cached_property
    def log_snr(self) -> Tensor:
        return torch.log(self.snr)

    @cached_property
    def sigmas(self) -> Tensor:
        """σ_t of every step (`sigma_of`)."""
        return sigma_of(self.alpha_bar)

    @cached_property
    def posterior_variance(self) -> Tensor:
        """β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t), the variance of q(x_{t-1} | x_t, x_0)."""
        return self.betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)

    # --- forward process and posterior ---------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) with the given standard normal noise; integer t reads the table,
        fractional t (Karras samplers' levels) interpolates as `alpha_bar_at` does."""
        if t.is_floating_point():
            ab = self.alpha_bar_at(t.cpu()).to(x0.device, x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        else:
            ab = gather(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7)."""
        ab, ab_prev = gather(self.alpha_bar, t, x_t), gather(self.alpha_bar_prev, t, x_t)
        beta, alpha = gather(self.betas, t, x_t), gather(self.alphas, t, x_t)
        mean = (beta * ab_prev.sqrt() / (1.0 - ab)) * x0 + ((1.0 - ab_prev) * alpha.sqrt() / (1.0 - ab)) * x_t
        return mean, gather(self.posterior_variance, t, x_t)

    # --- continuous time (fractional t and σ) ----------------------------------------------------
    def alpha_bar_at(self, t: Tensor) -> Tensor:
        """ᾱ at (possibly fractional) timesteps, interpolating log σ linearly between integers.

        t = -1 means "before the first step" (ᾱ = 1), which the samplers use for their final step.
        """
        t = t.to(torch.float64)
        out = torch.ones_like(t)
        inside = t >= 0
        if inside.any():
            log_sigma = torch.log(self.sigmas)
            ti = t[inside].clamp(0, self.timesteps - 1)
            lo = ti.floor().long()
            hi = (lo + 1).clamp(max=self.timesteps - 1)
            w = ti - lo
            # exact at integers, so an infinite σ (zero terminal SNR) never meets a zero weight
            ls = torch.where(w == 0, log_sigma[lo], (1 - w) * log_sigma[lo] + w * log_sigma[hi])
            out[inside] = 1.0 / (1.0 + torch.exp(2 * ls))
        return out

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional timestep whose σ equals `sigma` (inverse of log-linear interpolation)."""
        log_sigmas = torch.log(self.sigmas)
        ls = torch.log(sigma.to(torch.float64)).clamp(log_sigmas[0], log_sigmas[-1])
        hi = torch.searchsorted(log_sigmas, ls.reshape(-1)).clamp(1, self.timesteps - 1).reshape(ls.shape)
        lo = hi - 1
        w = (ls - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        return lo + w.clamp(0, 1)

    def karras_sigmas(self, steps: int, rho: float = 7.0) -> Tensor:
        """Karras et al. 2022 noise levels from σ_max down to σ_min, followed by a final 0."""
        finite = self.sigmas[torch.isfinite(self.sigmas)]
        s_min, s_max = float(finite[0]), float(finite[-1])
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        inv = s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))
        return torch.cat([inv**rho, torch.zeros(1, dtype=torch.float64)])

    def spaced_timesteps(self, steps: int, spacing: Spacing = "leading") -> Tensor:
        """`steps` timesteps from noisiest to cleanest; every grid ends at t = 0 except `trailing`.

        `leading`, `trailing` and `linspace` are the grids of diffusers' DDIM/DDPM/PNDM `timestep_spacing`;
        its DPM-Solver and UniPC schedulers build theirs differently (never visiting t = 0), and `logsnr`
        is diffkit's own. Each sampler has its own default (see `samplers.default_spacing`).

        leading  — multiples of T // steps starting at 0 (DDIM's original choice);
        trailing — counted back from T - 1 in strides of T / steps (reaches the last step, which
                   zero-terminal-SNR schedules need);
        linspace — evenly spaced from 0 to T - 1, rounded;
        logsnr   — from T - 1 to 0, evenly spaced in log-SNR (see `logsnr_timesteps`).
        """
        T = self.timesteps
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be between 1 and T={T}, got {steps}")
        if spacing == "leading":
            ts = torch.arange(steps, dtype=torch.float64) * (T // steps)
        elif spacing == "trailing":
            # T - k·T/steps for k < steps: a float arange with step -T/steps can overshoot by one
            # element (e.g. T=50, steps=29 gave 30 timesteps ending in -1)
            ts = torch.round(T - torch.arange(steps, dtype=torch.float64) * (T / steps)) - 1
            return ts.long()
        elif spacing == "linspace":
            ts = torch.round(torch.linspace(0, T - 1, steps, dtype=torch.float64))
        elif spacing == "logsnr":
            return self.logsnr_timesteps(steps)
        else:
            raise ValueError(f"unknown spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
        return ts.long().flip(0)

    def logsnr_timesteps(self, steps: int) -> Tensor:
        """`steps` distinct timesteps from T - 1 down to 0 whose log-SNR is as evenly spaced as integers allow.

        Multistep solvers such as DPM-Solver++ work in λ = log-SNR; on a grid even in t the last jump
        in λ is much larger than the others, on this grid every jump is about the same. Each target
        λ takes its nearest timestep; where rounding makes two equal (near the ends, where λ moves
        fastest) they are pushed apart by one, so there are always exactly `steps` of them. With a
        zero-terminal-SNR schedule (λ = -∞ at T - 1) the targets span the finite range and the first
        timestep is still T - 1.
        """
        T = self.timesteps
        lam = self.log_snr
        finite_end = T - 1 if torch.isfinite(lam[-1]) else T - 2
        targets = torch.linspace(float(lam[finite_end]), float(lam[0]), steps, dtype=torch.float64)
        nearest = (lam[: finite_end + 1, None] - targets[None, :]).abs().argmin(0)  # ascending in λ
        ts = nearest.flip(0).tolist()  # ascending in t
        ts[-1] = T - 1
        for i in range(1, steps):  # strictly increasing from the clean end ...
            ts[i] = max(ts[i], ts[i - 1] + 1)
        for i in range(steps - 1, -1, -1):  # ... and no further than T - 1 at the noisy end
            ts[i] = min(ts[i], T - steps + i)
        return torch.tensor(ts, dtype=torch.long).flip(0)


def named_schedules(names: list[str], timesteps: int, *, zero_terminal_snr: bool = False) -> dict[str, NoiseSchedule]:
    """Each named schedule with default parameters, plus its zero-terminal-SNR variant when asked."""
    if not 2 <= timesteps <= 100_000:
        raise DiffkitError(f"--timesteps {timesteps} is out of range: use 2 to 100000")
    out = {}
    for name in names:
        if name not in SCHEDULE_KINDS:
            raise DiffkitError(f"unknown schedule {name!r}: choose from {', '.join(SCHEDULE_KINDS)}")
        out[name] = NoiseSchedule.create(name, timesteps)  # type: ignore[arg-type]
        if zero_terminal_snr:
            out[name + ZTSNR_SUFFIX] = NoiseSchedule.create(name, timesteps, zero_terminal_snr=True)  # type: ignore[arg-type]
    return out


def schedule_curves(schedule: NoiseSchedule) -> dict[str, Tensor]:
    """The per-timestep quantities worth plotting, by name (float64, length T)."""
    ab = schedule.alpha_bar
    return {
        "beta": schedule.betas,
        "alpha_bar": ab,
        "sqrt_alpha_bar": ab.sqrt(),
        "sqrt_one_minus_alpha_bar": (1.0 - ab).sqrt(),
        "log_snr": schedule.log_snr,
    }


def schedule_key_values(schedule: NoiseSchedule) -> dict[str, float]:
    """ᾱ after a quarter, half and three quarters of the T noising steps, and the SNR after the last one.

    Steps count from 1 as in Ho et al. (ᾱ after k steps is alpha_bar[k - 1]), so for the cosine
    schedule ᾱ(T/2) is exactly its continuous ᾱ(1/2).
    """
    T, ab = schedule.timesteps, schedule.alpha_bar
    at = {label: float(ab[max(round(q * T), 1) - 1]) for label, q in (("T/4", 0.25), ("T/2", 0.5), ("3T/4", 0.75))}
    return {**{f"alpha_bar({k})": v for k, v in at.items()}, "terminal_snr": float(schedule.snr[-1])}


def gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] as float32, shaped (N, 1, 1, 1) to broadcast against an image batch `like`."""
    out = values.to(like.device)[t.long()].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))
