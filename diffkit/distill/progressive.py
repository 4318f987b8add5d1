"""Progressive distillation (Salimans & Ho 2022), guided (Meng et al. 2023): each round halves the steps.

In a round whose student takes N steps, a training image is noised to a point t of the student's grid
(DDIM, trailing spacing, so the first step starts from pure noise); the teacher takes its two DDIM steps
t -> t' -> t'' (the points of its 2N-step grid); the target is the x̂0 that makes ONE student DDIM step
t -> t'' land on the teacher's x_t'':

    x̂0 = (x_t'' - (σ_t''/σ_t) x_t) / (α_t'' - (σ_t''/σ_t) α_t),   α = sqrt(ᾱ), σ = sqrt(1 - ᾱ),

and the process's `output_for` turns it into the student's output target, so the method is the same on
every process. The next round's teacher is this round's student (its EMA), which the next student starts
from. A class-conditional student also learns the guidance scale w as an input (w uniform in the trained
range; the first teacher's target is its guided prediction), so a guided student step is one pass.

An ε-predicting vp teacher gives a v-predicting student (`methods.x0_capable`): no large first step can be taught
to an ε-student.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffkit.distill.methods import DistillMethod, alpha_bar_of, draw_noise, register, x0_capable
from diffkit.distributed import Rows, draw_rows
from diffkit.errors import DiffkitError
from diffkit.samplers.loop import ddim_update, timestep_pairs
from diffkit.settings import DistillSettings

if TYPE_CHECKING:
    from diffkit.distill.distiller import Distiller

SPACING = "trailing"  # the student's grid: it starts at T - 1 (pure noise) and halves exactly


class Progressive(DistillMethod):
    name: ClassVar[str] = "progressive"
    students_teach: ClassVar[bool] = True  # a progressive student goes on halving from its own steps
    summary: ClassVar[str] = (
        "Salimans & Ho 2022: each round halves the steps (64 -> 32 -> ... -> 1), guidance folded in"
    )

    def rounds(self, options: DistillSettings) -> list[int]:
        start, steps = options.teacher_steps, options.steps
        halvings = (start // steps).bit_length() - 1
        if steps >= start or start % steps or steps << halvings != start:
            choices = ", ".join(str(start >> k) for k in range(1, start.bit_length()))
            raise DiffkitError(
                f"--steps {steps} cannot be reached by progressive distillation from {start} teacher steps: "
                f"choose one of {choices} (halvings of distill.teacher_steps)"
            )
        return [start >> k for k in range(1, halvings + 1)]

    def student_diffusion(self, teacher: dict[str, Any]) -> dict[str, Any]:
        return x0_capable(teacher)

    def student_sample(self, options: DistillSettings) -> dict[str, Any]:
        # no clipping: the student was taught to land exactly where the teacher did
        return {"sampler": "ddim", "steps": options.steps, "spacing": SPACING, "eta": 0.0, "clipping": "none"}

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
        steps = distiller.student_steps
        teacher_grid = timestep_pairs(distiller.process.grid, 2 * steps, SPACING)  # student step i = its 2i, 2i+1
        index = draw_rows(rows, n, lambda k: torch.randint(0, steps, (k,), generator=gen, device=device))
        noise = draw_noise(rows, x0, gen)
        w = distiller.draw_guidance(n, gen, rows)
        t, t_mid, t_end = (
            torch.tensor([teacher_grid[2 * i][0] for i in index.tolist()], device=device),
            torch.tensor([teacher_grid[2 * i + 1][0] for i in index.tolist()], device=device),
            torch.tensor([teacher_grid[2 * i + 1][1] for i in index.tolist()], device=device),
        )
        ab, ab_mid, ab_end = (alpha_bar_of(distiller, s).to(x0) for s in (t, t_mid, t_end))
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        with torch.no_grad():
            cfg = 1.0 if w is None else w
            x_mid = ddim_update(*distiller.teacher(x_t, t, labels, cfg), ab_mid)
            x_end = ddim_update(*distiller.teacher(x_mid, t_mid, labels, cfg), ab_end)
            ratio = ((1 - ab_end) / (1 - ab)).sqrt()
            target_x0 = (x_end - ratio * x_t) / (ab_end.sqrt() - ratio * ab.sqrt())
            target = distiller.process.output_for(target_x0, x_t, t, ab)
        out = distiller.student_output(model, x_t, t, ab, labels, w)
        return F.mse_loss(out, target.float(), reduction="none").mean(dim=(1, 2, 3)).mean()


register(Progressive())
