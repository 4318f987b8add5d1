"""One process against several on this machine: training throughput of the demo network under torchrun.

    python -m diffkit.bench_ddp [--steps 60] [--rounds 2]

The same global batch (the demo's 32) and precision either way; one process gets every core's
threads, N processes one thread each (torchrun's default). Runs alternate (1, N, 1, N, ...) so that
a change in the machine's load hits both; images/s are the median log window after warm-up. Also
called by `make bench` (`diffkit.bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from diffkit.distributed import local_launch
from diffkit.precision import cpu_kind


def _train(processes: int, threads: int, steps: int, precision: str, root: Path) -> float:
    """Median images/s of one `diffkit train --preset demo` of `steps` steps under torchrun."""
    run = root / f"p{processes}-{len(list(root.iterdir()))}"
    sets = ["train.log_every=5", f"train.precision={precision}", f"train.threads={threads}"]
    args = ["-m", "diffkit", "train", "--preset", "demo", "--run-dir", str(run), "--max-steps", str(steps)]
    cmd, env = local_launch(processes, *args, *[x for s in sets for x in ("--set", s)])
    env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{processes}-process run failed: {done.stderr[-2000:]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    windows = [r["images_per_s"] for r in records if "images_per_s" in r and r["step"] > 10]  # after warm-up
    return float(statistics.median(windows))


def processes_throughput(steps: int = 60, rounds: int = 2, precision: str = "fp32") -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    runs: dict[int, list[float]] = {1: [], cores: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            runs[1].append(_train(1, cores, steps, precision, Path(tmp)))
            if cores > 1:
                runs[cores].append(_train(cores, 1, steps, precision, Path(tmp)))
    one = max(runs[1])
    report: dict[str, Any] = {
        "cpu_kind": cpu_kind(),
        "preset": "demo",
        "global_batch": 32,
        "precision": precision,
        "steps": steps,
        f"images_per_s_1_process_{cores}_threads": round(one, 1),
    }
    if cores > 1:
        many = max(runs[cores])
        report[f"images_per_s_{cores}_processes_1_thread"] = round(many, 1)
        report["processes_speedup"] = round(many / one, 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    print(json.dumps(processes_throughput(args.steps, args.rounds, args.precision), indent=2))


if __name__ == "__main__":
    main()
