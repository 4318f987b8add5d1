"""`diffkit sample`: load a run, generate a class grid (or one class), write a grid PNG and one PNG per image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from diffkit.cli.common import (
    DeviceOption,
    OutOption,
    RunOption,
    SeedOption,
    console,
    done,
    fresh_dir,
    progress_task,
)
from diffkit.generation import class_layout, generate, grid_rows
from diffkit.runs import latest_run, load_run
from diffkit.samplers import SAMPLERS, get_sampler
from diffkit.viz import save_grid, save_images


def sample(
    run: RunOption = None,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="best, last or a .safetensors path.")] = None,
    class_: Annotated[int | None, typer.Option("--class", help="Only this class (default: a row per class).")] = None,
    cfg: Annotated[
        float | None,
        typer.Option("--cfg", help="Guidance scale: 0 unconditional, 1 conditional, >1 stronger."),
    ] = None,
    num: Annotated[
        int | None, typer.Option("--num", min=1, help="Images (per class when no --class is given).")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Sampler steps.")] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help=f"One of: {', '.join(SAMPLERS)}.")] = None,
    eta: Annotated[float | None, typer.Option("--eta", help="DDIM noise: 0 deterministic ... 1 DDPM-like.")] = None,
    seed: SeedOption = None,
    out: OutOption = None,
    no_ema: Annotated[bool, typer.Option("--no-ema", help="Use the raw weights instead of the EMA weights.")] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = None,
    device: DeviceOption = "auto",
) -> None:
    """Generate images from a trained run."""
    if run is None:
        from diffkit.settings import Settings

        run = latest_run(Path(Settings().runs_dir))
        console.print(f"using the most recent run: [bold]{run}[/bold]")
    loaded = load_run(run, checkpoint or "best", use_ema=not no_ema, device=device)
    s = loaded.settings.sample
    name = sampler or s.sampler
    spec = get_sampler(name)
    options: dict[str, Any] = {}
    if eta is not None or (name == "ddim" and s.eta):
        if "eta" not in spec.options:
            from diffkit.errors import DiffkitError

            raise DiffkitError(f"--eta applies to ddim only, not {name}: drop --eta")
        options["eta"] = s.eta if eta is None else eta
    guidance = (s.cfg if loaded.num_classes else 1.0) if cfg is None else cfg
    per_class = s.num if num is None else num
    classes, total = class_layout(loaded.num_classes, class_, per_class)
    n_steps = s.steps if steps is None else steps
    seed = s.seed if seed is None else seed
    console.print(
        f"sampling {total} images with {name} ({n_steps} steps, guidance {guidance:g}, seed {seed}) "
        f"from {loaded.checkpoint}"
    )
    with progress_task("sampling", total) as advance:
        result = generate(
            loaded.denoiser(),
            num=total,
            classes=classes,
            sampler=name,
            steps=n_steps,
            guidance=guidance,
            seed=seed,
            batch_size=batch_size or s.batch_size,
            progress=advance,
            **options,
        )
    tag = f"{name}-{n_steps}-cfg{guidance:g}-seed{seed}" + (f"-class{class_}" if class_ is not None else "")
    folder = fresh_dir(out or loaded.root / "samples" / tag)
    grid = save_grid(
        result.images,
        folder / "grid.png",
        nrow=grid_rows(loaded.num_classes if class_ is None else 0, per_class, total),
        scale=2,
    )
    save_images(result.images, folder / "images")
    console.print(
        f"{total} images in {result.seconds:.1f}s ({total / result.seconds:.1f} img/s, "
        f"{result.nfe} model evaluations per image)"
    )
    done("grid", grid)
    done("images", folder / "images")
