"""`diffkit inpaint`: fill the hole of a mask in real or generated images; figure, scores over the hole, JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from diffkit.atomic import write_json
from diffkit.checks import check_sample_flags, one_of
from diffkit.cli import common as opt
from diffkit.cli.common import console, done, progress_task
from diffkit.cli.inputs import read_images, scores_table
from diffkit.editing import MASK_KINDS, InpaintResult, check_methods, figure_rows, inpaint_each, mask_from_spec, score
from diffkit.editing.inpaint import guided_plan
from diffkit.generation import class_layout, generate
from diffkit.runs import LoadedRun
from diffkit.samplers import SAMPLERS
from diffkit.sampling import SamplingPlan
from diffkit.viz import save_images, save_labelled_rows

MASK_HELP = (
    f"A hole shape ({', '.join(MASK_KINDS)}) or a PNG of the model's size: white (>= 50% grey) = keep, "
    "black = hole to fill."
)


@opt.run_command
def inpaint_command(
    args: opt.RunArgs,
    image: Annotated[
        Path | None,
        typer.Option("--image", help="A PNG/JPEG to repair (converted to the model's size and colours, with a note)."),
    ] = None,
    source: Annotated[str | None, typer.Option("--from", help="Dataset images, e.g. mnist:test:0..7.")] = None,
    class_: Annotated[int | None, typer.Option("--class", help="Inpaint the model's samples of this class.")] = None,
    mask: Annotated[str, typer.Option("--mask", help=MASK_HELP)] = "center",
    method: Annotated[
        str, typer.Option("--method", help="replace, repaint or sds; a comma-separated list compares them.")
    ] = "replace",
    sampler: Annotated[str | None, typer.Option("--sampler", help=f"For replace: {', '.join(SAMPLERS)}.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Sampler steps, or RePaint's DDPM levels.")] = None,
    cfg: opt.CfgOption = None,
    jump: Annotated[int, typer.Option("--jump", min=1, help="RePaint jump length, in levels.")] = 5,
    resample: Annotated[int, typer.Option("--resample", min=1, help="RePaint: times each block is denoised.")] = 5,
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="SDS gradient steps.")] = 200,
    lr: Annotated[float, typer.Option("--lr", help="SDS step size, in (0, 1].")] = 0.1,
    num: Annotated[int, typer.Option("--num", min=1, help="Images to generate with --class.")] = 8,
) -> None:
    """Fill a masked region (mask: 1/white = keep, 0/black = hole) with replace, RePaint or SDS."""
    kind = one_of({"--image": image, "--from": source, "--class": class_})
    check_sample_flags(cfg=cfg, steps=steps, num=num)
    methods = check_methods(method, sampler)
    loaded = args.open()
    plan = loaded.plan(sampler=sampler, steps=steps, cfg=cfg, seed=args.seed)
    originals, labels, what = _originals(loaded, kind, image, source, class_, num, plan)
    masks = mask_from_spec(mask, len(originals), loaded.settings.data.image_size, plan.seed)
    classes = labels if loaded.num_classes and labels is not None else None
    plan = guided_plan(plan, classes, cfg_given=cfg is not None)
    console.print(
        f"inpainting {len(originals)} image(s) from {what} with mask {mask} by {', '.join(methods)} "
        f"(seed {plan.seed}) from {loaded.checkpoint}"
    )
    folder = args.folder(loaded, "inpaint", f"{'+'.join(methods)}-{Path(mask).stem}-seed{plan.seed}")
    with progress_task("inpainting", 1) as advance:
        results = inpaint_each(
            loaded.denoiser(plan),
            originals,
            masks,
            plan,
            methods,
            classes=classes,
            progress_for=lambda m: lambda done, total, message="", /: advance(done, total, f"{m} {message}".strip()),
            jump=jump,
            resample=resample,
            iterations=iterations,
            lr=lr,
        )
    _report(loaded, originals, masks, results, mask, what, plan, folder)


def _originals(
    loaded: LoadedRun,
    kind: str,
    image: Path | None,
    source: str | None,
    class_: int | None,
    num: int,
    plan: SamplingPlan,
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """The images to repair: read from --image / --from, or the model's own samples of --class."""
    if kind != "--class":
        return read_images(image, source, loaded)
    classes, total = class_layout(loaded.num_classes, class_, num)
    made_by = plan.with_sampler(*_run_sampler(loaded))  # the run's own sampler: --sampler is for replace
    with progress_task(f"sampling class {class_}", total) as advance:
        made = generate(loaded.denoiser(made_by), made_by, num=total, classes=classes, progress=advance)
    return made.images, classes, f"the model's samples of class {class_}"


def _run_sampler(loaded: LoadedRun) -> tuple[str, int]:
    s = loaded.settings.sample
    return s.sampler, s.steps


def _report(
    loaded: LoadedRun,
    originals: torch.Tensor,
    masks: torch.Tensor,
    results: dict[str, InpaintResult],
    mask: str,
    what: str,
    plan: SamplingPlan,
    folder: Path,
) -> None:
    hole = 1 - masks
    scores = {m: score(r.images, originals, hole) for m, r in results.items()}
    figure = save_labelled_rows(*figure_rows(originals, masks, results), folder / "inpaint.png", scale=3)
    for m, r in results.items():
        save_images(r.images, folder / m)
    record: dict[str, Any] = {
        "input": what,
        "mask": mask,
        "seed": plan.seed,
        "cfg": plan.cfg,
        "checkpoint": str(loaded.checkpoint),
        "scored_region": "hole (mask 0)",
    }
    for m, r in results.items():
        record[m] = {**scores[m].as_dict(), "nfe": r.nfe, "seconds": round(r.seconds, 2)}
        if r.initial_loss is not None:
            record[m] |= {"sds_loss_initial": r.initial_loss, "sds_loss_final": r.final_loss}
    console.print(scores_table("over the hole, against the original", scores))
    for m, r in results.items():
        extra = f"; SDS loss {r.initial_loss:.4f} → {r.final_loss:.4f}" if r.initial_loss is not None else ""
        console.print(f"{m}: {r.nfe} model evaluations, {r.seconds:.1f}s{extra}")
    done("figure (original / mask / masked input / result)", figure)
    done("scores", write_json(folder / "scores.json", record))
    done("images", folder)
