"""Autoguidance (Karras et al. 2024): the run keeps its EMA at train.autoguide_at as a guide, saves and resumes
it exactly, and every sampling path steers away from it by sample.autoguidance (or --autoguidance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffkit
from diffkit.runs import GUIDE, RunPaths, load_run, read_checkpoint, split_weights
from diffkit.settings import load_settings, parse_overrides
from diffkit.training import train_run

# 10 steps: the guide is the EMA after step 3 (0.3 of 10)
GUIDED = [
    "data.limit=64",
    "train.batch_size=8",
    "train.max_steps=10",
    "train.sample_every_epochs=0",
    "train.threads=1",
    "sample.steps=2",
    "train.autoguide_at=0.3",
    "sample.autoguidance=2.0",
]


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(RunPaths(run).weights("last"))[0]


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("autoguidance") / "guided"
    train_run(load_settings("tiny", parse_overrides(GUIDED)), root)
    return root


def test_the_guide_is_the_ema_at_its_step_and_resume_is_bit_exact(guided_run: Path, tmp_path: Path) -> None:
    settings = load_settings("tiny", parse_overrides(GUIDED))
    train_run(settings, tmp_path / "at3", stop_after=3)
    at3 = _tensors(tmp_path / "at3")
    straight = _tensors(guided_run)
    guide = split_weights(straight, GUIDE)
    assert guide and all(torch.equal(guide[k], at3[f"ema.{k}"]) for k in guide)  # the EMA after step 3, kept
    assert not torch.equal(guide["out.2.weight"], straight["ema.out.2.weight"])  # and not the final EMA

    # stopped before the guide is taken, then resumed: the same guide and weights, bit for bit
    train_run(settings, tmp_path / "split", stop_after=2)
    assert not split_weights(_tensors(tmp_path / "split"), GUIDE)
    train_run(settings, tmp_path / "split", resume=True)
    split = _tensors(tmp_path / "split")
    assert split.keys() == straight.keys() and all(torch.equal(split[k], straight[k]) for k in split)
    # stopped after it, then resumed: the guide is read back, not taken again
    train_run(settings, tmp_path / "late", stop_after=6)
    train_run(settings, tmp_path / "late", resume=True)
    late = _tensors(tmp_path / "late")
    assert late.keys() == straight.keys() and all(torch.equal(late[k], straight[k]) for k in late)


def test_sampling_steers_by_the_runs_autoguidance_and_the_flag(guided_run: Path, cli, tmp_path: Path) -> None:
    run = diffkit.load(guided_run)
    loaded = load_run(guided_run)
    assert loaded.guide is not None and loaded.plan().autoguidance == 2.0  # sample.autoguidance
    default = run.sample(label=1, num=2, seed=3, progress=False).tensor
    same = run.sample(label=1, num=2, seed=3, progress=False, autoguidance=2.0).tensor
    off = run.sample(label=1, num=2, seed=3, progress=False, autoguidance=1.0).tensor
    assert torch.equal(default, same) and not torch.equal(default, off)

    out = tmp_path / "cli"  # the CLI's default is the API's: the same pixels
    code, _, err = cli("sample", "--run", str(guided_run), "--class", "1", "--num", "2", "--seed", "3",
                       "--out", str(out))  # fmt: skip
    assert code == 0, err
    for i, image in enumerate(run.sample(label=1, num=2, seed=3, progress=False).images, 1):
        with Image.open(out / "images" / f"{i:05d}.png") as written:
            assert np.array_equal(np.asarray(image), np.asarray(written))
    code, _, err = cli("fid", f"run:{guided_run}", "--num", "20", "--steps", "2", "--autoguidance", "1.5",
                       "--out", str(tmp_path / "fid"))  # fmt: skip
    assert code == 0, err


def test_autoguidance_without_a_guide(tiny_run: Path, cli, tmp_path: Path) -> None:
    """A run that kept no guide: the flag is a one-line error (exit 2); the setting alone falls back to off."""
    code, _, err = cli("sample", "--run", str(tiny_run), "--num", "1", "--autoguidance", "2", "--out", str(tmp_path))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "needs the run's guide network" in lines[0] and "autoguide_at" in lines[0]
    assert not any(tmp_path.iterdir())  # refused before anything was written
    code, _, err = cli("sample", "--run", str(tiny_run), "--num", "1", "--autoguidance", "0.5", "--out", str(tmp_path))
    assert code == 2 and "out of range" in err
    loaded = load_run(tiny_run)
    loaded.settings.sample.autoguidance = 2.0  # as a preset with sample.autoguidance would say
    assert loaded.guide is None and loaded.plan().autoguidance == 1.0
