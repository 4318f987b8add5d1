"""`make bench`: speed and memory figures, measured side by side in one run, written as JSON and markdown.

    python -m diffkit.bench --out reports [--quick]

Timed unit tests are flaky on shared machines; targets live here instead. Every figure says how it
was measured; comparisons (bf16 vs fp32, CFG vs no CFG) are interleaved in the same process.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffkit.denoiser import Denoiser
from diffkit.generation import generate
from diffkit.models import UNet, count_parameters
from diffkit.runs import build_model
from diffkit.sampling import SamplingPlan
from diffkit.schedules import NoiseSchedule
from diffkit.settings import load_settings


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of `repeats` timings (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def train_step_throughput(model: UNet, batch: int, bf16: bool, steps: int = 3, repeats: int = 3) -> float:
    """Training images per second for the demo UNet (forward, backward, AdamW step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, model.in_channels, model.image_size, model.image_size)
    t = torch.randint(0, 1000, (batch,))
    classes = torch.randint(0, max(model.num_classes, 1), (batch,)) if model.num_classes else None

    def run() -> None:
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x, t, classes)
            loss = (out.float() - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    run()  # warm-up (oneDNN picks kernels on first use)
    return batch * steps / _best_of(run, repeats)


def sampling_throughput(model: UNet, num: int, steps: int, guidance: float, repeats: int = 2) -> float:
    """Images per second for DDIM with `steps` steps, CFG batched when guidance is not 0 or 1."""
    den = Denoiser(model.eval(), NoiseSchedule.create("cosine", 1000), "eps", model.num_classes)
    classes = torch.arange(num) % model.num_classes if model.num_classes else None
    plan = SamplingPlan(sampler="ddim", steps=steps, guidance=guidance, clipping="none", batch_size=num)

    def run() -> None:
        generate(den, plan, num=num, classes=classes)

    run()
    return num / _best_of(run, repeats)


def run_benchmarks(quick: bool = False) -> dict[str, Any]:
    torch.manual_seed(0)
    settings = load_settings("demo")
    settings.model.num_classes = 10
    model = build_model(settings)
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
        },
        "model": {"preset": "demo", "parameters": count_parameters(model)},
    }
    repeats = 1 if quick else 3
    fp32 = train_step_throughput(model, 128, bf16=False, repeats=repeats)
    bf16 = train_step_throughput(model, 128, bf16=True, repeats=repeats)
    report["training"] = {
        "images_per_s_fp32": round(fp32, 1),
        "images_per_s_bf16": round(bf16, 1),
        "bf16_speedup": round(bf16 / fp32, 2),
        "batch": 128,
    }
    steps = 10 if quick else 50
    plain = sampling_throughput(model, 100, steps, guidance=1.0, repeats=repeats)
    cfg = sampling_throughput(model, 100, steps, guidance=2.0, repeats=repeats)
    report["sampling"] = {
        "sampler": f"ddim {steps} steps",
        "images_per_s_conditional": round(plain, 2),
        "images_per_s_cfg": round(cfg, 2),
        "cfg_cost_ratio": round(plain / cfg, 2),
        "batch": 100,
    }
    try:
        from diffkit.metrics import benchmark_features_fid

        report["fid"] = benchmark_features_fid(n=2000 if quick else 10_000)
    except ImportError:
        report["fid"] = {"skipped": "diffkit.metrics not available"}
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return report


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# diffkit benchmark",
        "",
        f"Machine: `{json.dumps(report['machine'])}`",
        "",
        "| group | figure | value |",
        "| --- | --- | --- |",
    ]
    for group, values in report.items():
        if group == "machine" or not isinstance(values, dict):
            continue
        for key, value in values.items():
            lines.append(f"| {group} | {key} | {value} |")
    lines.append(f"| memory | peak RSS (MiB) | {report['peak_rss_mib']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--quick", action="store_true", help="fewer repeats and images (a smoke run)")
    args = parser.parse_args()
    report = run_benchmarks(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "bench.md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"reports: {args.out / 'bench.json'}, {args.out / 'bench.md'}")


if __name__ == "__main__":
    main()
