"""Inpainting: fill the hole of a mask (1 = keep, 0 = hole) so that it agrees with the known pixels.

Three methods, none of which copies a sampler loop:

- `replace` — any registered sampler runs as usual; its per-step callback puts the known pixels back,
  noised to the level the state has just reached (exactly the originals at the clean end). This is
  the "replacement" method of Song et al. 2021 (SDE paper, appendix) and RePaint's baseline.
- `repaint` — Lugmayr et al. 2022: the same constraint along a time path that goes down `jump`
  levels, back up `jump` levels by re-noising, and down again, `resample` times per block, so the
  filled region has time to harmonise with the known one. Going down is a DDPM ancestral step and
  going up is the forward process, both on the schedule respaced to the visited timesteps (Nichol &
  Dhariwal 2021), using `NoiseSchedule.posterior` for the step — RePaint is defined on DDPM.
- `sds` — score distillation sampling (Poole et al. 2022): the hole's pixels are parameters, moved by
  gradient steps w(t)(ε̂(x_t) − ε) with no gradient through the network. With w(t) = σ_t/α_t this
  gradient is x − x̂0(x_t), so each step pulls the hole towards the model's clean estimate of a
  randomly re-noised copy of the current image.

In every method the known pixels of the result are the input's, bit for bit.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffkit.denoiser import DenoiseFn, Denoiser
from diffkit.editing.masks import check_mask
from diffkit.errors import DiffkitError
from diffkit.generation import generate, initial_noise, require_images_input
from diffkit.progress import Progress
from diffkit.samplers import Step
from diffkit.sampling import SamplingPlan, check_cfg
from diffkit.schedules import NoiseSchedule

METHODS: dict[str, str] = {
    "replace": "known pixels re-noised to the current level after every sampler step (any sampler)",
    "repaint": "RePaint (Lugmayr et al. 2022): DDPM steps with jumps back up and resampling",
    "sds": "score distillation sampling (Poole et al. 2022): gradient steps on the hole's pixels",
}


@dataclass
class InpaintResult:
    images: Tensor  # (N, C, H, W) in [-1, 1] on the CPU; known pixels equal the input's
    method: str
    nfe: int  # denoiser evaluations
    seconds: float
    losses: list[float] = field(default_factory=list)  # sds: the loss of every iteration (one noisy draw)
    initial_loss: float | None = None  # sds: the loss on fixed draws before and after optimising
    final_loss: float | None = None


def masked_view(images: Tensor, mask: Tensor, fill: float = 0.0) -> Tensor:
    """The input as the model sees it: the hole painted `fill` (mid grey), for figures."""
    return torch.where(mask.bool(), images, torch.full_like(images, fill))


def check_methods(methods: str | Sequence[str], sampler: str | None = None) -> list[str]:
    """Methods as a list ("replace,sds" or ["replace", "sds"]), each known; a sampler only with replace alone."""
    listed = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    if not listed:
        raise DiffkitError(f"no inpainting method was given: choose one or more of {', '.join(METHODS)}")
    for m in listed:
        if m not in METHODS:
            raise DiffkitError(f"unknown inpainting method {m!r}: choose one of {', '.join(METHODS)}")
    if sampler is not None and listed != ["replace"]:
        raise DiffkitError("--sampler applies to --method replace only (repaint uses DDPM steps, sds no sampler)")
    return listed


def guided_plan(plan: SamplingPlan, classes: Tensor | None, *, cfg_given: bool) -> SamplingPlan:
    """The plan inpainting follows: guidance needs labels (and a conditional model); without them, none."""
    if cfg_given and classes is None:
        raise DiffkitError(
            "--cfg needs class labels and this input has none (or the model is unconditional): "
            "drop --cfg, or use --from with a labelled dataset or --class"
        )
    return plan if classes is not None else plan.but(cfg=1.0)


def figure_rows(originals: Tensor, masks: Tensor, results: dict[str, InpaintResult]) -> tuple[list[Tensor], list[str]]:
    """The rows of an inpainting figure and their labels: original / mask / masked input / each method."""
    mask_row = (masks * 2 - 1).expand_as(originals)
    rows = [originals, mask_row, masked_view(originals, masks), *(r.images for r in results.values())]
    return rows, ["original", "mask", "masked input", *results]


def inpaint_each(
    denoiser: Denoiser,
    images: Tensor,
    mask: Tensor,
    plan: SamplingPlan,
    methods: Sequence[str],
    *,
    classes: Tensor | None = None,
    progress_for: Callable[[str], Progress | None] = lambda method: None,
    **options: Any,
) -> dict[str, InpaintResult]:
    """`inpaint` by each of `methods` in turn, on the same holes with the same plan and classes (as
    `diffkit inpaint --method replace,repaint`); `options` are `inpaint`'s (jump, resample, iterations, lr)."""
    return {
        m: inpaint(denoiser, images, mask, plan, method=m, classes=classes, progress=progress_for(m), **options)
        for m in methods
    }


