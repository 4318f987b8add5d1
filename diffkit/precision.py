"""Which number format and memory layout to run a network in, measured on the machine at hand.

bf16 autocast is 1.7-2.6x faster than fp32 on CPUs with AVX-512 bf16 instructions, and 8x (training)
to 17x (inference) *slower* on AVX2-only CPUs, where it is emulated; channels-last tensors speed up
fp32 convolutions on some CPUs and slow down bf16 ones on others. So `precision = "auto"` times a few
steps of the run's own network in each combination (a probe of a few seconds), keeps the fastest,
and caches the answer under the cache dir, keyed by the CPU, torch and the network's shape. On CUDA
the rule is fixed (`cuda_choice`): bf16 where the GPU supports it, else fp16 with a gradient scaler
on GPUs with fp16 tensor cores, else fp32. Explicit "fp32" / "bf16" / "fp16" are taken as given
(with the default layout). The layout never changes the maths, only the speed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from diffkit.atomic import write_json
from diffkit.choices import Precision
from diffkit.models.contract import network
from diffkit.settings import resolve_cache_dir

Format = Literal["fp32", "bf16", "fp16"]
Mode = Literal["train", "sample"]

# bf16 must win by this much to be chosen: a tie is not worth its rounding error
BF16_MARGIN = 1.1
CHANNELS_LAST_MARGIN = 1.05
_PROBE_ROUNDS = 2  # timed steps per variant, after one warm-up step each
_CLEARLY_SLOWER = 3.0  # a variant whose warm-up step is this much slower than the best is not timed further
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class PrecisionChoice:
    """The format chosen, why, and (when measured) the seconds per probe step of each format."""

    name: Format
    reason: str
    fp32_s: float | None = None  # seconds per probe step in the best layout of each format
    bf16_s: float | None = None
    channels_last: bool = False

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d input in the chosen memory layout."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def prepare(self, model: nn.Module) -> nn.Module:
        """The network's weights in the chosen layout (in place; values unchanged)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling (bf16 has fp32's exponent range and needs none)."""
        return self.name == "fp16"

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def summary(self) -> str:
        return f"{self.name}{', channels-last' if self.channels_last else ''}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrecisionChoice:
        return cls(
            data["name"], data["reason"], data.get("fp32_s"), data.get("bf16_s"), bool(data.get("channels_last"))
        )


FP32 = PrecisionChoice("fp32", "plain fp32")


Variant = tuple[bool, bool]  # (bf16, channels-last)


def decide(times: dict[Variant, float], where: str = "on this CPU") -> PrecisionChoice:
    """The fastest measured variant: bf16 only when it wins by BF16_MARGIN, channels-last by its margin.

    `times` maps (bf16, channels_last) to seconds per step; variants left out were not measured.
    """

    def best(bf16: bool) -> tuple[float, bool]:
        plain, cl = times.get((bf16, False), math.inf), times.get((bf16, True), math.inf)
        return (cl, True) if cl * CHANNELS_LAST_MARGIN < plain else (plain, False)

    (fp32_s, fp32_cl), (bf16_s, bf16_cl) = best(False), best(True)
    if bf16_s * BF16_MARGIN < fp32_s:
        name, reason, cl = "bf16", f"bf16 measured {fp32_s / bf16_s:.1f}x faster than fp32 {where}", bf16_cl
    elif bf16_s > fp32_s:
        name, reason, cl = "fp32", f"bf16 measured {bf16_s / fp32_s:.1f}x slower {where}", fp32_cl
    else:
        name, reason, cl = "fp32", f"bf16 measured only {fp32_s / bf16_s:.2f}x faster {where}", fp32_cl
    use_bf16 = name == "bf16"
    if cl:
        reason += f"; channels-last {times[(use_bf16, False)] / times[(use_bf16, True)]:.2f}x faster"
    finite = {k: v for k, v in (("fp32_s", fp32_s), ("bf16_s", bf16_s)) if math.isfinite(v)}
    return PrecisionChoice(name, reason, channels_last=cl, **finite)  # type: ignore[arg-type]


def machine_description() -> dict[str, Any]:
    """What the probe's answer depends on besides the network: CPU model and flags, kernels, torch."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
                break
    return {
        "cpu": model,
        "flags": [f for f in _CPU_FLAGS if f in flags],
        # these follow ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA, so an emulated AVX2 run gets its own entry
        "capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def threads_text(threads: int) -> str:
    """How the CPU lines name the threads a measurement ran with: "1 thread", "2 threads"."""
    return f"{threads} thread" + ("s" if threads != 1 else "")


def cpu_kind() -> str:
    """A short line naming the CPU kind, e.g. 'Intel Xeon ... (AVX512, avx512_bf16)'."""
    m = machine_description()
    bf16 = "bf16 instructions" if "avx512_bf16" in m["flags"] or "amx_bf16" in m["flags"] else "no bf16 instructions"
    return f"{m['cpu']} — kernels {m['capability']}, {bf16}, {threads_text(m['threads'])}"


StepFn = Callable[[bool, bool], None]  # one probe step: (bf16, channels_last)
VARIANTS: tuple[Variant, ...] = ((False, False), (False, True), (True, False), (True, True))


def time_variants(step: StepFn, rounds: int = _PROBE_ROUNDS) -> dict[Variant, float]:
    """Seconds per step of each variant: one warm-up each, then the fastest of `rounds`, interleaved.

    Variants whose warm-up is already _CLEARLY_SLOWER than the best (emulated bf16 on AVX2, 8-17x)
    are not timed again: their warm-up time stands, and the probe stays a few seconds long.
    """
    warm: dict[Variant, float] = {}
    for variant in VARIANTS:  # warm-up: oneDNN picks and builds its kernels on first use
        start = time.perf_counter()
        step(*variant)
        warm[variant] = time.perf_counter() - start
    fastest = min(warm.values())
    best = dict(warm)
    timed = [v for v in VARIANTS if warm[v] <= _CLEARLY_SLOWER * fastest]
    for _ in range(rounds):
        for variant in timed:
            start = time.perf_counter()
            step(*variant)
            best[variant] = min(best[variant], time.perf_counter() - start)
    return best


def probe_step(
    model: nn.Module,
    mode: Mode,
    batch: int,
    device: torch.device,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
) -> StepFn:
    """One step of the network as the run uses it, on a private copy (the run's weights stay untouched);
    `optimizer` builds the run's optimiser for a network (default AdamW)."""
    plain = copy.deepcopy(model).to(device)
    nets = {False: plain, True: copy.deepcopy(plain).to(memory_format=torch.channels_last)}
    spec = network(plain)
    size, channels, num_classes, cond_channels = spec.image_size, spec.in_channels, spec.num_classes, spec.cond_channels
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device)
    t = (torch.rand(batch, generator=gen) * 1000).to(device)  # a noise-level input: its values do not change the timing
    classes = torch.randint(0, num_classes, (batch,), generator=gen).to(device) if num_classes else None
    cond = torch.randn(batch, cond_channels, size, size, generator=gen).to(device) if cond_channels else None

    def inputs(channels_last: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        extra = {"cond": cond.contiguous(memory_format=fmt)} if cond is not None else {}
        return x.contiguous(memory_format=fmt), extra

    if mode == "train":
        build = optimizer or (lambda net: torch.optim.AdamW(net.parameters(), lr=1e-6))
        opts = {cl: build(net) for cl, net in nets.items()}
        for net in nets.values():
            net.train()

        def train_step(use_bf16: bool, channels_last: bool) -> None:
            xs, extra = inputs(channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = nets[channels_last](xs, t, classes, **extra)
            loss = (out.float() - xs).pow(2).mean()
            opts[channels_last].zero_grad(set_to_none=True)
            loss.backward()
            opts[channels_last].step()

        return train_step
    for net in nets.values():
        net.eval()

    def sample_step(use_bf16: bool, channels_last: bool) -> None:
        xs, extra = inputs(channels_last)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            nets[channels_last](xs, t, classes, **extra)

    return sample_step


def network_key(model: nn.Module) -> str:
    """The network's shape: parameter names and sizes (not values)."""
    shapes = [(name, tuple(p.shape)) for name, p in model.state_dict().items()]
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]


def _cache_path(key: dict[str, Any], root: Path | None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return (root or resolve_cache_dir()) / "precision" / f"{digest}.json"


def cuda_choice(gpu: str, bf16_supported: bool, capability: tuple[int, int]) -> PrecisionChoice:
    """The GPU rule: bf16 where supported (Ampere and later); else fp16 with a gradient scaler where
    the GPU has fp16 tensor cores (compute capability 7.0, Volta, and later); else fp32."""
    if bf16_supported:
        return PrecisionChoice("bf16", f"{gpu} supports bf16")
    if capability >= (7, 0):
        return PrecisionChoice("fp16", f"{gpu} has no bf16 but fp16 tensor cores (with a gradient scaler)")
    return PrecisionChoice("fp32", f"{gpu} has neither bf16 nor fp16 tensor cores")


def choose_precision(
    requested: Precision,
    model: nn.Module,
    *,
    mode: Mode,
    device: torch.device,
    batch: int = 32,
    cache: Path | None = None,
    measure: Callable[[], dict[Variant, float]] | None = None,
) -> PrecisionChoice:
    """`requested` as given, or for "auto" the faster format measured (or cached) for this network here.

    `measure` replaces the timed probe (tests inject timings through it). The probe runs on a copy
    of the network inside `torch.random.fork_rng`, so choosing never changes what a run computes.
    """
    if requested == "fp32":
        return PrecisionChoice("fp32", "set to fp32")
    if requested in ("bf16", "fp16"):
        return PrecisionChoice(requested, f"set to {requested}")
    if device.type == "cuda":
        return cuda_choice(
            torch.cuda.get_device_name(device),
            torch.cuda.is_bf16_supported(),
            torch.cuda.get_device_capability(device),
        )
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"no bf16 probe for device {device.type}")
    key = {"machine": machine_description(), "network": network_key(model), "mode": mode, "batch": batch, "probe": 2}
    path = _cache_path(key, cache)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads(path.read_text())
        choice = PrecisionChoice.from_dict(cached["choice"])
        return dataclasses.replace(choice, reason=choice.reason + " (cached)")
    if measure is None:
        with torch.random.fork_rng(devices=[]):
            times = time_variants(probe_step(model, mode, batch, device))
    else:
        times = measure()
    choice = decide(times)
    with contextlib.suppress(OSError):  # a read-only cache only costs the next probe
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "choice": choice.to_dict()})
    return choice
