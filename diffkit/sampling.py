"""How images are sampled: one `SamplingPlan`, built once from a run's [sample] settings plus flags.

Every command that generates (sample, export, process pictures, compare-samplers, fid run:DIR,
inpaint, interpolate, super-res) and the grids and FID drawn during training take a plan; none of
them merges settings and flags itself. The layering is the one training uses: [sample] settings,
then the flags given (None = not given). The sampler's own spec (`SamplerSpec.check`) validates the
steps and options; `SamplingPlan.check` adds what depends on the model (a cfg other than 0 or 1 needs classes).

A sampler option is in `options` only when it was asked for (a flag, or a [sample] setting the
sampler takes): otherwise the sampler's own default applies, so a spec that changes its default
(say, its spacing) is followed everywhere without anyone restating it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, get_args

from diffkit.choices import Precision
from diffkit.denoiser import Clipping, Denoiser
from diffkit.errors import DiffkitError
from diffkit.samplers import SAMPLERS, get_sampler
from diffkit.settings import SampleSettings, cfg_interval_ordered

PrecisionName = Precision
Options = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class SamplingPlan:
    """Everything that decides how images are drawn from a denoiser, except which images (num, classes)."""

    sampler: str = "ddim"
    steps: int = 50
    options: Options = ()  # sampler options asked for (eta, spacing, rho, variance); absent: the sampler's default
    cfg: float = 1.0  # the guidance scale (--cfg): 0 unconditional, 1 conditional, > 1 stronger
    rescale: float = 0.0  # CFG-rescale φ (Lin et al. 2023)
    cfg_interval: tuple[float, float] | None = None  # guide only for noise levels σ in (low, high]
    autoguidance: float = 1.0  # weight of the run's guide network (Karras et al. 2024); 1: off
    clipping: Clipping = "clip"  # of x̂0 at every step
    precision: PrecisionName = "auto"  # of the network, chosen when a run's denoiser is made
    seed: int = 0
    batch_size: int = 250
    # (timesteps, num_classes) this plan was validated for by `check`; a changed plan starts unchecked
    checked_for: tuple[int, int] | None = field(default=None, compare=False, repr=False)

    # --- building ----------------------------------------------------------------------------------
    @classmethod
    def from_settings(
        cls,
        sample: SampleSettings,
        num_classes: int,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        eta: float | None = None,
        spacing: str | None = None,
        rescale: float | None = None,
        cfg_interval: tuple[float, float] | None = None,
        autoguidance: float | None = None,
        clip: str | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
    ) -> SamplingPlan:
        """[sample] settings < flags. A flag for an option the sampler does not take is an error;
        a setting it does not take is simply not used. Not yet checked against a model: see `check`."""
        name = sampler or sample.sampler
        get_sampler(name)
        given = {"eta": eta, "spacing": spacing}
        return cls(
            sampler=name,
            steps=sample.steps if steps is None else steps,
            options=options_for(name, given, setting_options(sample), strict=True),
            cfg=(sample.cfg if num_classes else 1.0) if cfg is None else cfg,
            rescale=sample.rescale if rescale is None else rescale,
            cfg_interval=sample.cfg_interval if cfg_interval is None else cfg_interval,
            autoguidance=sample.autoguidance if autoguidance is None else autoguidance,
            clipping=sample.clipping if clip is None else clip,  # type: ignore[arg-type]
            precision=sample.precision,
            seed=sample.seed if seed is None else seed,
            batch_size=batch_size or sample.batch_size,
        )

    def checked(self, timesteps: int, num_classes: int) -> SamplingPlan:
        """This plan validated for a model: checked now unless `check` already did it for the same model."""
        return self if self.checked_for == (timesteps, num_classes) else self.check(timesteps, num_classes)

    def check(self, timesteps: int, num_classes: int) -> SamplingPlan:
        """Validated once, before any image is drawn: the sampler's spec, then what the model allows.
        Returns the plan marked as checked for this model, so `generate` does not check it again."""
        get_sampler(self.sampler).check(self.steps, timesteps, dict(self.options))
        check_cfg(self.cfg, num_classes)
        if self.clipping not in get_args(Clipping):
            raise DiffkitError(f"unknown --clip {self.clipping!r}: choose one of {', '.join(get_args(Clipping))}")
        if not 0.0 <= self.rescale <= 1.0:
            raise DiffkitError(f"--rescale {self.rescale} is out of range: use 0 (off) to 1 (full; 0.7 is typical)")
        if self.cfg_interval is not None:
            check_cfg_interval(self.cfg_interval)
        if not 1.0 <= self.autoguidance <= 100.0:
            raise DiffkitError(
                f"--autoguidance {self.autoguidance:g} is out of range: use 1 (off) or more (1.5 to 3 is typical)"
            )
        if self.batch_size < 1:
            raise DiffkitError(f"--batch-size {self.batch_size} is out of range: use 1 or more")
        return replace(self, checked_for=(timesteps, num_classes))

    def with_sampler(self, sampler: str, steps: int, options: Options = ()) -> SamplingPlan:
        """The same plan with another sampler (its own options only), e.g. a row of a comparison."""
        return replace(self, sampler=sampler, steps=steps, options=options, checked_for=None)

    def but(self, **changes: Any) -> SamplingPlan:
        return replace(self, **{"checked_for": None, **changes})

    def check_guide(self, guide: object | None) -> None:
        """Autoguidance needs the run's guide network: asked for without one, a one-line error."""
        if self.autoguidance != 1.0 and guide is None:
            raise DiffkitError(
                f"--autoguidance {self.autoguidance:g} needs the run's guide network, and this run kept none: "
                "drop --autoguidance, or train the run with train.autoguide_at (e.g. 0.25)"
            )

    def guided_by(self, guide: object | None) -> SamplingPlan:
        """The plan for a network whose autoguidance guide is `guide`: without one (a run that kept none, or
        training before it takes it) the [sample] setting falls back to 1 (off); `configure` refuses a flag."""
        return self if guide is not None or self.autoguidance == 1.0 else self.but(autoguidance=1.0)

    # --- using -------------------------------------------------------------------------------------
    @property
    def sampler_options(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def label(self) -> str:
        """ "ddim 20 (eta=0.5)": the sampler, steps and any options asked for."""
        extra = ", ".join(f"{k}={v}" for k, v in self.options)
        return f"{self.sampler} {self.steps}" + (f" ({extra})" if extra else "")

    def configure(self, denoiser: Denoiser) -> Denoiser:
        """The denoiser with this plan's clipping, CFG-rescale, guidance interval and autoguidance weight (the
        plan decides them, not its maker). Autoguidance needs the denoiser's guide network."""
        self.check_guide(denoiser.guide)
        mine = (self.clipping, self.rescale, self.cfg_interval, self.autoguidance)
        if (denoiser.clipping, denoiser.rescale_phi, denoiser.cfg_interval, denoiser.guide_weight) == mine:
            return denoiser
        return replace(
            denoiser,
            clipping=self.clipping,
            rescale_phi=self.rescale,
            cfg_interval=self.cfg_interval,
            guide_weight=self.autoguidance,
        )


def setting_options(sample: SampleSettings) -> dict[str, Any]:
    """Sampler options the [sample] settings ask for (unset, or eta 0 = the sampler's default: not asked)."""
    return {"eta": sample.eta or None, "spacing": sample.spacing}


def options_for(
    sampler: str, given: Mapping[str, Any], defaults: Mapping[str, Any] = {}, *, strict: bool = False
) -> Options:
    """The options `sampler` takes among `given` (flags, winning) and `defaults` (settings); None = not set.

    `strict`: a flag `sampler` cannot take is an error (`rows_for`, for several samplers at once,
    only needs each flag to apply to one of them).
    """
    if strict:
        refuse_unused_flags([sampler], given)
    takes = get_sampler(sampler).options
    merged = {k: v for k, v in defaults.items() if v is not None} | {k: v for k, v in given.items() if v is not None}
    return tuple((k, v) for k, v in merged.items() if k in takes)


def refuse_unused_flags(samplers: Sequence[str], flags: Mapping[str, Any]) -> None:
    """A flag (an option given by name) that none of `samplers` takes is a one-line error."""
    for key, value in flags.items():
        if value is None or any(key in get_sampler(s).options for s in samplers):
            continue
        able = ", ".join(name for name, spec in SAMPLERS.items() if key in spec.options)
        chosen = ", ".join(dict.fromkeys(samplers))
        raise DiffkitError(f"--{key} applies to {able} only, not {chosen}: drop --{key}")


def rows_for(
    base: SamplingPlan, pairs: Sequence[tuple[str, int]], flags: Mapping[str, Any], defaults: Mapping[str, Any] = {}
) -> list[SamplingPlan]:
    """One plan per (sampler, steps) pair from `base`: each flag goes to the samplers that take it."""
    if not pairs:
        raise DiffkitError("nothing to compare: give at least one sampler and one step count")
    for name, _ in pairs:
        get_sampler(name)
    refuse_unused_flags([name for name, _ in pairs], flags)
    return [base.with_sampler(name, steps, options_for(name, flags, defaults)) for name, steps in pairs]


def check_cfg(cfg: float, num_classes: int) -> None:
    """A guidance scale other than 0 (unconditional) or 1 needs a class-conditional model."""
    if cfg < 0:
        raise DiffkitError(f"--cfg {cfg:g} is out of range: use 0 (unconditional), 1 (conditional) or more")
    if num_classes == 0 and cfg not in (0.0, 1.0):
        raise DiffkitError(f"--cfg {cfg:g} needs a class-conditional model, and this one is unconditional: drop --cfg")


def parse_cfg_interval(text: str) -> tuple[float, float]:
    """`--cfg-interval` as given: "LOW,HIGH" noise levels ("0.3,5", "1,inf"), or "all" for every step."""
    if text.strip().lower() == "all":
        return (0.0, math.inf)
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        interval = (float(parts[0]), float(parts[1]))
    except ValueError:
        raise DiffkitError(
            f"--cfg-interval {text!r} is not LOW,HIGH: give two noise levels such as 0.3,5 (or all: every step)"
        ) from None
    check_cfg_interval(interval)
    return interval


def check_cfg_interval(interval: tuple[float, float]) -> None:
    """A guidance interval is two noise levels σ, 0 <= low < high (high may be inf: up to pure noise)."""
    if not cfg_interval_ordered(interval):
        raise DiffkitError(
            f"cfg interval {interval!r} is not a range of noise levels: give LOW,HIGH with 0 <= LOW < HIGH "
            "(e.g. 0.3,5; HIGH may be inf)"
        )
