"""Run directories: layout, atomic safetensors checkpoints, resume state, and loading a trained run.

runs/<name>/
  config.toml                    resolved settings (rebuilds the exact model and schedule)
  plan.json                      what this machine chose: precision and why; with a time budget, the steps
  metrics.jsonl                  one JSON object per log line / validation
  curves.png                     training and validation loss, learning rate
  samples/epoch_0001.png ...     a grid per epoch
  checkpoints/last.safetensors   model + EMA weights (metadata: step, epoch, val loss); with train.autoguide_at,
                                 also the guide (the EMA as it was then, `guide.` keys) once it is taken
  checkpoints/last.state.pt      optimizer, LR schedule, RNG and loop state (tensors only; weights_only load)
  checkpoints/best.safetensors   lowest validation loss
  checkpoints/step_000500.safetensors  periodic (train.checkpoint_every_steps)
  tb/                            TensorBoard event files, with train.tensorboard (diffkit.runlog)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from diffkit.atomic import (
    clean_stale,
    disk_error,
    hard_link,
    link_into,
    temporary_beside,
    write_bytes,
    write_durably,
)
from diffkit.clock import read_plan
from diffkit.denoiser import Denoiser, check_cfg_range
from diffkit.devices import configure, resolve_device
from diffkit.errors import DiffkitError
from diffkit.models import UNet
from diffkit.precision import PrecisionChoice, choose_precision
from diffkit.process import DiffusionProcess, build_process
from diffkit.runlock import LOCK_NAME
from diffkit.safeload import load_torch_file
from diffkit.sampling import SamplingPlan
from diffkit.schedules import NoiseSchedule
from diffkit.settings import Settings, load_saved_settings, resolve_runs_dir, save_settings


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    def weights(self, name: str) -> Path:
        return self.checkpoints / f"{name}.safetensors"

    def state(self, name: str) -> Path:
        return self.checkpoints / f"{name}.state.pt"


def is_run(path: Path) -> bool:
    return (path / "config.toml").is_file()


def check_run_dir(root: Path, *, resume: bool, force: bool) -> RunPaths:
    """Validate the target of `train` before anything is written."""
    paths = RunPaths(root)
    if resume:
        if not is_run(root):
            raise DiffkitError(
                f"cannot resume: {root} is not a diffkit run (no config.toml); start it without --resume"
            )
        if not paths.state("last").is_file():
            raise DiffkitError(f"cannot resume: {paths.state('last')} is missing; start again with --force")
        return paths
    if root.exists() and not root.is_dir():
        raise DiffkitError(f"run directory {root} exists and is not a directory: choose another --run-dir")
    if root.exists() and any(p.name != LOCK_NAME for p in root.iterdir()):
        if not force:
            raise DiffkitError(
                f"run directory {root} already exists: continue it with --resume, replace it with "
                "--force, or choose another --run-dir"
            )
        if not is_run(root):
            raise DiffkitError(
                f"{root} is not empty and not a diffkit run: refusing to delete it; choose another --run-dir"
            )
    return paths


def create_run_dir(paths: RunPaths, settings: Settings) -> None:
    """Start a fresh run directory (replacing an old run only after `check_run_dir(force=True)`).

    The run's lock file (held by the caller, see `diffkit.runlock`) is the one thing kept.
    """
    if paths.root.exists():
        for child in paths.root.iterdir():
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    paths.checkpoints.mkdir(parents=True)
    paths.samples.mkdir(parents=True)
    save_settings(settings, paths.config)


# ------------------------------------------------------------------------------------ building


def build_model(settings: Settings) -> UNet:
    m, d = settings.model, settings.data
    return UNet(
        image_size=d.image_size,
        in_channels=d.channels,
        base_channels=m.base_channels,
        channel_mults=m.channel_mults,
        num_res_blocks=m.num_res_blocks,
        attention_resolutions=m.attention_resolutions,
        attention_heads=m.attention_heads,
        mid_attention=m.mid_attention,
        dropout=m.dropout,
        norm_groups=m.norm_groups,
        num_classes=m.num_classes or 0,
        cond_channels=m.cond_channels,
        guidance_input=m.guidance_input,
        patch_size=m.patch_size,
    )


def build_schedule(settings: Settings) -> NoiseSchedule:
    """The grid the run's samplers step on (its process's; for vp its β schedule)."""
    return build_process(settings.diffusion).grid


# ---------------------------------------------------------------------------------- checkpoints

GUIDE = "guide"  # the checkpoint prefix of autoguidance's guide network (beside "model" and "ema")


def nonfinite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.dtype.is_floating_point and not bool(torch.isfinite(v).all())]


def save_checkpoint(
    paths: RunPaths,
    name: str,
    model: nn.Module,
    ema: nn.Module,
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
    guide: nn.Module | None = None,
) -> Path:
    """Weights of model and EMA (and the autoguidance guide, when given) in one safetensors file, written
    atomically; with `state`, the resumable pair (weights + `<name>.state.pt`), replaced as one unit
    (see `_replace_pair`)."""
    nets = {"model": model, "ema": ema} | ({GUIDE: guide} if guide is not None else {})
    tensors = {
        f"{prefix}.{k}": v.detach().contiguous().cpu()
        for prefix, net in nets.items()
        for k, v in net.state_dict().items()
    }
    bad = nonfinite(tensors)
    if bad:  # never replace a good checkpoint with broken weights
        raise DiffkitError(
            f"refusing to save checkpoint {name!r}: {len(bad)} weight tensors are not finite (first {bad[0]}); "
            "the previous checkpoint is kept"
        )
    target = paths.weights(name)
    if state is None:
        write_bytes(target, safetensors_bytes(tensors, metadata={"diffkit": json.dumps(meta)}))
        return target
    pair = uuid.uuid4().hex  # both files carry it: a resume takes only two files written together
    weights = safetensors_bytes(tensors, metadata={"diffkit": json.dumps({**meta, "pair": pair})})
    buffer = io.BytesIO()  # serialised in memory: a full disk is then an OSError at the write, not torch's own
    torch.save({**state, "pair": pair}, buffer)
    _replace_pair(paths, name, weights, buffer.getvalue())
    return target


PREVIOUS = ".previous"  # `last.previous.safetensors` + `last.previous.state.pt`: kept while `last` is replaced


def _replace_pair(paths: RunPaths, name: str, weights: bytes, state: bytes) -> None:
    """Replace the pair `name` so that a kill at any instant leaves one complete pair to resume from.

    The new files are written in full (and fsynced) first; the current pair is then hard-linked aside as
    `<name>.previous`, the new state and weights renamed into place (a kill between the two renames leaves
    a mismatched `name` and the intact previous pair: `recover_pair` puts it back), and only then is the
    previous pair removed. The links copy nothing: the cost is writing the two files once, and a few renames.
    """
    current = (paths.weights(name), paths.state(name))
    aside = (paths.weights(name + PREVIOUS), paths.state(name + PREVIOUS))
    new = (temporary_beside(current[0]), temporary_beside(current[1]))
    try:
        for tmp, data in zip(new, (weights, state), strict=True):
            write_durably(tmp, data)
        if all(cur.is_file() for cur in current):
            for cur, old in zip(current, aside, strict=True):
                old.unlink(missing_ok=True)
                hard_link(cur, old)
        os.replace(new[1], current[1])
        os.replace(new[0], current[0])
    except OSError as exc:
        kept = f"the previous {name} checkpoint is kept; free space, then resume with --resume"
        raise (disk_error(current[1], exc, kept) or exc) from None
    finally:
        for tmp in new:
            tmp.unlink(missing_ok=True)
    for old in aside:
        old.unlink(missing_ok=True)


def _pair_step(weights: Path, state: Path) -> int | None:
    """The step of the resumable pair (`weights`, `state`) when both are there and were written together."""
    if not (weights.is_file() and state.is_file()):
        return None
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("diffkit", "{}"))
        saved = load_state(state)
    except (DiffkitError, SafetensorError, OSError, ValueError):
        return None
    return meta.get("step") if isinstance(meta, dict) and same_pair(meta, saved) else None


def same_pair(meta: dict[str, Any], state: dict[str, Any]) -> bool:
    """Whether weights metadata and a resume state were saved together (older runs: from the same step)."""
    if "pair" in meta or "pair" in state:
        return meta.get("pair") == state.get("pair")
    return meta.get("step") == state.get("step")


def recover_pair(paths: RunPaths, name: str = "last") -> str | None:
    """After a crash, before a resume (by the run's owner, under its lock): remove stale temporaries and make
    `name` a complete pair again. Returns what was done when it was not already complete, else None."""
    removed = clean_stale(paths.checkpoints) + clean_stale(paths.root)
    aside = (paths.weights(name + PREVIOUS), paths.state(name + PREVIOUS))
    note = None
    if _pair_step(paths.weights(name), paths.state(name)) is None and (step := _pair_step(*aside)) is not None:
        link_into(aside[1], paths.state(name))  # links, not moves: a kill here leaves the previous pair whole
        link_into(aside[0], paths.weights(name))
        note = f"the newest {name} checkpoint was cut short by a crash: resuming from the one before (step {step})"
    for path in aside:
        path.unlink(missing_ok=True)
    if removed and note is None:
        note = f"removed {len(removed)} temporary files left by an interrupted write"
    return note


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All tensors and the metadata of a checkpoint; a missing or corrupt file is a DiffkitError."""
    if not path.is_file():
        raise DiffkitError(f"checkpoint {path} does not exist: train the run first or pick --checkpoint best|last|PATH")
    try:
        with safe_open(str(path), framework="pt") as f:  # one opening: the tensors and the metadata
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (a safetensors handle)
            meta = json.loads((f.metadata() or {}).get("diffkit", "{}"))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise DiffkitError(
            f"checkpoint {path} is corrupt or not a diffkit checkpoint ({exc}): "
            "use another checkpoint (--checkpoint last) or retrain"
        ) from None
    if not isinstance(meta, dict):
        raise DiffkitError(f"checkpoint {path} has malformed diffkit metadata: use another checkpoint or retrain")
    bad = nonfinite(tensors)
    if bad:
        raise DiffkitError(
            f"checkpoint {path} holds non-finite weights ({len(bad)} tensors with NaN or inf, first {bad[0]}): "
            "the run diverged; use an earlier checkpoint or retrain with a lower train.lr"
        )
    return tensors, meta


def split_weights(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(f"{prefix}."): v for k, v in tensors.items() if k.startswith(f"{prefix}.")}


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """`weights` into `model`, refusing integer tensors where the model has floats (load_state_dict would
    silently cast them and the model would sample garbage); a shape mismatch raises RuntimeError."""
    own = model.state_dict()
    cast = [k for k, v in weights.items() if k in own and own[k].is_floating_point() and not v.is_floating_point()]
    if cast:
        raise DiffkitError(
            f"checkpoint {path} holds integer tensors where the model has floating-point weights ({len(cast)}, "
            f"first {cast[0]}): it was altered; use an untouched checkpoint or retrain"
        )
    model.load_state_dict(weights)


STATE_KEYS = ("step", "best_val", "optimizer", "lr_schedule", "torch_rng", "gen_rng")


def load_state(path: Path) -> dict[str, Any]:
    """A resume state, loaded with `weights_only=True` (no code runs); anything else is one clear error."""
    fix = "it is not a diffkit resume state (or is damaged); start again with --force"
    state = load_torch_file(path, "resume state", fix)
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise DiffkitError(f"resume state {path} lacks {', '.join(missing)}: {fix}")
    return state


# -------------------------------------------------------------------------------------- loading


def latest_run(runs_dir: Path | None = None) -> Path:
    """The run whose last checkpoint was written most recently (under `resolve_runs_dir()` by default)."""
    runs_dir = runs_dir or resolve_runs_dir()
    candidates = [p.parent.parent for p in runs_dir.glob("*/checkpoints/last.safetensors")]
    if not candidates:
        raise DiffkitError(f"no trained run in {runs_dir}/: train one (diffkit train --preset demo) or pass --run DIR")
    return max(candidates, key=lambda p: (p / "checkpoints" / "last.safetensors").stat().st_mtime)


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    if which in ("best", "last"):
        path = RunPaths(run_dir).weights(which)
        if which == "best" and not path.is_file():
            path = RunPaths(run_dir).weights("last")  # runs without validation have no "best"
        return path
    return Path(which)


@dataclass
class LoadedRun:
    root: Path
    settings: Settings
    model: UNet
    process: DiffusionProcess
    checkpoint: Path
    meta: dict[str, Any]
    device: torch.device
    _precisions: dict[str, PrecisionChoice] = field(default_factory=dict, repr=False)
    chosen_cfg: float | None = None  # sample.cfg came from the run's guidance sweep (plan.json)
    guide: UNet | None = None  # autoguidance's guide network, when the checkpoint holds one

    @property
    def num_classes(self) -> int:
        return self.settings.model.num_classes or 0

    @property
    def schedule(self) -> NoiseSchedule:
        """The grid samplers step on."""
        return self.process.grid

    @property
    def precision(self) -> PrecisionChoice:
        """sample.precision for this network here ("auto": timed once, then cached)."""
        return self.precision_for(self.settings.sample.precision)

    def precision_for(self, name: str) -> PrecisionChoice:
        """The precision `name` (auto, fp32, bf16) resolves to for this network here; the model is prepared for it."""
        if name not in self._precisions:
            choice = choose_precision(name, self.model, mode="sample", device=self.device)  # type: ignore[arg-type]
            for net in (self.model, self.guide):
                if net is not None:
                    choice.prepare(net)
            self._precisions[name] = choice
        return self._precisions[name]

    def plan(self, **flags: Any) -> SamplingPlan:
        """This run's [sample] settings < `flags` (see `SamplingPlan.from_settings`), checked against the model."""
        plan = SamplingPlan.from_settings(self.settings.sample, self.num_classes, **flags)
        if flags.get("autoguidance") is None:  # the run's setting applies when the run kept a guide
            plan = plan.guided_by(self.guide)
        plan = plan.check(self.schedule.timesteps, self.num_classes)
        plan.check_guide(self.guide)
        trained = cfg_range(self.settings)
        if trained is not None:  # a guidance-distilled student: before any image is drawn
            check_cfg_range(plan.cfg, trained)
        return plan

    def denoiser(self, plan: SamplingPlan | None = None) -> Denoiser:
        """The network as a Denoiser, in the plan's precision, clipping and CFG-rescale (the run's by default)."""
        plan = plan or self.plan()
        return make_denoiser(
            self.settings,
            self.model,
            self.process,
            plan,
            precision=self.precision_for(plan.precision),
            guide=self.guide,
        )


def apply_chosen_cfg(settings: Settings, plan_path: Path) -> float | None:
    """Set sample.cfg to the guidance the run's own sweep chose after training (plan.json's `guidance`,
    see `diffkit.training.guidance`), when it made one: the run's default. Returns that guidance."""
    record = read_plan(plan_path).get("guidance")
    chosen = record.get("chosen") if isinstance(record, dict) else None
    if isinstance(chosen, bool) or not isinstance(chosen, int | float) or not settings.model.num_classes:
        return None
    try:
        settings.sample.cfg = float(chosen)
    except ValidationError:
        raise DiffkitError(
            f"{plan_path}: the chosen guidance {chosen!r} is out of range; fix or delete its `guidance` entry"
        ) from None
    return settings.sample.cfg


def cfg_range(settings: Settings) -> tuple[float, float] | None:
    """The guidance scales a guidance-input student was distilled over; None for a network without that input."""
    if not settings.model.guidance_input:
        return None
    d = settings.distill
    return (d.guidance_min, d.guidance_max) if d is not None else (1.0, 1.0)


def make_denoiser(
    settings: Settings,
    model: nn.Module,
    process: DiffusionProcess,
    plan: SamplingPlan | None = None,
    *,
    precision: PrecisionChoice | None = None,
    guide: nn.Module | None = None,
) -> Denoiser:
    """The run's model as a Denoiser: its process and classes; clipping, CFG-rescale, guidance interval and
    autoguidance weight from `plan` (the run's [sample] settings when none is given); `guide`: the run's
    autoguidance guide network, when it has one."""
    num_classes = settings.model.num_classes or 0
    plan = plan or SamplingPlan.from_settings(settings.sample, num_classes)
    return Denoiser(
        model,
        process,
        num_classes,
        clipping=plan.clipping,
        rescale_phi=plan.rescale,
        cfg_interval=plan.cfg_interval,
        precision=precision,
        cfg_range=cfg_range(settings),
        guide=guide,
        guide_weight=plan.autoguidance,
    )


def load_run(run_dir: Path, checkpoint: str = "best", *, use_ema: bool = True, device: str = "auto") -> LoadedRun:
    """Rebuild the exact model and schedule from a run's config.toml and load a checkpoint's weights."""
    if not run_dir.is_dir():
        raise DiffkitError(f"run directory {run_dir} does not exist: pass --run with a directory made by diffkit train")
    settings = load_saved_settings(RunPaths(run_dir).config)
    chosen = apply_chosen_cfg(settings, RunPaths(run_dir).plan)
    path = resolve_checkpoint(run_dir, checkpoint)
    tensors, meta = read_checkpoint(path)
    model = network_from(settings, tensors, "ema" if use_ema else "model", path, run_dir)
    kept_guide = any(k.startswith(f"{GUIDE}.") for k in tensors)  # autoguidance's network, when the run kept one
    guide = network_from(settings, tensors, GUIDE, path, run_dir) if kept_guide else None
    dev = resolve_device(device)
    configure(dev)
    for net in (model, guide):
        if net is not None:
            net.to(dev).eval()
    process = build_process(settings.diffusion)
    return LoadedRun(run_dir, settings, model, process, path, meta, dev, chosen_cfg=chosen, guide=guide)


def network_from(settings: Settings, tensors: dict[str, torch.Tensor], prefix: str, path: Path, run_dir: Path) -> UNet:
    """The run's network with the checkpoint's `prefix.` weights (model, ema, guide)."""
    weights = split_weights(tensors, prefix)
    net = build_model(settings)
    try:
        load_weights(net, weights, path)
    except RuntimeError:
        raise DiffkitError(
            f"checkpoint {path} does not match the model in {run_dir}/config.toml: use a checkpoint from this run"
        ) from None
    return net
