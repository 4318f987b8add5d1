"""Noise schedules against their closed forms (each written out again here from the papers)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from diffkit.schedules import MAX_BETA, NoiseSchedule

F64 = torch.float64


def _unclipped(schedule: NoiseSchedule) -> int:
    """Number of leading steps before the first β clipped at MAX_BETA (ᾱ is exact up to there)."""
    clipped = (schedule.betas >= MAX_BETA).nonzero()
    return int(clipped[0]) if len(clipped) else schedule.timesteps


# ------------------------------------------------------------------------------------ kinds


def test_cosine_alpha_bar_is_the_cos2_formula() -> None:
    """Nichol & Dhariwal 2021: ᾱ_t = f((t + 1)/T) / f(0), f(u) = cos²((u + s)/(1 + s) · π/2)."""
    T, s = 1000, 0.008
    schedule = NoiseSchedule.create("cosine", T, cosine_s=s)

    def f(u: Tensor) -> Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    expected = f(torch.arange(1, T + 1, dtype=F64) / T) / f(torch.zeros(1, dtype=F64))
    n = _unclipped(schedule)
    assert n >= T - 5  # only the very last steps hit the 0.999 clip
    torch.testing.assert_close(schedule.alpha_bar[:n], expected[:n], rtol=1e-10, atol=1e-12)
    assert float(schedule.betas.max()) <= MAX_BETA


def test_linear_betas_run_from_start_to_end() -> None:
    schedule = NoiseSchedule.create("linear", 1000)
    assert float(schedule.betas[0]) == pytest.approx(1e-4)
    assert float(schedule.betas[-1]) == pytest.approx(0.02)
    steps = schedule.betas.diff()
    torch.testing.assert_close(steps, torch.full_like(steps, (0.02 - 1e-4) / 999))
    custom = NoiseSchedule.create("linear", 10, beta_start=0.001, beta_end=0.1)
    assert float(custom.betas[0]) == pytest.approx(0.001) and float(custom.betas[-1]) == pytest.approx(0.1)


@pytest.mark.parametrize(("start", "end", "tau"), [(-3.0, 3.0, 1.0), (0.0, 3.0, 0.7)])
def test_sigmoid_alpha_bar_is_the_sigmoid_formula(start: float, end: float, tau: float) -> None:
    """ᾱ(u) = (sig(end/τ) - sig((u (end - start) + start)/τ)) / (sig(end/τ) - sig(start/τ)), u = (t + 1)/T."""
    T = 200
    schedule = NoiseSchedule.create("sigmoid", T, sigmoid_start=start, sigmoid_end=end, sigmoid_tau=tau)

    def sig(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    top, bottom = sig(end / tau), sig(start / tau)
    expected = torch.tensor(
        [(top - sig(((t + 1) / T * (end - start) + start) / tau)) / (top - bottom) for t in range(T)], dtype=F64
    )
    n = _unclipped(schedule)
    assert n >= T - 3
    torch.testing.assert_close(schedule.alpha_bar[:n], expected[:n], rtol=1e-9, atol=1e-12)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        NoiseSchedule.create("quadratic", 10)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["linear", "cosine", "sigmoid"])
def test_zero_terminal_snr(kind: str) -> None:
    """Lin et al. 2023: sqrt(ᾱ) shifted and scaled so ᾱ_{T-1} = 0 exactly while ᾱ_0 stays put."""
    plain = NoiseSchedule.create(kind, 1000)  # type: ignore[arg-type]
    rescaled = NoiseSchedule.create(kind, 1000, zero_terminal_snr=True)  # type: ignore[arg-type]
    assert float(rescaled.alpha_bar[-1]) == 0.0 and float(rescaled.snr[-1]) == 0.0
    torch.testing.assert_close(rescaled.alpha_bar[0], plain.alpha_bar[0], rtol=1e-12, atol=0.0)
    old, new = plain.alpha_bar.sqrt(), rescaled.alpha_bar.sqrt()
    affine = (old - old[-1]) * old[0] / (old[0] - old[-1])
    torch.testing.assert_close(new, affine, rtol=1e-9, atol=1e-12)
    assert bool(((rescaled.betas > 0) & (rescaled.betas <= 1)).all()) and float(rescaled.betas[-1]) == 1.0
    assert torch.isinf(rescaled.sigmas[-1]) and torch.isfinite(rescaled.sigmas[:-1]).all()


# ------------------------------------------------------------------------------------ spacing


@pytest.mark.parametrize(
    ("T", "steps", "spacing", "expected"),
    [
        (10, 5, "leading", [8, 6, 4, 2, 0]),
        (10, 5, "trailing", [9, 7, 5, 3, 1]),
        (10, 5, "linspace", [9, 7, 4, 2, 0]),  # round(2.25, 4.5, 6.75) with halves to even, as numpy does
        (10, 4, "trailing", [9, 7, 4, 1]),  # 10 - k·2.5 = 10, 7.5, 5, 2.5, rounded, minus one
        (1000, 10, "leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        (1000, 10, "trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        (1000, 10, "linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
        (10, 10, "leading", list(range(9, -1, -1))),
    ],
)
def test_spaced_timesteps(T: int, steps: int, spacing: str, expected: list[int]) -> None:
    schedule = NoiseSchedule.create("linear", T)
    assert schedule.spaced_timesteps(steps, spacing).tolist() == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("T", [10, 50, 256, 1000])
def test_every_step_count_gives_that_many_distinct_timesteps(T: int) -> None:
    """Regression: trailing came from a float arange that could overshoot (T=50, steps=29 gave 30
    timesteps, the last -1)."""
    schedule = NoiseSchedule.create("linear", T)
    for steps in range(1, T + 1):
        for spacing in ("leading", "trailing", "linspace"):
            ts = schedule.spaced_timesteps(steps, spacing)
            assert len(ts) == steps and int(ts.min()) >= 0 and int(ts.max()) <= T - 1, (steps, spacing)
            assert bool((ts[:-1] > ts[1:]).all()), (steps, spacing)
        assert int(schedule.spaced_timesteps(steps, "trailing")[0]) == T - 1


def test_spacing_rejects_bad_input() -> None:
    schedule = NoiseSchedule.create("linear", 10)
    for steps in (0, 11):
        with pytest.raises(ValueError, match="steps"):
            schedule.spaced_timesteps(steps)
    with pytest.raises(ValueError, match="spacing"):
        schedule.spaced_timesteps(5, "uniform")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ σ and fractional t


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_karras_sigmas(zero_terminal_snr: bool) -> None:
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^(1/ρ) + i/(n-1) (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ, then 0."""
    schedule = NoiseSchedule.create("linear", 1000, zero_terminal_snr=zero_terminal_snr)
    finite = schedule.sigmas[torch.isfinite(schedule.sigmas)]
    for rho in (7.0, 3.0, 1.0):
        sigmas = schedule.karras_sigmas(10, rho)
        assert len(sigmas) == 11 and float(sigmas[-1]) == 0.0
        assert float(sigmas[0]) == pytest.approx(float(finite[-1]))
        assert float(sigmas[-2]) == pytest.approx(float(finite[0]))
        ramp = torch.arange(10, dtype=F64) / 9
        lo, hi = float(finite[0]) ** (1 / rho), float(finite[-1]) ** (1 / rho)
        torch.testing.assert_close(sigmas[:-1], (hi + ramp * (lo - hi)) ** rho)


