"""`diffkit fid`: statistics of one source, or FID / KID / class accuracy between two, with the real floor."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from diffkit.checks import check_output_dir, check_output_file, check_sample_flags, parse_csv
from diffkit.cli import common as opt
from diffkit.cli.common import console, done, hold_runs_written, progress_task
from diffkit.errors import DiffkitError
from diffkit.evaluation import FEATURE_CHOICES, Accuracy, FidReport, FidRequest, evaluate, parse_eval_source
from diffkit.outputs import claim, fresh_dir
from diffkit.samplers import SAMPLERS
from diffkit.sampling import parse_cfg_interval
from diffkit.settings import MAX_SEED

SOURCES_HELP = (
    "One or two of: a dataset split (mnist:test, mnist-5k), a folder of images, an .npz of statistics, "
    "or run:DIR (samples generated from that run). One source: its statistics; two: the distance between them."
)


def fid_command(
    sources: Annotated[list[str], typer.Argument(help=SOURCES_HELP, show_default=False)],
    features: Annotated[
        str,
        typer.Option(
            "--features",
            help=f"Feature space: {', '.join(FEATURE_CHOICES)} (auto: the digit CNN for 1x28x28 images, "
            "else Inception, which needs its weights file).",
        ),
    ] = "auto",
    inception_weights: Annotated[
        Path | None,
        typer.Option("--inception-weights", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth."),
    ] = None,
    num: Annotated[
        int | None,
        typer.Option(
            "--num",
            help="Images per source: generated from a run (default 1000), a fixed random subset of a dataset "
            "or folder (default: all).",
        ),
    ] = None,
    save_stats: Annotated[
        Path | None, typer.Option("--save-stats", help="Write the source's statistics as a pytorch-fid .npz.")
    ] = None,
    kid: Annotated[
        bool, typer.Option("--kid", help="Also KID: mean ± std over 100 subsets of min(1000, N/2) images.")
    ] = False,
    class_accuracy: Annotated[
        bool, typer.Option("--class-accuracy", help="A classifier's accuracy on a conditional run's samples.")
    ] = False,
    sampler: Annotated[
        str | None, typer.Option("--sampler", help=f"For run sources: one of {', '.join(SAMPLERS)}.")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="For run sources: sampler steps.")] = None,
    cfg: Annotated[
        str | None,
        typer.Option(
            "--cfg",
            help="Guidance scale, or several (0,1,2,3,5) for a sweep with a plot; auto: the run's own default "
            "(the scale its sweep picked after training), also in a list (auto,3).",
        ),
    ] = None,
    cfg_interval: opt.CfgIntervalOption = None,
    autoguidance: opt.AutoguidanceOption = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, max=MAX_SEED, help="For run sources (default: the run's).")
    ] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best, last or a .safetensors path.")] = "best",
    batch_size: opt.BatchSizeOption = None,
    out: opt.OutOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --save-stats file (atomically).")] = False,
    device: opt.DeviceOption = "auto",
) -> None:
    """FID (and KID, class accuracy) between two image sources, or one source's statistics."""
    scales = _cfg_scales(cfg)
    check_sample_flags(cfg=[g for g in scales or [] if g is not None], steps=steps, batch_size=batch_size)
    check_output_dir(out)
    check_output_file(save_stats, "--save-stats", force=force)
    request = FidRequest(
        sources,
        features=features,
        inception_weights=inception_weights,
        num=num,
        kid=kid,
        class_accuracy=class_accuracy,
        save_stats=save_stats,
        sampler=sampler,
        steps=steps,
        cfg=scales,
        cfg_interval=None if cfg_interval is None else parse_cfg_interval(cfg_interval),
        autoguidance=autoguidance,
        seed=seed,
        checkpoint=checkpoint,
        device=device,
        batch_size=batch_size,
    )
    runs = [s.path for s in map(parse_eval_source, sources) if s.path is not None and s.kind == "run"]
    with ExitStack() as held:  # the default --out is inside the first run
        hold_runs_written(held, runs, [out or next(iter(runs), None), save_stats])
        if save_stats is not None:  # one writer: claimed, then checked again under the claim, before the work
            held.enter_context(claim(save_stats, "--save-stats"))
            check_output_file(save_stats, "--save-stats", force=force)
        folder = fresh_dir(out, held) if out is not None else None
        with progress_task("starting") as progress:
            report = evaluate(request, progress)
        _show(report, folder, held)


