"""Diffusion processes: one formulation per module, each the only place that knows what its noise level means.

Every process is a Gaussian path x = α·x0 + σ·ε with its own noise level ("level": vp's integer timestep,
EDM's σ, flow's t). It decides how training draws levels, what the network sees (input scaling and the
noise-level input c_noise) and predicts, and how a prediction becomes (x̂0, ε̂).

Samplers step in one shared domain: the variance-preserving state x_vp = x / sqrt(α² + σ²) on a grid of
ᾱ = α² / (α² + σ²) values (`DiffusionProcess.grid`, a `NoiseSchedule`; the log-SNR is log(ᾱ / (1 - ᾱ))).
The ε of x_vp is the ε of x, so the process hands samplers (x̂0, ε̂) in that domain and every sampler runs on
every process. Adding a formulation is one module here and one entry in `PROCESSES`.

| process | path | training levels | network predicts |
| --- | --- | --- | --- |
| `vp` | sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, t = 0 .. T-1 | uniform t | ε, x0 or v (min-SNR-γ weight) |
| `edm` | x0 + σ ε | log-normal σ | F of D = c_skip x + c_out F (λ(σ) weight) |
| `flow` | (1 - t) x0 + t ε, t in [0, 1] | logit-normal or uniform t | the velocity ε - x0 |
"""

from __future__ import annotations

from diffkit.process.base import DiffusionProcess, Example
from diffkit.process.edm import EDMProcess
from diffkit.process.flow import FlowProcess
from diffkit.process.registry import PROCESSES, build_process
from diffkit.process.vp import VPProcess

__all__ = ["PROCESSES", "DiffusionProcess", "EDMProcess", "Example", "FlowProcess", "VPProcess", "build_process"]
