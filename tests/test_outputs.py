"""One writer per output: a second process aiming at the same `--out`, `--export-dir` or `--save-stats` is
refused with one line (or, for `--out`, gets its own folder), never silently replacing the first's work;
an export appears only complete; unwritable outputs are found before the work."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import REPO, one_line_error

from diffkit.errors import DiffkitError
from diffkit.outputs import OutputBusy, claim, fresh_dir, staged_folder


def test_a_claim_excludes_a_second_one(tmp_path: Path) -> None:
    out = tmp_path / "stats.npz"
    with claim(out, "--save-stats"):
        assert (tmp_path / ".stats.npz.lock").read_text().split() == [str(os.getpid())]
        busy = rf"--save-stats .*stats.npz is being written by .* \(pid {os.getpid()}\)"
        with pytest.raises(OutputBusy, match=busy), claim(out, "--save-stats"):
            pass
    assert list(tmp_path.iterdir()) == []  # released and tidied
    with claim(out):  # free again
        pass


def test_fresh_dir_moves_past_a_folder_being_written(tmp_path: Path) -> None:
    with ExitStack() as first, ExitStack() as second:
        a = fresh_dir(tmp_path / "out", first)
        b = fresh_dir(tmp_path / "out", second)  # `out` is empty but claimed: the next name
        assert (a.name, b.name) == ("out", "out-2") and a.is_dir() and b.is_dir()
    assert list(tmp_path.iterdir()) == []  # made for outputs that stayed empty: removed again
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "grid.png").write_bytes(b"x")
    with ExitStack() as third:
        assert fresh_dir(tmp_path / "out", third).name == "out-2"  # empty and free again


def test_staged_folder_appears_only_complete(tmp_path: Path) -> None:
    target = tmp_path / "export"
    with pytest.raises(KeyboardInterrupt), staged_folder(target, "--export-dir") as staging:
        (staging / "00001.png").write_bytes(b"x")
        raise KeyboardInterrupt  # stopped half-way
    assert list(tmp_path.iterdir()) == []  # no partial folder, no staging, no lock
    (tmp_path / ".export.partial").mkdir()  # as a killed process leaves it
    (tmp_path / ".export.partial" / "00001.png").write_bytes(b"old")
    with staged_folder(target, "--export-dir") as staging:
        assert list(staging.iterdir()) == []  # the stale staging was cleared
        (staging / "00001.png").write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert (target / "00001.png").read_bytes() == b"new"
    with pytest.raises(DiffkitError, match="not empty"), staged_folder(target, "--export-dir"):
        pass


# ----------------------------------------------------------------------------- the CLI, concurrently


def _spawn(cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "diffkit", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _both(cwd: Path, *args: str) -> list[tuple[int, str]]:
    procs = [_spawn(cwd, *args) for _ in range(2)]
    return [(p.wait(timeout=300), p.communicate()[1]) for p in procs]


def _one_wins(results: list[tuple[int, str]], *refusals: str) -> None:
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(err for code, err in results if code == 2)
    one_line_error((2, "", err))
    assert any(r in err for r in refusals), err


def test_two_samples_into_one_out_each_get_a_folder(tiny_run: Path, tmp_path: Path) -> None:
    results = _both(tmp_path, "sample", "--run", str(tiny_run), "--num", "2", "--steps", "2", "--out", "out")
    assert [code for code, _ in results] == [0, 0], results
    grids = sorted(p.parent.name for p in tmp_path.glob("*/grid.png"))
    assert grids == ["out", "out-2"]
    assert not list(tmp_path.glob(".*"))  # no lock files left


def test_two_exports_into_one_folder(tiny_run: Path, tmp_path: Path) -> None:
    results = _both(tmp_path, "sample", "--run", str(tiny_run), "--num", "8", "--steps", "2", "--export-dir", "ex")
    _one_wins(results, "being written by another diffkit process", "is not empty")
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == [f"{i:05d}.png" for i in range(1, 9)]
    assert [p.name for p in tmp_path.iterdir()] == ["ex"]


def test_two_save_stats_to_one_file(tmp_path: Path) -> None:
    results = _both(tmp_path, "fid", "synthetic:test:0..63", "--save-stats", "s.npz")
    _one_wins(results, "being written by another diffkit process", "already exists")
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]


def test_a_claimed_output_is_refused_before_the_work(cli, tiny_run: Path, tmp_path: Path) -> None:
    for args, target in [
        (["sample", "--run", str(tiny_run), "--num", "1", "--steps", "2", "--export-dir"], tmp_path / "ex"),
        (["fid", "synthetic:test:0..63", "--save-stats"], tmp_path / "s.npz"),
    ]:
        with claim(target):  # another writer, mid-work
            one_line_error(cli(*args, str(target)), "is being written by another diffkit process")
        assert not target.exists()
