"""`diffkit super-res`: upsample low-resolution images with an SR3-style run; figure, scores vs bicubic, JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
import typer

from diffkit.atomic import write_json
from diffkit.checks import check_sample_flags, one_of
from diffkit.cli import common as opt
from diffkit.cli.common import console, done, progress_task
from diffkit.cli.inputs import read_images, scores_table
from diffkit.editing import degrade, score, super_resolve
from diffkit.editing.superres import SuperResolved, read_superres_input, require_superres
from diffkit.runs import LoadedRun
from diffkit.sampling import SamplingPlan
from diffkit.viz import save_images, save_labelled_rows


@opt.run_command
def super_res_command(
    args: opt.RunArgs,
    image: Annotated[
        Path | None,
        typer.Option(
            "--image",
            help="A PNG: at the model's size it is the ground truth "
            "and is shrunk by --scale; otherwise it is the "
            "low-resolution input.",
        ),
    ] = None,
    source: Annotated[
        str | None, typer.Option("--from", help="Dataset images (ground truth), e.g. mnist:test:0..7.")
    ] = None,
    scale: Annotated[int, typer.Option("--scale", help="Upsampling factor; one the run was trained for.")] = 4,
    sampler: opt.SamplerOption = None,
    steps: opt.StepsOption = None,
) -> None:
    """Super-resolve with an SR3-style run (train one with --preset mnist-sr); compares with bicubic."""
    one_of({"--image": image, "--from": source})
    check_sample_flags(steps=steps)
    loaded = args.open()
    require_superres(loaded.settings, loaded.root, scale)
    d, plan = loaded.settings.data, loaded.plan(sampler=sampler, steps=steps, seed=args.seed, cfg=1.0)
    truth: torch.Tensor | None
    if image is not None:
        truth, low, note = read_superres_input(image, image_size=d.image_size, channels=d.channels, scale=scale)
        if note:
            console.print(f"[yellow]note:[/yellow] {note}")
        what = str(image)
    else:
        truth, _, what = read_images(None, source, loaded)
        low = degrade(truth, scale)
    console.print(
        f"super-resolving {len(low)} image(s) from {what}, {low.shape[-1]}x{low.shape[-2]} -> "
        f"{d.image_size}x{d.image_size}, with {plan.sampler} ({plan.steps} steps, seed {plan.seed}) "
        f"from {loaded.checkpoint}"
    )
    folder = args.folder(loaded, "super-res", f"x{scale}-{plan.sampler}-{plan.steps}-seed{plan.seed}")
    with progress_task("super-resolving", len(low)) as advance:
        result = super_resolve(loaded.denoiser(plan), low, plan, progress=advance)
    _report(folder, loaded, result, truth, what, plan, scale)


def _report(
    folder: Path,
    loaded: LoadedRun,
    result: SuperResolved,
    truth: torch.Tensor | None,
    what: str,
    plan: SamplingPlan,
    scale: int,
) -> None:
    """The figure (low-res / bicubic / diffusion / ground truth), the images, and the scores against the truth."""
    d = loaded.settings.data
    shown_low = F.interpolate(result.low, size=d.image_size, mode="nearest")  # pixels as they are, enlarged
    rows, labels = [shown_low, result.bicubic, result.images], [f"low-res x1/{scale}", "bicubic", "diffusion"]
    record: dict[str, Any] = {
        "input": what,
        "scale": scale,
        "sampler": plan.sampler,
        "steps": plan.steps,
        "seed": plan.seed,
        "nfe": result.nfe,
        "seconds": round(result.seconds, 2),
        "checkpoint": str(loaded.checkpoint),
    }
    if truth is not None:
        rows.append(truth)
        labels.append("ground truth")
        scores = {"bicubic": score(result.bicubic, truth), "diffusion": score(result.images, truth)}
        record |= {k: v.as_dict() for k, v in scores.items()}
        console.print(scores_table(f"x{scale} against the ground truth", scores))
    figure = save_labelled_rows(rows, labels, folder / "super-res.png", scale=3)
    save_images(result.images, folder / "diffusion")
    save_images(result.bicubic, folder / "bicubic")
    console.print(f"{len(result.images)} images in {result.seconds:.1f}s ({result.nfe} model evaluations per image)")
    done("figure (" + " / ".join(labels) + ")", figure)
    done("scores" if truth is not None else "details", write_json(folder / "super-res.json", record))
    done("images", folder)
