"""Pictures of the denoising process: evenly spaced states of any sampler, recorded through its step callback.

A run of `steps` steps passes through states 0 .. steps: state 0 is the starting noise x_T, state s
the x_t after step s. Frame k of a recording shows, for every image, the state x_t and the clean
image x̂0 predicted from that same state (at the last state, the finished image itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.generation import Generated, generate, initial_noise
from diffkit.progress import Progress
from diffkit.samplers import Step
from diffkit.sampling import SamplingPlan

MAX_FRAMES = 50  # more columns than this make a grid no one can read, and a GIF of many megabytes


def frame_states(steps: int, frames: int) -> list[int]:
    """`frames` states evenly spaced from the noise (0) to the finished image (`steps`), both included."""
    most = min(steps + 1, MAX_FRAMES)
    if not 2 <= frames <= most:
        raise DiffkitError(
            f"--frames {frames} is out of range: use 2 to {most} (at most steps + 1 = {steps + 1}, and {MAX_FRAMES})"
        )
    # floor(x + 0.5) rather than round-half-even: with a stride >= 1 the states stay distinct
    return [math.floor(k * steps / (frames - 1) + 0.5) for k in range(frames)]


@dataclass
class Process:
    states: list[int]
    xt: Tensor  # (N, K, C, H, W): image n's state at frame k
    x0: Tensor  # (N, K, C, H, W): the clean image predicted from that state

    def rows(self, which: Literal["xt", "x0"]) -> Tensor:
        """(N·K, C, H, W), image by image, ready for a grid with K per row."""
        frames = self.xt if which == "xt" else self.x0
        return frames.flatten(0, 1)

    def frames(self) -> list[Tensor]:
        """The whole batch's x_t at each frame: K tensors (N, C, H, W)."""
        return list(self.xt.unbind(1))


class ProcessRecorder:
    """A sampler callback that keeps x_t and x̂0 at the chosen states of every batch."""

    def __init__(self, noise: Tensor, steps: int, frames: int) -> None:
        self.noise = noise
        self.steps = steps
        self.states = frame_states(steps, frames)
        self._batches: list[tuple[dict[int, Tensor], dict[int, Tensor]]] = []

    def __call__(self, step: Step) -> None:
        if step.index == 0:  # generate() runs the batches one after another
            self._batches.append(({}, {}))
        xt, x0 = self._batches[-1]
        if step.index in self.states:  # the prediction made from state `index`
            x0[step.index] = step.x0.detach().cpu()
        if step.index + 1 in self.states:
            xt[step.index + 1] = step.x.detach().cpu()
        if step.index + 1 == self.steps:  # the last state is finished: it is its own prediction
            x0[self.steps] = xt[self.steps]

    def process(self) -> Process:
        if not self._batches:
            raise RuntimeError("the recorder saw no sampler steps")
        xt = torch.cat([self._stack(xt) for xt, _ in self._batches])
        x0 = torch.cat([self._stack(x0) for _, x0 in self._batches])
        xt[:, 0] = self.noise  # state 0 is the starting noise, which no callback reports
        return Process(self.states, xt.clamp(-1, 1), x0.clamp(-1, 1))

    def _stack(self, by_state: dict[int, Tensor]) -> Tensor:
        like = by_state[self.steps]
        return torch.stack([by_state.get(s, torch.zeros_like(like)) for s in self.states], 1)


def record_process(
    denoiser: Denoiser,
    plan: SamplingPlan,
    *,
    num: int,
    classes: Tensor | None,
    frames: int,
    progress: Progress | None = None,
    step_progress: Progress | None = None,
) -> tuple[Generated, Process]:
    """`generate` with a recorder attached: the images, and `frames` evenly spaced states of each."""
    noise = initial_noise(num, denoiser.image_shape, plan.seed)
    recorder = ProcessRecorder(noise, plan.steps, frames)
    out = generate(
        denoiser,
        plan,
        num=num,
        classes=classes,
        progress=progress,
        callback=recorder,
        noise=noise,
        step_progress=step_progress,
    )
    return out, recorder.process()
