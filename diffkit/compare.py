"""Sampler comparison: every (sampler, steps) pair run from the same noise and classes, timed.

Each row records its exact number of model evaluations (NFE), wall time and time per image, plus
whatever the pluggable quality metrics return: a quality function takes the row's images (N, C, H, W)
in [-1, 1] and their classes (or None) and returns named numbers, such as {"fid": 12.3}; they become
extra columns of the table, the JSON report and the picture.

Memory: one row's images are held while its quality is measured, then only the first `PICTURE_COLUMNS`
(for the picture), so a comparison holds the starting noise, one row and rows x PICTURE_COLUMNS images;
a request beyond `generation.MAX_HELD_BYTES` is refused before anything is generated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from diffkit.atomic import write_json
from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.generation import check_held, generate, initial_noise
from diffkit.progress import Progress
from diffkit.samplers import Step
from diffkit.sampling import SamplingPlan
from diffkit.viz import save_labelled_rows

QualityFn = Callable[[Tensor, Tensor | None], dict[str, float]]

# The 1000-step ancestral reference, DDIM at its usual 50 and 20, the higher-order solvers at 10 and 20 steps,
# each at its own default spacing, and 2-step consistency sampling: 1181 model evaluations, about two minutes
# of one CPU core on the demo model with 10 images.
DEFAULT_SPREAD: tuple[tuple[str, int], ...] = (
    ("ddpm", 1000),
    ("ddim", 50),
    ("ddim", 20),
    ("pndm", 20),
    ("dpm++2m", 20),
    ("dpm++2m", 10),
    ("dpm++3m", 10),
    ("dpm++2m-sde", 10),
    ("euler", 20),
    ("heun", 10),
    ("consistency", 2),  # 2 passes: a consistency student's own sampler (on other runs, blurry x̂0 re-noised)
)


PICTURE_COLUMNS = 32  # images of each row kept for compare.png (quality columns see all of them)


def grid_of(samplers: Sequence[str], steps: Sequence[int]) -> list[tuple[str, int]]:
    """Every sampler at every step count, in the order given."""
    return [(name, n) for name in samplers for n in steps]


@dataclass
class ComparedRow:
    """One sampler setting of a comparison, run: its plan, cost, images and quality numbers."""

    plan: SamplingPlan
    nfe: int
    seconds: float
    images: Tensor  # (n, C, H, W) in [-1, 1]: the first PICTURE_COLUMNS of the row's `num`
    num: int  # images the row generated (and its quality was measured on)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.num

    def record(self) -> dict[str, Any]:
        return {
            "sampler": self.plan.sampler,
            "steps": self.plan.steps,
            "options": self.plan.sampler_options,
            "nfe": self.nfe,
            "seconds": self.seconds,
            "seconds_per_image": self.seconds_per_image,
            **self.metrics,
        }

    def caption(self) -> str:
        parts = [self.plan.label, f"NFE {self.nfe}", f"{self.seconds:.1f} s", f"{self.seconds_per_image:.2f} s/img"]
        parts += [f"{k} {v:.4g}" for k, v in self.metrics.items()]
        return " · ".join(parts)


@dataclass
class Comparison:
    rows: list[ComparedRow]
    classes: Tensor | None
    cfg: float
    seed: int

    @property
    def metric_names(self) -> list[str]:
        """Quality columns, in first-seen order."""
        return list(dict.fromkeys(k for row in self.rows for k in row.metrics))

    def record(self) -> dict[str, Any]:
        return {
            "num": self.rows[0].num,
            "classes": None if self.classes is None else self.classes.tolist(),
            "cfg": self.cfg,
            "seed": self.seed,
            "rows": [row.record() for row in self.rows],
        }

    def save(self, folder: Path, **context: Any) -> tuple[Path, Path]:
        """compare.json (the rows plus `context`, e.g. the run) and compare.png (a captioned row per config)."""
        folder.mkdir(parents=True, exist_ok=True)
        report = write_json(folder / "compare.json", {**context, **self.record()})
        picture = save_labelled_rows(
            [r.images for r in self.rows], [r.caption() for r in self.rows], folder / "compare.png"
        )
        return report, picture


_FEWER = "lower --num, or compare fewer --samplers / --steps"


def compare_samplers(
    denoiser: Denoiser,
    plans: Sequence[SamplingPlan],
    *,
    num: int,
    classes: Tensor | None,
    quality: Sequence[QualityFn] = (),
    progress: Progress | None = None,
) -> Comparison:
    """Run every plan on the same initial noise, classes and step-noise seed; time each one.

    The plans differ in sampler, steps and options only (see `sampling.rows_for`); guidance, seed,
    clipping and batch size are the first one's.
    """
    if not plans:
        raise DiffkitError("nothing to compare: give at least one sampler and one step count")
    first = plans[0]
    # every row checked before any is drawn: a typo in the last row wastes no time
    timesteps, classes_known = denoiser.schedule.timesteps, denoiser.num_classes
    plans = [first.with_sampler(p.sampler, p.steps, p.options).check(timesteps, classes_known) for p in plans]
    held = 2 * num + len(plans) * min(num, PICTURE_COLUMNS)  # the noise, the row being made, the picture's
    check_held(held, denoiser.image_shape, f"comparing {len(plans)} settings on {num:,} images", _FEWER)
    noise = initial_noise(num, denoiser.image_shape, first.seed)
    # one evaluation first, so the first row's time holds no start-up cost
    warm = min(num, first.batch_size)
    warm_classes = None if classes is None else classes[:warm]
    generate(denoiser, first.with_sampler("ddim", 1), num=warm, classes=warm_classes, noise=noise[:warm])
    total = sum(p.steps for p in plans) * math.ceil(num / first.batch_size)
    done = 0

    def tick(_: Step) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    rows = []
    for plan in plans:
        out = generate(denoiser, plan, num=num, classes=classes, noise=noise, callback=tick)
        metrics: dict[str, float] = {}
        for fn in quality:
            metrics.update(fn(out.images, classes))
        rows.append(ComparedRow(plan, out.nfe, out.seconds, out.images[:PICTURE_COLUMNS].clone(), num, metrics))
    return Comparison(rows, classes, first.cfg, first.seed)
