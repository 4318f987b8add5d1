"""Shared fixtures. Tests that need the real MNIST test split in ../shared/data skip (saying why) without it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# No test may reach the network: a missing torchvision dataset is an error here, never a download
# (data.download defaults to true). The download tests unset it for themselves (tests/test_data_download.py).
os.environ["DIFFKIT_OFFLINE"] = "1"


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


def one_line_error(result: tuple[int, str, str], *fragments: str) -> None:
    """A user error as the CLI reports it: exit code 2 and one line on stderr holding every fragment."""
    code, _, err = result
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffkit: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


TINY_RUN = ["data.limit=64", "train.batch_size=8", "train.max_steps=7", "train.threads=1", "sample.steps=2"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny class-conditional run (drawn shapes, 4 classes, T = 100), trained once for the whole session.

    Tests may write outputs inside it (samples/, compare/, eval/, ...) but must not change its weights.
    """
    from diffkit.settings import load_settings, parse_overrides
    from diffkit.training import train_run

    root = tmp_path_factory.mktemp("shared") / "runs" / "tiny"
    train_run(load_settings("tiny", parse_overrides(TINY_RUN)), root)
    return root


@pytest.fixture(scope="session")
def tiny_sr_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny super-resolution run (SR3-style, x2 and x4 to 28x28), trained once for the session."""
    from diffkit.settings import load_settings, parse_overrides
    from diffkit.training import train_run

    root = tmp_path_factory.mktemp("shared-sr") / "runs" / "sr"
    sr = ["model.task=super-res", "model.cond_channels=1", "model.num_classes=0"]
    train_run(load_settings("tiny", parse_overrides([*TINY_RUN, *sr])), root)
    return root


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
