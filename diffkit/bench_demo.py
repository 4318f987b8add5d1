"""The demo benchmark: `make demo`'s training by the clock, then its quality, as JSON + markdown.

    python -m diffkit.bench_demo --out reports                  # this machine as it is
    python -m diffkit.bench_demo --out reports --avx2-laptop    # emulating an AVX2 laptop at one thread
    make bench DEMO=1                                           # the same, after the usual benchmark

Trains the `demo` preset for its minutes in a subprocess (`diffkit train`, so it measures what a user
gets, the run's own guidance sweep included); `--avx2-laptop` runs it under ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1. Then, in this process, FID and class accuracy at each
guidance scale (1,000 samples, 100 per class, the run's own sampler settings; `diffkit.evaluation`)
against MNIST's test split, with the real-vs-real floor at the same N. Reports the CPU kind, steps,
images/s, the guidance the run picked, and those figures, in `<out>/demo-<label>.json` and `.md`.
Takes the demo's minutes plus a few of sampling: it is not part of plain `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from diffkit.atomic import write_report
from diffkit.clock import read_plan
from diffkit.evaluation import FidReport, FidRequest, evaluate
from diffkit.runs import RunPaths

AVX2_LAPTOP = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
DEFAULT_SCALES = (1.0, 1.5, 2.0, 3.0)


def train_demo(run_dir: Path, *, minutes: float | None, emulate: bool, sets: list[str]) -> None:
    """`diffkit train --preset demo` in a subprocess (its own CPU capability, threads and clock)."""
    env = dict(os.environ) | (AVX2_LAPTOP if emulate else {})
    args = [sys.executable, "-m", "diffkit", "train", "--preset", "demo", "--run-dir", str(run_dir), "--force"]
    args += ["--minutes", f"{minutes:g}"] if minutes is not None else []
    args += [a for s in sets + (["train.threads=1"] if emulate else []) for a in ("--set", s)]
    subprocess.run(args, env=env, check=True)


def training_figures(run_dir: Path) -> dict[str, Any]:
    """What the run's plan.json and metrics.jsonl say about its training and its guidance sweep."""
    paths = RunPaths(run_dir)
    plan = read_plan(paths.plan)
    records = [json.loads(line) for line in paths.metrics.read_text().splitlines() if line.strip()]
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
    steps = max((r["step"] for r in records), default=0)
    return {
        "cpu_kind": plan.get("cpu_kind"),
        "precision": (plan.get("precision") or {}).get("name"),
        "budget_minutes": plan.get("budget_minutes"),
        "steps": steps,
        "planned_steps": plan.get("total_steps"),
        "images_per_s": round(statistics.median(speeds), 1) if speeds else None,
        "guidance_sweep": plan.get("guidance"),
    }


def quality_figures(report: FidReport) -> dict[str, Any]:
    """FID and class accuracy per guidance scale, and the floor, from `diffkit.evaluation.evaluate`."""
    rows = [
        {
            "cfg": r.cfg,
            "fid": round(r.distance.fid, 2) if r.distance else None,
            "class_accuracy": round(r.accuracy.overall, 4) if r.accuracy else None,
        }
        for r in report.rows
    ]
    floor = report.floor
    return {
        "features": report.feature_net,
        "samples": report.nums[0],
        "sampler": report.sampling.label if report.sampling else None,
        "reference": report.sources[1],
        "rows": rows,
        "floor": {"fid": round(floor.distance.fid, 2), "sources": list(floor.sources)} if floor else None,
    }


def measure_demo(run_dir: Path, *, num: int, scales: list[float], reference: str = "mnist:test") -> dict[str, Any]:
    """The training figures and the quality of `run_dir` at each scale and at its own default guidance."""
    figures = training_figures(run_dir)
    chosen = (figures["guidance_sweep"] or {}).get("chosen")
    wanted = sorted(set(scales) | ({chosen} if chosen is not None else set()))
    request = FidRequest([f"run:{run_dir}", reference], num=num, cfg=wanted, class_accuracy=True)
    return figures | {"quality": quality_figures(evaluate(request))}


def markdown(result: dict[str, Any], label: str) -> str:
    q, sweep = result["quality"], result["guidance_sweep"] or {}
    chosen = sweep.get("chosen")
    floor = q["floor"]
    lines = [
        f"# The demo, {label}",
        "",
        f"CPU: {result['cpu_kind']}; precision {result['precision']}; budget {result['budget_minutes']} min; "
        f"{result['steps']:,} steps; {result['images_per_s']} img/s (median of the logged figures).",
        "",
        f"Guidance the run picked: **{chosen if chosen is not None else 'none (no sweep)'}**"
        + (f" ({sweep['reason']}; {sweep['samples']} samples per scale, {sweep['seconds']} s)" if sweep else ""),
        "",
        f"FID of {q['samples']} samples ({q['sampler']}, classes in turn) against {q['reference']}; "
        f"features: {q['features']}.",
        "",
        "| guidance | FID | class accuracy |",
        "| --- | --- | --- |",
    ]
    for row in q["rows"]:
        mark = " (picked)" if row["cfg"] == chosen else ""
        acc = f"{row['class_accuracy']:.1%}" if row["class_accuracy"] is not None else ""
        lines.append(f"| {row['cfg']:g}{mark} | {row['fid']:.2f} | {acc} |")
    if floor:
        lines.append(f"| real vs real ({' vs '.join(floor['sources'])}) | {floor['fid']:.2f} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/bench-demo-<label>")
    parser.add_argument("--minutes", type=float, default=None, help="default: the preset's")
    parser.add_argument("--avx2-laptop", action="store_true", help="emulate an AVX2 CPU at one thread")
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--cfg", default=",".join(f"{s:g}" for s in DEFAULT_SCALES))
    parser.add_argument("--set", action="append", default=[], help="a demo setting, as diffkit train --set")
    parser.add_argument("--skip-training", action="store_true", help="measure an existing --run-dir")
    args = parser.parse_args(argv)
    label = "avx2-laptop" if args.avx2_laptop else "this-machine"
    run_dir = args.run_dir or Path("runs") / f"bench-demo-{label}"
    if not args.skip_training:
        train_demo(run_dir, minutes=args.minutes, emulate=args.avx2_laptop, sets=args.set)
    result = measure_demo(run_dir, num=args.num, scales=[float(s) for s in args.cfg.split(",")])
    text = markdown(result, label)
    where = write_report(args.out, f"demo-{label}", result, text)
    print(text)
    print(where)


if __name__ == "__main__":
    main()
