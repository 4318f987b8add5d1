"""Shared fixtures. Tests that need the real MNIST test split in ../shared/data skip (saying why) without it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    for candidate in (os.environ.get("DIFFKIT_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


@pytest.fixture
def mnist_dir() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("needs the MNIST test split: ../shared/data/MNIST/raw (or DIFFKIT_DATA_DIR) is absent")
    return found


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run the real `diffkit` entry point in-process: returns (exit code, stdout, stderr)."""
    from diffkit.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["diffkit", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean working directory (runs/ is created inside it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
