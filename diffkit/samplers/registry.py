"""The sampler registry: each sampler's spec (name, options, what it refuses), the one check of a
request against it, and `sample`, which runs a sampler by name and counts its model evaluations."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffkit.denoiser import DenoiseFn, Prediction
from diffkit.errors import DiffkitError
from diffkit.schedules import SPACINGS, NoiseSchedule


@dataclass
class Step:
    index: int  # 0-based
    total: int
    t: float  # timestep of `x` after this step; -1 means clean
    x: Tensor  # the new state x_t
    x0: Tensor  # the clean-image prediction made during this step


Callback = Callable[[Step], Tensor | None]
SamplerFn = Callable[..., Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fn: SamplerFn
    stochastic: bool
    summary: str
    options: tuple[str, ...] = field(default_factory=tuple)
    refuses: dict[str, str] = field(default_factory=dict)  # spacing -> why it is refused

    def check(self, steps: int, timesteps: int, options: Mapping[str, Any]) -> None:
        """Steps in range, only options this sampler takes, each with a valid value: before any sampling."""
        if not 1 <= steps <= timesteps:
            raise DiffkitError(f"--steps {steps} is out of range: use 1 to {timesteps} (the model's T)")
        unknown = set(options) - set(self.options)
        if unknown:
            raise DiffkitError(f"sampler {self.name} takes no option {', '.join(sorted(unknown))}")
        for key, value in options.items():
            problem = OPTION_RULES[key](value) if key in OPTION_RULES else None
            if problem is not None:
                raise DiffkitError(problem)
        if "spacing" in options and options["spacing"] in self.refuses:
            why = self.refuses[options["spacing"]]
            raise DiffkitError(f"--spacing {options['spacing']} is refused for {self.name}: {why}")


def _check_spacing(value: Any) -> str | None:
    if value in SPACINGS:
        return None
    return f"unknown timestep spacing {value!r}: choose one of {', '.join(SPACINGS)}"


def _check_eta(value: Any) -> str | None:
    ok = isinstance(value, int | float) and 0.0 <= value <= 1.0
    return None if ok else f"--eta {value} is out of range: use a value from 0 (deterministic) to 1"


def _check_rho(value: Any) -> str | None:
    ok = isinstance(value, int | float) and value > 0
    return None if ok else f"--rho {value} is out of range: use a positive value (Karras et al. use 7)"


def _check_variance(value: Any) -> str | None:
    return None if value in ("small", "large") else f"unknown DDPM variance {value!r}: choose small (β̃) or large (β)"


# option name -> its check (a message naming the problem and the fix, or None): shared by every sampler
OPTION_RULES: dict[str, Callable[[Any], str | None]] = {
    "spacing": _check_spacing,
    "eta": _check_eta,
    "rho": _check_rho,
    "variance": _check_variance,
}

SAMPLERS: dict[str, SamplerSpec] = {}


def register(
    name: str,
    *,
    stochastic: bool,
    summary: str,
    options: tuple[str, ...] = (),
    refuses: dict[str, str] | None = None,
) -> Callable[[SamplerFn], SamplerFn]:
    def add(fn: SamplerFn) -> SamplerFn:
        SAMPLERS[name] = SamplerSpec(name, fn, stochastic, summary, options, refuses or {})
        return fn

    return add


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise DiffkitError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def default_spacing(name: str) -> str | None:
    """The spacing a sampler uses when none is given (its function's default), None if it takes none."""
    param = inspect.signature(get_sampler(name).fn).parameters.get("spacing")
    return None if param is None else str(param.default)


@dataclass
class SampleResult:
    images: Tensor
    nfe: int  # denoiser evaluations (one batched conditional+unconditional call counts once)


def sample(
    name: str,
    denoise: DenoiseFn,
    x_T: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    checked: bool = False,
    **options: Any,
) -> SampleResult:
    """Run a registered sampler and count its denoiser evaluations. `checked`: the request was already
    validated against this sampler's spec (a `SamplingPlan.check`), so it is not checked again."""
    spec = get_sampler(name)
    if not checked:
        spec.check(steps, schedule.timesteps, options)
    calls = 0

    def counted(x: Tensor, t: Tensor) -> Prediction:
        nonlocal calls
        calls += 1
        return denoise(x, t)

    with torch.inference_mode():  # no autograd bookkeeping at all: sampling never needs gradients
        images = spec.fn(counted, x_T, schedule, steps, generator=generator, callback=callback, **options)
    return SampleResult(images, calls)
