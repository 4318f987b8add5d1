"""Interrupted, killed, diverging and concurrent training runs: nothing is lost, resume is bit-exact.

Training runs in `python -m diffkit train` subprocesses on the tiny preset; each is signalled once a
chosen step (a fixed-seed "random" point) shows in metrics.jsonl, with bounded waits throughout.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import one_line_error

from diffkit.errors import DiffkitError
from diffkit.runlock import RunLock, SharedRunLock, is_locked, lock_path
from diffkit.runs import RunPaths, read_checkpoint, save_checkpoint
from diffkit.settings import load_settings, parse_overrides
from diffkit.training import Trainer, TrainingDiverged, TrainingInterrupted, train_run

REPO = Path(__file__).resolve().parents[1]
STEPS = 40
# 56 training images in batches of 8: 7 steps per epoch; a loss line every step; cheap grids
SETS = [
    "data.limit=64",
    "train.batch_size=8",
    f"train.max_steps={STEPS}",
    "train.log_every=1",
    "train.sample_every_epochs=0",
    "train.grid_steps=2",
    "train.precision=fp32",
    "train.threads=1",
    "train.checkpoint_every_steps=3",
    "sample.steps=2",
]
FLAGS = [arg for s in SETS for arg in ("--set", s)]
WAIT_S = 120.0


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _spawn(run: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "diffkit", "train", "--preset", "tiny", "--run-dir", str(run), *extra],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _logged_steps(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(x)["step"] for x in lines[:-1] if x.strip()]  # the last line may be half-written
    return max(steps, default=0)


def _wait_for_step(proc: subprocess.Popen[str], run: Path, step: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while _logged_steps(run) < step:
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"training ended (rc {proc.returncode}) before step {step}: {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"step {step} did not appear within {WAIT_S:.0f} s")
        time.sleep(0.005)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail("training did not end in time")
    return proc.returncode, out, err


def _losses(run: Path) -> list[tuple[int, str, float]]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], "val" if "val_loss" in r else "loss", r.get("val_loss", r.get("loss"))) for r in records]


def _weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return read_checkpoint(RunPaths(run).weights(name))[0]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run, in its own subprocess like the others."""
    run = tmp_path_factory.mktemp("straight") / "run"
    code, _, err = _finish(_spawn(run, *FLAGS))
    assert code == 0, err
    return run


def _same_run(a: Path, b: Path) -> None:
    assert _losses(a) == _losses(b)  # every step's loss and every validation, bit for bit, each once
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ba, bb = _weights(a, "best"), _weights(b, "best")
    assert all(torch.equal(ba[k], bb[k]) for k in ba)


# fixed-seed "random" points: the step after which the signal is sent
POINTS = random.Random(10).sample(range(2, STEPS - 12), 3)


@pytest.mark.parametrize(
    ("sig", "code", "after"),
    [(signal.SIGINT, 130, POINTS[0]), (signal.SIGTERM, 143, POINTS[1]), (signal.SIGKILL, -9, POINTS[2])],
    ids=["SIGINT", "SIGTERM", "SIGKILL"],
)
def test_signal_then_resume_is_bit_exact(straight: Path, tmp_path: Path, sig: int, code: int, after: int) -> None:
    run = tmp_path / "run"
    proc = _spawn(run, *FLAGS)
    _wait_for_step(proc, run, after)
    proc.send_signal(sig)
    rc, out, err = _finish(proc)
    assert rc == code, err
    assert "Traceback" not in err
    if sig != signal.SIGKILL:
        assert f"--run-dir {run} --resume" in out and "interrupted by" in out
        assert not lock_path(run).exists()  # released on the way out
    else:
        assert lock_path(run).exists()  # left behind by the killed process: stale
    step = read_checkpoint(RunPaths(run).weights("last"))[1]["step"]
    assert step >= (after if sig != signal.SIGKILL else after - 3)
    rc, out, err = _finish(_spawn(run, "--resume"))
    assert rc == 0, err
    if sig == signal.SIGKILL:
        assert "stale lock" in out
    _same_run(straight, run)


def test_sigterm_before_any_checkpoint_is_resumable(straight: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    no_periodic = [a for s in SETS if "checkpoint_every" not in s for a in ("--set", s)]
    proc = _spawn(run, *no_periodic)  # the first save would be at the epoch end, step 7
    _wait_for_step(proc, run, 1)
    proc.send_signal(signal.SIGTERM)
    rc, _, err = _finish(proc)
    assert rc == 143, err
    assert RunPaths(run).state("last").is_file()
    rc, _out, err = _finish(_spawn(run, "--resume"))
    assert rc == 0, err
    assert _losses(straight) == _losses(run)


def test_second_process_and_force_are_refused_while_training(tmp_path: Path, cli) -> None:
    run = tmp_path / "run"
    proc = _spawn(run, *FLAGS, "--max-steps", "100000")  # runs until stopped below
    try:
        _wait_for_step(proc, run, 4)  # past the first periodic checkpoint (step 3)
        for extra in (FLAGS, ["--force", *FLAGS], ["--resume"]):
            rc, _, err = _finish(_spawn(run, *extra))
            assert rc == 2, err
            lines = [x for x in err.splitlines() if x.strip()]
            assert len(lines) == 1 and "in use by another diffkit process" in lines[0], err
        # sampling from the live run: writing inside it is refused, reading its checkpoint to write elsewhere is not
        sample = ["sample", "--run", str(run), "--checkpoint", "last", "--num", "1", "--steps", "1", "--class", "0"]
        one_line_error(cli(*sample), "being trained", f"pid {proc.pid}", "--out DIR outside the run")
        assert not (run / "samples").exists() or not any(p.is_dir() for p in (run / "samples").iterdir())
        code, _, err = cli(*sample, "--out", str(tmp_path / "elsewhere"))
        assert code == 0, err
        assert (tmp_path / "elsewhere" / "grid.png").is_file()
        assert proc.poll() is None  # still training, its run intact
        proc.send_signal(signal.SIGTERM)
        rc, _, err = _finish(proc)
        assert rc == 143, err
    finally:
        if proc.poll() is None:
            proc.kill()
    last = read_checkpoint(RunPaths(run).weights("last"))[1]["step"]
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, last + 1))  # one writer: no interleaved or repeated lines


