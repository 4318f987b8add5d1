"""Training on several processes: torchrun with gloo on loopback, against one process with the same global batch.

Two processes sum their gradients in a different order than one process does, so weights agree to
float rounding (asserted below 1e-5), not bit for bit; the same number of processes is bit-exact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffkit.distributed import Rows, World, draw_rows, local_launch
from diffkit.errors import DiffkitError
from diffkit.loss import diffusion_loss
from diffkit.process import build_process
from diffkit.runs import build_model, read_checkpoint
from diffkit.settings import load_settings, parse_overrides
from diffkit.training import train_run

REPO = Path(__file__).resolve().parents[1]
# hflip and label dropout on: every random draw of the batch goes through the global-batch split
SETS = [
    "data.limit=64",
    "data.hflip=true",
    "train.batch_size=8",
    "train.max_steps=6",
    "train.log_every=1",
    "train.precision=fp32",
    "train.p_uncond=0.25",
    "sample.steps=2",
]
ROUNDING = 1e-5


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """2 processes on this machine, rendezvous on a free loopback port (nothing leaves the machine)."""
    cmd, env = local_launch(2, *args)
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def worker(run_dir: Path, out: Path, mode: str, cwd: Path) -> list[dict[str, torch.Tensor]]:
    """Each rank's weights after a 2-process run of tests/ddp_worker.py."""
    torchrun(str(REPO / "tests" / "ddp_worker.py"), str(run_dir), str(out), mode, *SETS, cwd=cwd)
    return [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), "a step was logged twice (by two ranks?)"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / "last.safetensors")[0]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """The same 6 steps in one process (in this one) and in two (torchrun -m diffkit train)."""
    root = tmp_path_factory.mktemp("ddp")
    train_run(load_settings("tiny", parse_overrides(SETS)), root / "one")
    sets = [x for s in SETS for x in ("--set", s)]
    two = torchrun("-m", "diffkit", "train", "--preset", "tiny", "--run-dir", str(root / "two"), *sets, cwd=root)
    return root / "one", root / "two", two


def test_two_processes_train_what_one_would(straight: tuple[Path, Path, subprocess.CompletedProcess[str]]) -> None:
    one, two, out = straight
    a, b = losses(one), losses(two)
    assert a.keys() == b.keys() == set(range(1, 7))
    assert all(abs(a[s] - b[s]) <= ROUNDING * abs(a[s]) for s in a), (a, b)
    assert max_diff(weights(one), weights(two)) < ROUNDING
    # only rank 0 wrote: the same files as one process, each step logged once (checked in losses())
    assert files(one) == files(two)
    # only rank 0 printed: one start line (stating the split) and one summary
    assert out.stdout.count("batch 8 (global: 2 processes x 4 images each)") == 1, out.stdout
    assert out.stdout.count("trained 6 of 6 steps") == 1 and "Traceback" not in out.stderr


def test_resume_under_two_processes_and_with_one(
    straight: tuple[Path, Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    one, two, _ = straight
    run = tmp_path / "run"
    first = worker(run, tmp_path / "first", "stop:3", tmp_path)
    assert all(torch.equal(first[0][k], first[1][k]) for k in first[0])  # every rank holds the same weights and EMA
    shutil.copytree(run, tmp_path / "switch")

    resumed = worker(run, tmp_path / "resumed", "resume", tmp_path)
    assert all(torch.equal(resumed[0][k], resumed[1][k]) for k in resumed[0])
    # 2 processes, stopped and resumed under 2: the losses and weights of the unbroken 2-process run, exactly
    assert losses(run) == losses(two)
    reference = weights(two)
    assert all(torch.equal(weights(run)[k], reference[k]) for k in reference)

    # the same run continued by one process: what one process would have trained, to float rounding
    train_run(load_settings("tiny", parse_overrides(SETS)), tmp_path / "switch", resume=True)
    a, b = losses(one), losses(tmp_path / "switch")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) <= ROUNDING * abs(a[s]) for s in a)
    assert max_diff(weights(one), weights(tmp_path / "switch")) < ROUNDING


@pytest.mark.parametrize("process", ["vp", "edm", "flow"])
def test_a_global_batch_split_draws_what_one_process_draws(process: str) -> None:
    """Each rank's share of the noise, noise levels and label dropout is the one-process draw's rows, so
    the mean of the ranks' losses is the one-process loss of the whole batch, for every diffusion process."""
    settings = load_settings("tiny", parse_overrides([*SETS, f"diffusion.process={process}"]))
    schedule, model = build_process(settings.diffusion), build_model(settings)
    x0 = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 4

    def loss(rows: Rows | None) -> float:
        gen = torch.Generator().manual_seed(7)
        part = slice(None) if rows is None else slice(rows.start, rows.stop)
        kwargs = {"num_classes": 4, "p_uncond": 0.5, "rows": rows}
        return float(diffusion_loss(model, schedule, x0[part], labels[part], gen, **kwargs).detach())  # type: ignore[arg-type]

    whole = loss(None)
    shares = [loss(World(rank, 2).split(8)) for rank in (0, 1)]
    assert abs(sum(shares) / 2 - whole) < 1e-6 * whole
    assert shares[0] != shares[1]  # and the ranks did train on different rows
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    full = torch.randn(8, generator=gen_a)
    assert torch.equal(draw_rows(Rows(2, 6, 8), 4, lambda k: torch.randn(k, generator=gen_b)), full[2:6])


def test_a_world_of_one_does_not_communicate() -> None:
    one = World()
    assert not one.distributed and one.is_main
    assert one.sum([1.5, 2.0]) == [1.5, 2.0] and one.mean(3.0) == 3.0
    assert one.agree(True, False, True) == (True, False, True)
    assert one.from_main({"a": 1}) == {"a": 1}
    assert one.main_first(lambda: 5) == 5 and one.on_main(lambda: 6) == 6
    assert World(1, 4).split(8) == Rows(2, 4, 8)


def test_a_batch_that_does_not_split_evenly_is_refused() -> None:
    with pytest.raises(DiffkitError, match="cannot be split evenly across 3 processes: use a multiple of 3"):
        World(0, 3).split(8)


def test_more_processes_than_gpus_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DiffkitError, match=r"process 2 on this machine has no GPU of its own .* --nproc-per-node 2"):
        World(rank=2, size=4, local_rank=2, backend="nccl").device(torch.device("cuda"))
    assert World().device(torch.device("cpu")) == torch.device("cpu")
