"""The run `diffkit app` serves, and the page's controls read as library values (classes, plans, numbers)."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffkit.errors import DiffkitError
from diffkit.runs import LoadedRun, latest_run, load_run
from diffkit.sampling import SamplingPlan

ALL_CLASSES = "every class (a row each)"
UNCONDITIONAL = "unconditional"


@dataclass
class AppRun:
    """The run the page serves (loaded once, when the server starts), or why there is none."""

    workdir: Path
    loaded: LoadedRun | None = None
    error: str | None = None
    _counter: Any = field(default_factory=lambda: itertools.count(1), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def require(self) -> LoadedRun:
        if self.loaded is None:
            raise DiffkitError(self.error or "no run is loaded")
        return self.loaded

    def folder(self, tab: str) -> Path:
        """A new folder under the work directory for one action's files (never overwritten)."""
        while True:
            with self._lock:
                n = next(self._counter)
            path = self.workdir / f"{tab}-{n:04d}"
            try:
                path.mkdir(parents=True)
                return path
            except FileExistsError:  # a work directory used before
                continue

    @property
    def served_paths(self) -> list[str]:
        """The only places the page may serve files from: the run itself and the app's own outputs."""
        return [str(self.workdir)] + ([str(self.loaded.root)] if self.loaded is not None else [])


def open_app(
    run: Path | None, *, workdir: Path, checkpoint: str = "best", device: str = "auto", runs_dir: Path | None = None
) -> AppRun:
    """Load `run` (default: the most recent run under the runs directory). A failure is kept, not raised:
    the page still comes up and says what is wrong."""
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if run is None:
            run = latest_run(runs_dir)  # None: DIFFKIT_RUNS_DIR, else runs/ (where `diffkit train` writes)
        return AppRun(workdir, load_run(run, checkpoint, device=device))
    except DiffkitError as exc:
        return AppRun(workdir, error=" ".join(str(exc).split()))


def describe(app: AppRun) -> str:
    """One markdown line about the run: where, which checkpoint, how far it trained, what it makes."""
    loaded = app.require()
    d, meta = loaded.settings.data, loaded.meta
    trained = f"step {meta['step']}" if "step" in meta else "step ?"
    if meta.get("val_loss") is not None:
        trained += f", validation loss {meta['val_loss']:.4f}"
    classes = f"{loaded.num_classes} classes" if loaded.num_classes else "unconditional"
    superres = " · **super-resolution model**" if loaded.settings.model.cond_channels else ""
    return (
        f"run **{loaded.root}** · checkpoint `{loaded.checkpoint.name}` ({trained}) · {d.dataset}, "
        f"{d.channels}x{d.image_size}x{d.image_size}, {classes}{superres} · on {loaded.device}"
    )


def class_choices(app: AppRun, *, every: bool = True) -> list[str]:
    """The class menu: every class (a grid row each), unconditional, then each class by number."""
    k = app.loaded.num_classes if app.loaded is not None else 0
    if k == 0:
        return [UNCONDITIONAL]
    return [*([ALL_CLASSES] if every else []), UNCONDITIONAL, *(str(c) for c in range(k))]


def class_of(choice: str | int | None) -> int | str | None:
    """A menu entry as a class id, None (unconditional) or ALL_CLASSES."""
    if choice in (None, "", UNCONDITIONAL):
        return None
    if choice == ALL_CLASSES:
        return ALL_CLASSES
    try:
        return int(choice)
    except (TypeError, ValueError):
        raise DiffkitError(f"class {choice!r} is not a class number, {UNCONDITIONAL!r} or {ALL_CLASSES!r}") from None


def defaults(app: AppRun) -> dict[str, Any]:
    """The run's [sample] settings, to start the controls at."""
    if app.loaded is None:
        return {"sampler": "ddim", "steps": 50, "cfg": 2.0, "seed": 0, "num": 4}
    s = app.loaded.settings.sample
    return {"sampler": s.sampler, "steps": s.steps, "cfg": s.cfg, "seed": s.seed, "num": min(s.num, 8)}


def plan_for(loaded: LoadedRun, *, sampler: str | None, steps: int, cfg: float, seed: int) -> SamplingPlan:
    """The run's [sample] settings with the page's controls on top, checked as `diffkit sample` checks its flags."""
    return loaded.plan(sampler=sampler, steps=steps, cfg=float(cfg), seed=seed)


def whole(value: Any, what: str, low: int, high: int | None = None) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise DiffkitError(f"{what} {value!r} is not a whole number") from None
    if n < low or (high is not None and n > high):
        raise DiffkitError(f"{what} {n} is out of range: use {low} to {high}" if high else f"{what} must be >= {low}")
    return n


def seconds_text(s: float) -> str:
    return f"{s:.1f} s" if s >= 0.1 else f"{s * 1000:.0f} ms"
