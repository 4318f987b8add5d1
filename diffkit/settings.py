"""Typed settings: TOML presets < environment (DIFFKIT_...) < CLI flags, validated by pydantic.

A preset is a TOML file in `presets/` (or any path). It may start with `extends = "other"`, in which
case `other` is read first and this file's keys override it. The fully resolved settings are saved
as `config.toml` in every run directory, and later commands rebuild the model and schedule from it.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import tomli
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from diffkit.atomic import write_text
from diffkit.choices import (
    Clipping,
    Objective,
    Optimizer,
    Precision,
    ProcessName,
    ScheduleKind,
    Spacing,
    TimeDistribution,
)
from diffkit.errors import DiffkitError

MAX_SEED = 2**63 - 1  # the largest seed torch.Generator.manual_seed takes as a signed 64-bit number


class _Group(BaseModel):
    # no setting may be NaN or infinite (a flag checked against these fields neither: `check_flag`)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSettings(_Group):
    """The UNet."""

    base_channels: int = Field(64, ge=8, le=1024)
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2, 2], min_length=1, max_length=6)
    num_res_blocks: int = Field(2, ge=1, le=8)
    attention_resolutions: list[int] = Field(default_factory=list)  # feature-map sizes, e.g. [7]
    attention_heads: int = Field(4, ge=1, le=64)
    mid_attention: bool = True  # self-attention in the bottleneck
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    norm_groups: int = Field(8, ge=1, le=256)
    num_classes: int | None = Field(None, ge=0, le=100_000)  # None: from the dataset; 0: unconditional
    cond_channels: int = Field(0, ge=0, le=16)  # extra input channels (super-resolution conditioning)
    task: Literal["generate", "super-res"] = "generate"  # super-res: SR3, conditioned on a bicubic upsample
    sr_scales: list[int] = Field(default_factory=lambda: [2, 4], min_length=1, max_length=4)  # trained factors
    # the guidance scale as a network input (a guidance-distilled student, `diffkit distill`): a guided step is
    # one pass, for scales within distill.guidance_min .. guidance_max
    guidance_input: bool = False
    # p > 1: the network sees p x p patches folded into channels (H/p x W/p): ~p² fewer FLOPs (data.image_size
    # must be a multiple of p); the demo's slow-CPU candidate
    patch_size: int = Field(1, ge=1, le=8)

    @model_validator(mode="after")
    def _task_matches_conditioning(self) -> ModelSettings:
        if self.task == "super-res" and self.cond_channels == 0:
            raise ValueError("model.task = super-res needs model.cond_channels = the image channels (e.g. 1)")
        if self.task == "generate" and self.cond_channels:
            raise ValueError("model.cond_channels is only for model.task = super-res: set it to 0")
        if any(s < 2 for s in self.sr_scales) or len(set(self.sr_scales)) != len(self.sr_scales):
            raise ValueError("model.sr_scales must be distinct factors of 2 or more, e.g. [2, 4]")
        return self

    @model_validator(mode="after")
    def _groups_divide_channels(self) -> ModelSettings:
        for mult in self.channel_mults:
            if mult < 1:
                raise ValueError("model.channel_mults must be positive integers")
            if (self.base_channels * mult) % self.norm_groups:
                raise ValueError(
                    f"model.norm_groups={self.norm_groups} must divide every level's channel count "
                    f"(base_channels {self.base_channels} x mult {mult})"
                )
        return self


# what a train.model_candidates entry may change: the network's shape, not its task or conditioning
CANDIDATE_KEYS = (
    "base_channels",
    "channel_mults",
    "num_res_blocks",
    "attention_resolutions",
    "attention_heads",
    "mid_attention",
    "dropout",
    "norm_groups",
    "patch_size",
)


def candidate_model(model: ModelSettings, candidate: dict[str, Any], index: int) -> ModelSettings:
    """[model] with a train.model_candidates entry's keys over it, checked as [model] is (one line if not)."""
    name = candidate.get("name")
    where = f"train.model_candidates[{index}]"
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f'{where} needs a name, e.g. name = "small"')
    unknown = sorted(set(candidate) - {"name", *CANDIDATE_KEYS})
    if unknown:
        raise ValueError(f"{where} ({name}) cannot set {', '.join(unknown)}: only {', '.join(CANDIDATE_KEYS)}")
    try:
        return ModelSettings.model_validate(model.model_dump() | {k: v for k, v in candidate.items() if k != "name"})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        what = f"{key} = {_cut(repr(err.get('input')))}: " if key else ""
        raise ValueError(f"{where} ({name}): {what}{err['msg'].removeprefix('Value error, ')}") from None


