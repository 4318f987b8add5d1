"""`distill_run`: check the teacher, make the student's settings, and train the student with `Distiller`.

The student is a run directory like any trained one (config.toml, checkpoints, samples, plan.json); its
config records the teacher, the method and the step count in [distill], and its sampler and steps in
[sample], so every command that reads runs samples it correctly with no flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from diffkit.distill.distiller import Distiller
from diffkit.distill.methods import get_method
from diffkit.errors import DiffkitError
from diffkit.runlock import is_locked, read_owner
from diffkit.runs import RunPaths, is_run, resolve_checkpoint
from diffkit.settings import Settings, describe_validation_error, load_saved_settings, settings_to_dict
from diffkit.training import TrainResult, train_run
from diffkit.training.request import merge

DEFAULT_MINUTES = 8.0
# the student's optimisation: it starts from its teacher, so a constant LR after a short warm-up, and an EMA
# short enough to follow each round (the trainer's EMA warm-up still applies)
STUDENT_TRAIN: dict[str, Any] = {
    "lr": 5e-4,
    "warmup_steps": 10,
    "lr_schedule": "constant",
    "p_uncond": 0.0,
    "ema_decay": 0.99,
    "sample_every_epochs": 0,
    "fid_every_epochs": 0,
    "epochs": None,
    "checkpoint_every_steps": None,
    "threads": None,
}


def check_teacher(teacher_dir: Path, method: str) -> Settings:
    """The teacher's settings, if it can teach `method`; else one line (nothing has been written)."""
    if not is_run(teacher_dir):
        raise DiffkitError(f"teacher run {teacher_dir} does not exist: pass --run with a run made by diffkit train")
    if is_locked(teacher_dir):
        owner = read_owner(teacher_dir)
        raise DiffkitError(
            f"teacher run {teacher_dir} is still training{f' (pid {owner})' if owner else ''}: "
            "wait for it to finish, then distil it"
        )
    if not resolve_checkpoint(teacher_dir, "best").is_file():
        raise DiffkitError(f"teacher run {teacher_dir} has no checkpoint yet: train it first (diffkit train)")
    teacher = load_saved_settings(RunPaths(teacher_dir).config)
    if teacher.model.task == "super-res":
        raise DiffkitError(
            f"teacher run {teacher_dir} is a super-resolution model: distillation makes few-step generators, "
            "distil a generating run"
        )
    chosen = get_method(method)  # a known method (else one line)
    if teacher.distill is not None and (teacher.distill.method != method or not chosen.students_teach):
        why = "cannot teach another method" if teacher.distill.method != method else "is no diffusion model to teach"
        raise DiffkitError(
            f"teacher run {teacher_dir} is a {teacher.distill.method} student: a student {why}; "
            f"distil its teacher {teacher.distill.teacher} with --method {method}"
        )
    return teacher


def student_settings(
    teacher: Settings,
    teacher_dir: Path,
    steps: int,
    method: str,
    *,
    minutes: float | None = None,
    max_steps: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """The student's settings: the teacher's network, data and process; the method's training and sampling."""
    chosen = get_method(method)
    data = settings_to_dict(teacher)
    conditional = bool(teacher.model.num_classes)
    data["name"] = f"{teacher.name or teacher_dir.name}-{method}-{steps}"
    data["model"]["guidance_input"] = conditional
    data["diffusion"] = chosen.student_diffusion(data["diffusion"])
    length = {"max_minutes": None, "max_steps": max_steps} if max_steps else {"max_minutes": minutes or DEFAULT_MINUTES}
    data["train"] = {**data["train"], **STUDENT_TRAIN, "max_steps": None, **length, "grid_steps": steps}
    previous = teacher.distill  # a student of the same method goes on halving from its own steps
    data["distill"] = {
        "teacher": str(teacher_dir.resolve()),
        "method": method,
        "steps": steps,
        **({"teacher_steps": teacher.sample.steps} if previous is not None else {}),
        **(
            {"guidance_min": previous.guidance_min, "guidance_max": previous.guidance_max}
            if previous is not None
            else {}
        ),
    }
    data = merge(data, overrides or {})
    data["distill"]["steps"] = steps
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise DiffkitError(describe_validation_error(exc)) from None
    assert settings.distill is not None
    chosen.rounds(settings.distill)  # the steps are reachable (else one line)
    settings.sample = settings.sample.model_copy(update=chosen.student_sample(settings.distill))
    if conditional and not settings.distill.guidance_min <= settings.sample.cfg <= settings.distill.guidance_max:
        settings.sample = settings.sample.model_copy(update={"cfg": settings.distill.guidance_min})
    return settings


def distill_run(settings: Settings, run_dir: Path, **options: Any) -> tuple[Distiller, TrainResult]:
    """Train the student `settings` describe into `run_dir` (or continue it), by the training loop: `train_run`
    with the `Distiller`, after the teacher's checks; `options` are train_run's (resume, force, hooks, ...)."""
    assert settings.distill is not None
    teacher_dir = Path(settings.distill.teacher)
    if run_dir.resolve() == teacher_dir.resolve():
        raise DiffkitError(f"--run-dir {run_dir} is the teacher's own directory: choose another --run-dir")
    check_teacher(teacher_dir, settings.distill.method)
    trainer, result = train_run(settings, run_dir, trainer=Distiller, **options)
    assert isinstance(trainer, Distiller)
    return trainer, result
