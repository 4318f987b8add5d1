"""Interpolation: a path of start noises or of class embeddings, each frame decoded by deterministic DDIM.

- between classes: one fixed start noise; the class embedding moves linearly from class A's row of
  the embedding table to class B's (the UNet takes float class weights); classifier-free guidance
  still uses the null class for its unconditional half;
- between seeds: spherical interpolation (slerp, Shoemake 1985) of the two start noises, which keeps
  the norm a Gaussian sample is expected to have, where a straight line would shrink it;
- between real images: DDIM inversion (Song et al. 2021, §4.3: the eta = 0 update run from clean to
  noisy) of both images with the unconditional model, slerp of the two latents, decoding.

Frame 0 and the last frame are exactly the plain DDIM samples of the end points (the same noise,
class and steps through `generate`): the path starts and ends where `diffkit sample` would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit.denoiser import DenoiseFn, Denoiser
from diffkit.errors import DiffkitError
from diffkit.generation import generate, initial_noise, require_images_input
from diffkit.progress import Progress
from diffkit.samplers import Step, ddim_update, default_spacing
from diffkit.sampling import SamplingPlan
from diffkit.schedules import NoiseSchedule


@dataclass
class Interpolation:
    frames: Tensor  # (F, C, H, W) in [-1, 1], on the CPU
    positions: list[float]  # where each frame lies between the end points, 0 ... 1
    nfe: int  # denoiser evaluations for all frames (batched), inversion included
    seconds: float


def positions(frames: int) -> list[float]:
    if frames < 2:
        raise DiffkitError(f"--frames {frames} is too few: use 2 or more (the end points are frames too)")
    return [i / (frames - 1) for i in range(frames)]


def slerp(z0: Tensor, z1: Tensor, w: float) -> Tensor:
    """Spherical interpolation between two tensors; exactly z0 at w = 0 and z1 at w = 1."""
    if w == 0.0:
        return z0.clone()
    if w == 1.0:
        return z1.clone()
    a, b = z0.flatten().double(), z1.flatten().double()
    cos = float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-12))
    theta = math.acos(max(-1.0, min(1.0, cos)))
    if theta < 1e-6:  # (nearly) parallel: the straight line is the arc
        return torch.lerp(z0, z1, w)
    return (math.sin((1 - w) * theta) * z0 + math.sin(w * theta) * z1) / math.sin(theta)


def class_weights(num_classes: int, a: int, b: int, where: list[float]) -> Tensor:
    """Rows mixing the embeddings of classes a and b, (F, num_classes + 1); the last column is "no class"."""
    w = torch.tensor(where, dtype=torch.float32)[:, None]
    return (1 - w) * F.one_hot(torch.tensor(a), num_classes + 1).float() + w * F.one_hot(
        torch.tensor(b), num_classes + 1
    ).float()


def decoding_plan(plan: SamplingPlan) -> SamplingPlan:
    """Deterministic DDIM at the plan's steps, spacing, clipping and guidance: what every frame is decoded with."""
    spacing = plan.sampler_options.get("spacing")
    options = (("eta", 0.0),) + ((("spacing", spacing),) if spacing is not None else ())
    return plan.with_sampler("ddim", plan.steps, options)


def _decode(
    denoiser: Denoiser,
    plan: SamplingPlan,
    noise: Tensor,
    classes: Tensor | None,
    progress: Progress | None,
    done: int = 0,
    total: int | None = None,
) -> tuple[Tensor, int]:
    """Deterministic DDIM from `noise`, all frames in one batch: the call `diffkit sample --sampler ddim
    --eta 0` makes for the same noise."""

    def report(step: Step) -> None:
        if progress is not None:
            progress(done + step.index + 1, total or step.total)

    frames = decoding_plan(plan).but(batch_size=len(noise))
    out = generate(denoiser, frames, num=len(noise), classes=classes, noise=noise, callback=report)
    return out.images, out.nfe


