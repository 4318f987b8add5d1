"""Which number format to run a network in, measured on the machine at hand rather than assumed.

bf16 autocast is 1.7-2.6x faster than fp32 on CPUs with AVX-512 bf16 instructions, and 8x (training)
to 17x (inference) *slower* on AVX2-only CPUs, where it is emulated. So `precision = "auto"` times a
few steps of the run's own network in each format (a probe of a few seconds), keeps the faster, and
caches the answer under the cache dir, keyed by the CPU, torch and the network's shape. On CUDA it
uses bf16 where the GPU supports it. Explicit "fp32" / "bf16" are taken as given.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
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

Precision = Literal["auto", "fp32", "bf16"]
Mode = Literal["train", "sample"]

# bf16 must win by this much to be chosen: a tie is not worth its rounding error
BF16_MARGIN = 1.1
_PROBE_ROUNDS = 2  # timed steps per format, after one warm-up step each
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cache_dir() -> Path:
    """diffkit's cache: $DIFFKIT_CACHE_DIR, else ~/.cache/diffkit."""
    return Path(os.environ.get("DIFFKIT_CACHE_DIR") or Path.home() / ".cache" / "diffkit")


@dataclass(frozen=True)
class PrecisionChoice:
    """The format chosen, why, and (when measured) the seconds per probe step of each format."""

    name: Literal["fp32", "bf16"]
    reason: str
    fp32_s: float | None = None
    bf16_s: float | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        return torch.bfloat16 if self.name == "bf16" else None

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def summary(self) -> str:
        return f"{self.name}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrecisionChoice:
        return cls(data["name"], data["reason"], data.get("fp32_s"), data.get("bf16_s"))


FP32 = PrecisionChoice("fp32", "plain fp32")


def decide(fp32_s: float, bf16_s: float, where: str = "on this CPU") -> PrecisionChoice:
    """The faster of the two measured formats; bf16 only when it wins by BF16_MARGIN."""
    if bf16_s * BF16_MARGIN < fp32_s:
        return PrecisionChoice("bf16", f"bf16 measured {fp32_s / bf16_s:.1f}x faster than fp32 {where}", fp32_s, bf16_s)
    if bf16_s > fp32_s:
        return PrecisionChoice("fp32", f"bf16 measured {bf16_s / fp32_s:.1f}x slower {where}", fp32_s, bf16_s)
    return PrecisionChoice("fp32", f"bf16 measured only {fp32_s / bf16_s:.2f}x faster {where}", fp32_s, bf16_s)


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


def cpu_kind() -> str:
    """A short line naming the CPU kind, e.g. 'Intel Xeon ... (AVX512, avx512_bf16)'."""
    m = machine_description()
    bf16 = "bf16 instructions" if "avx512_bf16" in m["flags"] or "amx_bf16" in m["flags"] else "no bf16 instructions"
    return f"{m['cpu']} — kernels {m['capability']}, {bf16}, {m['threads']} threads"


StepFn = Callable[[bool], None]  # one probe step, in bf16 or not


def time_formats(step: StepFn, rounds: int = _PROBE_ROUNDS) -> tuple[float, float]:
    """Seconds per step in fp32 and bf16: one warm-up each, then the fastest of `rounds`, interleaved."""
    best = {False: float("inf"), True: float("inf")}
    for use_bf16 in (False, True):
        step(use_bf16)  # warm-up: oneDNN picks and builds its kernels on first use
    for _ in range(rounds):
        for use_bf16 in (False, True):
            start = time.perf_counter()
            step(use_bf16)
            best[use_bf16] = min(best[use_bf16], time.perf_counter() - start)
    return best[False], best[True]


def probe_step(model: nn.Module, mode: Mode, batch: int, device: torch.device) -> StepFn:
    """One step of the network as the run uses it, on a private copy (the run's weights stay untouched)."""
    net = copy.deepcopy(model).to(device)
    size = int(getattr(net, "image_size", 28))
    channels = int(getattr(net, "in_channels", 1))
    num_classes = int(getattr(net, "num_classes", 0))
    cond_channels = int(getattr(net, "cond_channels", 0))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device)
    t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    classes = torch.randint(0, num_classes, (batch,), generator=gen).to(device) if num_classes else None
    extra = {"cond": torch.randn(batch, cond_channels, size, size, generator=gen).to(device)} if cond_channels else {}
    if mode == "train":
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-6)

        def train_step(use_bf16: bool) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = net(x, t, classes, **extra)
            loss = (out.float() - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return train_step
    net.eval()

    def sample_step(use_bf16: bool) -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            net(x, t, classes, **extra)

    return sample_step


def network_key(model: nn.Module) -> str:
    """The network's shape: parameter names and sizes (not values)."""
    shapes = [(name, tuple(p.shape)) for name, p in model.state_dict().items()]
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]


def _cache_path(key: dict[str, Any], root: Path | None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return (root or cache_dir()) / "precision" / f"{digest}.json"


def choose_precision(
    requested: Precision,
    model: nn.Module,
    *,
    mode: Mode,
    device: torch.device,
    batch: int = 32,
    cache: Path | None = None,
    measure: Callable[[], tuple[float, float]] | None = None,
) -> PrecisionChoice:
    """`requested` as given, or for "auto" the faster format measured (or cached) for this network here.

    `measure` replaces the timed probe (tests inject timings through it). The probe runs on a copy
    of the network inside `torch.random.fork_rng`, so choosing never changes what a run computes.
    """
    if requested == "fp32":
        return PrecisionChoice("fp32", "set to fp32")
    if requested == "bf16":
        return PrecisionChoice("bf16", "set to bf16")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", f"{torch.cuda.get_device_name(device)} supports bf16")
        return PrecisionChoice("fp32", f"{torch.cuda.get_device_name(device)} has no bf16")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"no bf16 probe for device {device.type}")
    key = {"machine": machine_description(), "network": network_key(model), "mode": mode, "batch": batch}
    path = _cache_path(key, cache)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads(path.read_text())
        choice = PrecisionChoice.from_dict(cached["choice"])
        return PrecisionChoice(choice.name, choice.reason + " (cached)", choice.fp32_s, choice.bf16_s)
    if measure is None:
        with torch.random.fork_rng(devices=[]):
            fp32_s, bf16_s = time_formats(probe_step(model, mode, batch, device))
    else:
        fp32_s, bf16_s = measure()
    choice = decide(fp32_s, bf16_s)
    with contextlib.suppress(OSError):  # a read-only cache only costs the next probe
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "choice": choice.to_dict()})
    return choice
