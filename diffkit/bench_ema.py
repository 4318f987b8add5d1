"""Which weight average suits a short run: one training run, several averages of the same weights.

    python -m diffkit.bench_ema --steps 1000 --sigma-rel 0.05,0.10 --num 500 --out reports

Trains the `demo` preset (or `--preset`) for a FIXED number of steps, so that a busy machine changes
how long it takes but not what it learns, and keeps, besides the run's own classic EMA, a power-function
EMA (EDM2, `diffkit.optim`) per σ_rel over the very same weights: the averages differ, the training
does not, so their FIDs compare the averages alone. Each is scored by FID of `--num` samples (classes
in turn, the run's own sampler settings) against `--reference` with the digit CNN, and its class
accuracy. Writes `ema.json` and `ema.md` into `--out`.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffkit.atomic import write_report
from diffkit.evaluation import sample_quality
from diffkit.optim import ema_update, power_ema_decay, power_ema_gamma
from diffkit.precision import cpu_kind
from diffkit.runs import RunPaths, create_run_dir, make_denoiser
from diffkit.sampling import SamplingPlan
from diffkit.settings import Settings, load_settings, parse_overrides
from diffkit.training import Trainer


class _Averages(Trainer):
    """A Trainer that also keeps a power-function EMA of its weights per σ_rel (the run's own EMA untouched)."""

    def __init__(self, settings: Settings, paths: RunPaths, sigma_rels: list[float]) -> None:
        super().__init__(settings, paths)
        self.averages = {s: copy.deepcopy(self.ema) for s in sigma_rels}

    def _optimise_step(self) -> tuple[float, float, int]:
        step = self.step
        out = super()._optimise_step()
        for sigma_rel, net in self.averages.items():
            ema_update(net, self.model, power_ema_decay(step, power_ema_gamma(sigma_rel)))
        return out


def compare_ema(
    settings: Settings, sigma_rels: list[float], num: int, run_dir: Path, reference: str | None = None
) -> dict[str, Any]:
    """Train once (the settings' length), then score the classic EMA and each power EMA."""
    settings.train.ema = "classic"
    start = time.perf_counter()
    trainer = _Averages(settings, RunPaths(run_dir), sigma_rels)
    create_run_dir(trainer.paths, settings)
    trainer.choose_precision()
    result = trainer.train()
    train_s = time.perf_counter() - start
    quality = sample_quality(settings, reference)
    plan = SamplingPlan.from_settings(settings.sample, trainer.num_classes).guided_by(None)  # no guide here
    plan = plan.check(trainer.process.grid.timesteps, trainer.num_classes)
    t = settings.train
    classic = f"classic (decay {t.ema_decay:g}" + (", warm-up)" if t.ema_warmup else ")")
    nets: dict[str, nn.Module] = {classic: trainer.ema}
    nets |= {f"power, sigma_rel {s:g} (gamma {power_ema_gamma(s):.2f})": net for s, net in trainer.averages.items()}
    rows = []
    for name, net in nets.items():
        scored = time.perf_counter()
        denoiser = make_denoiser(settings, net.eval(), trainer.process, plan, precision=trainer.precision)
        fid, accuracy = quality.score(denoiser, plan, num)
        rows.append(
            {
                "ema": name,
                "fid": round(fid, 2),
                "class_accuracy": accuracy,
                "seconds": round(time.perf_counter() - scored, 1),
            }
        )
    return {
        "cpu_kind": cpu_kind(),
        "threads": torch.get_num_threads(),
        "preset": settings.name,
        "steps": result.steps,
        "batch_size": trainer.batch_size,
        "train_seconds": round(train_s, 1),
        "images_per_s": round(result.images_per_s, 1),
        "precision": trainer.precision.name,
        "sampler": plan.label,
        "cfg": plan.cfg,
        "samples": num,
        "reference": f"{quality.reference.label} ({quality.reference.num} images)",
        "features": quality.net.name,
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# EMA at a fixed {report['steps']:,} steps ({report['preset']})",
        "",
        f"CPU: {report['cpu_kind']}, {report['precision']}; batch {report['batch_size']}, "
        f"{report['images_per_s']} img/s, {report['train_seconds']:.0f} s of training. FID of {report['samples']} "
        f"samples ({report['sampler']}, guidance {report['cfg']:g}, classes in turn) against "
        f"{report['reference']}; features: {report['features']}.",
        "",
        "| EMA | FID | class accuracy |",
        "| --- | --- | --- |",
    ]
    for row in report["rows"]:
        acc = f"{row['class_accuracy']:.1%}" if row["class_accuracy"] is not None else ""
        lines.append(f"| {row['ema']} | {row['fid']:.2f} | {acc} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--sigma-rel", default="0.05,0.10", help="comma-separated σ_rel of the power EMAs")
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--reference", default=None, help="default: mnist:test when present, else the training data")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="another setting, as diffkit train --set")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    sets = [f"train.max_steps={args.steps}", *args.set]
    sets += [f"train.threads={args.threads}"] if args.threads else []
    settings = load_settings(args.preset, parse_overrides(sets))
    settings.train.max_minutes = None
    sigma_rels = [float(s) for s in args.sigma_rel.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        report = compare_ema(settings, sigma_rels, args.num, Path(tmp) / "run", args.reference)
    text = markdown(report)
    where = write_report(args.out, "ema", report, text)
    print(text)
    print(where)


if __name__ == "__main__":
    main()
