"""Consistency distillation (Song et al. 2023), guided: a student whose x̂0 is a consistency function, for 1–4 steps.

The grid's levels are cut into `distill.points` = N points t_0 = 0 < ... < t_{N-1} = T - 1 (evenly in grid
position: log-uniform σ for edm, uniform t for flow). A training image is noised to a random t_{n+1}; the
teacher solves the probability-flow ODE to t_n with its guided prediction at the student's w, in
`distill.substeps` DDIM steps (the first-order exponential integrator; Euler in σ); the student's f at
(x_{t_{n+1}}, t_{n+1}) is pulled towards the target f(x̂_{t_n}, t_n). f(x, t_0) = x by construction
(`diffkit.process.consistency`) anchors the chain at the clean end. Fewer points with more substeps carry that
anchor up the chain in fewer rounds of learning, at the price of more teacher passes per step.

The target network is the student itself under stop-gradient, not an EMA of it (as in iCT, Song & Dhariwal
2023, and ECT, Geng et al. 2024): on a CPU budget of a few hundred steps an EMA target lags the student by
~1 / (1 - μ) steps and slows the propagation of the boundary condition up the chain, and it costs a copy.
The distance is the pseudo-Huber d = sqrt(||f - f⁻||² + c²) - c with c = 0.00054 sqrt(dim) (iCT), less
sensitive than L2 to the large differences of the first steps. The student starts from the teacher's weights,
so it starts as the teacher's denoiser (which is f at the clean end and its posterior mean elsewhere).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from diffkit.distill.methods import DistillMethod, alpha_bar_of, draw_noise, register, student_x0, x0_capable
from diffkit.distributed import Rows, draw_rows
from diffkit.errors import DiffkitError
from diffkit.samplers.loop import ddim_update
from diffkit.schedules import NoiseSchedule
from diffkit.settings import DistillSettings

if TYPE_CHECKING:
    from diffkit.distill.distiller import Distiller

MAX_STEPS = 4  # consistency students are for one to a few steps; progressive covers more
HUBER_C = 0.00054  # times sqrt(dim): iCT's pseudo-Huber constant (0.03 for CIFAR-10's 3072 values)


def level_points(grid: NoiseSchedule, n: int) -> Tensor:
    """The N grid positions of the discretisation, least noisy (0) first, the last at T - 1."""
    return torch.linspace(0, grid.timesteps - 1, n, dtype=torch.float64).round()


def pseudo_huber(diff: Tensor) -> Tensor:
    """Per-image sqrt(||diff||² + c²) - c, c = 0.00054 sqrt(dim) (Song & Dhariwal 2023)."""
    flat = diff.flatten(1)
    c = HUBER_C * math.sqrt(flat.shape[1])
    return (flat.pow(2).sum(1) + c * c).sqrt() - c


def teacher_solve(
    distiller: Distiller, x: Tensor, t_from: Tensor, t_to: Tensor, labels: Tensor, w: Tensor | None
) -> Tensor:
    """The teacher's probability-flow ODE from t_from to t_to (per image) in `distill.substeps` DDIM steps,
    evenly spaced in grid position, with its guided prediction at the student's w."""
    n = distiller.options.substeps
    for k in range(n):
        t, t_next = (t_from + (t_to - t_from) * (j / n) for j in (k, k + 1))
        pred = distiller.teacher(x, t, labels, 1.0 if w is None else w)
        x = ddim_update(*pred, alpha_bar_of(distiller, t_next).to(x))
    return x


class Consistency(DistillMethod):
    name: ClassVar[str] = "consistency"
    summary: ClassVar[str] = (
        "Song et al. 2023: the student's f made to agree across one teacher step; 1 to 4 steps, guidance folded in"
    )

    def rounds(self, options: DistillSettings) -> list[int]:
        if not 1 <= options.steps <= MAX_STEPS:
            raise DiffkitError(
                f"--steps {options.steps} cannot be reached by consistency distillation: choose 1 to {MAX_STEPS} "
                "(multistep consistency sampling gains little beyond), or --method progressive for more steps"
            )
        return [options.steps]

    def student_diffusion(self, teacher: dict[str, Any]) -> dict[str, Any]:
        return {**x0_capable(teacher), "consistency": True}

    def student_sample(self, options: DistillSettings) -> dict[str, Any]:
        return {"sampler": "consistency", "steps": options.steps, "spacing": "trailing", "eta": 0.0}

    def loss(
        self,
        distiller: Distiller,
        model: nn.Module,
        x0: Tensor,
        labels: Tensor,
        gen: torch.Generator,
        rows: Rows | None,
    ) -> Tensor:
        n, device = x0.shape[0], x0.device
        points = level_points(distiller.process.grid, distiller.options.points)
        index = draw_rows(rows, n, lambda k: torch.randint(0, len(points) - 1, (k,), generator=gen, device=device))
        noise = draw_noise(rows, x0, gen)
        w = distiller.draw_guidance(n, gen, rows)
        t_near, t_far = points[index.cpu()].to(device), points[index.cpu() + 1].to(device)
        ab_near, ab_far = (alpha_bar_of(distiller, s).to(x0) for s in (t_near, t_far))
        x_far = ab_far.sqrt() * x0 + (1 - ab_far).sqrt() * noise
        with torch.no_grad():
            x_near = teacher_solve(distiller, x_far, t_far, t_near, labels, w)
            target = student_x0(distiller, model, x_near, t_near, ab_near, labels, w)  # stop-gradient
        f = student_x0(distiller, model, x_far, t_far, ab_far, labels, w)
        return pseudo_huber(f - target).mean()


register(Consistency())
