"""`diffkit compare-samplers`: every (sampler, steps) pair from the same noise; a table, a JSON report, a picture."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from diffkit.cli.common import (
    ClipOption,
    DeviceOption,
    OutOption,
    RescaleOption,
    RunOption,
    SeedOption,
    console,
    denoiser_options,
    done,
    fresh_dir,
    parse_csv,
    progress_task,
)
from diffkit.cli.flags import check_output_dir, check_sample_flags
from diffkit.cli.inputs import open_run
from diffkit.compare import DEFAULT_SPREAD, Comparison, QualityFn, compare_samplers, grid_of, with_options
from diffkit.generation import cycled_classes
from diffkit.runs import LoadedRun
from diffkit.samplers import SAMPLERS
from diffkit.schedules import SPACINGS


def compare_samplers_command(
    run: RunOption = None,
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
    seed: SeedOption = None,
    out: OutOption = None,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="best, last or a .safetensors path.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = None,
    clip: ClipOption = None,
    rescale: RescaleOption = None,
    device: DeviceOption = "auto",
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
    check_output_dir(out)
    loaded = open_run(run, checkpoint, device)
    s = loaded.settings.sample
    if samplers is None and steps is None:
        configs = list(DEFAULT_SPREAD)
    else:
        names = parse_csv(samplers, str, "--samplers") if samplers else list(SAMPLERS)
        counts = parse_csv(steps, int, "--steps") if steps else [s.steps]
        configs = grid_of(names, counts)
    configs = with_options(configs, spacing=spacing, eta=eta)
    guidance = (s.cfg if loaded.num_classes else 1.0) if cfg is None else cfg
    seed = s.seed if seed is None else seed
    count = num or loaded.num_classes or 8
    classes = cycled_classes(loaded.num_classes, class_, count)
    console.print(
        f"comparing {len(configs)} sampler settings on {count} images (guidance {guidance:g}, "
        f"seed {seed}) from {loaded.checkpoint}"
    )
    with progress_task("comparing", 1) as advance:
        result = compare_samplers(
            loaded.denoiser(**denoiser_options(clip, rescale)),
            configs,
            num=count,
            classes=classes,
            guidance=guidance,
            seed=seed,
            batch_size=batch_size or s.batch_size,
            quality=_quality(loaded, fid, fid_ref, count),
            progress=advance,
        )
    folder = fresh_dir(out or loaded.root / "compare" / f"cfg{guidance:g}-seed{seed}")
    report, picture = result.save(folder, run=str(loaded.root), checkpoint=str(loaded.checkpoint))
    console.print(_table(result))
    done("report", report)
    done("picture", picture)


def _quality(loaded: LoadedRun, fid: bool, reference: str | None, count: int) -> list[QualityFn]:
    """Per-row quality metrics shown as extra columns: with --fid, FID against a reference and class accuracy."""
    if not fid:
        return []
    from diffkit.evaluation import sample_quality

    quality = sample_quality(loaded.settings, reference)
    console.print(quality.describe(count))
    return [quality]


def _table(result: Comparison) -> Table:
    table = Table(title="samplers on the same noise", title_justify="left")
    with_options = any(row.config.options for row in result.rows)
    for name in ("sampler", "steps", *(["options"] if with_options else [])):
        table.add_column(name)
    for name in ("NFE", "wall time (s)", "time / image (s)", *result.metric_names):
        table.add_column(name, justify="right")
    for row in result.rows:
        options = [", ".join(f"{k}={v}" for k, v in row.config.options)] if with_options else []
        metrics = [f"{row.metrics[k]:.4g}" if k in row.metrics else "" for k in result.metric_names]
        table.add_row(
            row.config.sampler,
            str(row.config.steps),
            *options,
            str(row.nfe),
            f"{row.seconds:.2f}",
            f"{row.seconds_per_image:.3f}",
            *metrics,
        )
    return table
