"""The Inpaint and Interpolate tabs: an input image (a test digit or an upload), a mask (drawn, a shape or a
PNG), `diffkit.editing`'s methods, as `diffkit inpaint` and `diffkit interpolate` call them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffkit.app.handlers.served import ALL_CLASSES, AppRun, class_of, plan_for, seconds_text, whole
from diffkit.data import parse_source, read_image
from diffkit.editing import MASK_KINDS, InpaintResult, figure_rows, inpaint, interpolate_classes, interpolate_seeds
from diffkit.editing import score as score_images
from diffkit.editing.masks import mask_from_spec
from diffkit.errors import DiffkitError
from diffkit.progress import Progress
from diffkit.runs import LoadedRun
from diffkit.viz import captioned_row, save_gif, save_grid, save_labelled_rows, save_pil

DRAWN = "drawn in the editor"
UPLOADED = "uploaded mask PNG"
MASK_CHOICES = [DRAWN, *MASK_KINDS, UPLOADED]
EDITOR_SCALE = 10  # the editor shows the model-size image enlarged this many times, to draw on


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
    source = f"{digit_source(app)[0]}:{whole(index, 'image number', 0)}"
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
    steps, seed = whole(steps, "steps", 1), whole(seed, "seed", 0)
    masks = make_mask(app, mask_choice, layers=layers, mask_file=mask_file, seed=seed)
    classes = torch.tensor([source.label]) if source.label is not None and loaded.num_classes else None
    plan = loaded.plan(sampler=sampler, steps=steps, seed=seed)
    plan = plan if classes is not None else plan.but(cfg=1.0)
    results: dict[str, InpaintResult] = {}
    for m in methods:
        results[m] = inpaint(
            loaded.denoiser(plan),
            source.image,
            masks,
            plan,
            method=m,
            classes=classes,
            jump=min(whole(jump, "RePaint jump", 1), steps),  # RePaint jumps back at most `steps` levels
            resample=whole(resample, "RePaint resampling", 1),
            iterations=whole(iterations, "SDS iterations", 1, 5000),
            progress=progress,
        )
    return _inpainted(app, source, masks, results, plan.cfg)


def _inpainted(
    app: AppRun, source: InpaintInput, masks: Tensor, results: dict[str, InpaintResult], cfg: float
) -> Inpainted:
    """The figure (original / mask / masked input / each method) and the scores over the hole."""
    hole = 1 - masks
    scores = {m: score_images(r.images, source.image, hole).mean() for m, r in results.items()}
    rows, labels = figure_rows(source.image, masks, results)  # one image: its rows side by side
    figure = save_pil(captioned_row(torch.cat(rows), labels, scale=6), app.folder("inpaint") / "inpaint.png")
    lines = [
        f"over the hole ({int(hole.sum())} pixels), against the original · input {source.what} · guidance {cfg:g}",
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
    cfg: float,
    seed: int,
    progress: Progress | None = None,
) -> Interpolated:
    """`diffkit interpolate --classes A B` (fixed noise, class embedding moving) or `--seeds A B` (slerp)."""
    loaded = app.require()
    frames, steps = whole(frames, "frames", 2, 64), whole(steps, "steps", 1)
    if mode == "classes":
        a, b = class_of(class_a), class_of(class_b)
        if not isinstance(a, int) or not isinstance(b, int):
            raise DiffkitError("pick two classes (numbers) to interpolate between")
        plan = plan_for(loaded, sampler=None, steps=steps, cfg=cfg, seed=whole(seed, "seed", 0))
        result = interpolate_classes(loaded.denoiser(plan), a, b, plan, frames=frames, progress=progress)
        what = f"class {a} → class {b}, guidance {cfg:g}, seed {seed}"
    elif mode == "seeds":
        which = class_of(seed_class)
        if which == ALL_CLASSES:
            raise DiffkitError("pick one class or unconditional for a seed interpolation")
        class_id = which if isinstance(which, int) else None
        plan = plan_for(loaded, sampler=None, steps=steps, cfg=cfg if class_id is not None else 1.0, seed=0)
        result = interpolate_seeds(
            loaded.denoiser(plan),
            whole(seed_a, "first seed", 0),
            whole(seed_b, "second seed", 0),
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
        f"**{seconds_text(result.seconds)}**"
    )
    return Interpolated(paths, list(result.positions), strip, gif, info)