def _cfg_scales(cfg: str | None) -> list[float | None] | None:
    """--cfg as scales; `auto` (None) is the run's default guidance."""
    if cfg is None:
        return None
    items = [c.strip() for c in cfg.split(",") if c.strip()]
    scales = [None if c == "auto" else parse_csv(c, float, "--cfg")[0] for c in items]
    if len(set(scales)) != len(scales):
        raise DiffkitError(f"--cfg {cfg!r} names a scale twice: give each once")
    return scales


def _show(report: FidReport, out: Path | None, held: ExitStack) -> None:
    """The tables and notes, then the files: statistics, and the report folder (see `_report_folder`)."""
    console.print(f"features: [bold]{report.feature_net}[/bold]")
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(_table(report))
    _print_summary(report)
    if report.saved_statistics is not None:
        done(f"statistics ({report.feature_net})", report.saved_statistics)
    folder = _report_folder(report, out, held)
    if folder is not None:
        for path in report.save(folder):
            done(path.name, path)


def _table(report: FidReport) -> Table:
    """A row per guidance scale (or one), then the real-vs-real floor; the best FID in green."""
    if not report.compares:
        return _statistics_table(report)
    counts = " vs ".join(f"{n} images" for n in report.nums)
    table = Table(title=f"{report.sources[0]}  vs  {report.sources[1]}", title_justify="left", caption=counts)
    has_kid = any(r.distance and r.distance.kid for r in report.rows)
    has_acc = any(r.accuracy for r in report.rows)
    table.add_column("")
    for name in ["FID"] + (["KID"] if has_kid else []) + (["class accuracy"] if has_acc else []):
        table.add_column(name, justify="right")
    best = report.best
    for row in report.rows:
        assert row.distance is not None
        cells = [f"guidance {row.cfg:g}" if row.cfg is not None else "", f"{row.distance.fid:.3f}"]
        cells += [_kid(row.distance.kid)] if has_kid else []
        cells += [f"{row.accuracy.overall:.1%}" if row.accuracy else ""] if has_acc else []
        table.add_row(*cells, style="bold green" if row is best else None)
    if report.floor is not None:
        f = report.floor
        cells = ["real vs real (floor)", f"{f.distance.fid:.3f}"] + ([_kid(f.distance.kid)] if has_kid else [])
        table.add_row(*cells, *([""] if has_acc else []), style="dim")
    return table


def _kid(kid: tuple[float, float] | None) -> str:
    return f"{kid[0]:.4f} ± {kid[1]:.4f}" if kid else ""


def _statistics_table(report: FidReport) -> Table:
    table = Table(title=f"statistics of {report.sources[0]}", title_justify="left")
    for name in ("images", "dimensions", "trace of covariance"):
        table.add_column(name, justify="right")
    stats = report.statistics
    assert stats is not None
    table.add_row(str(stats.num or "?"), str(stats.mu.shape[0]), f"{float(stats.sigma.trace()):.4g}")
    return table


def _print_summary(report: FidReport) -> None:
    """The floor, the best guidance scale and per-class accuracy, each on its own lines."""
    if report.floor is not None:
        f = report.floor
        console.print(
            f"real-vs-real floor: FID {f.distance.fid:.3f} between {f.sources[0]} and {f.sources[1]} "
            f"({f.num} images; a model matching the data scores about this)"
        )
    best = report.best
    if best is not None and best.distance is not None:
        console.print(f"best guidance by FID: [bold]{best.cfg:g}[/bold] (FID {best.distance.fid:.3f})")
    scored = [(r.cfg, r.accuracy) for r in report.rows if r.accuracy is not None]
    if scored:
        console.print(_accuracy_table(scored))


def _accuracy_table(scored: list[tuple[float | None, Accuracy]]) -> Table:
    classes = sorted({c for _, acc in scored for c in acc.per_class})
    table = Table(title="class accuracy: the classifier agrees with the requested class", title_justify="left")
    table.add_column("guidance", justify="right")
    for c in classes:
        table.add_column(str(c), justify="right")
    table.add_column("overall", justify="right", style="bold")
    for scale, acc in scored:
        per = acc.per_class
        cells = [f"{per[c]:.0%}" if c in per else "" for c in classes]
        table.add_row(f"{scale:g}" if scale is not None else "", *cells, f"{acc.overall:.1%}")
    return table


def _report_folder(report: FidReport, out: Path | None, held: ExitStack) -> Path | None:
    """--out (claimed before the work), else <run>/eval/fid-... when a run is involved, else nowhere."""
    if out is not None:
        return out
    if report.run is None or report.sampling is None:
        return None
    s = report.sampling
    return fresh_dir(report.run / "eval" / f"fid-{s.sampler}-{s.steps}-n{report.rows[0].num}-seed{s.seed}", held)
