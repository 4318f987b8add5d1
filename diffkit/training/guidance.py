"""The run picks its own default guidance: a quick sweep after training (`train.auto_cfg`).

When a class-conditional digit run has trained, a few hundred samples (classes in turn, the run's own
sampler settings, the same seed for every scale) are drawn at each of `train.auto_cfg_scales` from the
weights `diffkit sample` will load, and scored with the digit CNN: FID against held-out real digits and
class accuracy. The rule: the lowest FID among the scales whose class accuracy reaches
`train.auto_cfg_min_accuracy` (98 %); if none does, the most accurate (and say so). A few hundred samples
place that bar only roughly (one binomial standard error is 1 % at 200), so the two lowest-FID scales whose
accuracy came within two standard errors of it get `train.auto_cfg_refine_samples` more (a second seed) and
are judged on all of theirs; FID stays the first pass's, where every scale had the same noise and count
(FID's small-sample bias depends on the count). When the bar falls between the chosen scale and the next
lower one (which has the lower FID), the choice is where accuracy crosses it, by linear interpolation
between the two, rounded up to 0.05 (`crossing`). The choice and every
row go to plan.json (`guidance`) and metrics.jsonl, and `diffkit.runs.load_run` makes it the run's
`sample.cfg`, so every command that samples the run without `--cfg` uses it.

The held-out digits: MNIST's test split when it is in the data directory (all 10,000; their features
are cached), else the run's own validation split (250 digits for the demo), which it never trained on.
A run on other data, an unconditional or super-resolution run, or `train.auto_cfg = false` skips the
sweep and keeps `sample.cfg`. Its cost is reserved in a time-budgeted run's plan (`diffkit.training.budget`),
and the digit CNN (trained once per machine, then cached) is loaded before the plan is made.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffkit.clock import ClockPlan
from diffkit.data import ImageSet
from diffkit.denoiser import Denoiser
from diffkit.evaluation.measuring import CLASSIFIER_DATASETS
from diffkit.evaluation.sources import Images, loadable
from diffkit.generation import generate
from diffkit.precision import PrecisionChoice
from diffkit.process import DiffusionProcess
from diffkit.progress import Progress
from diffkit.runs import GUIDE, make_denoiser, read_checkpoint, resolve_checkpoint, split_weights
from diffkit.sampling import SamplingPlan
from diffkit.settings import Settings, resolve_data_dir

# (denoiser, plan, num, progress) -> (FID, class accuracy): `SampleQuality.score`, or a stand-in in tests
Scorer = Callable[[Denoiser, SamplingPlan, int, Progress | None], tuple[float, float | None]]


SWEEP_BATCH = 50  # images per batch: a stop request is acted on between batches
REFINE_SCALES = 2  # scales near the accuracy bar that get a second look
REFINE_BAND = 2.0  # "near": within this many binomial standard errors of the bar
CROSSING_STEP = 0.05  # a scale interpolated between two measured ones is rounded up to a multiple of this


@dataclass(frozen=True)
class Yardstick:
    """How the sweep scores a scale, and in words what against."""

    score: Scorer
    reference: str  # e.g. "mnist:test (10000 images)"
    features: str


@dataclass
class GuidanceRow:
    cfg: float
    fid: float
    accuracy: float | None
    judged: int = 0  # samples the accuracy is over (the first pass's, plus a refinement's); 0: interpolated

    def to_dict(self) -> dict[str, Any]:
        return {
            "cfg": self.cfg,
            "fid": round(self.fid, 3),
            "class_accuracy": None if self.accuracy is None else round(self.accuracy, 4),
            "accuracy_samples": self.judged,
        }

    def pooled(self, accuracy: float, samples: int) -> GuidanceRow:
        """This row with its accuracy over `samples` more images that scored `accuracy`."""
        assert self.accuracy is not None
        total = self.judged + samples
        return GuidanceRow(self.cfg, self.fid, (self.accuracy * self.judged + accuracy * samples) / total, total)


@dataclass
class GuidanceChoice:
    """What the sweep measured and chose; `to_dict` is plan.json's `guidance` record."""

    chosen: float
    met: bool  # some scale reached the accuracy bar
    min_accuracy: float
    rows: list[GuidanceRow]
    samples: int
    sampler: str
    reference: str
    features: str
    seconds: float = 0.0
    # the chosen scale lies between two measured ones, where accuracy crosses the bar: its figures interpolated
    crossing: GuidanceRow | None = None

    @property
    def bracket(self) -> tuple[float, float] | None:
        """The measured scales either side of an interpolated choice."""
        if self.crossing is None:
            return None
        below = max(r.cfg for r in self.rows if r.cfg < self.chosen)
        return below, min(r.cfg for r in self.rows if r.cfg > self.chosen)

    @property
    def row(self) -> GuidanceRow:
        if self.crossing is not None:
            return self.crossing
        return next(r for r in self.rows if r.cfg == self.chosen)

    @property
    def reason(self) -> str:
        bar = f"class accuracy >= {self.min_accuracy:.0%}"
        if self.bracket is not None:
            low, high = self.bracket
            return (
                f"the lowest FID with {bar}: where accuracy crosses it between {low:g} and {high:g} "
                f"(interpolated, rounded up to {CROSSING_STEP:g})"
            )
        if self.met:
            return f"the lowest FID with {bar}"
        return f"no scale reached {bar}: the most accurate one"

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "reason": self.reason,
            "met_accuracy": self.met,
            "min_accuracy": self.min_accuracy,
            "samples": self.samples,
            "sampler": self.sampler,
            "reference": self.reference,
            "features": self.features,
            "seconds": round(self.seconds, 1),
            "rows": [r.to_dict() for r in self.rows],
        } | ({"interpolated": self.crossing.to_dict()} if self.crossing is not None else {})

    def metrics(self) -> dict[str, Any]:
        """The metrics.jsonl fields (numbers under `guidance_*` for TensorBoard, the rows beside them)."""
        row = self.row
        return {
            "guidance": self.chosen,
            "guidance_fid": row.fid,
            "guidance_class_accuracy": row.accuracy,
            "guidance_met_accuracy": self.met,
            "guidance_sweep": [r.to_dict() for r in self.rows],
        }


