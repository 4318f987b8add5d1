"""A trained run as a notebook meets it: `diffkit.load(path)` and one call per thing a run can do.

Every method makes the library calls the matching CLI command makes (the same plan, checks, layout and
functions), so a mistake raises the `DiffkitError` whose one line the CLI prints, and a seed gives the
same images from Python as from `diffkit sample`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from diffkit.api.pictures import ImageInput, images_in, label_list, mask_in, text_progress
from diffkit.api.results import Denoising, Fid, Inpainted, Interpolated, Samples, SuperResolved
from diffkit.checks import check_sample_flags, one_of
from diffkit.drawing import check_interpolation, draw, interpolation, layout
from diffkit.editing import check_methods, degrade, inpaint_each, score, super_resolve
from diffkit.editing.inpaint import guided_plan
from diffkit.editing.superres import require_superres
from diffkit.errors import DiffkitError
from diffkit.evaluation import FidRequest, evaluate
from diffkit.runs import LoadedRun, RunPaths, latest_run, load_run
from diffkit.samplers import SAMPLERS
from diffkit.sampling import SamplingPlan
from diffkit.settings import Settings, settings_to_dict

Labels = int | Sequence[int] | None


def load(path: str | Path | None = None, *, checkpoint: str = "best", ema: bool = True, device: str = "auto") -> Run:
    """A trained run (a run directory, as str or Path; default: the most recent run under runs/)."""
    if path is None:
        path = latest_run()
        print(f"using the most recent run: {path}")
    return Run(load_run(Path(path), checkpoint, use_ema=ema, device=device))


class Run:
    """A trained run: `.sample`, `.watch`, `.inpaint`, `.interpolate`, `.super_resolve`, `.fid`; its
    `.settings`, `.config` (the resolved config.toml as a dict) and `.metrics` (metrics.jsonl's records)."""

    def __init__(self, loaded: LoadedRun) -> None:
        self.loaded = loaded  # the lower-level run (diffkit.runs.LoadedRun): model, schedule, plans

    @property
    def root(self) -> Path:
        return self.loaded.root

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    @property
    def config(self) -> dict[str, Any]:
        return settings_to_dict(self.loaded.settings)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        path = RunPaths(self.root).metrics
        lines = path.read_text().splitlines() if path.is_file() else []
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: the rest is still worth reading
                continue
        return records

    @property
    def num_classes(self) -> int:
        return self.loaded.num_classes

    def __repr__(self) -> str:
        d, step = self.settings.data, self.loaded.meta.get("step", "?")
        classes = f"{self.num_classes} classes" if self.num_classes else "unconditional"
        return (
            f"Run({str(self.root)!r}: {d.dataset} {d.channels}x{d.image_size}x{d.image_size}, {classes}, "
            f"checkpoint {self.loaded.checkpoint.name} at step {step})"
        )

    # ------------------------------------------------------------------------------------ sampling
    def plan(
        self,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> SamplingPlan:
        """The run's [sample] settings with these on top, checked as `diffkit sample` checks its flags.
        `options`: eta, spacing, rescale, cfg_interval ((low, high) noise levels), autoguidance (the guide
        network's weight), clip, batch_size, and any sampler option (rho, variance)."""
        flags = ("eta", "spacing", "rescale", "cfg_interval", "autoguidance", "clip", "batch_size")
        known = {k: options.pop(k, None) for k in flags}
        check_sample_flags(cfg=cfg, steps=steps, eta=known["eta"], batch_size=known["batch_size"])
        plan = self.loaded.plan(sampler=sampler, steps=steps, cfg=cfg, seed=seed, **known)
        unknown = sorted(set(options) - {o for spec in SAMPLERS.values() for o in spec.options})
        if unknown:
            takes = sorted({o for spec in SAMPLERS.values() for o in spec.options} | set(known))
            raise DiffkitError(f"unknown sampler option {unknown[0]!r}: the options are {', '.join(takes)}")
        if options:  # rho, variance: the sampler's spec checks them, as every option
            plan = plan.but(options=(*plan.options, *options.items()))
            plan = plan.check(self.loaded.schedule.timesteps, self.num_classes)
        return plan

    def sample(
        self,
        label: Labels = None,
        num: int | None = None,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
        progress: bool = True,
        **sampler_options: Any,
    ) -> Samples:
        """`num` images of class `label` (default: `num` of every class, a row each; a list: of each listed).

        As `diffkit sample [--class K] --num N --sampler S --steps T --cfg G --seed X`; sampler options
        (eta, spacing, rescale, cfg_interval, autoguidance, clip, batch_size, rho, variance) as keywords. `num`
        defaults to the run's sample.num."""
        samples, _ = self._draw(label, num, 0, sampler, steps, cfg, seed, progress, sampler_options)
        return samples

    def watch(
        self,
        label: Labels = None,
        num: int = 1,
        *,
        frames: int | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
        progress: bool = True,
        **sampler_options: Any,
    ) -> Denoising:
        """The denoising of `num` images per class (default: one of every class), at `frames` evenly spaced
        states (default 11): x_t and the x̂0 predicted from it, as `diffkit sample --process`."""
        if frames is None:
            plan = self.plan(sampler=sampler, steps=steps, cfg=cfg, seed=seed, **dict(sampler_options))
            frames = min(plan.steps + 1, 11)
        samples, process = self._draw(label, num, frames, sampler, steps, cfg, seed, progress, sampler_options)
        assert process is not None
        return Denoising(samples, process)

    def _draw(
        self,
        label: Labels,
        num: int | None,
        frames: int,
        sampler: str | None,
        steps: int | None,
        cfg: float | None,
        seed: int | None,
        progress: bool,
        options: dict[str, Any],
    ) -> tuple[Samples, Any]:
        check_sample_flags(num=num)
        plan = self.plan(sampler=sampler, steps=steps, cfg=cfg, seed=seed, **dict(options))
        shape = layout(self.loaded, label, num or self.settings.sample.num, frames)
        result, process = draw(self.loaded, plan, shape, text_progress("sampling", progress))
        samples = Samples(result.images, label_list(shape.classes), shape.nrow, plan, result.nfe, result.seconds)
        return samples, process

    # ------------------------------------------------------------------------------------- editing
    def inpaint(
        self,
        image: ImageInput,
        mask: ImageInput = "center",
        method: str | Sequence[str] = "replace",
        *,
        label: Labels = None,
        sampler: str | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
        jump: int = 5,
        resample: int = 5,
        iterations: int = 200,
        lr: float = 0.1,
        progress: bool = True,
    ) -> Inpainted:
        """Fill the hole of `mask` (a shape such as "center", a PNG, or a picture: white keeps, black is
        the hole) in `image` (PIL, path, "mnist:test:0..3", array, tensor or `Samples`) with each method
        of `method` (replace, repaint, sds), as `diffkit inpaint`. Labelled inputs (or `label`) guide."""
        check_sample_flags(cfg=cfg, steps=steps)
        methods = check_methods(method, sampler)
        plan = self.loaded.plan(sampler=sampler, steps=steps, cfg=cfg, seed=seed)
        originals, labels, _ = images_in(image, self.settings)
        if label is not None:
            labels = torch.tensor([label] * len(originals) if isinstance(label, int) else list(label))
        masks = mask_in(mask, len(originals), self.settings.data.image_size, plan.seed)
        classes = labels if self.num_classes and labels is not None else None
        plan = guided_plan(plan, classes, cfg_given=cfg is not None)
        results = inpaint_each(
            self.loaded.denoiser(plan),
            originals,
            masks,
            plan,
            methods,
            classes=classes,
            progress_for=lambda m: text_progress(m, progress),
            jump=jump,
            resample=resample,
            iterations=iterations,
            lr=lr,
        )
        scores = {m: score(r.images, originals, 1 - masks).mean() for m, r in results.items()}
        return Inpainted(originals, masks, results, scores)

    def interpolate(
        self,
        *,
        classes: tuple[int, int] | None = None,
        seeds: tuple[int, int] | None = None,
        images: Sequence[ImageInput] | None = None,
        frames: int = 10,
        label: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
        progress: bool = True,
    ) -> Interpolated:
        """Between two classes (fixed noise), two seeds (slerp; `label` the class) or two images (DDIM
        inversion), as `diffkit interpolate --classes A B | --seeds A B | --images X Y`."""
        given = {"--classes": classes, "--seeds": seeds, "--images": images}
        kind = one_of(given).removeprefix("--")
        check_interpolation(kind, frames=frames, class_id=label, cfg=cfg, steps=steps)
        plan = self.loaded.plan(steps=steps, cfg=cfg, seed=seed)
        ends: tuple[int, int] | torch.Tensor
        if kind == "images":
            assert images is not None
            ends = images_in(list(images), self.settings)[0]
            if len(ends) != 2:
                raise DiffkitError(f"--images needs two images, and {len(ends)} were given")
        else:
            pair = classes if kind == "classes" else seeds
            assert pair is not None
            if len(pair) != 2:
                raise DiffkitError(f"--{kind} takes two values, not {len(pair)}")
            ends = (int(pair[0]), int(pair[1]))
        report = text_progress("interpolating", progress)
        return Interpolated(
            interpolation(self.loaded, plan, kind, ends, frames=frames, class_id=label, progress=report)
        )

    def super_resolve(
        self,
        image: ImageInput,
        scale: int = 4,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        seed: int | None = None,
        progress: bool = True,
    ) -> SuperResolved:
        """Upsample with a super-resolution run, as `diffkit super-res`: an image of the model's size is the
        ground truth and is shrunk by `scale` first (scored against it); a smaller one is the input itself."""
        check_sample_flags(steps=steps)
        require_superres(self.settings, self.root, scale)
        plan = self.loaded.plan(sampler=sampler, steps=steps, seed=seed, cfg=1.0)
        size = self.settings.data.image_size
        small = _is_small(image, size)
        truth = None if small else images_in(image, self.settings)[0]
        low = _low_res(image, self.settings, scale) if small else degrade(truth, scale)  # type: ignore[arg-type]
        result = super_resolve(
            self.loaded.denoiser(plan), low, plan, progress=text_progress("super-resolving", progress)
        )
        out = SuperResolved(result.low, result.bicubic, result.images, truth, scale)
        if truth is not None:
            out.scores = {
                "bicubic": score(result.bicubic, truth).mean(),
                "diffusion": score(result.images, truth).mean(),
            }
        return out

    # ---------------------------------------------------------------------------------- evaluation
    def fid(
        self,
        against: str = "mnist:test",
        num: int = 1000,
        *,
        cfg: float | Sequence[float] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        seed: int | None = None,
        kid: bool = False,
        class_accuracy: bool = False,
        features: str = "auto",
        progress: bool = True,
    ) -> Fid:
        """FID of `num` samples against `against` (a dataset split, a folder or an .npz), with the real-vs-real
        floor; several `cfg` values sweep the guidance. As `diffkit fid run:DIR AGAINST --num N --cfg ...`."""
        scales = None if cfg is None else ([float(cfg)] if isinstance(cfg, int | float) else list(cfg))
        check_sample_flags(cfg=scales, steps=steps)
        request = FidRequest(
            [f"run:{self.root}", str(against)],
            features=features,
            num=num,
            kid=kid,
            class_accuracy=class_accuracy,
            sampler=sampler,
            steps=steps,
            cfg=scales,
            seed=seed,
            checkpoint=str(self.loaded.checkpoint),
            device=str(self.loaded.device),
        )
        return Fid(evaluate(request, text_progress("measuring", progress)))


def _is_small(image: ImageInput, size: int) -> bool:
    """Whether a super-resolution input is below the model's size (the low-resolution input itself)."""
    if isinstance(image, str | Path) and Path(image).is_file():
        from PIL import Image

        with Image.open(image) as img:
            return bool(img.size != (size, size))
    if hasattr(image, "size") and hasattr(image, "convert"):
        return bool(image.size != (size, size))
    if hasattr(image, "shape"):
        return int(image.shape[-1] if isinstance(image, torch.Tensor) else _width(image)) < size
    return False


def _width(arr: Any) -> int:
    return int(arr.shape[1] if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4)) else arr.shape[-2])


def _low_res(image: ImageInput, settings: Settings, scale: int) -> torch.Tensor:
    """A low-resolution input at image_size / scale (converted, with a note, when it is not already)."""
    small = settings.model_copy(deep=True)
    small.data.image_size = settings.data.image_size // scale
    return images_in(image, small)[0]
