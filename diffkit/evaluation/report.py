"""What `diffkit fid` found: a row per guidance scale, the real-vs-real floor, and the saved report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from diffkit.atomic import write_json
from diffkit.evaluation.measuring import Accuracy, Distance, Measured
from diffkit.sampling import SamplingPlan
from diffkit.viz import plot_guidance_sweep, save_grid

# -------------------------------------------------------------------------------------------- report


def row_cfg(record: dict[str, Any]) -> Any:
    """The guidance scale of a saved fid.json row: "cfg", or "guidance" in reports written before the rename."""
    return record.get("cfg", record.get("guidance"))


@dataclass
class Row:
    """One line of the result: a guidance scale of a run (or the single comparison when there is no run)."""

    cfg: float | None  # the guidance scale
    num: int
    distance: Distance | None = None
    accuracy: Accuracy | None = None
    preview: Tensor | None = None  # a few generated images, for a picture

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cfg": self.cfg, "num": self.num}
        if self.distance is not None:
            out["fid"] = self.distance.fid
            if self.distance.kid is not None:
                out["kid"], out["kid_std"] = self.distance.kid
                out["kid_subset_size"] = self.distance.kid_subset
        if self.accuracy is not None:
            out["class_accuracy"] = self.accuracy.overall
            out["class_accuracy_per_class"] = {str(k): v for k, v in self.accuracy.per_class.items()}
        return out


@dataclass
class Floor:
    """The same comparison between two sets of real images: what a perfect model would score."""

    sources: tuple[str, str]
    num: int
    distance: Distance

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sources": list(self.sources), "num": self.num, "fid": self.distance.fid}
        if self.distance.kid is not None:
            out["kid"], out["kid_std"] = self.distance.kid
            out["kid_subset_size"] = self.distance.kid_subset
        return out


@dataclass
class FidReport:
    feature_net: str
    sources: list[str]  # as measured (run sources describe their sampling)
    nums: list[int]
    rows: list[Row]
    floor: Floor | None = None
    statistics: Measured | None = None  # the one source's statistics, in one-source mode
    saved_statistics: Path | None = None
    sampling: SamplingPlan | None = None
    run: Path | None = None  # the run sampled, if any: reports go inside it by default
    num_classes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def compares(self) -> bool:
        return len(self.sources) == 2

    @property
    def best(self) -> Row | None:
        """The guidance scale with the lowest FID, when several were tried."""
        scored = [r for r in self.rows if r.distance is not None and r.cfg is not None]
        return min(scored, key=lambda r: r.distance.fid) if len(scored) > 1 else None  # type: ignore[union-attr]

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "feature_net": self.feature_net,
            "sources": self.sources,
            "nums": self.nums,
            "rows": [r.record() for r in self.rows],
        }
        if self.sampling is not None:
            p = self.sampling
            out["sampling"] = {"sampler": p.sampler, "steps": p.steps, "seed": p.seed, "batch_size": p.batch_size}
            out["sampling"] |= {"options": p.sampler_options} if p.options else {}
        if self.floor is not None:
            out["floor"] = self.floor.record()
        if self.best is not None:
            out["best_cfg"] = self.best.cfg
        if self.statistics is not None:
            out["statistics"] = {
                "num": self.statistics.num,
                "dims": int(self.statistics.mu.shape[0]),
                "trace_sigma": float(np.trace(self.statistics.sigma)),
            }
        if self.saved_statistics is not None:
            out["saved_statistics"] = str(self.saved_statistics)
        out["notes"] = self.notes
        return out

    def save(self, folder: Path) -> list[Path]:
        """fid.json, plus a guidance-sweep plot (several scales) and a preview grid per generated scale."""
        report = write_json(folder / "fid.json", self.record())
        written = [report]
        if len(self.rows) > 1:
            floor = self.floor.distance.fid if self.floor is not None else None
            written.append(
                plot_guidance_sweep(
                    [r.record() for r in self.rows],
                    folder / "guidance_sweep.png",
                    feature_net=self.feature_net,
                    floor_fid=floor,
                )
            )
        for row in self.rows:
            if row.preview is not None:
                nrow = self.num_classes or max(1, math.isqrt(len(row.preview)))
                written.append(save_grid(row.preview, folder / f"samples-cfg{row.cfg:g}.png", nrow=nrow, scale=2))
        return written
