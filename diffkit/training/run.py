"""`train_run`: what `diffkit train` does, in one process or in each of torchrun's processes."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from diffkit.devices import resolve_device
from diffkit.distributed import World
from diffkit.interrupts import deferred_signals
from diffkit.runlock import RunLock, check_not_in_use
from diffkit.runs import RunPaths, check_run_dir, create_run_dir, recover_pair
from diffkit.settings import Settings
from diffkit.training.outcomes import TrainHooks, TrainResult
from diffkit.training.sizing import size_network
from diffkit.training.trainer import Trainer


def train_run(
    settings: Settings,
    run_dir: Path,
    *,
    resume: bool = False,
    force: bool = False,
    hooks: TrainHooks | None = None,
    stop_after: int | None = None,
    world: World | None = None,
    trainer: type[Trainer] = Trainer,
) -> tuple[Trainer, TrainResult]:
    """Check the run directory, lock it, load data, build, (re)start, train.

    The run directory's lock (`diffkit.runlock`) is held throughout: a second process, or a `--force`
    from one, is refused. SIGINT / SIGTERM are deferred to the next step boundary (`TrainingInterrupted`).
    Under torchrun (`world` None: joined from the environment) rank 0 owns the directory and the others
    only read it; a failed start on rank 0 ends every rank with its error. `trainer` is the Trainer (sub)class
    to run (a `diffkit.distill.Distiller` for a student).
    """
    clock_start = time.perf_counter()
    own_world = world is None
    world = World.from_env(resolve_device(settings.device)) if world is None else world
    try:
        with ExitStack() as stack:
            stack.enter_context(deferred_signals())
            lock = world.on_main(lambda: _claim(run_dir, resume, force, hooks, stack))
            try:
                sizing = None
                if not resume and settings.train.model_candidates:  # a resumed run keeps its config's network
                    settings, sizing = _sized(settings, world, hooks, clock_start)
                loop = trainer(settings, RunPaths(run_dir), hooks, clock_start=clock_start, world=world)
                loop.sizing = sizing
            except BaseException:
                if lock is not None:  # a failed start leaves nothing behind
                    lock.abandon()
                raise
            if resume:
                loop.resume()
            else:
                world.on_main(lambda: create_run_dir(loop.paths, settings))
                loop.choose_precision()
            try:
                return loop, loop.train(stop_after)
            finally:
                loop.runlog.close()
    finally:
        if own_world:
            world.close()


def _sized(
    settings: Settings, world: World, hooks: TrainHooks | None, clock_start: float
) -> tuple[Settings, dict[str, Any] | None]:
    """The settings with [model] the candidate chosen by the speed measured on rank 0 (`diffkit.training.sizing`)."""
    if settings.train.max_minutes is None:
        if world.is_main:
            (hooks or TrainHooks()).note(
                "train.model_candidates apply to a run with a time budget (train.max_minutes): training [model] as set"
            )
        return settings, None
    device = world.device(resolve_device(settings.device))
    sized = world.from_main(world.on_main(lambda: size_network(settings, device, clock_start=clock_start)))
    assert sized is not None
    return sized


def _claim(run_dir: Path, resume: bool, force: bool, hooks: TrainHooks | None, stack: ExitStack) -> RunLock:
    """Rank 0's start: the directory may be trained here, then locked for the rest of `stack`."""
    check_not_in_use(run_dir)
    check_run_dir(run_dir, resume=resume, force=force)  # before the lock creates anything
    lock = stack.enter_context(RunLock(run_dir))
    if lock.stale_pid is not None:
        (hooks or TrainHooks()).stale_lock(run_dir, lock.stale_pid)
    try:
        check_run_dir(run_dir, resume=resume, force=force)  # again, now that it is ours
        note = recover_pair(RunPaths(run_dir)) if resume else None  # a crash mid-checkpoint: the pair before
    except BaseException:
        lock.abandon()
        raise
    if note:
        (hooks or TrainHooks()).note(note)
    return lock
