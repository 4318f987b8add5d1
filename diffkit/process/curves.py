"""What `plot-schedules` draws of a process: α, σ and log-SNR along its grid, and where training puts its
noise levels (the density of log-SNR of the levels it draws), all in one shared axis so processes compare."""

from __future__ import annotations

import torch
from torch import Tensor

from diffkit.process.base import DiffusionProcess

LOG_SNR_RANGE = (-21.0, 16.0)  # the histogram's range: wider than any default grid (vp cosine reaches -19.8)


def process_curves(
    process: DiffusionProcess, *, draws: int = 200_000, bins: int = 112, seed: int = 0
) -> dict[str, Tensor]:
    """Per grid position u in [0, 1] (least to most noise): the process's own α and σ, and log-SNR; and the
    training density over log-SNR (`density`, at bin centres `density_log_snr`). All float64."""
    grid = process.grid
    ab = grid.alpha_bar
    alpha, sigma = process.path(process.grid_levels())
    levels = process.draw_levels(draws, torch.Generator().manual_seed(seed), torch.device("cpu"))
    a, s = process.path(levels)
    log_snr_drawn = (2 * (a.log() - s.log())).clamp(*LOG_SNR_RANGE)
    density, edges = torch.histogram(log_snr_drawn, bins=bins, range=LOG_SNR_RANGE, density=True)
    return {
        "u": torch.linspace(0, 1, grid.timesteps, dtype=torch.float64),
        "alpha": alpha,
        "sigma": sigma,
        "log_snr": (ab / (1 - ab)).log(),
        "density": density,
        "density_log_snr": (edges[1:] + edges[:-1]) / 2,
    }


def process_key_values(curves: dict[str, Tensor]) -> dict[str, float]:
    """The grid's log-SNR range and the training draw's median log-SNR, for the printed table."""
    lam = curves["log_snr"][torch.isfinite(curves["log_snr"])]
    cdf = torch.cumsum(curves["density"], 0) / curves["density"].sum()
    median = float(curves["density_log_snr"][int(torch.searchsorted(cdf, torch.tensor(0.5, dtype=cdf.dtype)))])
    return {"log_snr_max": float(lam.max()), "log_snr_min": float(lam.min()), "training_median_log_snr": median}