def test_lock_in_process(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunLock(run) as lock:
        assert lock.created_root and lock.stale_pid is None
        with pytest.raises(DiffkitError, match="in use"), RunLock(run):
            pass
        with pytest.raises(DiffkitError, match="being trained"), SharedRunLock(run):
            pass
    assert not lock_path(run).exists()
    with SharedRunLock(run), SharedRunLock(run):  # writers share it, and keep training out
        assert is_locked(run)
        with pytest.raises(DiffkitError, match="in use"), RunLock(run):
            pass
    assert not lock_path(run).exists()  # the last writer tidies the file away
    with RunLock(run) as lock:  # and a training can start again, with no stale owner to report
        assert lock.stale_pid is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(run).write_text(f"{dead.pid} somehost\n")  # what kill -9 leaves
    with RunLock(run) as lock:
        assert lock.stale_pid == dead.pid


def tiny(*extra: str):
    return load_settings("tiny", parse_overrides([*SETS, "train.max_steps=10", *extra]))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    real = Trainer.loss

    def poisoned(self, model, x0, labels, gen, p_uncond, rows=None):  # the loss turns NaN at the 5th step
        loss = real(self, model, x0, labels, gen, p_uncond, rows)
        return loss * float("nan") if self.step == 4 and model is self.model else loss

    monkeypatch.setattr(Trainer, "loss", poisoned)
    run = tmp_path / "run"
    code, _, err = cli("train", "--preset", "tiny", "--run-dir", str(run), *FLAGS)
    assert code == 2 and "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "diverged at step 5" in lines[0] and "step 3) is kept" in lines[0], err
    tensors, meta = read_checkpoint(RunPaths(run).weights("last"))
    assert meta["step"] == 3 and all(torch.isfinite(t).all() for t in tensors.values())
    assert not lock_path(run).exists()


def test_nonfinite_grad_stops_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: real(*a, **k) * float("inf"))
    with pytest.raises(TrainingDiverged, match="gradient norm"):
        train_run(tiny(), tmp_path / "run")
    assert not RunPaths(tmp_path / "run").weights("last").exists()


def test_nonfinite_weights_are_never_saved_nor_loaded(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    good, ema, bad = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    save_checkpoint(paths, "last", good, ema, {"step": 1})
    before = paths.weights("last").read_bytes()
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    with pytest.raises(DiffkitError, match="not finite"):
        save_checkpoint(paths, "last", bad, ema, {"step": 2})
    assert paths.weights("last").read_bytes() == before
    from safetensors.torch import save_file

    save_file({"model.weight": bad.weight.detach()}, str(tmp_path / "broken.safetensors"))
    with pytest.raises(DiffkitError, match="non-finite weights"):
        read_checkpoint(tmp_path / "broken.safetensors")


def test_a_stop_during_an_epoch_end_drops_its_fid_and_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the epoch end measures FID: the FID stops between its batches, the grid is not drawn,
    the run stops with its exact state, and the resumed run trains what an unbroken one would."""
    import diffkit.training.trainer as trainer_module

    signalled: list[int] = []

    class FakeFid:  # a two-batch measurement; the first call of the interrupted run presses Ctrl-C in between
        def __init__(self, interrupt: bool) -> None:
            self.interrupt = interrupt

        def __call__(self, denoiser: object, progress=None) -> dict[str, float]:
            progress(1, 2)
            if self.interrupt and not signalled:
                signalled.append(1)
                os.kill(os.getpid(), signal.SIGINT)
            progress(2, 2)
            return {"fid": 1.0}

    sets = ["train.fid_every_epochs=1", "train.sample_every_epochs=1", "train.max_steps=14"]
    monkeypatch.setattr(trainer_module, "training_fid", lambda settings: FakeFid(interrupt=False))
    _, straight = train_run(tiny(*sets), tmp_path / "straight")
    monkeypatch.setattr(trainer_module, "training_fid", lambda settings: FakeFid(interrupt=True))
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        train_run(tiny(*sets), run)
    assert stopped.value.step == 7 and stopped.value.exit_code == 130
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 7, "epoch": 1, "skipped": "fid, grid: stop requested"} in records
    assert not any("fid" in r for r in records) and not (run / "samples" / "epoch_0001.png").exists()
    assert read_checkpoint(RunPaths(run).weights("last"))[1]["step"] == 7
    _, resumed = train_run(tiny(*sets), run, resume=True)
    assert resumed.losses == straight.losses[7:]
    assert (run / "samples" / "epoch_0002.png").is_file()
