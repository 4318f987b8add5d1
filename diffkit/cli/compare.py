"""`diffkit compare-samplers`: every (sampler, steps) pair from the same noise; a table, a JSON report, a picture."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from diffkit.checks import check_sample_flags, parse_csv
from diffkit.cli import common as opt
from diffkit.cli.common import console, done, progress_task
from diffkit.compare import DEFAULT_SPREAD, Comparison, QualityFn, compare_samplers, grid_of
from diffkit.evaluation import sample_quality
from diffkit.generation import cycled_classes
from diffkit.runs import LoadedRun
from diffkit.samplers import SAMPLERS
from diffkit.sampling import rows_for
from diffkit.schedules import SPACINGS


@opt.run_command
def compare_samplers_command(
    args: opt.RunArgs,
    samplers: Annotated[
        str | None,
        typer.Option(
            "--samplers", help=f"Comma-separated, from: {', '.join(SAMPLERS)} (default: all when --steps is given)."
        ),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps",
            help="Comma-separated step counts, e.g. 10,20,50 (default: the run's "
            "sample.steps when --samplers is given).",
        ),
    ] = None,
    num: Annotated[int | None, typer.Option("--num", min=1, help="Images per row (default: one per class).")] = None,
    class_: Annotated[int | None, typer.Option("--class", help="Only this class (default: classes in turn).")] = None,
    cfg: Annotated[float | None, typer.Option("--cfg", help="Guidance scale (default: the run's sample.cfg).")] = None,
    spacing: Annotated[
        str | None,
        typer.Option("--spacing", help=f"Timestep spacing for the samplers that take it: {', '.join(SPACINGS)}."),
    ] = None,
    eta: Annotated[float | None, typer.Option("--eta", help="DDIM noise, 0 ... 1 (ddim rows only).")] = None,
    batch_size: opt.BatchSizeOption = None,
    clip: opt.ClipOption = None,
    rescale: opt.RescaleOption = None,
    fid: Annotated[
        bool,
        typer.Option("--fid", help="Add FID against --fid-ref and class accuracy to each row (use --num 500+)."),
    ] = False,
    fid_ref: Annotated[
        str | None,
        typer.Option(
            "--fid-ref",
            help="Reference for --fid: a dataset split, folder or .npz (default: mnist:test for digit runs, "
            "else the run's training data).",
        ),
    ] = None,
) -> None:
    """Compare samplers and step counts on the same starting noise: NFE, wall time, images side by side.

    With no --samplers and no --steps: a spread from DDPM 1000 to DPM++ 2M 10 (a few minutes on the demo model).
    """
    check_sample_flags(cfg=cfg, num=num, batch_size=batch_size)  # steps and eta: checked per sampler below
    loaded = args.open()
    base = loaded.plan(cfg=cfg, rescale=rescale, clip=clip, seed=args.seed, batch_size=batch_size)
    if samplers is None and steps is None:
        pairs = list(DEFAULT_SPREAD)
    else:
        names = parse_csv(samplers, str, "--samplers") if samplers else list(SAMPLERS)
        counts = parse_csv(steps, int, "--steps") if steps else [base.steps]
        pairs = grid_of(names, counts)
    plans = rows_for(base, pairs, {"spacing": spacing, "eta": eta})
    count = num or loaded.num_classes or 8
    classes = cycled_classes(loaded.num_classes, class_, count)
    console.print(
        f"comparing {len(plans)} sampler settings on {count} images (guidance {base.cfg:g}, "
        f"seed {base.seed}) from {loaded.checkpoint}"
    )
    folder = args.folder(loaded, "compare", f"cfg{base.cfg:g}-seed{base.seed}")
    with progress_task("comparing", 1) as advance:
        result = compare_samplers(
            loaded.denoiser(base),
            plans,
            num=count,
            classes=classes,
            quality=_quality(loaded, fid, fid_ref, count),
            progress=advance,
        )
    report, picture = result.save(folder, run=str(loaded.root), checkpoint=str(loaded.checkpoint))
    console.print(_table(result))
    done("report", report)
    done("picture", picture)


def _quality(loaded: LoadedRun, fid: bool, reference: str | None, count: int) -> list[QualityFn]:
    """Per-row quality metrics shown as extra columns: with --fid, FID against a reference and class accuracy."""
    if not fid:
        return []
    quality = sample_quality(loaded.settings, reference)
    console.print(quality.describe(count))
    return [quality]


def _table(result: Comparison) -> Table:
    table = Table(title="samplers on the same noise", title_justify="left")
    with_options = any(row.plan.options for row in result.rows)
    for name in ("sampler", "steps", *(["options"] if with_options else [])):
        table.add_column(name)
    for name in ("NFE", "wall time (s)", "time / image (s)", *result.metric_names):
        table.add_column(name, justify="right")
    for row in result.rows:
        options = [", ".join(f"{k}={v}" for k, v in row.plan.options)] if with_options else []
        metrics = [f"{row.metrics[k]:.4g}" if k in row.metrics else "" for k in result.metric_names]
        table.add_row(
            row.plan.sampler,
            str(row.plan.steps),
            *options,
            str(row.nfe),
            f"{row.seconds:.2f}",
            f"{row.seconds_per_image:.3f}",
            *metrics,
        )
    return table
