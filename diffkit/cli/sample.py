"""`diffkit sample`: load a run, generate a class grid (or one class), write a grid PNG and one PNG per image.

Also: pictures of the process (`--process`, `--gif`) and a flat export for FID tools (`--export-dir`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffkit.checks import check_output_dir, check_sample_flags
from diffkit.cli import common as opt
from diffkit.cli.common import console, done, progress_task
from diffkit.drawing import draw, layout
from diffkit.errors import DiffkitError
from diffkit.export import export_samples
from diffkit.frames import MAX_FRAMES, Process
from diffkit.generation import Generated, cycled_classes
from diffkit.runs import LoadedRun
from diffkit.sampling import SamplingPlan, parse_cfg_interval
from diffkit.viz import save_grid, save_grid_gif, save_images


@opt.run_command
def sample_command(
    args: opt.RunArgs,
    class_: Annotated[int | None, typer.Option("--class", help="Only this class (default: a row per class).")] = None,
    cfg: opt.CfgOption = None,
    num: Annotated[
        int | None,
        typer.Option("--num", min=1, help="Images (per class when no --class is given; in all with --export-dir)."),
    ] = None,
    steps: opt.StepsOption = None,
    sampler: opt.SamplerOption = None,
    eta: opt.EtaOption = None,
    spacing: opt.SpacingOption = None,
    rescale: opt.RescaleOption = None,
    cfg_interval: opt.CfgIntervalOption = None,
    autoguidance: opt.AutoguidanceOption = None,
    clip: opt.ClipOption = None,
    process: Annotated[
        bool, typer.Option("--process", help="Also write process_xt.png, process_x0.png (image x frame) and a GIF.")
    ] = False,
    gif: Annotated[bool, typer.Option("--gif", help="Also write process.gif, the denoising animated.")] = False,
    frames: Annotated[
        int | None, typer.Option("--frames", help=f"Frames for --process/--gif, noise to image (2 to {MAX_FRAMES}).")
    ] = None,
    export_dir: Annotated[
        Path | None,
        typer.Option(
            "--export-dir",
            help="Write only DIR/00001.png ... (--num in all; classes in "
            "turn unless --class), for FID tools. DIR must be new or empty.",
        ),
    ] = None,
    rgb: Annotated[bool, typer.Option("--rgb", help="With --export-dir: 3-channel RGB files.")] = False,
    no_ema: Annotated[bool, typer.Option("--no-ema", help="Use the raw weights instead of the EMA weights.")] = False,
    batch_size: opt.BatchSizeOption = None,
) -> None:
    """Generate images from a trained run."""
    _check_flags(process=process, gif=gif, frames=frames, export_dir=export_dir, rgb=rgb, out=args.out)
    check_sample_flags(cfg=cfg, eta=eta, steps=steps, num=num, batch_size=batch_size)
    check_output_dir(export_dir, "--export-dir")
    loaded = args.open(use_ema=not no_ema, output=export_dir)
    plan = loaded.plan(
        sampler=sampler,
        steps=steps,
        cfg=cfg,
        eta=eta,
        spacing=spacing,
        rescale=rescale,
        cfg_interval=None if cfg_interval is None else parse_cfg_interval(cfg_interval),
        autoguidance=autoguidance,
        clip=clip,
        seed=args.seed,
        batch_size=batch_size,
    )
    per_class = num or loaded.settings.sample.num
    if export_dir is not None:
        total = num or per_class * (loaded.num_classes if class_ is None and loaded.num_classes else 1)
        _export(loaded, plan, export_dir, total, class_, rgb=rgb)
        return
    frames_k = (min(plan.steps + 1, 11) if frames is None else frames) if process or gif else 0
    _grid(args, loaded, plan, class_, per_class, frames_k, grids=process)


def _grid(
    args: opt.RunArgs,
    loaded: LoadedRun,
    plan: SamplingPlan,
    class_: int | None,
    per_class: int,
    k: int,
    *,
    grids: bool,
) -> None:
    """grid.png and images/ (a row per class, or one class); with `k` frames, pictures of the process too."""
    shape = layout(loaded, class_, per_class, k)
    guided = f"-ag{plan.autoguidance:g}" if plan.autoguidance != 1.0 else ""
    tag = f"{plan.sampler}-{plan.steps}-cfg{plan.cfg:g}{guided}-seed{plan.seed}"
    folder = args.folder(loaded, "samples", tag + (f"-class{class_}" if class_ is not None else ""))
    _say(loaded, shape.total, plan)
    with progress_task("sampling", shape.total) as advance:
        result, recorded = draw(loaded, plan, shape, advance)
    _timing(result, shape.total)
    done("grid", save_grid(result.images, folder / "grid.png", nrow=shape.nrow, scale=2))
    save_images(result.images, folder / "images")
    done("images", folder / "images")
    if recorded is not None:
        _write_process(recorded, folder, shape.nrow, grids=grids)


def _export(
    loaded: LoadedRun, plan: SamplingPlan, export_dir: Path, total: int, class_: int | None, *, rgb: bool
) -> None:
    """--export-dir: the numbered files only, written batch by batch."""
    _say(loaded, total, plan)
    with progress_task("exporting", total) as advance:
        classes = cycled_classes(loaded.num_classes, class_, total)
        result = export_samples(
            loaded.denoiser(plan), plan, export_dir, num=total, classes=classes, rgb=rgb, progress=advance
        )
    _timing(result, total)
    kind = "RGB" if rgb or result.images.shape[1] == 3 else "grayscale"
    done(f"{total} {kind} images, {export_dir.name}/00001.png ...", export_dir)


def _check_flags(
    *, process: bool, gif: bool, frames: int | None, export_dir: Path | None, rgb: bool, out: Path | None
) -> None:
    """Combinations that cannot mean anything, refused before the run is even loaded."""
    if frames is not None and not (process or gif):
        raise DiffkitError("--frames goes with --process or --gif: add one of them or drop --frames")
    if rgb and export_dir is None:
        raise DiffkitError("--rgb goes with --export-dir: add --export-dir DIR or drop --rgb")
    if export_dir is not None and (process or gif or out is not None):
        raise DiffkitError("--export-dir writes only the numbered images: drop --process, --gif and --out")


def _say(loaded: LoadedRun, total: int, plan: SamplingPlan) -> None:
    picked = " (the run's own, picked by its sweep after training)" if plan.cfg == loaded.chosen_cfg else ""
    console.print(
        f"sampling {total} images with {plan.sampler} ({plan.steps} steps, guidance {plan.cfg:g}{picked}, "
        f"seed {plan.seed}) from {loaded.checkpoint}"
    )


def _timing(result: Generated, total: int) -> None:
    console.print(
        f"{total} images in {result.seconds:.1f}s ({total / result.seconds:.1f} img/s, "
        f"{result.nfe} model evaluations per image)"
    )


def _write_process(recorded: Process, folder: Path, nrow: int, *, grids: bool) -> None:
    k = len(recorded.states)
    if grids:
        done(
            f"x_t, an image per row, {k} frames",
            save_grid(recorded.rows("xt"), folder / "process_xt.png", nrow=k, scale=2),
        )
        done("x̂0 predicted at each frame", save_grid(recorded.rows("x0"), folder / "process_x0.png", nrow=k, scale=2))
    done("animation", save_grid_gif(recorded.frames(), folder / "process.gif", nrow=nrow))
