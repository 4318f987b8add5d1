"""Few-step students: `diffkit distill` turns a trained run into one that samples in 1–4 steps.

A student is a run like any other, trained by the training loop (`Distiller` is a `Trainer` with a
teacher and a method's loss), so the clock plan, exact resume, checkpoints and grids are the trainer's.
Methods work through the process (`output_for` turns a target x̂0 into the student's output; `predict` gives a
consistency student's f), so they run on every process.

| module | holds |
| --- | --- |
| `methods` | `DistillMethod` (reachable steps, the student's settings, the loss), what methods share, the registry |
| `progressive` | progressive distillation (Salimans & Ho 2022) with guidance as an input (Meng et al. 2023) |
| `consistency` | consistency distillation (Song et al. 2023) into 1–4 steps, guidance as an input likewise |
| `distiller` | `Distiller`: the teacher, the student's start from it, the rounds |
| `run` | the teacher's checks, the student's settings, `distill_run` |
"""

from diffkit.distill.distiller import Distiller
from diffkit.distill.methods import METHODS, DistillMethod, get_method
from diffkit.distill.run import check_teacher, distill_run, student_settings

__all__ = ["METHODS", "DistillMethod", "Distiller", "check_teacher", "distill_run", "get_method", "student_settings"]