def interpolate_classes(
    denoiser: Denoiser,
    a: int,
    b: int,
    plan: SamplingPlan,
    *,
    frames: int = 10,
    progress: Progress | None = None,
) -> Interpolation:
    """Fixed start noise (image 0 of the plan's seed), class embedding moving from class a to class b."""
    require_images_input(denoiser)
    k = denoiser.num_classes
    if k == 0:
        raise DiffkitError(
            "--classes needs a class-conditional model and this one is unconditional: use --seeds or --images"
        )
    for c in (a, b):
        if not 0 <= c < k:
            raise DiffkitError(f"class {c} is out of range: this model knows classes 0 to {k - 1}")
    where, start = positions(frames), time.perf_counter()
    noise = initial_noise(1, denoiser.image_shape, plan.seed).expand(frames, -1, -1, -1).contiguous()
    images, nfe = _decode(denoiser, plan, noise, class_weights(k, a, b, where), progress)
    return Interpolation(images, where, nfe, time.perf_counter() - start)


def interpolate_seeds(
    denoiser: Denoiser,
    seed_a: int,
    seed_b: int,
    plan: SamplingPlan,
    *,
    frames: int = 10,
    class_id: int | None = None,
    progress: Progress | None = None,
) -> Interpolation:
    """Slerp between the start noises of two seeds (image 0 of each); one class, or unconditional
    (then the plan's guidance does not apply)."""
    require_images_input(denoiser)
    if class_id is not None and not 0 <= class_id < denoiser.num_classes:
        known = f"classes 0 to {denoiser.num_classes - 1}" if denoiser.num_classes else "it is unconditional"
        raise DiffkitError(f"--class {class_id} is out of range for this model ({known})")
    where, start = positions(frames), time.perf_counter()
    shape = denoiser.image_shape
    z_a, z_b = initial_noise(1, shape, seed_a)[0], initial_noise(1, shape, seed_b)[0]
    noise = torch.stack([slerp(z_a, z_b, w) for w in where])
    classes = None if class_id is None else torch.full((frames,), class_id, dtype=torch.long)
    plan = plan if classes is not None else plan.but(cfg=1.0)
    images, nfe = _decode(denoiser, plan, noise, classes, progress)
    return Interpolation(images, where, nfe, time.perf_counter() - start)


@torch.no_grad()
def ddim_invert(
    denoise: DenoiseFn,
    images: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    spacing: str = "leading",
    progress: Progress | None = None,
) -> Tensor:
    """The start noise x_T that deterministic DDIM (same steps and spacing) maps back to about `images`.

    Each step runs DDIM's update from t' to the next noisier t, with ε̂ taken at the current, less
    noisy state but labelled t — the usual approximation ε̂(x_t', t) ≈ ε̂(x_t, t), accurate when the
    steps are small.
    """
    if not 1 <= steps <= schedule.timesteps:
        raise DiffkitError(f"--steps {steps} is out of range: use 1 to {schedule.timesteps} (the model's T)")
    timesteps = schedule.spaced_timesteps(steps, spacing).tolist()[::-1]  # type: ignore[arg-type]
    x, ab_prev = images, 1.0
    for i, t in enumerate(timesteps):
        eps = denoise(x, torch.full((x.shape[0],), float(t), device=x.device)).eps
        ab = float(schedule.alpha_bar[t])
        x = ddim_update((x - (1 - ab_prev) ** 0.5 * eps) / ab_prev**0.5, eps, ab)  # DDIM's step, run upwards
        ab_prev = ab
        if progress is not None:
            progress(i + 1, 2 * steps)
    return x


def interpolate_images(
    denoiser: Denoiser,
    image_a: Tensor,
    image_b: Tensor,
    plan: SamplingPlan,
    *,
    frames: int = 10,
    progress: Progress | None = None,
) -> Interpolation:
    """Invert both images (1, C, H, W) with the unconditional model, slerp the latents, decode."""
    require_images_input(denoiser)
    where, start = positions(frames), time.perf_counter()
    plan, steps = plan.but(cfg=1.0), plan.steps
    spacing = str(decoding_plan(plan).sampler_options.get("spacing") or default_spacing("ddim"))
    pair = torch.cat([image_a, image_b]).to(denoiser.device)
    inverting = plan.configure(denoiser).conditioned(None)
    latents = ddim_invert(inverting, pair, denoiser.schedule, steps, spacing, progress=progress).cpu()
    noise = torch.stack([slerp(latents[0], latents[1], w) for w in where])
    images, nfe = _decode(denoiser, plan, noise, None, progress, done=steps, total=2 * steps)
    return Interpolation(images, where, nfe + steps, time.perf_counter() - start)