def choose(rows: list[GuidanceRow], min_accuracy: float) -> tuple[GuidanceRow, bool]:
    """The lowest FID among rows with accuracy >= `min_accuracy`; else the most accurate (then lowest FID)."""
    passing = [r for r in rows if r.accuracy is not None and r.accuracy >= min_accuracy]
    if passing:
        return min(passing, key=lambda r: r.fid), True
    return min(rows, key=lambda r: (-(r.accuracy or 0.0), r.fid)), False


def crossing(rows: list[GuidanceRow], best: GuidanceRow, min_accuracy: float) -> GuidanceRow | None:
    """Where accuracy crosses the bar between `best` (the lowest-FID passing row) and the next lower scale,
    when that one fails it at a lower FID: linear interpolation, the scale rounded up to CROSSING_STEP. None
    when there is no such neighbour or the crossing rounds up to `best` itself.

    Without it the choice jumps a whole step of the scale list when the bar falls between two scales (a slow
    run's sweep read 97.9 % at 1.5 and took 2: FID 18.2 where 1.5 gave 12.1 and 98.9 % on 1,000 samples).
    Accuracy rises with the scale and flattens, so the chord under-states it between the two: the crossing
    found errs towards more guidance; FID, rising ever faster past its lowest, is over-stated the same way."""
    lower = [r for r in rows if r.cfg < best.cfg]
    if not lower or best.accuracy is None:
        return None
    low = max(lower, key=lambda r: r.cfg)
    if low.accuracy is None or low.accuracy >= min_accuracy or low.fid >= best.fid:
        return None
    share = (min_accuracy - low.accuracy) / (best.accuracy - low.accuracy)
    cfg = round(math.ceil((low.cfg + share * (best.cfg - low.cfg)) / CROSSING_STEP - 1e-9) * CROSSING_STEP, 6)
    if cfg >= best.cfg:
        return None
    at = (cfg - low.cfg) / (best.cfg - low.cfg)
    return GuidanceRow(
        cfg, low.fid + at * (best.fid - low.fid), low.accuracy + at * (best.accuracy - low.accuracy), judged=0
    )


