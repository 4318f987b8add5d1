"""`make bench`: speed and memory figures, measured side by side in one run, written as JSON and markdown.

    python -m diffkit.bench --out reports [--quick]

Timed unit tests are flaky on shared machines; targets live here instead. Every figure says how it
was measured and names the CPU kind; comparisons (bf16 vs fp32, channels-last vs not, CFG vs no CFG)
are interleaved in the same process. It also writes `samplers.md`: every sampler × spacing × NFE on
exact Gaussian data (no timing, a few seconds; see `diffkit.samplers.accuracy`), the table the
README's sampler defaults come from.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffkit.atomic import write_report
from diffkit.bench_ddp import processes_throughput
from diffkit.data import default_data_dir, load_images
from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.generation import generate
from diffkit.metrics import MIN_SAMPLES, ClassifierFeatureNet, digit_feature_net, feature_statistics, frechet_distance
from diffkit.metrics.features import try_load
from diffkit.models import UNet, count_parameters
from diffkit.precision import PrecisionChoice, choose_precision, cpu_kind, machine_description
from diffkit.process import VPProcess
from diffkit.progress import Progress
from diffkit.roofline import best_of, peak_gflops, train_step, training_flops
from diffkit.runs import build_model
from diffkit.sampling import SamplingPlan
from diffkit.schedules import NoiseSchedule
from diffkit.settings import load_settings


def train_step_throughput(
    model: UNet, batch: int, bf16: bool, steps: int = 3, repeats: int = 3, channels_last: bool = False
) -> float:
    """Training images per second for the demo UNet (forward, backward, AdamW step)."""
    step = train_step(model, batch, bf16, channels_last)

    def run() -> None:
        for _ in range(steps):
            step()

    run()  # warm-up (oneDNN picks kernels on first use)
    return batch * steps / best_of(run, repeats)


def sampling_throughput(
    model: UNet, num: int, steps: int, cfg: float, repeats: int = 2, precision: PrecisionChoice | None = None
) -> float:
    """Images per second for DDIM with `steps` steps, CFG batched when guidance is not 0 or 1."""
    net = copy.deepcopy(model).eval()
    if precision is not None:
        precision.prepare(net)
    den = Denoiser(net, VPProcess(NoiseSchedule.create("cosine", 1000)), model.num_classes, precision=precision)
    classes = torch.arange(num) % model.num_classes if model.num_classes else None
    plan = SamplingPlan(sampler="ddim", steps=steps, cfg=cfg, clipping="none", batch_size=num)

    def run() -> None:
        generate(den, plan, num=num, classes=classes)

    run()
    return num / best_of(run, repeats)


def process_step_costs(settings_name: str = "demo", batch: int = 32, rounds: int = 3) -> dict[str, Any]:
    """ms per training step (loss, backward, AdamW) and per guided denoiser call, for each diffusion process and
    for the bare network (no process at all), interleaved round by round; best of `rounds`. The process adds
    only elementwise work to a step, so every row should be within noise of the bare network's."""
    from diffkit.loss import diffusion_loss
    from diffkit.process import build_process

    settings = load_settings(settings_name)
    settings.model.num_classes = 10
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, 1, 28, 28, generator=gen) * 2 - 1
    labels = torch.arange(batch) % 10
    models = {name: build_model(settings) for name in ("bare", "vp", "edm", "flow")}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    processes = {
        name: build_process(load_settings(settings_name, {"diffusion": {"process": name}}).diffusion)
        for name in ("vp", "edm", "flow")
    }

    def train_step(name: str) -> None:
        model, opt = models[name], opts[name]
        if name == "bare":
            t = torch.randint(0, 1000, (batch,), generator=gen)
            loss = (model(x0, t, labels).float() - x0).pow(2).mean()
        else:
            loss = diffusion_loss(model, processes[name], x0, labels, gen, num_classes=10, p_uncond=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample_call(name: str) -> None:
        with torch.no_grad():
            if name == "bare":
                models[name](torch.cat([x0, x0]), torch.full((2 * batch,), 500.0), torch.cat([labels, labels]))
            else:
                den = Denoiser(models[name], processes[name], 10)
                den(x0, torch.full((batch,), 500.0), labels, cfg=2.0)

    best: dict[str, dict[str, float]] = {name: {"train": math.inf, "sample": math.inf} for name in models}
    for _ in range(rounds + 1):  # the first round warms up
        for name in models:
            for kind, fn in (("train", train_step), ("sample", sample_call)):
                start = time.perf_counter()
                fn(name)
                best[name][kind] = min(best[name][kind], time.perf_counter() - start)
    out: dict[str, Any] = {"batch": batch, "threads": torch.get_num_threads()}
    for name, times in best.items():
        out[f"train_ms_{name}"] = round(1000 * times["train"], 2)
        out[f"guided_call_ms_{name}"] = round(1000 * times["sample"], 2)
    for name in ("vp", "edm", "flow"):
        out[f"train_ratio_{name}_to_bare"] = round(best[name]["train"] / best["bare"]["train"], 3)
        out[f"guided_call_ratio_{name}_to_bare"] = round(best[name]["sample"] / best["bare"]["sample"], 3)
    return out


def benchmark_features_fid(
    n: int = 10_000,
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    net: ClassifierFeatureNet | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Time digit-CNN features of `n` 28x28 images plus the FID between two halves (even and odd images).

    Images: mnist:test when present, else mnist-5k, tiled to `n`. Getting the net (training it when not
    cached) is timed separately as `net_seconds` and not part of `total_seconds`.
    """
    start = time.perf_counter()
    net = net or digit_feature_net(data_dir=data_dir, cache_dir=cache_dir, progress=progress)
    net_seconds = time.perf_counter() - start
    images, source = _benchmark_images(n, Path(data_dir) if data_dir else default_data_dir())
    start = time.perf_counter()
    feats = net.features(images)
    features_seconds = time.perf_counter() - start
    start = time.perf_counter()
    # Even vs odd images rather than first vs second half: MNIST's test split puts its two writer
    # populations in its two halves, which would measure that shift instead of the noise floor.
    fid = frechet_distance(*feature_statistics(feats[0::2]), *feature_statistics(feats[1::2]))
    fid_seconds = time.perf_counter() - start
    total = features_seconds + fid_seconds
    return {
        "images": n,
        "source": source,
        "feature_net": net.name,
        "net_seconds": round(net_seconds, 3),
        "features_seconds": round(features_seconds, 3),
        "fid_seconds": round(fid_seconds, 3),
        "total_seconds": round(total, 3),
        "images_per_second": round(n / total, 1),
        "fid_even_odd": fid,
        "threads": torch.get_num_threads(),
    }


def _benchmark_images(n: int, data_dir: Path) -> tuple[Tensor, str]:
    if n < 2 * MIN_SAMPLES:
        raise DiffkitError(f"the benchmark needs at least {2 * MIN_SAMPLES} images, got {n}: use a larger n")
    data = try_load("mnist", "test", data_dir)
    source = "mnist:test"
    if data is None:
        data, source = load_images("mnist-5k", "train"), "mnist-5k"
    repeats = -(-n // len(data))
    return data.images.repeat(repeats, 1, 1, 1)[:n], source + (f" tiled x{repeats}" if repeats > 1 else "")


def checkpoint_cost(settings: Any, repeats: int) -> dict[str, Any]:
    """Seconds to save the resumable checkpoint (weights + optimiser state after one AdamW step) of the
    preset's UNet: the way it is saved now (a pair id, both files written in full and fsynced, the
    previous pair linked aside until the new one is in place) against the old way (two atomic writes,
    no fsync), interleaved, best of `repeats` each."""
    from safetensors.torch import save_file

    from diffkit.atomic import atomic_write
    from diffkit.runs import RunPaths, save_checkpoint

    model, ema = build_model(settings), build_model(settings)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t = torch.randn(2, model.in_channels, model.image_size, model.image_size), torch.zeros(2, dtype=torch.long)
    model(x, t, torch.zeros(2, dtype=torch.long)).square().mean().backward()
    opt.step()  # the optimiser state a resume needs: two moments per weight
    state = {"step": 1, "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state()}
    times: dict[str, float] = {"now": float("inf"), "old": float("inf")}
    with tempfile.TemporaryDirectory(dir=".") as tmp:  # the disk runs are written to, not /tmp (often RAM)
        paths = RunPaths(Path(tmp))
        tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}

        def old() -> None:
            atomic_write(paths.state("old"), lambda t: torch.save(state, t))
            atomic_write(paths.weights("old"), lambda t: save_file(tensors, str(t), metadata={"diffkit": "{}"}))

        for _ in range(repeats):
            times["old"] = min(times["old"], best_of(old, 1))
            times["now"] = min(times["now"], best_of(lambda: save_checkpoint(paths, "last", model, ema, {}, state), 1))
        size = sum(p.stat().st_size for p in paths.checkpoints.glob("last*"))
    return {
        "megabytes": round(size / 2**20, 1),
        "seconds_now": round(times["now"], 4),
        "seconds_old_two_writes": round(times["old"], 4),
        "ratio_now_to_old": round(times["now"] / times["old"], 2),
    }


def network_sizing(threads: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """The demo's candidate networks timed as a budgeted run times them (`diffkit.training.sizing.measure`),
    at each thread count in turn: s/step at the demo's batch, GFLOP/s, and the share of the 3x3-conv peak."""
    from diffkit.training.sizing import measure

    settings = load_settings("demo")
    settings.model.num_classes = 10  # as the demo's dataset sets it
    before, out = torch.get_num_threads(), {}
    for n in threads:
        torch.set_num_threads(n)
        for c in measure(settings, torch.device("cpu")):
            peak = peak_gflops(2, formats=(c.precision,))[f"conv3x3_{c.precision}"]
            out[f"{c.name}_{n}_threads"] = (
                f"{c.step_s:.3f} s/step, {c.gflop_per_step:.1f} GFLOP/step, {c.gflops:.1f} GFLOP/s "
                f"= {100 * c.gflops / peak:.0f} % of the {c.precision} conv peak {peak:.0f}"
            )
    torch.set_num_threads(before)
    return out


def run_benchmarks(quick: bool = False) -> dict[str, Any]:
    torch.manual_seed(0)
    settings = load_settings("demo")
    settings.model.num_classes = 10
    model = build_model(settings)
    report: dict[str, Any] = {
        "machine": {
            "cpu_kind": cpu_kind(),
            **machine_description(),
            "python": platform.python_version(),
        },
        "model": {"preset": "demo", "parameters": count_parameters(model)},
    }
    repeats = 1 if quick else 3
    chosen: dict[str, PrecisionChoice] = {}
    with tempfile.TemporaryDirectory() as fresh:  # a fresh probe, not a cached answer
        device = torch.device("cpu")
        for mode in ("train", "sample"):
            choice = choose_precision("auto", model, mode=mode, device=device, cache=Path(fresh))
            chosen[mode] = choice
            report[f"auto_precision_{mode}"] = {"chosen": choice.summary(), **choice.to_dict()}
    report["peak_gflops"] = peak_gflops(repeats)
    batch = 128
    flops = training_flops(model, batch)
    train: dict[str, Any] = {"batch": batch, "gflop_per_step": round(flops / 1e9, 2)}
    for bf16 in (False, True):
        for channels_last in (False, True):
            name = ("bf16" if bf16 else "fp32") + ("_channels_last" if channels_last else "")
            ips = train_step_throughput(
                build_model(settings), batch, bf16, repeats=repeats, channels_last=channels_last
            )
            train[f"images_per_s_{name}"] = round(ips, 1)
            train[f"achieved_gflops_{name}"] = round(flops * ips / batch / 1e9, 1)
    train["bf16_speedup"] = round(train["images_per_s_bf16"] / train["images_per_s_fp32"], 2)
    report["training"] = train
    report["checkpoint"] = checkpoint_cost(settings, repeats=3 if quick else 10)
    steps = 10 if quick else 50
    plain = sampling_throughput(model, 100, steps, cfg=1.0, repeats=repeats)
    cfg = sampling_throughput(model, 100, steps, cfg=2.0, repeats=repeats)
    auto_cfg = sampling_throughput(model, 100, steps, cfg=2.0, repeats=repeats, precision=chosen["sample"])
    report["sampling"] = {
        "sampler": f"ddim {steps} steps",
        "images_per_s_conditional_fp32": round(plain, 2),
        "images_per_s_cfg_fp32": round(cfg, 2),
        "images_per_s_cfg_auto": round(auto_cfg, 2),
        "auto_precision": chosen["sample"].summary(),
        "cfg_cost_ratio": round(plain / cfg, 2),
        "batch": 100,
    }
    try:
        report["fid"] = benchmark_features_fid(n=2000 if quick else 10_000)
    except ImportError:
        report["fid"] = {"skipped": "diffkit.metrics not available"}
    report["network_sizing"] = network_sizing()
    report["diffusion_processes"] = process_step_costs(rounds=1 if quick else 3)
    report["processes"] = processes_throughput(steps=20 if quick else 60, rounds=1 if quick else 2)
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return report


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# diffkit benchmark",
        "",
        f"CPU kind: **{report['machine']['cpu_kind']}**",
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


def sampler_accuracy() -> tuple[dict[str, Any], str]:
    """The Gaussian accuracy table (JSON rows and markdown), from the same harness the tests use."""
    from dataclasses import asdict

    from diffkit.samplers.accuracy import accuracy_table, process_markdown, process_table, to_markdown

    cells = accuracy_table()
    rows = [{**asdict(c), "default": c.is_default} for c in cells]
    by_process = process_table()
    rows += [{**asdict(c), "default": True, "process": label} for label, c in by_process]
    markdown = "# Sampler accuracy on exact Gaussian data\n\n" + to_markdown(cells)
    markdown += "\n## Every sampler on every diffusion process\n\n" + process_markdown(by_process)
    return {"rows": rows}, markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--quick", action="store_true", help="fewer repeats and images (a smoke run)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    accuracy, accuracy_md = sampler_accuracy()
    print(accuracy_md)
    print(write_report(args.out, "samplers", accuracy, accuracy_md))
    report = run_benchmarks(args.quick)
    text = to_markdown(report)
    print(text)
    print(write_report(args.out, "bench", report, text))


if __name__ == "__main__":
    main()
