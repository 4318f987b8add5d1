"""Sampler comparison: every (sampler, steps) pair run from the same noise and classes, timed.

Each row records its exact number of model evaluations (NFE), wall time and time per image, plus
whatever the pluggable quality metrics return: a quality function takes the row's images (N, C, H, W)
in [-1, 1] and their classes (or None) and returns named numbers, such as {"fid": 12.3}; they become
extra columns of the table, the JSON report and the picture.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from torch import Tensor

from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.generation import generate, initial_noise
from diffkit.models import UNet
from diffkit.samplers import SAMPLERS, Step, check_spacing, get_sampler

QualityFn = Callable[[Tensor, Tensor | None], dict[str, float]]
Progress = Callable[[int, int], None]  # (sampler steps done, sampler steps in all)


@dataclass(frozen=True)
class Config:
    """One row of a comparison: a sampler, its step count and its options (spacing, eta, rho)."""

    sampler: str
    steps: int
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.options)
        return f"{self.sampler} {self.steps}" + (f" ({extra})" if extra else "")


# The 1000-step ancestral reference, DDIM at its usual 50 and 20, and the higher-order solvers at 10 and
# 20 steps, each at its own default spacing: 1179 model evaluations, about two minutes of one CPU core
# on the demo model with 10 images.
DEFAULT_SPREAD: tuple[Config, ...] = (
    Config("ddpm", 1000),
    Config("ddim", 50),
    Config("ddim", 20),
    Config("pndm", 20),
    Config("dpm++2m", 20),
    Config("dpm++2m", 10),
    Config("dpm++3m", 10),
    Config("dpm++2m-sde", 10),
    Config("euler", 20),
    Config("heun", 10),
)


def grid_of(samplers: Sequence[str], steps: Sequence[int]) -> list[Config]:
    """Every sampler at every step count, in the order given."""
    return [Config(name, n) for name in samplers for n in steps]


def with_options(configs: Sequence[Config], **options: Any) -> list[Config]:
    """Give each option (None = not set) to the samplers that take it; an option none of them takes is an error."""
    out = list(configs)
    for key, value in options.items():
        if value is None:
            continue
        takers = [c.sampler for c in out if key in get_sampler(c.sampler).options]
        if not takers:
            able = ", ".join(name for name, spec in SAMPLERS.items() if key in spec.options)
            chosen = ", ".join(dict.fromkeys(c.sampler for c in out))
            raise DiffkitError(f"--{key} applies to {able} only, not {chosen}: drop --{key}")
        out = [replace(c, options=(*c.options, (key, value))) if c.sampler in takers else c for c in out]
    return out


def check_configs(configs: Sequence[Config], timesteps: int) -> None:
    """Reject bad rows before any sampling starts, so a typo in the last row wastes no time."""
    if not configs:
        raise DiffkitError("nothing to compare: give at least one sampler and one step count")
    for c in configs:
        get_sampler(c.sampler)
        if not 1 <= c.steps <= timesteps:
            raise DiffkitError(f"--steps {c.steps} is out of range: use 1 to {timesteps} (the model's T)")
        options = dict(c.options)
        if "spacing" in options:
            check_spacing(c.sampler, options["spacing"])
        if "eta" in options and not 0.0 <= float(options["eta"]) <= 1.0:
            raise DiffkitError(f"--eta {options['eta']} is out of range: use a value from 0 (deterministic) to 1")


@dataclass
class Row:
    config: Config
    nfe: int
    seconds: float
    images: Tensor  # (N, C, H, W) in [-1, 1]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / len(self.images)

    def record(self) -> dict[str, Any]:
        return {
            "sampler": self.config.sampler,
            "steps": self.config.steps,
            "options": dict(self.config.options),
            "nfe": self.nfe,
            "seconds": self.seconds,
            "seconds_per_image": self.seconds_per_image,
            **self.metrics,
        }

    def caption(self) -> str:
        parts = [self.config.label, f"NFE {self.nfe}", f"{self.seconds:.1f} s", f"{self.seconds_per_image:.2f} s/img"]
        parts += [f"{k} {v:.4g}" for k, v in self.metrics.items()]
        return " · ".join(parts)


@dataclass
class Comparison:
    rows: list[Row]
    classes: Tensor | None
    guidance: float
    seed: int

    @property
    def metric_names(self) -> list[str]:
        """Quality columns, in first-seen order."""
        return list(dict.fromkeys(k for row in self.rows for k in row.metrics))

    def record(self) -> dict[str, Any]:
        return {
            "num": len(self.rows[0].images),
            "classes": None if self.classes is None else self.classes.tolist(),
            "guidance": self.guidance,
            "seed": self.seed,
            "rows": [row.record() for row in self.rows],
        }

    def save(self, folder: Path, **context: Any) -> tuple[Path, Path]:
        """compare.json (the rows plus `context`, e.g. the run) and compare.png (a captioned row per config)."""
        from diffkit.viz import save_labelled_rows

        folder.mkdir(parents=True, exist_ok=True)
        report = folder / "compare.json"
        tmp = report.with_name(f".{report.name}.tmp")
        tmp.write_text(json.dumps({**context, **self.record()}, indent=2) + "\n")
        os.replace(tmp, report)
        picture = save_labelled_rows(
            [r.images for r in self.rows], [r.caption() for r in self.rows], folder / "compare.png"
        )
        return report, picture


def compare_samplers(
    denoiser: Denoiser,
    configs: Sequence[Config],
    *,
    num: int,
    classes: Tensor | None,
    guidance: float,
    seed: int,
    batch_size: int = 250,
    quality: Sequence[QualityFn] = (),
    progress: Progress | None = None,
) -> Comparison:
    """Run every config on the same initial noise, classes and step-noise seed; time each one."""
    check_configs(configs, denoiser.schedule.timesteps)
    model = cast(UNet, denoiser.model)
    noise = initial_noise(num, (model.in_channels, model.image_size, model.image_size), seed)
    # one evaluation first, so the first row's time holds no start-up cost (and bad guidance fails here)
    warm = min(num, batch_size)
    generate(
        denoiser,
        num=warm,
        classes=None if classes is None else classes[:warm],
        sampler="ddim",
        steps=1,
        guidance=guidance,
        seed=seed,
        noise=noise[:warm],
    )
    total = sum(c.steps for c in configs) * math.ceil(num / batch_size)
    done = 0

    def tick(_: Step) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    rows = []
    for c in configs:
        out = generate(
            denoiser,
            num=num,
            classes=classes,
            sampler=c.sampler,
            steps=c.steps,
            guidance=guidance,
            seed=seed,
            batch_size=batch_size,
            noise=noise,
            callback=tick,
            **dict(c.options),
        )
        metrics: dict[str, float] = {}
        for fn in quality:
            metrics.update(fn(out.images, classes))
        rows.append(Row(c, out.nfe, out.seconds, out.images, metrics))
    return Comparison(rows, classes, guidance, seed)