class EDMOptions(_Group):
    """diffusion.edm: the options of process `edm` (Karras et al. 2022; their defaults)."""

    sigma_data: float = Field(0.5, gt=0.0, le=100.0)  # the data's standard deviation, for the preconditioning
    p_mean: float = Field(-1.2, ge=-20.0, le=20.0)  # training draws ln σ ~ N(p_mean, p_std²)
    p_std: float = Field(1.2, gt=0.0, le=20.0)
    sigma_min: float = Field(0.002, gt=0.0, le=10_000.0)  # the sampling grid's range
    sigma_max: float = Field(80.0, gt=0.0, le=100_000.0)

    @model_validator(mode="after")
    def _ordered(self) -> EDMOptions:
        if self.sigma_max <= self.sigma_min:
            raise ValueError("diffusion.edm.sigma_max must be larger than diffusion.edm.sigma_min")
        return self


class FlowOptions(_Group):
    """diffusion.flow: the options of process `flow` (rectified flow; Esser et al. 2024's logit-normal t)."""

    t_distribution: TimeDistribution = "logit-normal"
    logit_mean: float = Field(0.0, ge=-10.0, le=10.0)  # t = sigmoid(N(logit_mean, logit_std²))
    logit_std: float = Field(1.0, gt=0.0, le=10.0)


@dataclass(frozen=True)
class VPOptions:
    """Process `vp`'s options with their values filled in (see DiffusionSettings.vp_options)."""

    schedule: ScheduleKind = "cosine"
    timesteps: int = 1000
    objective: Objective = "eps"
    zero_terminal_snr: bool = False  # Lin et al. 2023: rescale so the last step is pure noise
    beta_start: float = 1e-4  # linear schedule
    beta_end: float = 0.02
    cosine_s: float = 0.008  # cosine schedule offset
    sigmoid_start: float = -3.0  # sigmoid schedule
    sigmoid_end: float = 3.0
    sigmoid_tau: float = 1.0


VP_DEFAULTS: dict[str, Any] = asdict(VPOptions())
# which process each option belongs to (`edm` and `flow` are tables of their own)
OPTION_OWNER: dict[str, str] = {**dict.fromkeys([*VP_DEFAULTS, "min_snr_gamma"], "vp"), "edm": "edm", "flow": "flow"}


# True while load_settings layers presets: there a vp preset's options are dropped when a higher layer
# (environment, --set) chooses another process; options given in those layers themselves are still checked
_PRESET_LAYERING: ContextVar[bool] = ContextVar("_PRESET_LAYERING", default=False)


def foreign_option(key: str, process: str) -> str:
    """The error for diffusion.<key> given with a process it does not belong to."""
    owner = OPTION_OWNER[key]
    tables: dict[str, type[_Group]] = {"edm": EDMOptions, "flow": FlowOptions}
    if process in tables:
        takes = [f"diffusion.{process}.{k}" for k in tables[process].model_fields]
    else:
        takes = [f"diffusion.{k}" for k, o in OPTION_OWNER.items() if o == process]
    return (
        f"diffusion.{key} belongs to process {owner}, not {process}: remove it, or set "
        f"diffusion.process = {owner} (process {process} takes {', '.join(takes)})"
    )


