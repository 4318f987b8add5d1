"""The Sample, Watch and Compare tabs: `generate`, `record_process` and `compare_samplers`, as
`diffkit sample`, `sample --process` and `compare-samplers` call them."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from diffkit.app.handlers.served import ALL_CLASSES, AppRun, class_of, plan_for, seconds_text, whole
from diffkit.compare import compare_samplers, grid_of
from diffkit.errors import DiffkitError
from diffkit.frames import MAX_FRAMES, record_process
from diffkit.generation import class_layout, cycled_classes, generate, grid_rows
from diffkit.progress import Progress
from diffkit.sampling import rows_for
from diffkit.viz import save_grid, save_grid_gif, save_images, save_labelled_rows


@dataclass
class Sampled:
    grid: Path
    archive: Path
    info: str
    nfe: int
    seconds: float


def sample(
    app: AppRun,
    *,
    class_choice: str,
    cfg: float,
    sampler: str,
    steps: int,
    seed: int,
    num: int,
    progress: Progress | None = None,
) -> Sampled:
    """`diffkit sample`: a grid (a row per class, or one class, or unconditional) and a zip of the PNGs."""
    loaded = app.require()
    steps, seed, num = whole(steps, "steps", 1), whole(seed, "seed", 0), whole(num, "number of images", 1, 64)
    which = class_of(class_choice)
    if which is None:  # unconditional: no class and no guidance
        classes, total, cfg, nrow = None, num, 1.0, grid_rows(0, num, num)
    elif which == ALL_CLASSES:
        classes, total = class_layout(loaded.num_classes, None, num)
        nrow = grid_rows(loaded.num_classes, num, total)
    else:
        assert isinstance(which, int)
        classes, total = class_layout(loaded.num_classes, which, num)
        nrow = grid_rows(0, num, total)
    plan = plan_for(loaded, sampler=sampler, steps=steps, cfg=cfg, seed=seed)
    result = generate(loaded.denoiser(plan), plan, num=total, classes=classes, step_progress=progress)
    folder = app.folder("sample")
    grid = save_grid(result.images, folder / "grid.png", nrow=nrow, scale=2)
    save_images(result.images, folder / "images")
    shutil.copy(grid, folder / "images" / "grid.png")
    archive = Path(shutil.make_archive(str(folder / "diffkit-samples"), "zip", folder / "images"))
    what = "unconditional" if which is None else ("a row per class" if which == ALL_CLASSES else f"class {which}")
    info = (
        f"**{total} images** ({what}) with {sampler}, {steps} steps, guidance {cfg:g}, seed {seed} · "
        f"**NFE {result.nfe}** per image · **{seconds_text(result.seconds)}** ({total / result.seconds:.1f} img/s)"
    )
    return Sampled(grid, archive, info, result.nfe, result.seconds)


# ------------------------------------------------------------------------------- watch it denoise


@dataclass
class Denoising:
    frames: list[Path]  # frame k: x_t (left) and the x̂0 predicted from it (right), enlarged
    states: list[int]  # the sampler state each frame shows (0 = the starting noise, steps = the image)
    steps: int
    strip: Path  # every frame: x_t on top, x̂0 below
    gif: Path
    info: str

    def caption(self, k: int) -> str:
        k = max(0, min(int(k), len(self.frames) - 1))
        s = self.states[k]
        where = "the starting noise x_T" if s == 0 else ("the finished image" if s == self.steps else f"after step {s}")
        return f"frame {k + 1} of {len(self.frames)}: state {s} of {self.steps} ({where}) · left x_t, right x̂0"


def watch(
    app: AppRun,
    *,
    class_choice: str,
    cfg: float,
    sampler: str,
    steps: int,
    seed: int,
    frames: int,
    progress: Progress | None = None,
) -> Denoising:
    """One image's reverse diffusion recorded by `record_process` (as `diffkit sample --process`)."""
    loaded = app.require()
    steps, seed = whole(steps, "steps", 1), whole(seed, "seed", 0)
    k = min(whole(frames, "frames", 2, MAX_FRAMES), steps + 1)
    which = class_of(class_choice)
    if which == ALL_CLASSES:
        raise DiffkitError("Watch shows one image: pick one class or unconditional")
    classes = None if which is None else class_layout(loaded.num_classes, int(which), 1)[0]
    cfg = float(cfg) if classes is not None else 1.0
    plan = plan_for(loaded, sampler=sampler, steps=steps, cfg=cfg, seed=seed)
    result, recorded = record_process(
        loaded.denoiser(plan), plan, num=1, classes=classes, frames=k, step_progress=progress
    )
    folder = app.folder("watch")
    pairs = [torch.stack([recorded.xt[0, i], recorded.x0[0, i]]) for i in range(k)]
    paths = [save_grid(pair, folder / f"frame_{i:02d}.png", nrow=2, scale=8) for i, pair in enumerate(pairs)]
    # "x0 predicted", not x̂0: the figure's font has no combining circumflex
    strip = save_labelled_rows(
        [recorded.xt[0], recorded.x0[0]], ["x_t", "x0 predicted"], folder / "process.png", scale=3
    )
    gif = save_grid_gif(pairs, folder / "process.gif", nrow=2, scale=6)
    what = "unconditional" if which is None else f"class {which}, guidance {cfg:g}"
    info = (
        f"{sampler}, {steps} steps, {what}, seed {seed} · **NFE {result.nfe}** · **{seconds_text(result.seconds)}** · "
        f"{k} frames (states {', '.join(map(str, recorded.states))})"
    )
    return Denoising(paths, recorded.states, steps, strip, gif, info)


# ------------------------------------------------------------------------------- compare samplers


@dataclass
class Compared:
    picture: Path
    report: Path
    table: str  # markdown


def compare(
    app: AppRun,
    *,
    samplers: Sequence[str],
    steps: str,
    num: int,
    class_choice: str,
    cfg: float,
    seed: int,
    progress: Progress | None = None,
) -> Compared:
    """`diffkit compare-samplers`: every (sampler, steps) pair on the same noise, a row each."""
    from diffkit.checks import parse_csv

    loaded = app.require()
    if not samplers:
        raise DiffkitError("tick at least one sampler to compare")
    counts = parse_csv(str(steps), int, "steps")
    if not counts:
        raise DiffkitError("give one or more step counts, e.g. 10,20")
    num, seed = whole(num, "images per row", 1, 32), whole(seed, "seed", 0)
    which = class_of(class_choice)
    if which is None:
        classes, cfg = None, 1.0
    else:
        classes = cycled_classes(loaded.num_classes, None if which == ALL_CLASSES else int(which), num)
    base = plan_for(loaded, sampler=None, steps=counts[0], cfg=cfg, seed=seed)
    plans = rows_for(base, grid_of(list(samplers), counts), {})
    result = compare_samplers(loaded.denoiser(base), plans, num=num, classes=classes, progress=progress)
    report, picture = result.save(app.folder("compare"), run=str(loaded.root), checkpoint=str(loaded.checkpoint))
    lines = ["| sampler | steps | NFE | time (s) | time / image (s) |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in result.rows:
        lines.append(
            f"| {row.plan.sampler} | {row.plan.steps} | {row.nfe} | {row.seconds:.2f} | {row.seconds_per_image:.3f} |"
        )
    return Compared(picture, report, "\n".join(lines))
