"""The few-step students benchmark: distil a teacher run, then score teacher and students side by side.

    python -m diffkit.bench_distill --teacher runs/demo --out reports
    python -m diffkit.bench_distill --teacher runs/demo --students progressive:4,consistency:2 --minutes 8

Each student is made by `diffkit distill` in a subprocess (what a user gets, by the clock), then, in this
process and one after another: FID and class accuracy (the digit feature net, `diffkit.evaluation`) of the
teacher at 10 and 20 steps and of each student at its steps, all at the teacher's own default guidance
(the scale its sweep picked), against MNIST's test split with the real-vs-real floor at the same N; and
images/s of each, timed on the same batch of samples. Writes `<out>/distill.json` and `distill.md`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffkit.atomic import write_report
from diffkit.clock import read_plan
from diffkit.evaluation import FidRequest, evaluate
from diffkit.precision import cpu_kind

TEACHER_STEPS = (10, 20)


@dataclass(frozen=True)
class Student:
    method: str
    steps: int

    @classmethod
    def parse(cls, text: str) -> Student:
        method, _, steps = text.partition(":")
        return cls(method, int(steps))

    def run_dir(self, root: Path) -> Path:
        return root / f"bench-distill-{self.method}-{self.steps}"

    def sampling_steps(self) -> list[int]:
        # a consistency student samples at any number of steps; a progressive one only at the steps it learnt
        return sorted({1, 2, 4, self.steps}) if self.method == "consistency" else [self.steps]


def distil(teacher: Path, student: Student, run_dir: Path, minutes: float, sets: list[str]) -> float:
    """`diffkit distill` in a subprocess; returns its wall-clock minutes."""
    args = [sys.executable, "-m", "diffkit", "distill", "--run", str(teacher), "--method", student.method]
    args += ["--steps", str(student.steps), "--minutes", f"{minutes:g}", "--run-dir", str(run_dir), "--force"]
    args += [a for s in sets for a in ("--set", s)]
    start = time.perf_counter()
    subprocess.run(args, env=dict(os.environ), check=True)
    return (time.perf_counter() - start) / 60


def images_per_s(run_dir: Path, steps: int, cfg: float, num: int) -> float:
    """Sampling speed at `steps` and `cfg` (best of two timed draws of `num` images, after a warm-up draw)."""
    from diffkit.api import load

    run = load(run_dir)
    run.sample(0, num=min(num, 10), steps=steps, cfg=cfg, progress=False)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        run.sample(0, num=num, steps=steps, cfg=cfg, progress=False)
        best = min(best, time.perf_counter() - start)
    return num / best


def score(run_dir: Path, steps: int, cfg: float, num: int, reference: str) -> dict[str, Any]:
    report = evaluate(FidRequest([f"run:{run_dir}", reference], num=num, steps=steps, cfg=[cfg], class_accuracy=True))
    row = report.rows[0]
    floor = report.floor
    return {
        "sampler": report.sampling.label if report.sampling else None,
        "fid": round(row.distance.fid, 2) if row.distance else None,
        "class_accuracy": round(row.accuracy.overall, 4) if row.accuracy else None,
        "floor": round(floor.distance.fid, 2) if floor else None,
    }


def teacher_cfg(teacher: Path) -> float:
    from diffkit.api import load

    return float(load(teacher).settings.sample.cfg)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    cfg = args.cfg if args.cfg is not None else teacher_cfg(args.teacher)
    students = [Student.parse(s) for s in args.students.split(",") if s]
    models: list[tuple[str, Path, list[int], float | None]] = [("teacher", args.teacher, list(TEACHER_STEPS), None)]
    for student in students:
        run_dir = student.run_dir(args.runs)
        minutes = None if args.skip_distill else distil(args.teacher, student, run_dir, args.minutes, args.set)
        models.append((f"{student.method} student", run_dir, student.sampling_steps(), minutes))
    rows = []
    for label, run_dir, steps_list, minutes in models:
        for steps in steps_list:
            figures = score(run_dir, steps, cfg, args.num, args.reference)
            speed = images_per_s(run_dir, steps, cfg, args.speed_num)
            rows.append({"model": label, "run": str(run_dir), "steps": steps, "images_per_s": round(speed, 1)})
            rows[-1] |= figures | {"distill_minutes": round(minutes, 2) if minutes is not None else None}
    return {
        "cpu_kind": cpu_kind(),
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
        "cfg": cfg,
        "samples": args.num,
        "reference": args.reference,
        "teacher_plan": read_plan(args.teacher / "plan.json").get("clock"),
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Few-step students",
        "",
        f"CPU: {result['cpu_kind']}, threads: {result['threads']}; guidance {result['cfg']:g} for every row; "
        f"FID of {result['samples']} samples against {result['reference']} (digit feature net).",
        "",
        "| model | steps | FID | class accuracy | images/s | distillation minutes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        acc = f"{r['class_accuracy']:.1%}" if r["class_accuracy"] is not None else ""
        minutes = f"{r['distill_minutes']:.1f}" if r["distill_minutes"] is not None else ""
        lines.append(f"| {r['model']} | {r['steps']} | {r['fid']} | {acc} | {r['images_per_s']} | {minutes} |")
    floors = {r["floor"] for r in result["rows"] if r["floor"] is not None}
    if floors:
        lines.append(f"| real vs real | | {min(floors)} | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("runs/demo"))
    parser.add_argument("--students", default="progressive:4,consistency:2", help="method:steps, comma-separated")
    parser.add_argument("--minutes", type=float, default=8.0, help="each distillation's budget")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where the students go")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--num", type=int, default=1000, help="samples per FID")
    parser.add_argument("--speed-num", type=int, default=100, help="samples per images/s timing")
    parser.add_argument("--cfg", type=float, default=None, help="default: the teacher's own default guidance")
    parser.add_argument("--reference", default="mnist:test")
    parser.add_argument("--set", action="append", default=[], help="a student setting, as diffkit distill --set")
    parser.add_argument("--skip-distill", action="store_true", help="score students already in --runs")
    args = parser.parse_args(argv)
    result = measure(args)
    text = markdown(result)
    where = write_report(args.out, "distill", result, text)
    print(text)
    print(where)


if __name__ == "__main__":
    main()
