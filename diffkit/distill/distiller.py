"""`Distiller`: the Trainer with a teacher, a method's loss and rounds; everything else is the Trainer's.

The clock plan, checkpoints, exact resume, validation, the final grid and the progress hooks are the
training loop's own: the student is a run like any other. What is added: the teacher (the trained run
first, then each round's student), the student's initialisation from it, and the round switch. At the
switch the student's EMA becomes the teacher and the student restarts from it; that teacher is saved
(`checkpoints/teacher.safetensors`) so a run resumed inside a round finds it again.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffkit.denoiser import Denoiser
from diffkit.distill.methods import DistillMethod, get_method
from diffkit.distributed import Rows, draw_rows
from diffkit.errors import DiffkitError
from diffkit.runs import load_run, make_denoiser, read_checkpoint, save_checkpoint, split_weights
from diffkit.settings import DistillSettings
from diffkit.training.trainer import Trainer

TEACHER = "teacher"  # checkpoints/teacher.safetensors: the current round's teacher (rounds after the first)


class Distiller(Trainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The Trainer's own start (its arguments), then the teacher and the student's start from it."""
        super().__init__(*args, **kwargs)
        assert self.settings.distill is not None  # a student's settings (see diffkit.distill.run.student_settings)
        self.options: DistillSettings = self.settings.distill
        self.method: DistillMethod = get_method(self.options.method)
        self.rounds = self.method.rounds(self.options)
        first = load_run(Path(self.options.teacher), self.options.teacher_checkpoint, device=str(self.device))
        first.model.requires_grad_(False)
        for net in (self.model, self.ema):
            start_from(net, first.model.state_dict(), self.options.teacher)
        self.teacher: Denoiser = make_denoiser(first.settings, first.model, first.process)
        self.teacher_round = 0

    # --- rounds ------------------------------------------------------------------------------------
    def round_at(self, step: int) -> int:
        """The round step `step + 1` belongs to: the planned steps split evenly between the rounds."""
        return min(len(self.rounds) - 1, step * len(self.rounds) // max(1, self.total_steps))

    @property
    def student_steps(self) -> int:
        return self.rounds[self.round_at(self.step)]

    def _optimise_step(self) -> tuple[float, float, int]:
        self._enter_round(self.round_at(self.step))
        return super()._optimise_step()

    def _enter_round(self, round_: int) -> None:
        """This round's student (EMA) becomes the teacher of the next; the next student starts from it."""
        if round_ == self.teacher_round:
            return
        if self.world.is_main:  # saved first: a run resumed inside the new round loads exactly this
            meta = {"step": self.step, "round": round_, "sample_steps": self.rounds[self.teacher_round]}
            save_checkpoint(self.paths, TEACHER, self.model, self.ema, meta)
            # the finished round's student, to sample at its own steps: --checkpoint <run>/checkpoints/steps_NN...
            save_checkpoint(self.paths, f"steps_{self.rounds[self.teacher_round]:02d}", self.model, self.ema, meta)
        self.model.load_state_dict(self.ema.state_dict())
        self._student_teacher(copy.deepcopy(self.ema))
        self.teacher_round = round_
        self.best_val = math.inf  # validation losses of different rounds do not compare: `best` is the last round's

    def _save(self, name: str, with_state: bool, val_loss: float | None = None) -> None:
        if name == "best" and self.round_at(self.step - 1) < len(self.rounds) - 1:
            return  # an earlier round's student is not the run's best (it samples in more steps)
        super()._save(name, with_state, val_loss)

    def _student_teacher(self, net: nn.Module) -> None:
        net.eval().requires_grad_(False)
        self.teacher = make_denoiser(self.settings, net, self.process)

    def resume(self) -> None:
        super().resume()
        round_ = self.round_at(self.step)
        if round_ == 0:
            return
        if self.step > 0 and self.round_at(self.step - 1) < round_:
            self.teacher_round = round_ - 1  # the switch to this round comes with the next step
            return
        tensors, meta = read_checkpoint(self.paths.weights(TEACHER))
        if meta.get("round") != round_:
            raise DiffkitError(
                f"{self.paths.weights(TEACHER)} is the teacher of round {meta.get('round')}, not of round {round_}: "
                "start again with --force"
            )
        net = copy.deepcopy(self.ema)
        net.load_state_dict(split_weights(tensors, "ema"))
        self._student_teacher(net)
        self.teacher_round = round_

    # --- the loss ----------------------------------------------------------------------------------
    def loss(
        self,
        model: nn.Module,
        x0: Tensor,
        labels: Tensor,
        gen: torch.Generator,
        p_uncond: float,
        rows: Rows | None = None,
    ) -> Tensor:
        """The method's distillation loss (training and validation alike; labels are never dropped)."""
        return self.method.loss(self, model, x0, labels, gen, rows)

    def draw_guidance(self, n: int, gen: torch.Generator, rows: Rows | None) -> Tensor | None:
        """Per-image guidance scales, uniform in the trained range (None for a student without the input)."""
        if not self.settings.model.guidance_input:
            return None
        low, high = self.options.guidance_min, self.options.guidance_max
        u = draw_rows(rows, n, lambda k: torch.rand(k, generator=gen, device=self.device))
        return low + (high - low) * u

    def student_output(
        self, model: nn.Module, x_t: Tensor, t: Tensor, alpha_bar: Tensor, labels: Tensor, w: Tensor | None
    ) -> Tensor:
        """The student's network output at VP states x_t (its process's inputs), in the run's precision."""
        x_in, noise_input = self.process.network_inputs(x_t, t, alpha_bar)
        extra: dict[str, Any] = {} if w is None else {"guidance": w}
        with self.precision.autocast(x_t.device):
            out = model(self.precision.layout(x_in), noise_input, labels if self.num_classes else None, **extra)
        return out.float()


def start_from(net: nn.Module, weights: dict[str, Tensor], teacher: str) -> None:
    """Load the teacher's weights into a student; only the student's new guidance input may be missing."""
    missing, unexpected = net.load_state_dict(weights, strict=False)
    if unexpected or any(not key.startswith("guidance_mlp.") for key in missing):
        raise DiffkitError(f"the student's network does not fit teacher {teacher}: distil from an unmodified run")
