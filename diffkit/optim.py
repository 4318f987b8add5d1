"""The optimiser's pieces: AdamW parameter groups, Muon, the learning-rate schedule, the EMA of the weights.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks") steps each hidden
convolution kernel, taken as a matrix, along the nearest orthogonal matrix to its momentum (five Newton-Schulz
iterations), so every direction of the update moves at the same rate; AdamW keeps the rest. On the demo's short
runs its validation loss after half the steps is below AdamW's at the end (README, "Muon for the hidden layers").

Two averages: the classic one (a fixed decay, warmed up) and EDM2's power-function EMA (Karras et al.
2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", section 3.1 and appendix C),
whose decay β(t) = (1 - 1/t)^(γ+1) makes the average's length a fixed fraction of the run so far (its
relative width σ_rel), which suits a run of a few hundred steps as well as one of a million. Both are
pure functions of the step, so the EMA weights and the step are all the state they need.
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import cache
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from diffkit.settings import TrainSettings


def build_optimizer(model: nn.Module, train: TrainSettings) -> torch.optim.Optimizer:
    """The run's optimiser (train.optimizer): AdamW over `param_groups`, or Muon for the hidden matrices
    (train.muon_lr, train.muon_momentum) with AdamW (train.lr, the Adam betas) for the rest."""
    groups = param_groups(model, train.weight_decay)
    betas = (train.adam_beta1, train.adam_beta2)
    if train.optimizer == "adamw":
        # foreach: one call per update over all tensors, as torch does by default only on a GPU (the demo's 105
        # tensors on an emulated AVX2 core: 6.7 against 7.5 ms a step)
        return torch.optim.AdamW(groups, lr=train.lr, betas=betas, foreach=True)
    matrices = hidden_matrices(model)
    hidden = {id(p) for p in matrices}
    split = [{**g, "params": [p for p in g["params"] if id(p) not in hidden]} for g in groups]
    split.append({"params": matrices, "lr": train.muon_lr, "muon": True, "weight_decay": train.weight_decay})
    return Muon([g for g in split if g["params"]], lr=train.lr, betas=betas, momentum=train.muon_momentum)


def describe_optimizer(opt: torch.optim.Optimizer) -> str:
    """One line for the start of a run: which optimiser takes which parameters, at which peak learning rate."""
    groups = opt.param_groups
    adam = [p for g in groups if not g.get("muon") for p in g["params"]]
    muon = [p for g in groups if g.get("muon") for p in g["params"]]

    def peak(group: dict[str, Any]) -> float:  # an lr schedule keeps the peak as initial_lr
        return float(group.get("initial_lr", group["lr"]))

    first_adam = next((g for g in groups if not g.get("muon")), groups[0])
    beta1, beta2 = first_adam["betas"]
    adam_text = f"AdamW (lr {peak(first_adam):g}, betas {beta1:g}/{beta2:g})"
    if not muon:
        return adam_text
    muon_group = next(g for g in groups if g.get("muon"))
    return (
        f"Muon (lr {peak(muon_group):g}, momentum {muon_group['momentum']:g}) for {len(muon):,} hidden convolution "
        f"kernels ({sum(p.numel() for p in muon):,} parameters), {adam_text} for the other {len(adam):,}"
    )


def hidden_matrices(model: nn.Module) -> list[Tensor]:
    """The weights Muon orthogonalises: the kernels of the hidden convolutions, each flattened to the matrix
    (out, in x kernel). AdamW keeps the layers that read or write pixels (a network's `pixel_layers()`), as
    Muon's authors advise for a network's first and last layers, and the noise-level and class embedding's
    linear layers: with Muon on those too the demo scored the same (5.64 against 5.56 at 2,951 steps, two
    seeds) and their square matrices are the costliest to orthogonalise."""
    pixels: list[nn.Module] = getattr(model, "pixel_layers", list)()
    edge = {id(p) for layer in pixels for p in layer.parameters()}
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and id(m.weight) not in edge]


NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # Jordan's quintic: pushes every singular value into about [0.7, 1.2]


def orthogonalise(g: Tensor, steps: int = 5) -> Tensor:
    """About U Vᵀ of the SVD U S Vᵀ of each matrix in `g` (..., rows, cols), by Newton-Schulz iterations."""
    return orthogonalise_all([g], steps)[0]


def orthogonalise_all(mats: list[Tensor], steps: int = 5) -> list[Tensor]:
    """`orthogonalise` for tensors of several shapes, (..., rows, cols) each, at once.

    Each iteration X ← (a I + b G + c G²) X, with G = X Xᵀ, multiplies X by a polynomial in X₀ X₀ᵀ, so the
    iterations can run on the small r x r Gram matrices alone (r the smaller side) and touch X twice, to form
    G₀ and to apply the product Q of the polynomials: the same map of singular values, σ → aσ + bσ³ + cσ⁵ five
    times, for 2.5x fewer FLOPs on the demo's kernels, and every matrix with the same smaller side iterates in
    one batch (two batches for the demo's 23 kernels of 12 shapes, instead of 12)."""
    tall = [g.shape[-2] > g.shape[-1] for g in mats]
    xs, grams = [], []
    for g, transpose in zip(mats, tall, strict=True):
        x = g.float().mT if transpose else g.float()  # the smaller Gram matrix
        x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values ≤ 1, where the iteration converges
        xs.append(x)
        grams.append((x @ x.mT).reshape(-1, x.shape[-2], x.shape[-2]))
    by_side: dict[int, list[int]] = defaultdict(list)
    for i, gram in enumerate(grams):
        by_side[gram.shape[-1]].append(i)
    products: list[Tensor] = [torch.empty(0)] * len(mats)
    for index in by_side.values():
        together = _gram_newton_schulz(torch.cat([grams[i] for i in index]), steps)
        for i, q in zip(index, together.split([len(grams[i]) for i in index]), strict=True):
            products[i] = q.reshape(*xs[i].shape[:-1], xs[i].shape[-2])
    out = []
    for g, transpose, x, q in zip(mats, tall, xs, products, strict=True):
        o = q @ x
        out.append((o.mT if transpose else o).to(g.dtype))
    return out


def _gram_newton_schulz(gram: Tensor, steps: int) -> Tensor:
    """The product Q (n, r, r) of the iterations' polynomials for Gram matrices `gram` (n, r, r) of
    normalised X: Q X ≈ U Vᵀ. The polynomials in G₀ commute, so G after an iteration with M is M G M."""
    a, b, c = NEWTON_SCHULZ
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device).expand_as(gram)
    q: Tensor | None = None
    for i in range(steps):
        m = torch.baddbmm(torch.add(a * eye, gram, alpha=b), gram, gram, alpha=c)
        q = m if q is None else m @ q
        if i + 1 < steps:
            gram = m @ (m @ gram)
    assert q is not None
    return q


class Muon(torch.optim.Optimizer):
    """Muon for the groups marked `"muon": True` (Nesterov momentum, orthogonalised, scaled by
    √max(1, rows/cols)), AdamW for the others: one optimiser, so the lr schedule, the gradient scaler and the
    checkpoint see one object. Kernels are orthogonalised all at once (`orthogonalise_all`), and
    every other update is one `torch._foreach_*` call over the group's tensors (a loop over the demo's 105
    tensors made about 600 small operations a step)."""

    def __init__(
        self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], momentum: float = 0.95
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": 1e-8, "weight_decay": 0.0, "momentum": momentum, "muon": False}
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["weight_decay"]:  # decoupled, as AdamW's
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
            (self._muon_step if group["muon"] else self._adamw_step)(group, params, [p.grad for p in params])

    def _muon_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_mul_(bufs, group["momentum"])
        torch._foreach_add_(bufs, grads)
        nesterov = torch._foreach_add(grads, bufs, alpha=group["momentum"])
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_shape[tuple(p.shape)].append(i)
        stacked = [
            torch.stack([nesterov[i] for i in index]).reshape(len(index), shape[0], math.prod(shape[1:]))
            for shape, index in by_shape.items()
        ]
        for (shape, index), ortho in zip(by_shape.items(), orthogonalise_all(stacked), strict=True):
            rows, cols = ortho.shape[-2:]
            scale = group["lr"] * math.sqrt(max(1.0, rows / cols))  # the same RMS change per entry, tall or wide
            steps = list(ortho.reshape(len(index), *shape).unbind())
            torch._foreach_add_([params[i] for i in index], steps, alpha=-scale)

    def _adamw_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float64)
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        avgs, squares = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_add_(steps, 1.0)
        counts = [float(t) for t in steps]
        torch._foreach_lerp_(avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(squares, beta2)
        torch._foreach_addcmul_(squares, grads, grads, value=1.0 - beta2)
        denom = torch._foreach_div(squares, [1.0 - beta2**t for t in counts])
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(params, avgs, denom, [-group["lr"] / (1.0 - beta1**t) for t in counts])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases and embeddings (all 1-D parameters, and embedding tables)."""
    no_decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay: list[nn.Parameter] = []
    keep: list[nn.Parameter] = []
    for p in model.parameters():
        (keep if p.ndim <= 1 or id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Linear warm-up to 1, then a cosine or linear decay to `min_ratio` at `total` (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    left = 1 - progress if kind == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * left


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
