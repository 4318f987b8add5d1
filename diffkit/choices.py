"""Every option literal, declared once: settings validate against these and the code that acts on them
imports the same names (this module imports nothing, so settings stay free of torch)."""

from __future__ import annotations

from typing import Literal, get_args

ProcessName = Literal["vp", "edm", "flow"]  # diffusion.process: see diffkit.process
Objective = Literal["eps", "x0", "v"]  # what a vp network predicts
ScheduleKind = Literal["linear", "cosine", "sigmoid"]  # vp's β schedule
Spacing = Literal["leading", "trailing", "linspace", "logsnr"]  # which grid points a sampler visits
Clipping = Literal["none", "clip", "dynamic"]  # of x̂0 at every sampling step
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # train.precision, sample.precision
TimeDistribution = Literal["logit-normal", "uniform"]  # how flow training draws t
Optimizer = Literal["adamw", "muon"]  # train.optimizer: see diffkit.optim

PROCESS_NAMES: tuple[str, ...] = get_args(ProcessName)
OBJECTIVES: tuple[str, ...] = get_args(Objective)
SCHEDULE_KINDS: tuple[str, ...] = get_args(ScheduleKind)
SPACINGS: tuple[str, ...] = get_args(Spacing)
CLIPPINGS: tuple[str, ...] = get_args(Clipping)
PRECISIONS: tuple[str, ...] = get_args(Precision)
