"""What the Python face returns: images as PIL images, with the tensors and numbers beside them, and a
picture a notebook shows when the result is a cell's last line (`_repr_png_`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffkit.api.pictures import pil_images, save_numbered
from diffkit.atomic import write_json
from diffkit.editing import InpaintResult, Interpolation, figure_rows
from diffkit.evaluation import FidReport
from diffkit.frames import Process
from diffkit.sampling import SamplingPlan
from diffkit.viz import (
    gif_bytes,
    grid_frames,
    grid_image,
    labelled_rows,
    png_bytes,
    save_gif,
    save_grid,
    save_grid_gif,
    save_pil,
)


class Shown:
    """A result a notebook shows as its `figure()`."""

    def figure(self) -> Any:
        raise NotImplementedError

    def _repr_png_(self) -> bytes:
        return png_bytes(self.figure())


@dataclass
class Samples(Shown):
    """Images drawn from a run: `.images` (PIL), `.tensor` ((N, C, H, W) in [-1, 1]), `.labels`, `.grid()`."""

    tensor: Tensor
    labels: list[int] | None
    nrow: int  # images per row of the grid: a row per class, else near square
    plan: SamplingPlan
    nfe: int  # model evaluations per image
    seconds: float

    @property
    def images(self) -> list[Any]:
        return pil_images(self.tensor)

    def __len__(self) -> int:
        return len(self.tensor)

    def grid(self, nrow: int | None = None, scale: int = 2) -> Any:
        """One PIL picture, `nrow` images a row (default: a row per class), pixels enlarged `scale` times."""
        return grid_image(self.tensor, nrow or self.nrow, scale=scale)

    def figure(self) -> Any:
        return self.grid()

    def save(self, folder: str | Path) -> list[Path]:
        """00001.png, 00002.png, ... in `folder` (atomically; refused where such files already exist)."""
        return save_numbered(self.tensor, folder)

    def __repr__(self) -> str:
        what = f"labels {sorted(set(self.labels))}" if self.labels else "unconditional"
        return (
            f"Samples({len(self)} images, {what}, {self.plan.label}, guidance {self.plan.cfg:g}, "
            f"seed {self.plan.seed}, {self.seconds:.1f}s)"
        )


@dataclass
class Denoising(Shown):
    """The denoising recorded at evenly spaced states: x_t and the x̂0 predicted from it, per frame."""

    samples: Samples  # the finished images
    process: Process

    @property
    def states(self) -> list[int]:
        return self.process.states

    @property
    def frames(self) -> list[Any]:
        """Frame k as one PIL picture: every image's x_t at state `states[k]`, laid out as the grid."""
        return [grid_image(batch, self.samples.nrow, scale=2) for batch in self.process.frames()]

    @property
    def predictions(self) -> list[Any]:
        """Frame k's x̂0: the clean images the model predicts from that state."""
        return [grid_image(batch, self.samples.nrow, scale=2) for batch in self.process.x0.unbind(1)]

    @property
    def gif(self) -> bytes:
        """The animation (`sample --process`'s process.gif); IPython.display.Image(data=...) shows it."""
        return gif_bytes(grid_frames(self.process.frames(), self.samples.nrow), scale=2, bounce=False)

    def figure(self) -> Any:
        """x_t over x̂0 for each image, a column per frame."""
        rows, labels = [], []
        for n in range(len(self.process.xt)):
            suffix = f" {n + 1}" if len(self.process.xt) > 1 else ""
            rows += [self.process.xt[n], self.process.x0[n]]
            labels += [f"x_t{suffix}", f"x0 pred.{suffix}"]
        return labelled_rows(rows, labels, scale=3)

    def save(self, folder: str | Path) -> list[Path]:
        """process_xt.png, process_x0.png and process.gif, as `diffkit sample --process` writes them."""
        folder, k = Path(folder), len(self.states)
        return [
            save_grid(self.process.rows("xt"), folder / "process_xt.png", nrow=k, scale=2),
            save_grid(self.process.rows("x0"), folder / "process_x0.png", nrow=k, scale=2),
            save_grid_gif(self.process.frames(), folder / "process.gif", nrow=self.samples.nrow),
        ]