def test_sigmas_and_snr_agree() -> None:
    schedule = NoiseSchedule.create("cosine", 100)
    ab = schedule.alpha_bar
    torch.testing.assert_close(schedule.sigmas, ((1 - ab) / ab).sqrt())
    torch.testing.assert_close(schedule.sigmas**2 * schedule.snr, torch.ones_like(ab))
    torch.testing.assert_close(schedule.log_snr, torch.log(ab / (1 - ab)))


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_sigma_to_t_inverts_the_sigma_table(zero_terminal_snr: bool) -> None:
    schedule = NoiseSchedule.create("linear", 1000, zero_terminal_snr=zero_terminal_snr)
    finite = torch.isfinite(schedule.sigmas)
    t = schedule.sigma_to_t(schedule.sigmas[finite])
    torch.testing.assert_close(t, torch.arange(int(finite.sum()), dtype=F64), rtol=0, atol=1e-9)
    # and fractional timesteps round-trip through alpha_bar_at
    frac = torch.tensor([0.25, 10.5, 321.75, 997.9], dtype=F64)
    ab = schedule.alpha_bar_at(frac)
    torch.testing.assert_close(schedule.sigma_to_t(((1 - ab) / ab).sqrt()), frac, rtol=0, atol=1e-9)


def test_alpha_bar_at_interpolates_log_sigma() -> None:
    schedule = NoiseSchedule.create("cosine", 100)
    integer = torch.arange(100, dtype=F64)
    torch.testing.assert_close(schedule.alpha_bar_at(integer), schedule.alpha_bar, rtol=1e-12, atol=0.0)
    assert float(schedule.alpha_bar_at(torch.tensor([-1.0]))) == 1.0  # the samplers' "clean" end
    log_sigma = torch.log(schedule.sigmas)
    ab = float(schedule.alpha_bar_at(torch.tensor([10.3], dtype=F64)))
    want = 0.7 * log_sigma[10] + 0.3 * log_sigma[11]
    assert math.log(((1 - ab) / ab) ** 0.5) == pytest.approx(float(want), rel=1e-10)


# ------------------------------------------------------------------------- forward process