def near_bar(rows: list[GuidanceRow], min_accuracy: float, samples: int) -> list[GuidanceRow]:
    """The rows worth a second look: accuracy within REFINE_BAND standard errors of the bar (at `samples`
    images), the REFINE_SCALES of lowest FID (the ones the choice turns on)."""
    band = REFINE_BAND * math.sqrt(min_accuracy * (1.0 - min_accuracy) / samples)
    near = [r for r in rows if r.accuracy is not None and abs(r.accuracy - min_accuracy) <= band]
    return sorted(near, key=lambda r: r.fid)[:REFINE_SCALES]


def nfe_factor(cfg: float) -> int:
    """Network evaluations per sampler step: a scale of 0 or 1 needs one prediction, others two."""
    return 1 if cfg in (0.0, 1.0) else 2


@dataclass
class GuidanceSweep:
    """The sweep a run will make after training, built (and its yardstick loaded) before training starts."""

    yardstick: Yardstick
    scales: list[float]
    samples: int
    steps: int | None  # sampler steps; None: the run's sample.steps
    min_accuracy: float
    notes: list[str] = field(default_factory=list)
    autoguidance: float = 1.0  # the run samples with this autoguidance weight: > 1, one more pass per step
    refine_samples: int = 0  # more samples for the scales near the accuracy bar (train.auto_cfg_refine_samples)
    passes: dict[float, float] = field(default_factory=dict)  # network passes a sample costs, per scale, counted

    def describe(self) -> str:
        scales = ", ".join(f"{s:g}" for s in self.scales)
        autoguided = f", each with autoguidance {self.autoguidance:g}" if self.autoguidance != 1.0 else ""
        refined = (
            f" ({self.refine_samples} more at the {REFINE_SCALES} nearest that bar)" if self.refine_samples else ""
        )
        return (
            f"guidance picked after training: {scales} on {self.samples} samples each{autoguided}, the lowest FID "
            f"against {self.yardstick.reference} with class accuracy >= {self.min_accuracy:.0%}{refined} "
            "(train.auto_cfg)"
        )

    def refined(self, samples: int) -> int:
        """Refinement samples per scale when the first pass has `samples` (cut in proportion by the clock)."""
        return round(self.refine_samples * samples / self.samples)

    def plan(self, base: SamplingPlan) -> SamplingPlan:
        """The run's plan at the sweep's steps, in batches small enough for Ctrl-C to be heard between
        them (the images do not depend on the batch size)."""
        plan = base.but(batch_size=min(base.batch_size, SWEEP_BATCH))
        return plan if self.steps is None else plan.but(steps=self.steps)

    def sample_passes(self, scale: float, sample_steps: int) -> float:
        """Network passes one sample costs at `scale`: as counted (`count_passes`), else at most two a step
        (one at guidance 1) and the guide's."""
        if scale in self.passes:
            return self.passes[scale]
        return (nfe_factor(scale) + (self.autoguidance != 1.0)) * (self.steps or sample_steps)

    def network_passes(self, sample_steps: int, samples: int | None = None) -> float:
        """Images through the network in all, at `samples` per scale (default: as set), for the clock."""
        samples = self.samples if samples is None else samples
        passes = [self.sample_passes(s, sample_steps) for s in self.scales]
        more = self.refine_samples * samples / self.samples  # `refined`, unrounded: per-sample costs add up
        return sum(passes) * samples + sum(sorted(passes)[-REFINE_SCALES:]) * more  # at most: the costliest two

    def count_passes(self, denoiser: Denoiser, base: SamplingPlan) -> None:
        """Count the network passes a sample costs at each scale, sampling two with the run's sampler and
        `denoiser` (any weights: the count depends on the noise levels visited, not on the network's output).
        Guidance inside an interval skips the unconditional pass elsewhere: DPM-Solver++ spends most of its
        steps outside (0.3, 5], and the worst case of two passes a step reserved 47 s for a 27 s sweep."""
        plan, classes = self.plan(base).but(batch_size=2), torch.arange(2) % max(1, denoiser.num_classes)
        for scale in self.scales:
            images = 0

            def count(module: nn.Module, inputs: Any, output: Tensor) -> None:
                nonlocal images
                images += output.shape[0]

            hook = denoiser.model.register_forward_hook(count)
            try:
                nfe = generate(denoiser, plan.but(cfg=scale), num=2, classes=classes).nfe
            finally:
                hook.remove()
            self.passes[scale] = images / 2 + (nfe if self.autoguidance != 1.0 else 0)  # and the guide's, if any

    def run(
        self, denoiser: Denoiser, base: SamplingPlan, progress: Progress | None = None, samples: int | None = None
    ) -> GuidanceChoice:
        """Score every scale from the same noise (`samples` each, default as set), look again (a second seed)
        at the scales near the accuracy bar, then choose."""
        start, plan, rows = time.perf_counter(), self.plan(base), []
        samples = samples or self.samples
        for scale in self.scales:
            fid, accuracy = self.yardstick.score(denoiser, plan.but(cfg=scale), samples, progress)
            rows.append(GuidanceRow(scale, fid, accuracy, samples))
        more = self.refined(samples)
        for row in near_bar(rows, self.min_accuracy, samples) if more else []:
            _, accuracy = self.yardstick.score(denoiser, plan.but(cfg=row.cfg, seed=plan.seed + 1), more, progress)
            assert accuracy is not None  # near_bar keeps rows with an accuracy; the same judge scores again
            rows[rows.index(row)] = row.pooled(accuracy, more)
        best, met = choose(rows, self.min_accuracy)
        between = crossing(rows, best, self.min_accuracy) if met else None
        return GuidanceChoice(
            best.cfg if between is None else between.cfg,
            met,
            self.min_accuracy,
            rows,
            samples,
            plan.label,
            self.yardstick.reference,
            self.yardstick.features,
            time.perf_counter() - start,
            between,
        )


