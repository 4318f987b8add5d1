"""The Run tab: the served run's config, training curves, latest grids and FID-vs-guidance sweep."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from diffkit.app.handlers.served import AppRun, whole
from diffkit.progress import Progress
from diffkit.runs import RunPaths
from diffkit.samplers import SAMPLERS
from diffkit.viz import plot_training_curves


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
        else "No FID-vs-guidance sweep yet: run one with the button, or "
        f"`diffkit fid run:{loaded.root} {reference} --num 1000 --cfg {SWEEP_TEXT} --class-accuracy`."
    )
    step = loaded.meta.get("step", "?")  # the page's header says the rest (`describe`): not repeated here
    summary = (
        f"checkpoint `{loaded.checkpoint.name}` at step {step} · diffusion process {loaded.process.describe()} · "
        f"precision {loaded.precision.summary()}"
    )
    return RunOverview(summary, paths.config.read_text(), curves, grids, sweep, sweep_text)


SWEEP = [0.0, 1.0, 2.0, 3.0, 5.0]  # the guidance scales of the page's sweep
SWEEP_TEXT = ",".join(f"{g:g}" for g in SWEEP)


def sweep(app: AppRun, num: int, progress: Progress | None = None) -> tuple[Path, str]:
    """`diffkit fid run:RUN REFERENCE --num N --cfg 0,1,2,3,5 --class-accuracy`: the plot and its table,
    written under the app's folder (the run itself is not written to)."""
    from diffkit.app.handlers.editing import digit_source
    from diffkit.evaluation import FidRequest, evaluate

    loaded = app.require()
    request = FidRequest(
        [f"run:{loaded.root}", digit_source(app)[0]],
        num=whole(num, "images per scale", 10, 10_000),
        cfg=SWEEP,
        class_accuracy=loaded.num_classes > 0,
        checkpoint=str(loaded.checkpoint),
        device=str(loaded.device),
    )
    folder = app.folder("sweep")
    evaluate(request, progress).save(folder)
    return folder / "guidance_sweep.png", _sweep_text(folder / "guidance_sweep.png")


def _sweep_text(sweep: Path) -> str:
    from diffkit.evaluation.report import row_cfg

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
        lines.append(f"| {row_cfg(r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sampler_names() -> list[str]:
    return list(SAMPLERS)