class DiffusionSettings(_Group):
    """The diffusion process (`process`) and its options. vp's options are the flat keys below (as before
    processes existed, so old runs load unchanged); edm's and flow's are the tables diffusion.edm / .flow.
    An option of another process than the chosen one is an error; unset options take their defaults."""

    process: ProcessName = "vp"
    schedule: ScheduleKind | None = None
    timesteps: int | None = Field(None, ge=2, le=100_000)
    objective: Objective | None = None
    min_snr_gamma: float | None = Field(None, gt=0.0)  # Hang et al. 2023 loss weighting; unset = plain MSE
    zero_terminal_snr: bool | None = None
    beta_start: float | None = Field(None, gt=0.0, lt=1.0)
    beta_end: float | None = Field(None, gt=0.0, lt=1.0)
    cosine_s: float | None = Field(None, ge=0.0, le=1.0)
    sigmoid_start: float | None = Field(None, ge=-20.0, le=20.0)
    sigmoid_end: float | None = Field(None, ge=-20.0, le=20.0)
    sigmoid_tau: float | None = Field(None, gt=0.0, le=10.0)
    edm: EDMOptions | None = None
    flow: FlowOptions | None = None
    # a consistency student (`diffkit distill --method consistency`): x̂0 is the consistency function, with
    # f(x, σ_min) = x at the grid's least noisy point (diffkit.process.consistency); unset in trained runs
    consistency: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        """The chosen process's options take their defaults (so saved configs show them); others stay unset."""
        if not isinstance(data, dict):
            return data
        data, process = dict(data), data.get("process", "vp")
        if _PRESET_LAYERING.get():  # a preset's options for another process simply do not apply
            data = {k: v for k, v in data.items() if OPTION_OWNER.get(k, process) == process}
        if process == "vp":
            data |= {k: v for k, v in VP_DEFAULTS.items() if data.get(k) is None}
        elif process in ("edm", "flow") and data.get(process) is None:
            data[process] = {}
        return data

    @model_validator(mode="after")
    def _options_of_this_process(self) -> DiffusionSettings:
        foreign = [k for k, owner in OPTION_OWNER.items() if owner != self.process and getattr(self, k) is not None]
        if foreign:
            raise ValueError(foreign_option(foreign[0], self.process))
        if self.process != "vp":
            return self
        vp = self.vp_options()
        if vp.beta_end <= vp.beta_start:
            raise ValueError("diffusion.beta_end must be larger than diffusion.beta_start")
        if vp.sigmoid_end <= vp.sigmoid_start:
            raise ValueError("diffusion.sigmoid_end must be larger than diffusion.sigmoid_start")
        if vp.zero_terminal_snr and vp.objective == "eps":
            # at SNR 0 the noise prediction says nothing about x0 (x0 = (x_t - ε)/0): Lin et al. use v
            raise ValueError("diffusion.zero_terminal_snr needs objective v (or x0), not eps")
        return self

    def vp_options(self) -> VPOptions:
        """vp's options, defaults filled in (only meaningful when process = vp)."""
        given = {k: getattr(self, k) for k in VP_DEFAULTS if getattr(self, k) is not None}
        return VPOptions(**given)


class DataSettings(_Group):
    """Which images to train on (see `diffkit.data` for the datasets)."""

    dataset: str = "mnist-5k"
    split: str = "train"
    image_size: int = Field(28, ge=4, le=1024)
    channels: Literal[1, 3] = 1
    path: str | None = None  # the directory for the `folder` dataset
    val_fraction: float = Field(0.05, ge=0.0, lt=0.5)
    limit: int | None = Field(None, ge=2)  # use only the first N images (quick experiments)
    download: bool = True  # torchvision fetches a missing mnist / fashion-mnist / cifar10 (DIFFKIT_OFFLINE=1 forbids)
    hflip: bool = False  # random horizontal flips (natural images, not digits)


