"""`diffkit interpolate`: a strip PNG and a GIF between two classes, two seeds or two real images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from diffkit.atomic import write_json
from diffkit.checks import one_of
from diffkit.cli import common as opt
from diffkit.cli.common import console, done, progress_task
from diffkit.cli.inputs import read_images, scores_table
from diffkit.drawing import check_interpolation, interpolation
from diffkit.editing import Interpolation, score
from diffkit.errors import DiffkitError
from diffkit.runs import LoadedRun
from diffkit.settings import MAX_SEED
from diffkit.viz import FIGURE_FRAME, save_gif, save_images, save_labelled_rows


@opt.run_command
def interpolate_command(
    args: opt.RunArgs,
    classes: Annotated[
        tuple[int, int] | None,
        typer.Option("--classes", help="Two classes: fixed noise, class embedding interpolated."),
    ] = None,
    seeds: Annotated[
        tuple[int, int] | None,
        typer.Option("--seeds", min=0, max=MAX_SEED, help="Two seeds: slerp of their start noise, deterministic DDIM."),
    ] = None,
    images: Annotated[
        tuple[str, str] | None,
        typer.Option("--images", help="Two PNGs (or sources such as mnist:test:0): DDIM inversion, slerp, decode."),
    ] = None,
    frames: Annotated[int, typer.Option("--frames", min=2, help="Frames, the two end points included.")] = 10,
    cfg: Annotated[
        float | None, typer.Option("--cfg", help="Guidance scale (--classes, or --seeds with --class).")
    ] = None,
    class_: Annotated[
        int | None, typer.Option("--class", help="With --seeds: the class to sample (default: unconditional).")
    ] = None,
    steps: opt.StepsOption = None,
) -> None:
    """Interpolate between two classes, two seeds or two images; the end frames are the plain samples."""
    kind = one_of({"--classes": classes, "--seeds": seeds, "--images": images}).removeprefix("--")
    check_interpolation(kind, frames=frames, class_id=class_, cfg=cfg, steps=steps)
    loaded = args.open()
    plan = loaded.plan(steps=steps, cfg=cfg, seed=args.seed)
    inputs: torch.Tensor | None = None
    ends: tuple[int, int] | torch.Tensor
    if classes is not None:
        tag, ends = f"classes-{classes[0]}-{classes[1]}-seed{plan.seed}", classes
    elif seeds is not None:
        tag, ends = f"seeds-{seeds[0]}-{seeds[1]}" + (f"-class{class_}" if class_ is not None else ""), seeds
    else:
        assert images is not None
        inputs = ends = torch.cat([_image(p, loaded) for p in images])
        tag = "images-" + "-".join(Path(p).stem.replace(":", "_") for p in images)
    folder = args.folder(loaded, "interpolate", tag)  # chosen (and claimed) before the work
    with progress_task("interpolating", plan.steps) as advance:
        result = interpolation(loaded, plan, kind, ends, frames=frames, class_id=class_, progress=advance)
    _report(loaded, result, inputs, folder, kind, plan.steps)


def _image(path_or_source: str, loaded: LoadedRun) -> torch.Tensor:
    """A file path, or a one-image data source such as mnist:test:3."""
    path = Path(path_or_source)
    if path.exists() or ":" not in path_or_source:
        x, _, _ = read_images(path, None, loaded)
    else:
        x, _, _ = read_images(None, path_or_source, loaded)
    if len(x) != 1:
        raise DiffkitError(f"{path_or_source} holds {len(x)} images: give one (e.g. mnist:test:3)")
    return x


def _report(
    loaded: LoadedRun,
    result: Interpolation,
    inputs: torch.Tensor | None,
    folder: Path,
    kind: str,
    steps: int,
) -> None:
    rows, labels = [result.frames], ["frames"]
    record: dict[str, Any] = {
        "mode": kind,
        "frames": len(result.frames),
        "positions": result.positions,
        "ddim_steps": steps,
        "nfe": result.nfe,
        "seconds": round(result.seconds, 2),
        "checkpoint": str(loaded.checkpoint),
    }
    if inputs is not None:  # real images: show them under the end frames and score the reconstructions
        blank = torch.full_like(inputs[:1], FIGURE_FRAME).expand(len(result.frames) - 2, -1, -1, -1)
        rows.append(torch.cat([inputs[:1], blank, inputs[1:]]))
        labels.append("inputs")
        ends = result.frames[[0, -1]]
        recon = score(ends, inputs)
        record["reconstruction"] = recon.as_dict()
        console.print(
            scores_table("end frames (DDIM inversion, then decoding) against the inputs", {"reconstruction": recon})
        )
    strip = save_labelled_rows(rows, labels, folder / "strip.png", scale=3)
    gif = save_gif(result.frames, folder / "interpolation.gif", scale=4)
    save_images(result.frames, folder / "frames")
    console.print(f"{len(result.frames)} frames in {result.seconds:.1f}s ({result.nfe} model evaluations, batched)")
    done("strip", strip)
    done("GIF", gif)
    done("details", write_json(folder / "interpolation.json", record))
