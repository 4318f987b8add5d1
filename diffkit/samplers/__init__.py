"""Samplers: short functions over a denoise function (x_t, t) -> Prediction and a schedule.

Every sampler has the signature

    sampler(denoise, x_T, schedule, steps, *, generator=None, callback=None, **options) -> x_0

and goes through the registry, so `sample()` can count model evaluations (NFE) exactly and the CLI
can list them. `callback(step)` is called after every step with the new state; it may return a
replacement state (a per-step constraint such as inpainting's known pixels) or None.
States handed to callbacks are always variance-preserving x_t, whatever the sampler uses inside.

| module | holds |
| --- | --- |
| `registry` | `Step`, `SamplerSpec` and its one check of a request, the registry, `sample` (counts NFE) |
| `loop` | what samplers share: noise, the callback, ᾱ, the DDIM update, the discrete-timestep loop |
| `ancestral` | DDPM, DDIM, PLMS (PNDM) |
| `dpm_solver` | DPM-Solver++ 2M, 3M, 2M SDE (exponential multistep in log-SNR time) |
| `karras` | Euler and Heun on the probability-flow ODE over Karras sigmas |
| `consistency` | multistep consistency sampling (the sampler of `diffkit distill --method consistency` students) |
| `accuracy` | the exact-Gaussian accuracy harness of the tests and `make bench` (imported on its own) |

Importing this package registers every sampler, in the order above.
"""

from __future__ import annotations

import sys
import types

from diffkit.samplers import ancestral, dpm_solver, karras  # noqa: F401  (registers the samplers)
from diffkit.samplers import consistency as _students  # noqa: F401  (last: the sampler of consistency students)
from diffkit.samplers.dpm_solver import exp_weights
from diffkit.samplers.loop import ddim_update
from diffkit.samplers.registry import (
    OPTION_RULES,
    SAMPLERS,
    Callback,
    SampleResult,
    SamplerFn,
    SamplerSpec,
    Step,
    default_spacing,
    get_sampler,
    register,
    sample,
)

# the names these had when the samplers were one module (kept for existing callers)
_ddim_step = ddim_update
_exp_weights = exp_weights

__all__ = [
    "OPTION_RULES",
    "SAMPLERS",
    "Callback",
    "SampleResult",
    "SamplerFn",
    "SamplerSpec",
    "Step",
    "ddim_update",
    "default_spacing",
    "exp_weights",
    "get_sampler",
    "register",
    "sample",
]


class _Listing(types.ModuleType):
    """`diffkit.samplers()`: this package is also that name of the Python face (`diffkit.api`), and Python's
    import makes the package the attribute, so calling the package lists the samplers."""

    def __call__(self) -> dict[str, str]:
        return {name: spec.summary for name, spec in SAMPLERS.items()}


sys.modules[__name__].__class__ = _Listing