def guidance_sweep(settings: Settings, held_out: ImageSet) -> tuple[GuidanceSweep | None, str]:
    """The run's sweep, or None and why there is none (said when training starts)."""
    t = settings.train
    cfg = f"guidance stays sample.cfg = {settings.sample.cfg:g}"
    if not t.auto_cfg:
        return None, f"{cfg} (train.auto_cfg = false)"
    if settings.model.task != "generate" or not settings.model.num_classes:
        return None, ""  # nothing to guide: said nowhere
    stick = yardstick(settings, held_out)
    if isinstance(stick, str):
        return None, f"{cfg}: {stick}"
    autoguidance = settings.sample.autoguidance if t.autoguide_at else 1.0  # without a guide: none
    scales = list(t.auto_cfg_scales)
    return GuidanceSweep(
        stick,
        scales,
        t.auto_cfg_samples,
        t.auto_cfg_steps,
        t.auto_cfg_min_accuracy,
        autoguidance=autoguidance,
        refine_samples=t.auto_cfg_refine_samples,
    ), ""


def yardstick(settings: Settings, held_out: ImageSet) -> Yardstick | str:
    """The digit CNN against held-out real digits, or why there is no yardstick for this run's data."""
    from diffkit.evaluation.quality import sample_quality

    dataset = settings.data.dataset
    if dataset not in CLASSIFIER_DATASETS:
        return f"no yardstick for {dataset} (the sweep scores digits: mnist, mnist-5k)"
    data_dir = resolve_data_dir(settings.data_dir)
    reference: str | Images
    if loadable("mnist:test", data_dir):
        reference = "mnist:test"
    elif len(held_out) >= 2:
        reference = Images(held_out.images, held_out.labels, f"{dataset} validation split")
    else:
        return "no held-out digits to compare with (no mnist:test in the data directory, no validation split)"
    quality = sample_quality(settings, reference, data_dir=data_dir)
    label = f"{quality.reference.label} ({quality.reference.num} images)"
    return Yardstick(quality.score, label, quality.net.name)


