"""The network sized by the speed measured here: `train.model_candidates`, timed at the start of a budgeted run.

Which network buys the most quality in a fixed number of minutes depends on the CPU: a wider or deeper one
learns more per step but takes fewer steps. So a run with a time budget and candidates builds each one,
times a few training steps of it (forward, backward, the run's optimiser, at the run's batch, in the precision
the run's probe chooses for the smallest), and trains the largest (most FLOPs per step) that still gets
`train.model_min_steps` steps in the budget; when none does, the fastest. The seconds spent count against
the budget. config.toml records the chosen [model] (not the candidates), so every later command, a resume
included, builds exactly that network and never chooses again; plan.json records every candidate's figures
and the reason.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from diffkit.data import resolve_data
from diffkit.models import UNet, count_parameters
from diffkit.optim import build_optimizer
from diffkit.precision import PrecisionChoice, choose_precision, probe_step, threads_text
from diffkit.roofline import peak_gflops, training_flops
from diffkit.runs import build_model
from diffkit.settings import Settings, candidate_model

# the share of the budget left after timing that goes to training steps: the clock keeps 3 % in hand and
# reserves the final validation, grid and guidance sweep (at most 15 %); a real step (data, loss, EMA) also
# costs a little more than a timed one
TRAIN_SHARE = 0.8
PEAK_REPEATS = 5  # the best of five: the probe's figure is only a roofline if nothing disturbed it
_ROUNDS = 2  # timed steps per candidate after one warm-up, interleaved across candidates


@dataclass(frozen=True)
class Timed:
    """One candidate as measured here."""

    name: str
    overrides: dict[str, Any]  # its keys over [model]
    parameters: int
    step_s: float  # seconds per training step, fastest of the timed ones
    gflop_per_step: float  # forward + backward, by torch's FLOP counter
    precision: str  # the format it was timed (and would train) in

    @property
    def gflops(self) -> float:
        return self.gflop_per_step / self.step_s


def steps_in(usable_s: float, step_s: float) -> int:
    return max(0, math.floor(usable_s / step_s))


def choose(timed: list[Timed], usable_s: float, min_steps: int) -> tuple[int, str]:
    """The index of the network to train, and why: the largest (GFLOP per step) with `min_steps` steps in
    `usable_s` seconds; when none gets that many, the fastest."""
    fits = [i for i, t in enumerate(timed) if steps_in(usable_s, t.step_s) >= min_steps]
    if fits:
        best = max(fits, key=lambda i: timed[i].gflop_per_step)
        larger = [t.name for t in timed if t.gflop_per_step > timed[best].gflop_per_step]
        why = f"the largest with at least {min_steps:,} steps (train.model_min_steps) in the budget"
        return best, why + (f" ({', '.join(larger)} would get fewer)" if larger else "")
    fastest = min(range(len(timed)), key=lambda i: timed[i].step_s)
    return fastest, f"none gets {min_steps:,} steps (train.model_min_steps) in the budget: the fastest"


def _time_candidates(
    settings: Settings, models: list[UNet], choices: list[PrecisionChoice], device: torch.device
) -> list[float]:
    """Seconds per training step of each network in its precision: one warm-up, then the fastest of _ROUNDS,
    interleaved so that a busy moment of the machine does not fall on one candidate alone."""
    batch = settings.train.batch_size
    train = settings.train
    steps = [probe_step(m, "train", batch, device, lambda net: build_optimizer(net, train)) for m in models]
    best = [math.inf] * len(models)
    for round_ in range(_ROUNDS + 1):
        for i, (step, choice) in enumerate(zip(steps, choices, strict=True)):
            start = time.perf_counter()
            step(choice.name == "bf16", choice.channels_last)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_:  # the warm-up builds kernels and fills caches
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def measure(settings: Settings, device: torch.device) -> list[Timed]:
    """Every candidate built and timed here, at the run's batch (private copies; the run's RNG untouched)."""
    t = settings.train
    if settings.model.num_classes is None:  # the dataset's classes, as the run will build the network
        settings = settings.model_copy(deep=True)
        resolve_data(settings)  # settles model.num_classes (a second load of the data: a second at most)
    with torch.random.fork_rng(devices=[]):
        specs = [candidate_model(settings.model, c, i) for i, c in enumerate(t.model_candidates)]
        models = [build_model(settings.model_copy(update={"model": m})) for m in specs]
        flops = [training_flops(copy.deepcopy(m), 1) * t.batch_size / 1e9 for m in models]  # FLOPs scale with batch
        # one precision probe, on the smallest: whether bf16 pays depends on the CPU far more than on the width,
        # and on an AVX2 CPU each network's probe would cost ~20 of its steps (emulated bf16 is 10x slower)
        smallest = models[min(range(len(models)), key=flops.__getitem__)]
        choice = choose_precision(t.precision, smallest, mode="train", device=device, batch=min(t.batch_size, 32))
        choices = [choice] * len(models)
        seconds = _time_candidates(settings, models, choices, device)
    return [
        Timed(
            str(c["name"]),
            {k: v for k, v in c.items() if k != "name"},
            count_parameters(m),
            s,
            f,
            choice.name,
        )
        for c, m, s, f, choice in zip(t.model_candidates, models, seconds, flops, choices, strict=True)
    ]


def size_network(
    settings: Settings, device: torch.device, *, clock_start: float, timed: list[Timed] | None = None
) -> tuple[Settings, dict[str, Any]]:
    """`settings` with [model] the chosen candidate's, and the record of the choice (plan.json's "sizing").

    `timed` replaces the measurement (tests inject timings through it).
    """
    t = settings.train
    assert t.max_minutes is not None and t.model_candidates
    if t.threads:  # timed with the threads the run will train with
        torch.set_num_threads(t.threads)
    start = time.perf_counter()
    timed = measure(settings, device) if timed is None else timed
    measured_s = time.perf_counter() - start
    usable_s = (60.0 * t.max_minutes - (time.perf_counter() - clock_start)) * TRAIN_SHARE
    index, reason = choose(timed, usable_s, t.model_min_steps)
    chosen = timed[index]
    peak = peak_gflops(PEAK_REPEATS, formats=(chosen.precision,)) if device.type == "cpu" else {}
    record = {
        "chosen": chosen.name,
        "reason": reason,
        "min_steps": t.model_min_steps,
        "usable_s": round(usable_s, 1),
        "measured_s": round(measured_s, 2),
        "threads": torch.get_num_threads(),
        "batch": t.batch_size,
        "peak_gflops": peak,
        "candidates": [
            {**asdict(c), "gflops": round(c.gflops, 1), "steps_in_budget": steps_in(usable_s, c.step_s)} for c in timed
        ],
    }
    model = candidate_model(settings.model, t.model_candidates[index], index)
    # config.toml keeps the network chosen, not the candidates (plan.json has them): a later command, a resume
    # included, builds exactly that network and never chooses again
    train = t.model_copy(update={"model_candidates": []})
    return settings.model_copy(update={"model": model, "train": train}), record


def sizing_lines(record: dict[str, Any]) -> list[str]:
    """What the start of the run says about the choice (from plan.json's "sizing" record)."""
    cands = record["candidates"]
    chosen = next(c for c in cands if c["name"] == record["chosen"])
    each = ", ".join(f"{c['name']} {c['step_s']:.3f} s/step ({c['steps_in_budget']:,} steps)" for c in cands)
    lines = [
        f"network {chosen['name']} of {len(cands)} timed here at {threads_text(record['threads'])}, "
        f"batch {record['batch']} ({each}): {record['reason']}"
    ]
    fmt = chosen["precision"]
    speed = f"{chosen['name']} ({chosen['parameters']:,} parameters) runs at {chosen['gflops']:.0f} GFLOP/s in {fmt}"
    lines.append(speed + share_of_peak(chosen["gflops"], record["peak_gflops"].get(f"conv3x3_{fmt}"), fmt))
    return lines


def share_of_peak(gflops: float, peak: float | None, fmt: str) -> str:
    """The text ", N % of the P GFLOP/s peak", or why no share is given: a probe slower than the network itself read
    low (a busy host: one AMX run printed 142 % of a 76 GFLOP/s probe), and is no roofline."""
    if not peak:
        return ""
    if gflops > peak:
        return f"; the {fmt} 3x3-convolution probe read only {peak:.0f} GFLOP/s (a busy CPU?), so no share of peak"
    return f", {100 * gflops / peak:.0f} % of the {peak:.0f} GFLOP/s {fmt} 3x3-convolution peak here"
