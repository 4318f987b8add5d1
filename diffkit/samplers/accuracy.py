"""Sampler accuracy on a problem with a known answer: Gaussian data, whose denoiser is closed form.

For x0 ~ N(μ, s² I) and x_t = a x0 + sqrt(1 - a²) ε with a = sqrt(ᾱ_t):
    E[x0 | x_t] = μ + a s² / (a² s² + 1 - a²) · (x_t - a μ)                        (the exact x̂0)
and the probability-flow ODE keeps (x_t - a μ) / sqrt(a² s² + 1 - a²) fixed, so its solution between
any two noise levels is one line (`flow`). With the exact denoiser (float64, no clipping) every error
left is the sampler's: its discretisation, and where it starts and stops.

Two figures per run, from N starting noises x_T taken as the state at t = T - 1:
- std error: mean over coordinates of |std of the N samples - s|, against the data itself. It includes
  the sampling noise of N draws (`noise_floor`, 0.004 at N = 4096), and is the figure diffusers'
  schedulers were measured with.
- ODE error: RMS distance to the exact ODE solution from the same noise, which has no sampling noise;
  deterministic samplers only (NaN for the others).

`accuracy_table` runs every sampler at every spacing it takes for a list of NFE budgets; `make bench`
writes it, and the tests assert convergence orders and defaults with the same functions. Defaults are
chosen on the ODE error at 10 NFE (the std error for stochastic samplers), where the choice matters most.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffkit.denoiser import DenoiseFn, Prediction
from diffkit.process import DiffusionProcess, EDMProcess, FlowProcess, VPProcess
from diffkit.samplers import SAMPLERS, default_spacing, sample
from diffkit.schedules import SPACINGS, NoiseSchedule

MU = torch.tensor([-0.5, 0.0, 0.25, 0.75], dtype=torch.float64)
STD = 0.5
LINEAR = NoiseSchedule.create("linear", 1000)  # β from 1e-4 to 0.02, as DDPM and diffusers' defaults
NFE_BUDGETS = (5, 10, 20, 50)


def _mu(x: Tensor) -> Tensor:
    return MU.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))


def exact_x0(x: Tensor, ab: Tensor) -> Tensor:
    """E[x0 | x_t] for the Gaussian data; `ab` broadcasts against x."""
    a = ab.sqrt()
    return _mu(x) + a * STD**2 / (ab * STD**2 + 1 - ab) * (x - a * _mu(x))


def flow(x: Tensor, ab_from: float, ab_to: float) -> Tensor:
    """Exact probability-flow ODE solution from ᾱ = ab_from to ᾱ = ab_to (VP states)."""
    z = (x - ab_from**0.5 * _mu(x)) / (ab_from * STD**2 + 1 - ab_from) ** 0.5
    return ab_to**0.5 * _mu(x) + z * (ab_to * STD**2 + 1 - ab_to) ** 0.5


def gaussian_denoiser(schedule: NoiseSchedule, process: DiffusionProcess | None = None) -> DenoiseFn:
    """The exact denoiser on `schedule`; with a process, on its grid and through its parametrisation: the
    exact x̂0 becomes the output a perfect network of that process gives (`output_for`), and the process
    turns that output back into (x̂0, ε̂) (`predict`), as a Denoiser does."""
    grid = schedule if process is None else process.grid

    def denoise(x: Tensor, t: Tensor) -> Prediction:
        # one ᾱ for the batch (samplers move it together): indexing per sample costs milliseconds
        ab = grid.alpha_bar_at(t[:1]).to(x.dtype)
        x0 = exact_x0(x, ab)
        if process is not None:
            return process.predict(process.output_for(x0, x, t, ab), x, t, ab)
        return Prediction(x0, (x - ab.sqrt() * x0) / (1 - ab).sqrt())

    return denoise


def processes() -> dict[str, DiffusionProcess]:
    """The processes the accuracy table compares, each with its default options (vp on the linear β)."""
    return {"vp": VPProcess(LINEAR), "edm": EDMProcess(), "flow": FlowProcess()}


def gaussian_noise(n: int, seed: int = 0) -> Tensor:
    return torch.randn(n, MU.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def std_error(samples: Tensor) -> float:
    return float((samples.std(0) - STD).abs().mean())


def noise_floor(n: int = 4096, seed: int = 1) -> float:
    """The std error of exact samples (the ODE solved exactly) from the same noise: sampling noise alone."""
    x = gaussian_noise(n, seed)
    return std_error(flow(x, float(LINEAR.alpha_bar[-1]), 1.0))


def steps_for(name: str, nfe: int) -> int:
    """The most steps whose NFE fits the budget (heun calls the model 2 · steps - 1 times)."""
    return (nfe + 1) // 2 if name == "heun" else nfe


# Seed 1 is the noise the issue-11 comparison with diffusers' schedulers used, so figures are comparable.
SEED = 1


@dataclass(frozen=True)
class Cell:
    sampler: str
    spacing: str | None  # None for the samplers on Karras σs
    budget: int  # the NFE asked for; `nfe` is what the sampler used (heun: an odd number)
    nfe: int
    std_error: float
    ode_error: float  # NaN for stochastic samplers

    @property
    def is_default(self) -> bool:
        return self.spacing == default_spacing(self.sampler)

    @property
    def error(self) -> float:
        """The figure defaults are chosen by: the ODE error where there is one (no sampling noise)."""
        return self.std_error if math.isnan(self.ode_error) else self.ode_error


def measure(
    name: str,
    budget: int,
    *,
    spacing: str | None = None,
    n: int = 4096,
    seed: int = SEED,
    process: DiffusionProcess | None = None,
    **options: Any,
) -> Cell:
    """One run of `name` within `budget` model calls on N Gaussian samples; spacing None = its default;
    `process`: on that process's grid and parametrisation (default: the plain linear-β denoiser)."""
    spec = SAMPLERS[name]
    if "spacing" in spec.options:
        spacing = spacing or default_spacing(name)
        options["spacing"] = spacing
    x = gaussian_noise(n, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    grid = LINEAR if process is None else process.grid
    denoise = gaussian_denoiser(LINEAR, process)
    out = sample(name, denoise, x, grid, steps_for(name, budget), generator=gen, **options)
    deterministic = not spec.stochastic or ("eta" in spec.options and not options.get("eta"))
    reference = flow(x, float(grid.alpha_bar[-1]), 1.0)
    ode = float((out.images - reference).pow(2).mean().sqrt()) if deterministic else math.nan
    return Cell(name, spacing, budget, out.nfe, std_error(out.images), ode)


def spacings_of(name: str) -> list[str | None]:
    """The spacings a sampler accepts (refused ones left out); [None] for the Karras samplers."""
    spec = SAMPLERS[name]
    return [s for s in SPACINGS if s not in spec.refuses] if "spacing" in spec.options else [None]


def accuracy_table(
    budgets: Sequence[int] = NFE_BUDGETS, *, n: int = 4096, seed: int = SEED, samplers: Sequence[str] | None = None
) -> list[Cell]:
    """Every sampler × every spacing it accepts × every NFE budget."""
    return [
        measure(name, budget, spacing=spacing, n=n, seed=seed)
        for name in samplers or list(SAMPLERS)
        for spacing in spacings_of(name)
        for budget in budgets
    ]


def best(cells: Sequence[Cell], name: str, budget: int) -> Cell:
    """The most accurate cell of one sampler at one NFE budget."""
    return min((c for c in cells if c.sampler == name and c.budget == budget), key=lambda c: c.error)


def to_markdown(cells: Sequence[Cell], n: int = 4096, seed: int = SEED) -> str:
    """One row per sampler and spacing, std error (ODE error) per budget; the default spacing in bold."""
    budgets = sorted({c.budget for c in cells})
    rows: dict[tuple[str, str | None], dict[int, Cell]] = {}
    for c in cells:
        rows.setdefault((c.sampler, c.spacing), {})[c.budget] = c
    lines = [
        f"Gaussian data (μ = {MU.tolist()}, s = {STD}), exact denoiser, linear β 1e-4..0.02, T = 1000, float64, "
        f"N = {n}, seed {seed}, no clipping. Cell: std error of the samples (RMS distance to the exact ODE "
        f"solution). Sampling-noise floor {noise_floor(n, seed):.4f}. Bold: the sampler's default spacing.",
        "",
        "| sampler | spacing | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
        "| --- | --- |" + " --- |" * len(budgets),
    ]
    for (name, spacing), by_budget in rows.items():
        label = "karras" if spacing is None else f"**{spacing}**" if spacing == default_spacing(name) else spacing
        values = []
        for b in budgets:
            cell = by_budget.get(b)
            if cell is None:
                values.append("")
                continue
            ode = "" if math.isnan(cell.ode_error) else f" ({cell.ode_error:.1e})"
            values.append(f"{cell.std_error:.4f}{ode}" + ("" if cell.nfe == b else f" [{cell.nfe}]"))
        lines.append(f"| {name} | {label} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def process_table(budgets: Sequence[int] = NFE_BUDGETS, *, n: int = 4096, seed: int = SEED) -> list[tuple[str, Cell]]:
    """Every sampler at its default spacing × every process × every NFE budget: (process, cell)."""
    return [
        (label, measure(name, budget, n=n, seed=seed, process=process))
        for name in SAMPLERS
        for label, process in processes().items()
        for budget in budgets
    ]


def process_markdown(rows: Sequence[tuple[str, Cell]], n: int = 4096, seed: int = SEED) -> str:
    """One row per sampler, a column per process and budget: the error defaults are chosen by."""
    labels = list(dict.fromkeys(label for label, _ in rows))
    budgets = sorted({c.budget for _, c in rows})
    cells = {(label, c.sampler, c.budget): c for label, c in rows}
    head = [f"{label} {b}" for label in labels for b in budgets]
    lines = [
        f"The same Gaussian data and exact denoiser on each process's own grid and parametrisation (vp: linear β, "
        f"predicts ε; edm: σ 0.002..80, σ_data 0.5; flow: t = 1/1000..1, velocity), each sampler at its default "
        f"spacing, N = {n}, seed {seed}. Cell: ODE error (RMS distance to the exact solution) for deterministic "
        f"samplers, std error for stochastic ones (*), by NFE budget.",
        "",
        "| sampler | " + " | ".join(head) + " |",
        "| --- |" + " --- |" * len(head),
    ]
    for name in dict.fromkeys(c.sampler for _, c in rows):
        values = []
        for label in labels:
            for b in budgets:
                c = cells[(label, name, b)]
                values.append(f"{c.error:.1e}" + ("*" if math.isnan(c.ode_error) else ""))
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
