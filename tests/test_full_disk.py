"""A full disk and a read-only output: one line, exit code 2, and what was kept is intact.

Uses small tmpfs mounts (needs root and mount(8)); skipped, saying why, where mounting is not allowed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import one_line_error
from torch import nn

from diffkit.errors import DiffkitError
from diffkit.runs import STATE_KEYS, RunPaths, _pair_step, save_checkpoint


def _mount(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _mount(tmp_path / "disk", "size=1m")


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    yield from _mount(tmp_path / "ro", "ro,size=1m")


def _fill(disk: Path) -> None:
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def _save(paths: RunPaths, step: int, width: int = 64) -> None:
    model, ema = nn.Linear(width, width), nn.Linear(width, width)
    state = {key: torch.tensor([step]) for key in STATE_KEYS} | {"step": step}
    save_checkpoint(paths, "last", model, ema, {"step": step}, state)


def test_a_full_disk_keeps_the_previous_checkpoint(small_disk: Path) -> None:
    paths = RunPaths(small_disk / "run")
    _save(paths, 1)
    _fill(small_disk)
    with pytest.raises(DiffkitError, match="no space left on the device; the previous last checkpoint is kept"):
        _save(paths, 2)
    assert _pair_step(paths.weights("last"), paths.state("last")) == 1
    assert sorted(p.name for p in paths.checkpoints.iterdir()) == ["last.safetensors", "last.state.pt"]


def test_a_full_disk_during_an_export_is_one_line(cli, tiny_run: Path, small_disk: Path) -> None:
    _fill(small_disk)
    result = cli("sample", "--run", str(tiny_run), "--num", "4", "--steps", "2", "--export-dir", str(small_disk / "ex"))
    one_line_error(result, "no space left on the device")
    assert not (small_disk / "ex").exists()


def test_a_read_only_output_is_refused_before_the_work(cli, tiny_run: Path, read_only: Path) -> None:
    for args in (
        ["sample", "--run", str(tiny_run), "--num", "1", "--steps", "2", "--out", str(read_only / "out")],
        ["sample", "--run", str(tiny_run), "--num", "1", "--steps", "2", "--export-dir", str(read_only / "ex")],
        ["fid", "synthetic:test:0..63", "--save-stats", str(read_only / "s.npz")],
    ):
        code, out, err = cli(*args)
        one_line_error((code, out, err), "read-only")
        assert "img/s" not in out  # found before any image was made
