"""What the commands and the Python face (`diffkit.api`) share when they draw from a run: for `sample`, the
classes laid out in rows, the sizes bounded before any work, then the images (and, with frames, the
pictures of the process); for `interpolate`, the checks of a request and the call it makes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from diffkit.checks import MAX_INTERPOLATION_FRAMES, check_bounded, check_sample_flags
from diffkit.editing import Interpolation, interpolate_classes, interpolate_images, interpolate_seeds
from diffkit.errors import DiffkitError
from diffkit.frames import Process, record_process
from diffkit.generation import Generated, check_held, class_layout, generate, grid_rows
from diffkit.progress import Progress
from diffkit.runs import LoadedRun
from diffkit.sampling import SamplingPlan

MAX_IN_MEMORY = 20_000  # images a grid holds (--export-dir streams any number)
MAX_PROCESS_PICTURES = 20_000  # images x frames of --process / --gif
FEWER = "lower --num (or --frames), or write any number with --export-dir, batch by batch"


@dataclass(frozen=True)
class Layout:
    classes: Tensor | None  # a label per image, or None (unconditional model)
    total: int
    nrow: int  # images per grid row: a row per class, else near square
    frames: int  # pictures of the process per image (0: none)


def layout(loaded: LoadedRun, label: int | Sequence[int] | None, per_class: int, frames: int = 0) -> Layout:
    """`per_class` images of `label` (one class, several, or every class: a row each), checked for size."""
    classes, total = class_layout(loaded.num_classes, label, per_class)
    check_bounded(
        total, MAX_IN_MEMORY, "images", "held in memory at once: write more with --export-dir, batch by batch"
    )
    check_bounded(total * frames, MAX_PROCESS_PICTURES, "images x frames", "lower --num or --frames")
    d = loaded.settings.data  # the images, and with frames x_t and x̂0 at each frame: all held at once
    check_held(total * (1 + 2 * frames), (d.channels, d.image_size, d.image_size), "this sample", FEWER)
    rows_of_classes = loaded.num_classes if label is None or not isinstance(label, int) else 0
    return Layout(classes, total, grid_rows(rows_of_classes, per_class, total), frames)


def draw(
    loaded: LoadedRun, plan: SamplingPlan, shape: Layout, progress: Progress | None = None
) -> tuple[Generated, Process | None]:
    """The images of `shape`, and with frames the states recorded on the way (`record_process`)."""
    denoiser = loaded.denoiser(plan)
    if shape.frames:
        return record_process(
            denoiser, plan, num=shape.total, classes=shape.classes, frames=shape.frames, progress=progress
        )
    return generate(denoiser, plan, num=shape.total, classes=shape.classes, progress=progress), None


def check_interpolation(kind: str, *, frames: int, class_id: int | None, cfg: float | None, steps: int | None) -> None:
    """An interpolation request (`kind`: classes, seeds or images) that can mean something, before any work."""
    check_sample_flags(cfg=cfg, steps=steps)
    check_bounded(frames, MAX_INTERPOLATION_FRAMES, "--frames", "each frame is a full sampling run")
    if frames < 2:
        raise DiffkitError(f"--frames {frames} is too few: at least 2 (the two end points)")
    if class_id is not None and kind != "seeds":
        raise DiffkitError("--class goes with --seeds only: drop it")
    if cfg is not None and kind == "images":
        raise DiffkitError("--cfg does not apply to --images (inversion uses the unconditional model)")


def interpolation(
    loaded: LoadedRun,
    plan: SamplingPlan,
    kind: str,
    ends: tuple[int, int] | Tensor,
    *,
    frames: int,
    class_id: int | None = None,
    progress: Progress | None = None,
) -> Interpolation:
    """Between two classes (fixed noise), two seeds (slerp) or two images (`ends`: a (2, C, H, W) tensor)."""
    denoiser = loaded.denoiser(plan)
    if kind == "images":
        assert isinstance(ends, Tensor)
        return interpolate_images(denoiser, ends[:1], ends[1:], plan, frames=frames, progress=progress)
    assert not isinstance(ends, Tensor)
    if kind == "classes":
        return interpolate_classes(denoiser, *ends, plan, frames=frames, progress=progress)
    return interpolate_seeds(denoiser, *ends, plan, frames=frames, class_id=class_id, progress=progress)
