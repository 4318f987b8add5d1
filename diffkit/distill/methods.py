"""What a distillation method provides, and the methods by name (`diffkit distill --method`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from diffkit.distributed import Rows
from diffkit.errors import DiffkitError
from diffkit.settings import DistillSettings

if TYPE_CHECKING:
    from diffkit.distill.distiller import Distiller


class DistillMethod(ABC):
    """A way to train a few-step student from a teacher: which steps it reaches, and its loss."""

    name: ClassVar[str]
    summary: ClassVar[str]

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


METHODS: dict[str, DistillMethod] = {}


def register(method: DistillMethod) -> DistillMethod:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> DistillMethod:
    from diffkit.distill import progressive  # noqa: F401  (registers the methods)

    if name not in METHODS:
        raise DiffkitError(f"unknown distillation method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]
