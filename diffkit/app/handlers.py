"""What each tab of `diffkit app` does, as plain functions: the library calls the CLI commands make.

Every function takes the served run (`AppRun`) and plain values (strings, numbers, file paths) and
returns files written under the app's work directory plus text to show. No sampling loop and no maths
live here: sampling is `generate` / `record_process`, the comparison `compare_samplers`, editing
`diffkit.editing`, pictures `diffkit.viz`, as in `diffkit sample`, `compare-samplers`, `inpaint` and
`interpolate`. Mistakes are `DiffkitError`s with a readable message, which the page shows as they are.

All calls into the library are in this module, so a change of the library's signatures is adapted here.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffkit.compare import compare_samplers, grid_of
from diffkit.data import parse_source, read_image
from diffkit.editing import MASK_KINDS, InpaintResult, inpaint, interpolate_classes, interpolate_seeds, masked_view
from diffkit.editing import score as score_images
from diffkit.editing.masks import mask_from_spec
from diffkit.errors import DiffkitError
from diffkit.generation import class_layout, cycled_classes, generate, grid_rows
from diffkit.process import MAX_FRAMES, record_process
from diffkit.progress import Progress
from diffkit.runs import LoadedRun, RunPaths, latest_run, load_run
from diffkit.samplers import SAMPLERS
from diffkit.sampling import SamplingPlan, rows_for
from diffkit.viz import plot_training_curves, save_gif, save_grid, save_grid_gif, save_images, save_labelled_rows

ALL_CLASSES = "every class (a row each)"
UNCONDITIONAL = "unconditional"
DRAWN = "drawn in the editor"
UPLOADED = "uploaded mask PNG"
MASK_CHOICES = [DRAWN, *MASK_KINDS, UPLOADED]
EDITOR_SCALE = 10  # the editor shows the model-size image enlarged this many times, to draw on


# ---------------------------------------------------------------------------------------- the run


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


def _class(choice: str | int | None) -> int | str | None:
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


def _plan(loaded: LoadedRun, *, sampler: str | None, steps: int, guidance: float, seed: int) -> SamplingPlan:
    """The run's [sample] settings with the page's controls on top, checked as `diffkit sample` checks its flags."""
    return loaded.plan(sampler=sampler, steps=steps, cfg=float(guidance), seed=seed)


def _int(value: Any, what: str, low: int, high: int | None = None) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise DiffkitError(f"{what} {value!r} is not a whole number") from None
    if n < low or (high is not None and n > high):
        raise DiffkitError(f"{what} {n} is out of range: use {low} to {high}" if high else f"{what} must be >= {low}")
    return n


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s >= 0.1 else f"{s * 1000:.0f} ms"


# ------------------------------------------------------------------------------------------ sample


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
    guidance: float,
    sampler: str,
    steps: int,
    seed: int,
    num: int,
    progress: Progress | None = None,
) -> Sampled:
    """`diffkit sample`: a grid (a row per class, or one class, or unconditional) and a zip of the PNGs."""
    loaded = app.require()
    steps, seed, num = _int(steps, "steps", 1), _int(seed, "seed", 0), _int(num, "number of images", 1, 64)
    which = _class(class_choice)
    if which is None:  # unconditional: no class and no guidance
        classes, total, guidance, nrow = None, num, 1.0, grid_rows(0, num, num)
    elif which == ALL_CLASSES:
        classes, total = class_layout(loaded.num_classes, None, num)
        nrow = grid_rows(loaded.num_classes, num, total)
    else:
        assert isinstance(which, int)
        classes, total = class_layout(loaded.num_classes, which, num)
        nrow = grid_rows(0, num, total)
    plan = _plan(loaded, sampler=sampler, steps=steps, guidance=guidance, seed=seed)
    result = generate(loaded.denoiser(plan), plan, num=total, classes=classes, progress=progress)
    folder = app.folder("sample")
    grid = save_grid(result.images, folder / "grid.png", nrow=nrow, scale=2)
    save_images(result.images, folder / "images")
    shutil.copy(grid, folder / "images" / "grid.png")
    archive = Path(shutil.make_archive(str(folder / "diffkit-samples"), "zip", folder / "images"))
    what = "unconditional" if which is None else ("a row per class" if which == ALL_CLASSES else f"class {which}")
    info = (
        f"**{total} images** ({what}) with {sampler}, {steps} steps, guidance {guidance:g}, seed {seed} · "
        f"**NFE {result.nfe}** per image · **{_seconds(result.seconds)}** ({total / result.seconds:.1f} img/s)"
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
    guidance: float,
    sampler: str,
    steps: int,
    seed: int,
    frames: int,
    progress: Progress | None = None,
) -> Denoising:
    """One image's reverse diffusion recorded by `record_process` (as `diffkit sample --process`)."""
    loaded = app.require()
    steps, seed = _int(steps, "steps", 1), _int(seed, "seed", 0)
    k = min(_int(frames, "frames", 2, MAX_FRAMES), steps + 1)
    which = _class(class_choice)
    if which == ALL_CLASSES:
        raise DiffkitError("Watch shows one image: pick one class or unconditional")
    classes = None if which is None else class_layout(loaded.num_classes, int(which), 1)[0]
    guidance = float(guidance) if classes is not None else 1.0
    plan = _plan(loaded, sampler=sampler, steps=steps, guidance=guidance, seed=seed)
    result, recorded = record_process(loaded.denoiser(plan), plan, num=1, classes=classes, frames=k, progress=progress)
    folder = app.folder("watch")
    pairs = [torch.stack([recorded.xt[0, i], recorded.x0[0, i]]) for i in range(k)]
    paths = [save_grid(pair, folder / f"frame_{i:02d}.png", nrow=2, scale=8) for i, pair in enumerate(pairs)]
    strip = save_labelled_rows([recorded.xt[0], recorded.x0[0]], ["x_t", "x̂0"], folder / "process.png", scale=3)
    gif = save_grid_gif(pairs, folder / "process.gif", nrow=2, scale=6)
    what = "unconditional" if which is None else f"class {which}, guidance {guidance:g}"
    info = (
        f"{sampler}, {steps} steps, {what}, seed {seed} · **NFE {result.nfe}** · **{_seconds(result.seconds)}** · "
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
    guidance: float,
    seed: int,
    progress: Progress | None = None,
) -> Compared:
    """`diffkit compare-samplers`: every (sampler, steps) pair on the same noise, a row each."""
    from diffkit.cli.common import parse_csv

    loaded = app.require()
    if not samplers:
        raise DiffkitError("tick at least one sampler to compare")
    counts = parse_csv(str(steps), int, "steps")
    if not counts:
        raise DiffkitError("give one or more step counts, e.g. 10,20")
    num, seed = _int(num, "images per row", 1, 32), _int(seed, "seed", 0)
    which = _class(class_choice)
    if which is None:
        classes, guidance = None, 1.0
    else:
        classes = cycled_classes(loaded.num_classes, None if which == ALL_CLASSES else int(which), num)
    base = _plan(loaded, sampler=None, steps=counts[0], guidance=guidance, seed=seed)
    plans = rows_for(base, grid_of(list(samplers), counts), {})
    result = compare_samplers(loaded.denoiser(base), plans, num=num, classes=classes, progress=progress)
    report, picture = result.save(app.folder("compare"), run=str(loaded.root), checkpoint=str(loaded.checkpoint))
    lines = ["| sampler | steps | NFE | time (s) | time / image (s) |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in result.rows:
        lines.append(
            f"| {row.plan.sampler} | {row.plan.steps} | {row.nfe} | {row.seconds:.2f} | {row.seconds_per_image:.3f} |"
        )
    return Compared(picture, report, "\n".join(lines))


# ---------------------------------------------------------------------------------------- inpaint


@dataclass
class InpaintInput:
    image: Tensor  # (1, C, H, W) in [-1, 1], the model's size
    label: int | None  # its class, when known (dataset digits)
    what: str
    preview: Path  # the image enlarged EDITOR_SCALE times: the editor's background


def digit_source(app: AppRun) -> tuple[str, str]:
    """The data source to pick test images from, and a sentence saying which it is.

    Real MNIST test digits when the run makes 1x28x28 images and the split is on disk
    (DIFFKIT_DATA_DIR or the run's data directory); otherwise the run's own training set."""
    loaded = app.require()
    d = loaded.settings.data
    if d.channels == 1 and d.image_size == 28 and d.dataset in ("mnist", "mnist-5k"):
        try:
            parse_source("mnist:test:0", data_dir=_data_dir(loaded), image_size=28, channels=1)
            return "mnist:test", "MNIST test digits (`mnist:test`, from the data directory)"
        except DiffkitError:
            pass
    split = d.split or "train"
    return f"{d.dataset}:{split}", (
        f"the run's training set (`{d.dataset}:{split}`): the MNIST test split is not in the data directory"
        if d.dataset in ("mnist", "mnist-5k")
        else f"the run's training set (`{d.dataset}:{split}`)"
    )


def _data_dir(loaded: LoadedRun) -> str | Path:
    # DIFFKIT_DATA_DIR, when set, wins over the data directory the run was trained with (as in the CLI)
    return os.environ.get("DIFFKIT_DATA_DIR") or loaded.settings.data_dir


def _input(app: AppRun, image: Tensor, label: int | None, what: str) -> InpaintInput:
    preview = save_grid(image, app.folder("input") / "input.png", nrow=1, padding=0, scale=EDITOR_SCALE)
    return InpaintInput(image, label, what, preview)


def load_digit(app: AppRun, index: int) -> InpaintInput:
    """Test image number `index` of `digit_source` (as `diffkit inpaint --from SOURCE:INDEX`)."""
    loaded = app.require()
    source = f"{digit_source(app)[0]}:{_int(index, 'image number', 0)}"
    d = loaded.settings.data
    data = parse_source(source, data_dir=_data_dir(loaded), image_size=d.image_size, channels=d.channels)
    label = int(data.labels[0]) if data.num_classes > 0 and int(data.labels[0]) >= 0 else None
    return _input(app, data.floats(), label, source + (f" (class {label})" if label is not None else ""))


def load_upload(app: AppRun, path: str | Path | None) -> InpaintInput:
    """An uploaded picture, converted to the model's size and colours (as `diffkit inpaint --image`)."""
    loaded = app.require()
    if not path:
        raise DiffkitError("no file was uploaded: choose a PNG or JPEG")
    d = loaded.settings.data
    x, note = read_image(path, image_size=d.image_size, channels=d.channels)
    return _input(app, x, None, Path(path).name + (f" ({note})" if note else ""))


def drawn_mask(layers: Sequence[Any] | None, size: int) -> Tensor:
    """The strokes painted over the enlarged image (RGBA layers) as a (1, 1, size, size) mask: 0 = hole
    where a model pixel is at least a quarter painted over, 1 = keep."""
    from PIL import Image

    painted = [np.asarray(layer) for layer in layers or [] if layer is not None]
    painted = [a[..., 3] if a.ndim == 3 and a.shape[2] == 4 else (a.max(-1) if a.ndim == 3 else a) for a in painted]
    if not painted or not any(a.any() for a in painted):
        raise DiffkitError("nothing is drawn yet: paint the hole over the image with the brush, or pick a mask shape")
    alpha = np.maximum.reduce([a.astype(np.uint8) for a in painted])
    h, w = alpha.shape
    if h != w:
        raise DiffkitError(f"the drawn mask is {w}x{h}, not square: draw on the loaded {size}x{size} image")
    small = np.asarray(Image.fromarray(alpha).resize((size, size), Image.Resampling.BOX))
    keep = torch.from_numpy(small < 64).float().reshape(1, 1, size, size)
    if bool((keep == 1).all()):
        raise DiffkitError("the strokes are too thin to cover a pixel of the model's image: paint a larger hole")
    return keep


def make_mask(
    app: AppRun, mask_choice: str, *, layers: Sequence[Any] | None, mask_file: str | Path | None, seed: int
) -> Tensor:
    """The mask chosen in the page: drawn, a named shape (as `--mask center`) or a PNG (as `--mask FILE`)."""
    size = app.require().settings.data.image_size
    if mask_choice == DRAWN:
        return drawn_mask(layers, size)
    if mask_choice == UPLOADED:
        if not mask_file:
            raise DiffkitError(f"upload a {size}x{size} mask PNG first (white = keep, black = hole)")
        return mask_from_spec(str(mask_file), 1, size, seed)
    if mask_choice not in MASK_KINDS:
        raise DiffkitError(f"unknown mask {mask_choice!r}: choose one of {', '.join(MASK_CHOICES)}")
    return mask_from_spec(mask_choice, 1, size, seed)


@dataclass
class Inpainted:
    figure: Path
    table: str  # markdown: PSNR / SSIM over the hole, NFE and seconds per method
    scores: dict[str, dict[str, float]]


def inpaint_image(
    app: AppRun,
    source: InpaintInput | None,
    *,
    mask_choice: str,
    layers: Sequence[Any] | None = None,
    mask_file: str | Path | None = None,
    methods: Sequence[str],
    sampler: str,
    steps: int,
    seed: int,
    iterations: int = 200,
    jump: int = 5,
    resample: int = 5,
    progress: Progress | None = None,
) -> Inpainted:
    """`diffkit inpaint`: fill the hole with each method; the figure and the scores over the hole."""
    loaded = app.require()
    if source is None:
        raise DiffkitError("load a test image or upload one first")
    if not methods:
        raise DiffkitError("tick at least one method: replace, repaint or sds")
    steps, seed = _int(steps, "steps", 1), _int(seed, "seed", 0)
    masks = make_mask(app, mask_choice, layers=layers, mask_file=mask_file, seed=seed)
    classes = torch.tensor([source.label]) if source.label is not None and loaded.num_classes else None
    plan = loaded.plan(sampler=sampler, steps=steps, seed=seed)
    plan = plan if classes is not None else plan.but(guidance=1.0)
    guidance = plan.guidance
    results: dict[str, InpaintResult] = {}
    for m in methods:
        results[m] = inpaint(
            loaded.denoiser(plan),
            source.image,
            masks,
            plan,
            method=m,
            classes=classes,
            jump=min(_int(jump, "RePaint jump", 1), steps),  # RePaint jumps back at most `steps` levels
            resample=_int(resample, "RePaint resampling", 1),
            iterations=_int(iterations, "SDS iterations", 1, 5000),
            progress=progress,
        )
    hole = 1 - masks
    scores = {m: score_images(r.images, source.image, hole).mean() for m, r in results.items()}
    mask_row = (masks * 2 - 1).expand_as(source.image)
    figure = save_labelled_rows(
        [source.image, mask_row, masked_view(source.image, masks), *(r.images for r in results.values())],
        ["original", "mask", "masked input", *results],
        app.folder("inpaint") / "inpaint.png",
        scale=6,
    )
    lines = [
        f"over the hole ({int(hole.sum())} pixels), against the original · input {source.what} · guidance {guidance:g}",
        "",
        "| method | PSNR (dB) | SSIM | NFE | time (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for m, r in results.items():
        lines.append(f"| {m} | {scores[m]['psnr']:.2f} | {scores[m]['ssim']:.4f} | {r.nfe} | {r.seconds:.2f} |")
    return Inpainted(figure, "\n".join(lines), scores)


# ------------------------------------------------------------------------------------ interpolate


@dataclass
class Interpolated:
    frames: list[Path]  # each frame enlarged
    positions: list[float]
    strip: Path
    gif: Path
    info: str

    def caption(self, k: int) -> str:
        k = max(0, min(int(k), len(self.frames) - 1))
        return f"frame {k + 1} of {len(self.frames)} · position {self.positions[k]:.2f} (0 = first end, 1 = second)"


def interpolate(
    app: AppRun,
    *,
    mode: str,
    class_a: str | int,
    class_b: str | int,
    seed_a: int,
    seed_b: int,
    seed_class: str | None,
    frames: int,
    steps: int,
    guidance: float,
    seed: int,
    progress: Progress | None = None,
) -> Interpolated:
    """`diffkit interpolate --classes A B` (fixed noise, class embedding moving) or `--seeds A B` (slerp)."""
    loaded = app.require()
    frames, steps = _int(frames, "frames", 2, 64), _int(steps, "steps", 1)
    if mode == "classes":
        a, b = _class(class_a), _class(class_b)
        if not isinstance(a, int) or not isinstance(b, int):
            raise DiffkitError("pick two classes (numbers) to interpolate between")
        plan = _plan(loaded, sampler=None, steps=steps, guidance=guidance, seed=_int(seed, "seed", 0))
        result = interpolate_classes(loaded.denoiser(plan), a, b, plan, frames=frames, progress=progress)
        what = f"class {a} → class {b}, guidance {guidance:g}, seed {seed}"
    elif mode == "seeds":
        which = _class(seed_class)
        if which == ALL_CLASSES:
            raise DiffkitError("pick one class or unconditional for a seed interpolation")
        class_id = which if isinstance(which, int) else None
        plan = _plan(loaded, sampler=None, steps=steps, guidance=guidance if class_id is not None else 1.0, seed=0)
        result = interpolate_seeds(
            loaded.denoiser(plan),
            _int(seed_a, "first seed", 0),
            _int(seed_b, "second seed", 0),
            plan,
            frames=frames,
            class_id=class_id,
            progress=progress,
        )
        what = f"seed {seed_a} → seed {seed_b}, " + ("unconditional" if class_id is None else f"class {class_id}")
    else:
        raise DiffkitError(f"unknown interpolation {mode!r}: classes or seeds")
    folder = app.folder("interpolate")
    paths = [
        save_grid(result.frames[i : i + 1], folder / f"frame_{i:02d}.png", nrow=1, padding=0, scale=10)
        for i in range(len(result.frames))
    ]
    strip = save_labelled_rows([result.frames], ["frames"], folder / "strip.png", scale=3)
    gif = save_gif(result.frames, folder / "interpolation.gif", scale=6)
    info = (
        f"{what} · {frames} frames, DDIM {steps} steps · **NFE {result.nfe}** (batched) · "
        f"**{_seconds(result.seconds)}**"
    )
    return Interpolated(paths, list(result.positions), strip, gif, info)


# ---------------------------------------------------------------------------------------- the run


@dataclass
class RunOverview:
    summary: str  # markdown
    config: str  # config.toml
    curves: Path | None
    grids: list[tuple[Path, str]]  # (picture, caption), newest first
    sweep: Path | None
    sweep_text: str  # markdown


def overview(app: AppRun) -> RunOverview:
    """The run's config, training curves, latest grids and its FID-vs-guidance sweep when one exists."""
    loaded = app.require()
    paths = RunPaths(loaded.root)
    curves = paths.curves if paths.curves.is_file() else None
    if curves is None and paths.metrics.is_file():
        curves = plot_training_curves(paths.metrics, app.folder("run") / "curves.png")
    pictures = [*paths.samples.glob("*.png"), *paths.samples.glob("*/grid.png")]
    newest = sorted(pictures, key=lambda p: p.stat().st_mtime, reverse=True)[:6]
    grids = [(p, str(p.relative_to(loaded.root))) for p in newest]
    sweeps = sorted((loaded.root / "eval").glob("*/guidance_sweep.png"), key=lambda p: p.stat().st_mtime)
    sweep = sweeps[-1] if sweeps else None
    d = loaded.settings.data
    reference = "mnist:test" if d.dataset in ("mnist", "mnist-5k") else f"{d.dataset}:{d.split or 'train'}"
    sweep_text = (
        _sweep_text(sweep)
        if sweep is not None
        else "No FID-vs-guidance sweep yet. Make one with "
        f"`diffkit fid run:{loaded.root} {reference} --num 1000 --cfg 0,1,2,3,5 --class-accuracy`."
    )
    summary = describe(app) + f"\n\nprecision {loaded.precision.summary()}"
    return RunOverview(summary, paths.config.read_text(), curves, grids, sweep, sweep_text)


def _sweep_text(sweep: Path) -> str:
    report = sweep.parent / "fid.json"
    head = f"`{sweep.parent.name}`"
    try:
        record = json.loads(report.read_text())
    except (OSError, ValueError):
        return head
    keys = [k for k in ("fid", "kid", "class_accuracy") if any(k in r for r in record.get("rows", []))]
    lines = [
        f"{head} · features {record.get('feature_net', '?')}",
        "",
        "| guidance | " + " | ".join(keys) + " |",
        "| ---: |" + " ---: |" * len(keys),
    ]
    for r in record.get("rows", []):
        cells = [f"{r[k]:.4g}" if k in r else "" for k in keys]
        lines.append(f"| {r.get('guidance')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sampler_names() -> list[str]:
    return list(SAMPLERS)
