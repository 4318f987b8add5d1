"""What a distillation method provides, and the methods by name (`diffkit distill --method`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from diffkit.distributed import Rows, draw_rows
from diffkit.errors import DiffkitError
from diffkit.settings import DistillSettings

if TYPE_CHECKING:
    from diffkit.distill.distiller import Distiller


class DistillMethod(ABC):
    """A way to train a few-step student from a teacher: which steps it reaches, and its loss."""

    name: ClassVar[str]
    summary: ClassVar[str]
    # whether a student of this method may teach the next run of it (progressive: it goes on halving); a
    # student never teaches another method
    students_teach: ClassVar[bool] = False

    @abstractmethod
    def rounds(self, options: DistillSettings) -> list[int]:
        """The student's sampling steps in each round (the last is `options.steps`); a DiffkitError if the
        method cannot reach them from this teacher."""

    def student_diffusion(self, teacher: dict[str, Any]) -> dict[str, Any]:
        """The student's [diffusion] settings from the teacher's (the same process and grid by default)."""
        return teacher

    def student_sample(self, options: DistillSettings) -> dict[str, Any]:
        """The student's [sample] defaults, so `diffkit sample --run STUDENT` needs no flags."""
        return {"steps": options.steps}

    @abstractmethod
    def loss(
        self, distiller: Distiller, model: nn.Module, x0: Tensor, labels: Tensor, gen: Any, rows: Rows | None
    ) -> Tensor:
        """The mean distillation loss of the student `model` on clean images `x0` (every draw from `gen`)."""


def x0_capable(diffusion: dict[str, Any]) -> dict[str, Any]:
    """[diffusion] settings whose network can give x̂0 at pure noise: an ε-predicting vp teacher gets a
    v-predicting student (with ε̂, x̂0 = (x_T - σ ε̂) / α divides by α ≈ 5e-5 at t = T - 1; Salimans & Ho 2022,
    §4, use v or x0 too). Other processes already can."""
    if diffusion.get("process", "vp") == "vp" and diffusion.get("objective", "eps") == "eps":
        return {**diffusion, "objective": "v"}
    return diffusion


def alpha_bar_of(distiller: Distiller, t: Tensor) -> Tensor:
    """ᾱ at grid positions t (N,) as (N, 1, 1, 1) floats; t = -1 is the clean end (ᾱ = 1)."""
    return distiller.process.grid.alpha_bar_at(t.cpu().double()).float().reshape(-1, 1, 1, 1)


def student_x0(
    distiller: Distiller, model: nn.Module, x_t: Tensor, t: Tensor, alpha_bar: Tensor, labels: Tensor, w: Tensor | None
) -> Tensor:
    """The student's x̂0 at VP states x_t (through its process: a consistency student's is its f)."""
    out = distiller.student_output(model, x_t, t, alpha_bar, labels, w)
    return distiller.process.predict(out, x_t, t, alpha_bar).x0


def draw_noise(rows: Rows | None, like: Tensor, gen: torch.Generator) -> Tensor:
    """Standard normal noise shaped as `like` (this process's rows of the global batch)."""
    shape, device = like.shape[1:], like.device
    return draw_rows(rows, like.shape[0], lambda k: torch.randn((k, *shape), generator=gen, device=device))


METHODS: dict[str, DistillMethod] = {}


def register(method: DistillMethod) -> DistillMethod:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> DistillMethod:
    from diffkit.distill import consistency, progressive  # noqa: F401  (registers the methods)

    if name not in METHODS:
        raise DiffkitError(f"unknown distillation method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]