def test_q_sample_is_the_forward_marginal() -> None:
    schedule = NoiseSchedule.create("cosine", 1000)
    gen = torch.Generator().manual_seed(0)
    n, t = 3000, 400
    x0 = torch.full((n, 1, 2, 2), 0.7)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = schedule.q_sample(x0, torch.full((n,), t), noise)
    ab = float(schedule.alpha_bar[t])
    torch.testing.assert_close(x_t, ab**0.5 * x0 + (1 - ab) ** 0.5 * noise)
    # 12000 values: standard errors 0.009 (mean) and 1.3 % (variance)
    assert float(x_t.mean()) == pytest.approx(ab**0.5 * 0.7, abs=0.04)
    assert float(x_t.var()) == pytest.approx(1 - ab, rel=0.06)


@pytest.mark.parametrize("t", [0, 1, 10, 500, 999])
def test_posterior_is_the_gaussian_product(t: int) -> None:
    """q(x_{t-1} | x_t, x0) ∝ N(x_t; sqrt(α_t) x_{t-1}, β_t) · N(x_{t-1}; sqrt(ᾱ_{t-1}) x0, 1 - ᾱ_{t-1}):
    precision α_t/β_t + 1/(1 - ᾱ_{t-1}),
    mean = variance · (sqrt(α_t) x_t/β_t + sqrt(ᾱ_{t-1}) x0/(1 - ᾱ_{t-1})).
    At t = 0 there is no x_{-1} noise: the posterior is x0 itself."""
    schedule = NoiseSchedule.create("linear", 1000)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 2, 2, generator=gen, dtype=F64)
    x_t = torch.randn(4, 1, 2, 2, generator=gen, dtype=F64)
    mean, var = schedule.posterior(x0, x_t, torch.full((4,), t))
    if t == 0:
        torch.testing.assert_close(mean, x0)
        assert float(var.abs().max()) == 0.0
        return
    alpha, beta = float(schedule.alphas[t]), float(schedule.betas[t])
    ab_prev = float(schedule.alpha_bar[t - 1])
    want_var = 1 / (alpha / beta + 1 / (1 - ab_prev))
    want_mean = want_var * (alpha**0.5 * x_t / beta + ab_prev**0.5 * x0 / (1 - ab_prev))
    torch.testing.assert_close(mean, want_mean)
    torch.testing.assert_close(var.flatten(), torch.full((4,), want_var, dtype=F64))
    torch.testing.assert_close(schedule.posterior_variance[t], torch.tensor(want_var, dtype=F64))


# ------------------------------------------------------------------------------ log-SNR spacing


def _linear_log_snr_schedule(T: int, top: float = 8.0, bottom: float = -8.0) -> NoiseSchedule:
    """A schedule whose log-SNR falls exactly linearly in t: ᾱ_t = sigmoid(top + (bottom - top) t/(T-1))."""
    alpha_bar = torch.sigmoid(top + (bottom - top) * torch.arange(T, dtype=torch.float64) / (T - 1))
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return NoiseSchedule(1.0 - alpha_bar / previous)


@pytest.mark.parametrize(("T", "steps"), [(1000, 10), (200, 8), (50, 8), (101, 11)])
def test_logsnr_spacing_is_linspace_when_log_snr_is_linear_in_t(T: int, steps: int) -> None:
    """λ linear in t makes "evenly spaced in λ" and "evenly spaced in t" the same grid (no ties at .5 here)."""
    schedule = _linear_log_snr_schedule(T)
    assert schedule.spaced_timesteps(steps, "logsnr").tolist() == schedule.spaced_timesteps(steps, "linspace").tolist()


def test_logsnr_spacing_has_even_log_snr_jumps() -> None:
    schedule = NoiseSchedule.create("linear", 1000)
    ts = schedule.spaced_timesteps(10, "logsnr")
    jumps = schedule.log_snr[ts].diff()
    even = (schedule.log_snr[0] - schedule.log_snr[-1]) / 9
    # within 2.5 %: near the clean end λ moves 0.7 per timestep, and timesteps are integers
    torch.testing.assert_close(jumps, torch.full_like(jumps, float(even)), rtol=0.025, atol=0.0)


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_logsnr_spacing_gives_exactly_steps_distinct_timesteps(zero_terminal_snr: bool) -> None:
    for T in (10, 50):
        schedule = NoiseSchedule.create("cosine", T, zero_terminal_snr=zero_terminal_snr)
        for steps in range(1, T + 1):
            ts = schedule.spaced_timesteps(steps, "logsnr")
            assert len(ts) == steps and int(ts[0]) == T - 1 and int(ts.min()) >= 0, (T, steps, ts)
            assert bool((ts[:-1] > ts[1:]).all()), (T, steps, ts)
            if steps > 1:
                assert int(ts[-1]) == 0
