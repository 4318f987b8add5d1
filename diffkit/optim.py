"""The optimiser's pieces: AdamW parameter groups, the learning-rate schedule, the EMA of the weights.

Two averages: the classic one (a fixed decay, warmed up) and EDM2's power-function EMA (Karras et al.
2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", section 3.1 and appendix C),
whose decay β(t) = (1 - 1/t)^(γ+1) makes the average's length a fixed fraction of the run so far (its
relative width σ_rel), which suits a run of a few hundred steps as well as one of a million. Both are
pure functions of the step, so the EMA weights and the step are all the state they need.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases and embeddings (all 1-D parameters, and embedding tables)."""
    no_decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay: list[nn.Parameter] = []
    keep: list[nn.Parameter] = []
    for p in model.parameters():
        (keep if p.ndim <= 1 or id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total` (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, for every parameter and buffer."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.dtype.is_floating_point:
            e.lerp_(m, 1.0 - decay)
        else:
            e.copy_(m)


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """With warm-up the average forgets its random start quickly: min(decay, (1 + step)/(10 + step))."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


POWER_EMA_MAX_SIGMA = 12**-0.5  # σ_rel at γ = 0; wider averages would need γ < 0


@cache  # the trainer asks at every step
def power_ema_gamma(sigma_rel: float) -> float:
    """The exponent γ of the power-function EMA whose relative width is `sigma_rel`.

    EDM2's eq. 3: σ_rel² = (γ+1) / ((γ+2)² (γ+3)), i.e. the largest root of
    γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0 (0.05 -> 16.97, 0.10 -> 6.94).
    """
    if not 0.0 < sigma_rel < POWER_EMA_MAX_SIGMA:
        raise ValueError(f"sigma_rel must be in (0, {POWER_EMA_MAX_SIGMA:.4f}), got {sigma_rel}")
    inv = sigma_rel**-2
    lo, hi = 0.0, 1.0
    while _power_cubic(hi, inv) < 0:  # the cubic is negative at 0 for σ_rel < 1/√12 and grows without bound
        hi *= 2.0
    for _ in range(200):  # bisection to float precision: exact enough, and no numpy root finder needed
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _power_cubic(mid, inv) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def _power_cubic(gamma: float, inv_sigma_sq: float) -> float:
    return ((gamma + 7.0) * gamma + 16.0 - inv_sigma_sq) * gamma + 12.0 - inv_sigma_sq


def power_ema_sigma_rel(gamma: float) -> float:
    """σ_rel of the power-function EMA with exponent γ (the inverse of `power_ema_gamma`)."""
    return math.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0)))


def power_ema_decay(step: int, gamma: float) -> float:
    """β after update number `step + 1`: (1 − 1/t)^(γ+1) with t = step + 1, so the first update copies the
    weights (β = 0) and the average always spans the same fraction of the steps taken."""
    t = step + 1
    return (1.0 - 1.0 / t) ** (gamma + 1.0)