class _Stopped(Exception):
    """A stop was requested during the sweep: it is dropped."""


def sweep_after_training(
    sweep: GuidanceSweep,
    clock_plan: ClockPlan | None,
    *,
    settings: Settings,
    ema: nn.Module,
    run_dir: Path,
    process: DiffusionProcess,
    precision: PrecisionChoice,
    stopped: Callable[[], bool],
    starting: Callable[[GuidanceSweep, int], None],
) -> GuidanceChoice | str:
    """After the last step (rank 0), the sweep on the weights `diffkit sample` will load (`ema`'s layout
    filled from sample.checkpoint). Returns the choice, or why there is none: no time for it in the
    budget, or a stop request (Ctrl-C, `stopped()` between batches); then the run keeps sample.cfg."""
    planned = clock_plan.sweep_samples if clock_plan is not None else None
    samples = planned if planned is not None else sweep.samples
    if samples == 0:
        return "guidance sweep: no time for it in the budget on this machine (diffkit.training.budget)"
    starting(sweep, samples)

    def unless_stopped(done: int = 0, total: int = 0, message: str = "", /) -> None:
        if stopped():
            raise _Stopped

    try:
        unless_stopped()
        net, guide = sampling_weights(settings, run_dir, ema)
        base = sweep_base_plan(settings, process, guide)
        denoiser = make_denoiser(settings, net, process, base, precision=precision, guide=guide)
        return sweep.run(denoiser, base, unless_stopped, samples)
    except _Stopped:
        return "guidance sweep: stop requested"


def sweep_base_plan(settings: Settings, process: DiffusionProcess, guide: nn.Module | None) -> SamplingPlan:
    """The run's [sample] plan, autoguided when it keeps a guide, checked against its process."""
    num_classes = settings.model.num_classes or 0
    base = SamplingPlan.from_settings(settings.sample, num_classes).guided_by(guide)
    return base.check(process.grid.timesteps, num_classes)


def count_sweep_passes(
    sweep: GuidanceSweep, settings: Settings, ema: nn.Module, process: DiffusionProcess, precision: PrecisionChoice
) -> None:
    """Before the clock plans: the passes a sweep sample costs at each scale, on `ema` as it is now."""
    base = sweep_base_plan(settings, process, None)
    sweep.count_passes(make_denoiser(settings, ema, process, base, precision=precision), base)


def sampling_weights(settings: Settings, run_dir: Path, ema: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """The networks `diffkit sample` loads by default: sample.checkpoint's EMA (or raw) weights and its
    autoguidance guide (None when it holds none), in the layout the run trained in (`ema`'s: the sweep
    samples in the training precision)."""
    s = settings.sample
    tensors, _ = read_checkpoint(resolve_checkpoint(run_dir, s.checkpoint))

    def filled(prefix: str) -> nn.Module | None:
        weights = split_weights(tensors, prefix)
        if not weights:
            return None
        net = copy.deepcopy(ema)
        net.load_state_dict(weights)
        return net.eval()

    net = filled("ema" if s.use_ema else "model")
    assert net is not None  # the run's own checkpoint, just written
    return net, filled(GUIDE)