def inpaint(
    denoiser: Denoiser,
    images: Tensor,
    mask: Tensor,
    plan: SamplingPlan,
    *,
    method: str = "replace",
    classes: Tensor | None = None,
    jump: int = 5,
    resample: int = 5,
    iterations: int = 200,
    lr: float = 0.1,
    progress: Progress | None = None,
) -> InpaintResult:
    """Fill the holes (mask 0) of `images` (N, C, H, W) in [-1, 1] with a method of `METHODS`.

    `plan` drives `replace` (any sampler); its steps are also the number of DDPM levels of `repaint`,
    with `jump` and `resample` (Lugmayr et al. use 250 levels, jump 10, resample 10; the defaults here
    cost 50 + 4 * 5 * 10 = 250 evaluations with 50 levels); `iterations` and `lr` drive `sds`. Its
    guidance and seed apply to every method.
    """
    if method not in METHODS:
        raise DiffkitError(f"unknown inpainting method {method!r}: choose one of {', '.join(METHODS)}")
    require_images_input(denoiser)
    check_cfg(plan.cfg, denoiser.num_classes)
    mask = check_mask(mask, images)
    start = time.perf_counter()
    if method == "replace":
        result = _replace(denoiser, images, mask, classes, plan, progress)
    else:
        denoiser, device = plan.configure(denoiser), denoiser.device
        denoise = denoiser.conditioned(None if classes is None else classes.to(device), plan.cfg)
        known, keep = images.to(device), mask.to(device).bool()
        gen = torch.Generator(device=device).manual_seed(plan.seed)
        if method == "repaint":
            x_T = initial_noise(len(images), denoiser.image_shape, plan.seed).to(device)  # as `generate` draws it
            result = _repaint(denoise, denoiser.schedule, known, keep, x_T, plan.steps, jump, resample, gen, progress)
        else:
            result = _sds(denoise, denoiser.schedule, known, keep, iterations, lr, gen, progress)
    result.images = result.images.cpu().clamp(-1, 1)  # known pixels are in range already: unchanged
    result.seconds = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------ replace


def replacement(
    known: Tensor, keep: Tensor, schedule: NoiseSchedule, generator: torch.Generator, progress: Progress | None = None
) -> Callable[[Step], Tensor]:
    """The sampler callback of `replace`: known pixels drawn from q(x_t | x0) at the step's level."""

    def constrain(step: Step) -> Tensor:
        if progress is not None:
            progress(step.index + 1, step.total)
        if step.t < 0:  # the clean end: the originals themselves
            return torch.where(keep, known, step.x)
        t = torch.full((known.shape[0],), step.t, dtype=torch.float64)
        noise = torch.randn(known.shape, generator=generator, device=known.device, dtype=known.dtype)
        return torch.where(keep, schedule.q_sample(known, t, noise), step.x)

    return constrain


def _replace(
    denoiser: Denoiser,
    images: Tensor,
    mask: Tensor,
    classes: Tensor | None,
    plan: SamplingPlan,
    progress: Progress | None,
) -> InpaintResult:
    device = denoiser.device
    gen = torch.Generator(device=device).manual_seed(plan.seed + 1)  # the known pixels' noise, apart from x_T's
    constrain = replacement(images.to(device), mask.to(device).bool(), denoiser.schedule, gen, progress)
    one_batch = plan.but(batch_size=len(images))
    out = generate(denoiser, one_batch, num=len(images), classes=classes, callback=constrain)
    return InpaintResult(out.images, "replace", out.nfe, out.seconds)


# ------------------------------------------------------------------------------------ RePaint


def repaint_path(steps: int, jump: int, resample: int) -> list[int]:
    """Levels visited, 0 = noisiest ... `steps` = clean (Lugmayr et al. 2022, "jump" schedule).

    Counting blocks of `jump` levels back from the clean end, the path goes back up a whole block
    `resample - 1` times each time it reaches the block's end, so every block is denoised `resample`
    times. resample = 1 is plain DDPM.
    """
    pending = {level: resample - 1 for level in range(steps, jump - 1, -jump)}
    path, level = [0], 0
    while level < steps:
        level += 1
        path.append(level)
        if pending.get(level, 0) > 0:
            pending[level] -= 1
            path.extend(range(level - 1, level - jump - 1, -1))
            level -= jump
    return path


def respaced(schedule: NoiseSchedule, timesteps: list[int]) -> NoiseSchedule:
    """The schedule restricted to `timesteps` (cleanest first): βₖ = 1 − ᾱ(tₖ) / ᾱ(tₖ₋₁), ᾱ(t₋₁) = 1."""
    ab = schedule.alpha_bar[torch.tensor(timesteps)]
    prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    return NoiseSchedule(1 - ab / prev)