@dataclass
class Inpainted(Shown):
    """The input, its mask and each method's result; PSNR / SSIM over the hole per method."""

    original: Tensor
    mask: Tensor  # (N, 1, H, W): 1 = keep, 0 = hole
    results: dict[str, InpaintResult]
    scores: dict[str, dict[str, float]]  # method -> mean {"psnr", "ssim"} over the hole

    @property
    def images(self) -> dict[str, list[Any]]:
        """Each method's results as PIL images."""
        return {m: pil_images(r.images) for m, r in self.results.items()}

    def figure(self) -> Any:
        return labelled_rows(*figure_rows(self.original, self.mask, self.results), scale=3)

    def save(self, folder: str | Path) -> list[Path]:
        """inpaint.png, scores.json and a folder of numbered PNGs per method."""
        folder = Path(folder)
        written = [save_pil(self.figure(), folder / "inpaint.png"), write_json(folder / "scores.json", self.scores)]
        for m, r in self.results.items():
            written += save_numbered(r.images, folder / m)
        return written


@dataclass
class Interpolated(Shown):
    """The frames between two end points (classes, seeds or images), and where each lies (0 to 1)."""

    result: Interpolation

    @property
    def frames(self) -> list[Any]:
        return pil_images(self.result.frames)

    @property
    def positions(self) -> list[float]:
        return list(self.result.positions)

    @property
    def gif(self) -> bytes:
        return gif_bytes(self.result.frames, scale=4)

    def figure(self) -> Any:
        return labelled_rows([self.result.frames], ["frames"], scale=3)

    def save(self, folder: str | Path) -> list[Path]:
        """strip.png, interpolation.gif and frames/, as `diffkit interpolate` writes them."""
        folder = Path(folder)
        return [
            save_pil(self.figure(), folder / "strip.png"),
            save_gif(self.result.frames, folder / "interpolation.gif", scale=4),
            *save_numbered(self.result.frames, folder / "frames"),
        ]


@dataclass
class SuperResolved(Shown):
    """Low-resolution inputs, their bicubic upsampling and the model's, and the truth when known."""

    low: Tensor
    bicubic: Tensor
    tensor: Tensor
    truth: Tensor | None
    scale: int
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # vs the truth: bicubic, diffusion

    @property
    def images(self) -> list[Any]:
        return pil_images(self.tensor)

    def figure(self) -> Any:
        size = self.tensor.shape[-1]
        shown_low = torch.nn.functional.interpolate(self.low, size=size, mode="nearest")
        rows = [shown_low, self.bicubic, self.tensor] + ([self.truth] if self.truth is not None else [])
        labels = [f"low-res x1/{self.scale}", "bicubic", "diffusion"] + (
            ["ground truth"] if self.truth is not None else []
        )
        return labelled_rows(rows, labels, scale=3)


@dataclass
class Fid:
    """FID of a run's samples against a reference: a row per guidance scale, the real-vs-real floor."""

    report: FidReport

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [r.record() for r in self.report.rows]

    @property
    def fid(self) -> float:
        """The FID (the best one of a guidance sweep)."""
        row = self.report.best or self.report.rows[0]
        assert row.distance is not None
        return float(row.distance.fid)

    @property
    def floor(self) -> float | None:
        """FID between two sets of real images of the same size: what a perfect model would score."""
        return float(self.report.floor.distance.fid) if self.report.floor is not None else None

    def save(self, folder: str | Path) -> list[Path]:
        """fid.json (and guidance_sweep.png for several scales), as `diffkit fid` writes them."""
        return self.report.save(Path(folder))

    def __repr__(self) -> str:
        lines = [f"FID with {self.report.feature_net}: {' vs '.join(self.report.sources)}"]
        for row in self.rows:
            cells = [f"guidance {row['cfg']:g}" if row.get("cfg") is not None else "FID"]
            cells.append(f"FID {row['fid']:.3f}")
            if "class_accuracy" in row:
                cells.append(f"class accuracy {row['class_accuracy']:.1%}")
            lines.append("  " + ", ".join(cells))
        if self.floor is not None:
            lines.append(f"  real-vs-real floor: FID {self.floor:.3f}")
        return "\n".join(lines + [f"  note: {n}" for n in self.report.notes])
