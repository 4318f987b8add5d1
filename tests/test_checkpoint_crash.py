"""The resumable checkpoint (`last.safetensors` + `last.state.pt`) survives a crash at any instant.

A crash is simulated at every file-system operation of a save in turn (nothing runs after it, as after
kill -9); then a kill -9 storm hits a real training that checkpoints every step, each kill followed by a
resume that must succeed without --force and the whole equal to an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from test_interrupts import FLAGS, SETS, _finish, _logged_steps, _same_run, _spawn, _wait_for_step
from torch import nn

from diffkit.runs import PREVIOUS, STATE_KEYS, RunPaths, _pair_step, recover_pair, save_checkpoint


class Crash(BaseException):
    """The process dies here: no handler, no cleanup runs after it."""


def _crash_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> list[int]:
    """Make the `calls`-th file-system operation (replace, link, unlink, fsync) and every later one crash."""
    seen = [0]
    for name in ("replace", "link", "unlink", "fsync"):
        real = getattr(os, name)

        def op(*args, _real=real, **kwargs):
            seen[0] += 1
            if seen[0] > calls:
                raise Crash
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, op)
    return seen


def _save(paths: RunPaths, step: int) -> None:
    torch.manual_seed(step)
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    state = {key: torch.tensor([step]) for key in STATE_KEYS} | {"step": step}
    save_checkpoint(paths, "last", model, ema, {"step": step}, state)


def test_a_crash_at_every_instant_of_a_save_leaves_a_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls, outcomes = 0, set()
    while True:
        paths = RunPaths(tmp_path / f"run{calls}")
        _save(paths, 1)
        with monkeypatch.context() as mp:
            seen = _crash_after(mp, calls)
            try:
                _save(paths, 2)
                finished = True
            except Crash:
                finished = False
        recover_pair(paths)
        step = _pair_step(paths.weights("last"), paths.state("last"))
        assert step in (1, 2), (calls, sorted(p.name for p in paths.checkpoints.iterdir()))
        outcomes.add(step)
        assert sorted(p.name for p in paths.checkpoints.iterdir()) == ["last.safetensors", "last.state.pt"]
        if finished:
            assert step == 2 and seen[0] <= calls
            break
        calls += 1
    assert outcomes == {1, 2} and calls >= 8  # both outcomes met: the crash points spanned the whole save


def test_recovery_reports_what_it_did(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    _save(paths, 1)
    assert recover_pair(paths) is None  # a complete pair: nothing to do
    (paths.checkpoints / ".last.state.pt.abc.tmp").write_bytes(b"half")
    assert "removed 1 temporary" in (recover_pair(paths) or "")
    for cur in (paths.weights("last"), paths.state("last")):
        os.link(cur, cur.with_name(cur.name.replace("last", "last" + PREVIOUS)))
    _save_state_only(paths, 2)  # as if killed between the two renames
    assert "resuming from the one before (step 1)" in (recover_pair(paths) or "")
    assert _pair_step(paths.weights("last"), paths.state("last")) == 1


def _save_state_only(paths: RunPaths, step: int) -> None:
    scratch = RunPaths(paths.root / "scratch")
    _save(scratch, step)
    os.replace(scratch.state("last"), paths.state("last"))


STORM_SETS = [*(s for s in SETS if "checkpoint_every" not in s), "train.checkpoint_every_steps=1"]


def test_kill_9_storm_then_resume(tmp_path: Path) -> None:
    """kill -9 at random instants of a run that checkpoints every step; every resume works and the end
    result equals the uninterrupted run bit for bit."""
    straight = tmp_path / "straight"
    rc, _, err = _finish(_spawn(straight, *FLAGS))
    assert rc == 0, err
    run, rng = tmp_path / "run", random.Random(18)
    flags = [a for s in STORM_SETS for a in ("--set", s)]
    proc = _spawn(run, *flags)
    target = 2
    for _kill in range(8):
        _wait_for_step(proc, run, target)  # a resumed process got here: its resume succeeded
        time.sleep(rng.uniform(0.0, 0.08))  # somewhere in a step or its checkpoint
        proc.send_signal(signal.SIGKILL)
        rc, _, err = _finish(proc)
        assert rc == -9 and "Traceback" not in err, err
        target = _logged_steps(run) + 2
        proc = _spawn(run, "--resume")
    rc, _, err = _finish(proc)
    assert rc == 0 and "Traceback" not in err, err
    _same_run(straight, run)
    left = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".") or PREVIOUS in p.name]
    assert left == []
