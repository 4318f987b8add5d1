"""Batched image generation from a Denoiser: seeded noise, class layout, batches, progress.

Every command that makes images (sample, compare-samplers, fid run:DIR, the editing commands, the
grids drawn during training) comes through `generate` with a `SamplingPlan`, so seeds mean the same
thing everywhere: the starting noise of
image i depends only on the seed and i, never on the batch size.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.progress import Progress
from diffkit.samplers import Callback, Step, sample
from diffkit.sampling import SamplingPlan

MAX_HELD_BYTES = 2 * 2**30  # float32 images one request may hold at once; beyond it, refused with the fix


def check_held(count: int, shape: tuple[int, ...], what: str, fix: str) -> None:
    """Refuse, before any work, a request that would hold `count` images of `shape` in memory at once."""
    need = count * math.prod(shape) * 4
    if need > MAX_HELD_BYTES:
        size = "x".join(map(str, shape))
        raise DiffkitError(
            f"{what} is too large: it holds {count:,} images of {size} at once ({need / 2**30:.1f} GiB, "
            f"at most {MAX_HELD_BYTES / 2**30:g} GiB): {fix}"
        )


@dataclass
class Generated:
    images: Tensor  # (N, C, H, W) in [-1, 1], on the CPU
    classes: Tensor | None
    nfe: int  # denoiser evaluations per batch (the same for every batch)
    seconds: float


def class_layout(num_classes: int, class_id: int | Sequence[int] | None, num: int) -> tuple[Tensor | None, int]:
    """Classes for a request: one class `num` times, `num` of each class listed (a row each), or `num` of
    every class (a row per class)."""
    if num_classes == 0:
        if class_id is not None:
            raise DiffkitError("--class was given but this model is unconditional: drop --class")
        return None, num
    if class_id is None:
        return torch.arange(num_classes).repeat_interleave(num), num * num_classes
    given = [class_id] if isinstance(class_id, int) else list(class_id)
    if not given:
        raise DiffkitError("no class was given: give one or more classes, or none for a row per class")
    listed = [_class_number(c, num_classes) for c in given]
    return torch.tensor(listed).repeat_interleave(num), num * len(listed)


def _class_number(c: object, num_classes: int) -> int:
    try:
        n = operator.index(c)  # type: ignore[arg-type]  # ints, numpy ints; not floats or strings
    except TypeError:
        n = None
    if n is None or isinstance(c, bool) or not 0 <= n < num_classes:
        raise DiffkitError(f"--class {c} is out of range: this model knows classes 0 to {num_classes - 1}")
    return n


def require_images_input(denoiser: Denoiser) -> None:
    """A super-resolution model cannot make images from noise alone: it needs its conditioning channels."""
    if denoiser.network.cond_channels and denoiser.cond is None:
        raise DiffkitError(
            "this run is a super-resolution model (it needs a low-resolution input): "
            "use `diffkit super-res`, or pass --run with a generation model"
        )


def initial_noise(n: int, shape: tuple[int, int, int], seed: int, *, start: int = 0) -> Tensor:
    """x_T for images start..start+n-1: image i's noise depends only on (seed, i)."""
    out = torch.empty(n, *shape)
    g = torch.Generator()
    for i in range(n):
        g.manual_seed(seed * 1_000_003 + start + i)
        out[i] = torch.randn(shape, generator=g)
    return out


def generate(
    denoiser: Denoiser,
    plan: SamplingPlan,
    *,
    num: int,
    classes: Tensor | None,
    progress: Progress | None = None,
    callback: Callback | None = None,
    noise: Tensor | None = None,
    on_batch: Callable[[int, Tensor], None] | None = None,
    keep: int | None = None,
    step_progress: Progress | None = None,
) -> Generated:
    """Generate `num` images (classes per image or None) as `plan` says.

    `on_batch(first_index, images)` sees each finished batch, so long exports can write files as they go;
    `keep` limits the images returned to the first `keep` (None: all): with `on_batch`, any number of
    images is then made holding one batch at a time (the starting noise too is made batch by batch).
    `step_progress` hears every sampler step of every batch ("step 3 of 20"), for long batches.
    """
    plan = plan.checked(denoiser.schedule.timesteps, denoiser.num_classes)
    require_images_input(denoiser)
    denoiser = plan.configure(denoiser)
    device, size, shape = denoiser.device, plan.batch_size, denoiser.image_shape
    kept: list[Tensor] = []
    nfe, start, batches = 0, time.perf_counter(), max(1, math.ceil(num / size))
    for b in range(batches):
        lo, hi = b * size, min(num, (b + 1) * size)
        x_T = noise[lo:hi] if noise is not None else initial_noise(hi - lo, shape, plan.seed, start=lo)
        batch_classes = classes[lo:hi].to(device) if classes is not None else None
        gen = torch.Generator(device=device).manual_seed(plan.seed * 7919 + b)  # stochastic samplers' step noise
        # conditioning channels (super-resolution) belong to images, so they are batched with them
        batch_denoiser = denoiser if denoiser.cond is None else replace(denoiser, cond=denoiser.cond[lo:hi].to(device))
        result = sample(
            plan.sampler,
            batch_denoiser.conditioned(batch_classes, plan.cfg),
            x_T.to(device),
            denoiser.schedule,
            plan.steps,
            generator=gen,
            callback=callback if step_progress is None else _counting(callback, step_progress, b, batches),
            checked=True,  # by plan.checked above
            **plan.sampler_options,
        )
        images = result.images.clamp(-1, 1).cpu()
        nfe = result.nfe
        if on_batch is not None:
            on_batch(lo, images)
        if keep is None or lo < keep:
            kept.append(images if keep is None else images[: keep - lo])
        if progress is not None:
            progress(hi, num)
    images = torch.cat(kept) if kept else torch.empty(0, *shape)
    return Generated(images, classes, nfe, time.perf_counter() - start)


def _counting(callback: Callback | None, progress: Progress, batch: int, batches: int) -> Callback:
    """`callback`, telling `progress` of each step first: steps done over every batch's steps."""

    def counted(step: Step) -> Tensor | None:
        where = f" of batch {batch + 1} of {batches}" if batches > 1 else ""
        progress(
            batch * step.total + step.index + 1, batches * step.total, f"step {step.index + 1} of {step.total}{where}"
        )
        return callback(step) if callback is not None else None

    return counted


def grid_rows(num_classes: int, per_class: int, total: int) -> int:
    """Images per grid row: one row per class for class grids, else a near-square grid."""
    return per_class if num_classes else max(1, math.isqrt(max(total - 1, 0)) + 1)


def cycled_classes(num_classes: int, class_id: int | None, num: int) -> Tensor | None:
    """`num` labels cycling 0, 1, ..., K-1, 0, ... (every class as evenly as `num` allows), or all
    `class_id`; None for an unconditional model. For flat sets of images: exports, comparisons."""
    if class_id is not None or num_classes == 0:
        return class_layout(num_classes, class_id, num)[0]
    return torch.arange(num) % num_classes