def _repaint(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    known: Tensor,
    keep: Tensor,
    x: Tensor,
    steps: int,
    jump: int,
    resample: int,
    gen: torch.Generator,
    progress: Progress | None,
) -> InpaintResult:
    if not 1 <= steps <= schedule.timesteps:
        raise DiffkitError(f"--steps {steps} is out of range: use 1 to {schedule.timesteps} (the model's T)")
    if not 1 <= jump <= steps:
        raise DiffkitError(f"--jump {jump} is out of range: use 1 to --steps ({steps})")
    if resample < 1:
        raise DiffkitError(f"--resample {resample} is out of range: use 1 (plain DDPM) or more")
    timesteps = schedule.spaced_timesteps(steps).tolist()  # noisiest first; level i -> timesteps[i]
    sub = respaced(schedule, timesteps[::-1])  # index k of `sub` is level steps - 1 - k

    def noise() -> Tensor:
        return torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)

    path, nfe = repaint_path(steps, jump, resample), 0
    for i, (level, nxt) in enumerate(itertools.pairwise(path)):
        k = torch.full((x.shape[0],), steps - 1 - min(level, nxt), dtype=torch.long)  # the noisier level's index
        if nxt > level:  # down: x_{k-1} ~ p(x_{k-1} | x_k), then the known pixels at the new level
            pred = denoise(x, torch.full((x.shape[0],), float(timesteps[level]), device=x.device))
            nfe += 1
            mean, var = sub.posterior(pred.x0, x, k)
            x = mean + var.sqrt() * noise()
            x = torch.where(keep, _noised(known, sub, k - 1, noise()), x)
        else:  # up: x_k ~ q(x_k | x_{k-1}), the forward process over one respaced step
            beta = sub.betas[k].to(x).reshape(-1, 1, 1, 1)
            x = (1 - beta).sqrt() * x + beta.sqrt() * noise()
        if progress is not None:
            progress(i + 1, len(path) - 1)
    return InpaintResult(x, "repaint", nfe, 0.0)


def _noised(known: Tensor, sub: NoiseSchedule, k: Tensor, noise: Tensor) -> Tensor:
    """q(x_k | x0) on the respaced schedule; k = -1 is the clean image."""
    if int(k[0]) < 0:
        return known
    return sub.q_sample(known, k, noise)


# ---------------------------------------------------------------------------------------- SDS


SDS_PROBE_LEVELS = (0.2, 0.4, 0.6, 0.8)  # fractions of T where the reported loss is measured


def sds_loss(denoise: DenoiseFn, schedule: NoiseSchedule, x: Tensor, hole: Tensor, probes: list[Tensor]) -> float:
    """Mean over fixed noise draws of ‖x − x̂0(x_t)‖² on the hole: the SDS loss, w(t) = σ_t² / α_t²."""
    total = 0.0
    for frac, eps in zip(SDS_PROBE_LEVELS, probes, strict=True):
        t = torch.full((x.shape[0],), round(frac * (schedule.timesteps - 1)), dtype=torch.long)
        pred = denoise(schedule.q_sample(x, t, eps), t.to(x.device).float())
        total += float(((x - pred.x0.clamp(-1, 1)) ** 2 * hole).sum() / hole.sum().clamp_min(1) / x.shape[1])
    return total / len(probes)


def _sds(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    known: Tensor,
    keep: Tensor,
    iterations: int,
    lr: float,
    gen: torch.Generator,
    progress: Progress | None,
) -> InpaintResult:
    if iterations < 1:
        raise DiffkitError(f"--iterations {iterations} is out of range: use 1 or more (e.g. 200)")
    if not 0 < lr <= 1:
        raise DiffkitError(f"--lr {lr} is out of range: use a value in (0, 1], e.g. 0.1")
    n, hole = known.shape[0], (~keep).to(known)

    def randn() -> Tensor:
        return torch.randn(known.shape, generator=gen, device=known.device, dtype=known.dtype)

    probes = [randn() for _ in SDS_PROBE_LEVELS]
    # start the hole at the mean of each image's known pixels: a neutral guess in the image's range
    fill = (known * keep).sum((1, 2, 3), keepdim=True) / keep.sum((1, 2, 3), keepdim=True).clamp_min(1)
    x = torch.where(keep, known, fill.expand_as(known))
    initial = sds_loss(denoise, schedule, x, hole, probes)
    losses, T = [], schedule.timesteps
    for i in range(iterations):
        # the highest timestep drawn falls from 0.98 T to 0.2 T: coarse structure first, then detail
        top = 0.98 - (0.98 - 0.2) * i / max(iterations - 1, 1)
        u = 0.02 + (top - 0.02) * torch.rand(n, generator=gen, device=known.device)
        t = (u * (T - 1)).round().long()
        pred = denoise(schedule.q_sample(x, t, randn()), t.float())
        grad = (x - pred.x0.clamp(-1, 1)) * hole  # = w(t) (ε̂ − ε) with w = σ/α, clipped x̂0; known pixels fixed
        losses.append(float((grad**2).sum() / hole.sum().clamp_min(1) / known.shape[1]))
        x = torch.where(keep, known, (x - lr * grad).clamp(-1, 1))
        if progress is not None:
            progress(i + 1, iterations)
    final = sds_loss(denoise, schedule, x, hole, probes)
    nfe = iterations + 2 * len(SDS_PROBE_LEVELS)
    return InpaintResult(x, "sds", nfe, 0.0, losses, initial, final)