class TrainSettings(_Group):
    """The optimisation loop."""

    batch_size: int = Field(128, ge=1, le=65_536)
    lr: float = Field(2e-4, gt=0.0, le=1.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)  # final lr of the decay, as a fraction of lr
    warmup_steps: int = Field(500, ge=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"  # after the warm-up
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    # muon: Muon for the hidden convolutions (lr muon_lr), AdamW (lr, betas) for the rest (diffkit.optim)
    optimizer: Optimizer = "adamw"
    muon_lr: float = Field(0.02, gt=0.0, le=1.0)
    muon_momentum: float = Field(0.95, ge=0.0, lt=1.0)
    epochs: int | None = Field(None, ge=1, le=1_000_000)
    max_steps: int | None = Field(None, ge=1, le=10**12)  # beyond any run; keeps step counters in 64 bits
    grad_clip: float | None = Field(1.0, gt=0.0)
    ema_decay: float = Field(0.9999, ge=0.0, lt=1.0)
    ema_warmup: bool = True  # decay = min(ema_decay, (1 + step) / (10 + step))
    # classic: ema_decay (and ema_warmup); power: EDM2's power-function EMA, whose length is the fraction
    # ema_sigma_rel of the steps taken so far (diffkit.optim), whatever the run's length
    ema: Literal["classic", "power"] = "classic"
    ema_sigma_rel: float = Field(0.10, gt=0.0, le=0.28)  # EDM2 trained with 0.05 and 0.10
    p_uncond: float = Field(0.1, ge=0.0, le=1.0)  # label dropout that teaches the unconditional model
    # bf16 / fp16 autocast or fp32; "auto" times bf16 and fp32 on this CPU for this network, and on
    # CUDA takes bf16, else fp16 with a gradient scaler, else fp32 (diffkit.precision)
    precision: Precision = "auto"
    max_minutes: float | None = Field(None, gt=0.0, le=100_000.0)  # plan the run's length by the clock
    seed: int = Field(0, ge=0, le=MAX_SEED)  # torch's generators take a 64-bit seed
    log_every: int = Field(25, ge=1)
    sample_every_epochs: int = Field(1, ge=0)  # 0: only at the end
    grid_steps: int = Field(25, ge=1, le=100_000)  # sampler steps for those grids (cheaper than sample.steps)
    checkpoint_every_steps: int | None = Field(None, ge=1)  # step_N snapshots besides last / best; also updates last
    checkpoint_every_minutes: float = Field(5.0, ge=0.0, le=10_000.0)  # refresh `last` (resumable) this often; 0: off
    threads: int | None = Field(None, ge=1, le=512)  # torch intra-op threads; unset = torch's default
    fid_every_epochs: int = Field(0, ge=0)  # small-sample FID of EMA samples into metrics.jsonl; 0: off
    fid_samples: int = Field(500, ge=2, le=100_000)  # images per such FID (it is biased upwards at small counts)
    tensorboard: bool = False  # mirror metrics.jsonl, the grids and the hparams into <run>/tb/ (diffkit.runlog)
    # after training, a class-conditional digit run picks its default guidance (sample.cfg) by a quick sweep:
    # the lowest FID among these scales with class accuracy >= auto_cfg_min_accuracy (diffkit.training.guidance)
    auto_cfg: bool = True
    auto_cfg_scales: list[float] = Field(default_factory=lambda: [1.0, 1.5, 2.0, 3.0], min_length=1, max_length=20)
    auto_cfg_samples: int = Field(200, ge=20, le=100_000)  # per scale, classes in turn
    # then this many more (a second seed) at the two lowest-FID scales whose accuracy was within two standard
    # errors of the bar: at 200 samples one standard error is 1 %, and 97.5 % there read 98.2 % at 1,000
    auto_cfg_refine_samples: int = Field(300, ge=0, le=100_000)
    # sampler steps for the sweep; unset: sample.steps (fewer steps draw more recognisable digits: at 20 instead
    # of 50 the accuracy read 0.6 points higher, so a sweep at other steps misjudges the bar)
    auto_cfg_steps: int | None = Field(None, ge=1, le=100_000)
    auto_cfg_min_accuracy: float = Field(0.98, ge=0.0, le=1.0)
    # networks to choose from by the speed measured here: each a `name` and some of [model]'s shape keys
    # (CANDIDATE_KEYS) over [model]; a run with a time budget times a few steps of each and trains the largest
    # that gets model_min_steps steps in the budget (diffkit.training.sizing). Empty: [model] as given
    model_candidates: list[dict[str, Any]] = Field(default_factory=list, max_length=8)
    model_min_steps: int = Field(1000, ge=1, le=10**9)
    # autoguidance (Karras et al. 2024): keep the EMA weights as they were at this fraction of the run's steps,
    # a weaker "guide" of the same network that sample.autoguidance steers away from; 0: keep none
    autoguide_at: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _migrate_bf16(cls, data: Any) -> Any:
        """Configs saved before train.precision said `bf16 = true|false`: read them as the same choice."""
        if isinstance(data, dict) and "bf16" in data:
            if "precision" in data:
                raise ValueError("train.bf16 was replaced by train.precision: give only precision")
            data = dict(data)
            old = data.pop("bf16")
            if not isinstance(old, bool):
                raise ValueError("train.bf16 was replaced by train.precision = auto | fp32 | bf16")
            data["precision"] = "bf16" if old else "fp32"
        return data

    @model_validator(mode="after")
    def _scales_valid(self) -> TrainSettings:
        if any(not 0.0 <= s <= 100.0 for s in self.auto_cfg_scales):
            raise ValueError("train.auto_cfg_scales must lie between 0 and 100, e.g. [1.0, 1.5, 2.0, 3.0]")
        if len(set(self.auto_cfg_scales)) != len(self.auto_cfg_scales):
            raise ValueError("train.auto_cfg_scales must be distinct, e.g. [1.0, 1.5, 2.0, 3.0]")
        return self

    @model_validator(mode="after")
    def _length_given(self) -> TrainSettings:
        if self.epochs is None and self.max_steps is None and self.max_minutes is None:
            raise ValueError("set train.epochs, train.max_steps or train.max_minutes")
        return self


def cfg_interval_ordered(interval: Any) -> bool:
    """Whether a guidance interval is two noise levels σ with 0 <= low < high (high may be inf)."""
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        return False
    return 0.0 <= low < high


class SampleSettings(_Group):
    """Defaults for `diffkit sample` and for the grids drawn during training."""

    sampler: str = "ddim"
    steps: int = Field(50, ge=1, le=100_000)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    spacing: Spacing | None = None  # None: each sampler's own default
    cfg: float = Field(2.0, ge=0.0, le=100.0)
    rescale: float = Field(0.0, ge=0.0, le=1.0)  # CFG-rescale φ (Lin et al. 2023)
    # guide only where the noise level σ = sqrt((1 - ᾱ)/ᾱ) is in (low, high] (Kynkäänniemi et al. 2024);
    # None: at every step. The same σ for every process (flow: σ = t / (1 - t))
    cfg_interval: tuple[float, float] | None = None
    # autoguidance weight w (Karras et al. 2024): D + (w - 1)(D - D_guide), at every step, with D_guide the
    # run's weaker snapshot (train.autoguide_at), on top of classifier-free guidance; 1: off
    autoguidance: float = Field(1.0, ge=1.0, le=100.0)
    num: int = Field(10, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0, le=MAX_SEED)  # torch's generators take a 64-bit seed
    checkpoint: str = "best"
    use_ema: bool = True
    batch_size: int = Field(250, ge=1)
    # clip x̂0 to [-1, 1] at every step (as diffusers' and lucidrains' samplers do): without it, early
    # high-noise ε-predictions leave speckle in the background; "dynamic" is Imagen's thresholding
    clipping: Clipping = "clip"
    precision: Precision = "auto"  # as train.precision, timed for inference

    @model_validator(mode="after")
    def _interval_ordered(self) -> SampleSettings:
        if self.cfg_interval is not None and not cfg_interval_ordered(self.cfg_interval):
            raise ValueError(
                "sample.cfg_interval must be [low, high] noise levels with 0 <= low < high, e.g. [0.3, 5.0]"
            )
        return self


class DistillSettings(_Group):
    """A distilled student's origin and its method's options (set by `diffkit distill`; absent in trained runs)."""

    teacher: str  # the teacher's run directory
    teacher_checkpoint: str = "best"
    method: str = "progressive"
    steps: int = Field(4, ge=1, le=1024)  # the student's sampling steps
    teacher_steps: int = Field(64, ge=2, le=4096)  # progressive: the teacher's DDIM steps its first round halves
    # consistency: N levels on the grid, one teacher solve between neighbours (8, not Song et al.'s 18: a CPU
    # budget of ~100 steps carries the boundary condition up fewer links; README, "Few-step students")
    points: int = Field(8, ge=2, le=1000)
    substeps: int = Field(1, ge=1, le=64)  # consistency: the teacher's DDIM steps in that solve
    guidance_min: float = Field(1.0, ge=0.0, le=100.0)  # the trained range of the guidance input
    guidance_max: float = Field(3.0, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _range(self) -> DistillSettings:
        if self.guidance_max < self.guidance_min:
            raise ValueError("distill.guidance_max must be at least distill.guidance_min")
        return self


class Settings(BaseSettings):
    """Everything a run needs. Layered: preset TOML < DIFFKIT_* environment < CLI flags."""

    model_config = SettingsConfigDict(
        env_prefix="DIFFKIT_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    _preset_files: ClassVar[list[Path] | None] = None  # set by load_settings on a layered subclass

    extends: str | None = None
    description: str = ""
    name: str | None = None  # run name; default: the preset name
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data_dir: str = "data"  # torchvision layout: <data_dir>/MNIST/raw/..., env DIFFKIT_DATA_DIR
    runs_dir: str = "runs"
    model: ModelSettings = Field(default_factory=ModelSettings)
    diffusion: DiffusionSettings = Field(default_factory=DiffusionSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    train: TrainSettings = Field(default_factory=lambda: TrainSettings(epochs=10))
    sample: SampleSettings = Field(default_factory=SampleSettings)
    distill: DistillSettings | None = None  # a student made by `diffkit distill`

    @model_validator(mode="after")
    def _super_res_fits_data(self) -> Settings:
        m, d = self.model, self.data
        if m.task == "super-res":
            if m.cond_channels != d.channels:
                raise ValueError(
                    f"model.cond_channels must equal data.channels ({d.channels}) for super-res: "
                    "the condition is the upsampled low-resolution image"
                )
            bad = [s for s in m.sr_scales if d.image_size % s]
            if bad:
                raise ValueError(f"model.sr_scales {bad} do not divide data.image_size {d.image_size}")
        return self

    @model_validator(mode="after")
    def _candidates_valid(self) -> Settings:
        """Each candidate builds over [model], names are distinct, and every network's patches tile the images."""
        names = [c.get("name") for c in self.train.model_candidates]
        networks = [("model", self.model)] + [
            (f"train.model_candidates[{i}]", candidate_model(self.model, c, i))
            for i, c in enumerate(self.train.model_candidates)
        ]
        if len(set(map(str, names))) != len(names):
            raise ValueError("train.model_candidates must have distinct names")
        for where, network in networks:
            if self.data.image_size % network.patch_size:
                raise ValueError(
                    f"{where}.patch_size {network.patch_size} does not divide data.image_size "
                    f"{self.data.image_size}: use a divisor of it (1 turns patches off)"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Plain construction reads only what it is given, so a saved run is never re-layered by the
        # environment; `load_settings` sets `_preset_files` to add the environment and the presets.
        files = cls._preset_files
        if files is None:
            return (init_settings,)
        # deep_merge: a preset overriding one key of a table keeps the rest of its parent's table
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=files, deep_merge=True)


# ---------------------------------------------------------------------------------------- presets


def preset_dirs() -> list[Path]:
    """Where presets are looked up: $DIFFKIT_PRESETS_DIR (os.pathsep-separated), then the shipped ones."""
    dirs = [Path(p) for p in os.environ.get("DIFFKIT_PRESETS_DIR", "").split(os.pathsep) if p]
    here = Path(__file__).resolve().parent
    dirs += [here / "presets", here.parent / "presets"]  # installed wheel, then source checkout
    return [d for d in dirs if d.is_dir()]


def list_presets() -> dict[str, tuple[Path, str]]:
    """Preset name -> (file, one-line description); earlier directories win."""
    found: dict[str, tuple[Path, str]] = {}
    for directory in preset_dirs():
        for path in sorted(directory.glob("*.toml")):
            if path.stem not in found:
                found[path.stem] = (path, str(_read_toml(path).get("description", "")))
    return found


def find_preset(name: str) -> Path:
    """A preset by name, or a path to a TOML file."""
    path = Path(name)
    if path.suffix == ".toml":
        if not path.is_file():
            raise DiffkitError(f"preset file {name} does not exist: give an existing .toml file or a preset name")
        return path
    presets = list_presets()
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none found"
        raise DiffkitError(f"unknown preset {name!r}: choose one of {known} (or give a path to a .toml file)")
    return presets[name][0]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomli.load(f)
    except tomli.TOMLDecodeError as exc:
        raise DiffkitError(f"{path} is not valid TOML ({exc}): fix the file") from None
    except RecursionError:  # nested arrays / tables thousands deep: the parser gives up
        raise DiffkitError(f"{path} is nested too deeply to be a diffkit preset: fix the file") from None
    except UnicodeDecodeError:
        raise DiffkitError(f"{path} is not UTF-8 text, so not a TOML file: fix or replace the file") from None
    except IsADirectoryError:
        raise DiffkitError(f"{path} is a directory, not a TOML file: check the path") from None
    except OSError as exc:
        raise DiffkitError(f"cannot read {path} ({exc.strerror}): check the path") from None


def preset_chain(name: str) -> list[Path]:
    """The files a preset is built from, base first, following `extends`."""
    chain: list[Path] = []
    path = find_preset(name)
    while True:
        if path in chain:
            raise DiffkitError(f"preset {path} extends itself in a cycle: fix its `extends` key")
        chain.insert(0, path)
        parent = _read_toml(path).get("extends")
        if not parent:
            return chain
        path = find_preset(str(parent)) if not str(parent).endswith(".toml") else path.parent / str(parent)


# ---------------------------------------------------------------------------------------- layering


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-4", "model.channel_mults=[1,2]"]` -> nested dict; values are TOML, else strings."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DiffkitError(f"--set {item!r} is not key=value: write it like --set train.lr=1e-4")
        try:
            value = tomli.loads(f"v = {raw.strip()}")["v"]
        except tomli.TOMLDecodeError:
            value = raw.strip()  # a bare word such as `cosine`
        set_nested(nested, key, value)
    return nested


def set_nested(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise DiffkitError(f"setting {dotted} conflicts with another override: give it once")
    target[parts[-1]] = value


def load_settings(preset: str, overrides: dict[str, Any] | None = None) -> Settings:
    """Preset (with its `extends` chain) < DIFFKIT_* environment < `overrides` (the CLI's flags)."""
    files = preset_chain(preset)

    class _Layered(Settings):
        _preset_files = files

    token = _PRESET_LAYERING.set(True)
    try:
        layered = _Layered(**(overrides or {}))
    except ValidationError as exc:
        raise DiffkitError(describe_validation_error(exc)) from None
    finally:
        _PRESET_LAYERING.reset(token)
    _check_explicit_diffusion_options(overrides or {}, layered.diffusion.process)
    settings = Settings.model_validate(layered.model_dump())
    if settings.name is None:
        settings.name = Path(files[-1]).stem
    return settings


def _check_explicit_diffusion_options(overrides: dict[str, Any], process: str) -> None:
    """Options of another process given by --set or DIFFKIT_DIFFUSION__* are errors (a preset's are dropped)."""
    given = set(overrides.get("diffusion", {}) if isinstance(overrides.get("diffusion"), dict) else {})
    prefix = "DIFFKIT_DIFFUSION__"
    given |= {k[len(prefix) :].split("__")[0].lower() for k in os.environ if k.upper().startswith(prefix)}
    for key in sorted(given):
        if OPTION_OWNER.get(key, process) != process:
            raise DiffkitError(
                foreign_option(key, process) + " (fix the preset, the DIFFKIT_* variable or the --set flag)"
            )


def _cut(text: str, limit: int = 80) -> str:
    """A value as an error line shows it: long ones (a 2,000,000-item list) cut, with their length."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def warn_unknown_environment() -> list[str]:
    """DIFFKIT_* variables diffkit does not read (a misspelling is otherwise silently ignored)."""
    own = {"RUNS_DIR", "DATA_DIR", "OFFLINE", "PRESETS_DIR", "CACHE_DIR"}  # read directly, not settings

    def known(name: str) -> bool:
        group, _, key = name.lower().partition("__")  # DIFFKIT_TRAIN__LR: train.lr
        field = Settings.model_fields.get(group)
        if field is None:
            return False
        inner = getattr(field.annotation, "model_fields", None)
        return not key if inner is None else (not key or key in inner)

    names = [n.removeprefix("DIFFKIT_") for n in os.environ if n.startswith("DIFFKIT_")]
    return sorted(f"DIFFKIT_{n}" for n in names if n not in own and not known(n))


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad key, what is allowed, and where to fix it."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        if not key:  # a check across groups: its message names the keys
            problems.append(err["msg"].removeprefix("Value error, "))
        elif err["type"] == "extra_forbidden":
            problems.append(f"unknown setting {key}")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {_cut(repr(value))}"
            problems.append(f"invalid setting {key}{shown}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems) + " (fix the preset, the DIFFKIT_* variable or the --set flag)"


# ---------------------------------------------------------------------------------------- directories


def resolve_runs_dir(configured: str | Path | None = None) -> Path:
    """Where runs live: DIFFKIT_RUNS_DIR when set, else the settings' runs_dir, else runs/.

    Every command asks here, so `sample` without --run looks where `train` wrote.
    """
    return Path(os.environ.get("DIFFKIT_RUNS_DIR") or configured or "runs")


def resolve_data_dir(configured: str | Path | None = None) -> Path:
    """Where datasets live: DIFFKIT_DATA_DIR when set (it wins over the data_dir a run was trained
    with, which may be another machine's), else `configured`, else data/."""
    return Path(os.environ.get("DIFFKIT_DATA_DIR") or configured or "data")


def offline() -> bool:
    """DIFFKIT_OFFLINE=1 (or true / yes / on): nothing is downloaded, whatever data.download says."""
    return os.environ.get("DIFFKIT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_cache_dir() -> Path:
    """diffkit's cache (digit feature nets, dataset statistics, precision probes): DIFFKIT_CACHE_DIR, else
    ~/.cache/diffkit."""
    return Path(os.environ.get("DIFFKIT_CACHE_DIR") or Path.home() / ".cache" / "diffkit")


# ---------------------------------------------------------------------------------------- run config


def settings_to_dict(settings: Settings) -> dict[str, Any]:
    return settings.model_dump(mode="json", exclude={"extends"}, exclude_none=True)


def save_settings(settings: Settings, path: Path) -> None:
    """Write the resolved settings as TOML, atomically."""
    write_text(path, tomli_w.dumps(settings_to_dict(settings)))


def load_saved_settings(path: Path) -> Settings:
    """Settings exactly as saved in a run (no environment layering: the run is what it was)."""
    if not path.is_file():
        raise DiffkitError(f"{path} is missing: this is not a diffkit run directory (train one with `diffkit train`)")
    try:
        return Settings.model_validate(_read_toml(path))
    except ValidationError as exc:
        raise DiffkitError(f"{path}: {describe_validation_error(exc)}") from None
