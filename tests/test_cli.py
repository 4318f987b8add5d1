"""The `diffkit` command end to end, and every bad-input case: one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import one_line_error
from PIL import Image

from diffkit.settings import load_settings, parse_overrides
from diffkit.training import train_run

TINY = ["--set", "data.limit=64", "--set", "train.batch_size=8", "--set", "train.threads=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained class-conditional run (4 classes) shared by the sampling tests."""
    root = tmp_path_factory.mktemp("cli") / "runs" / "tiny"
    settings = load_settings(
        "tiny",
        parse_overrides(
            ["data.limit=64", "train.batch_size=8", "train.max_steps=7", "train.threads=1", "sample.steps=2"]
        ),
    )
    train_run(settings, root)
    return root


def test_train_then_sample_end_to_end(cli, workdir: Path) -> None:
    code, out, err = cli("train", "--preset", "tiny", "--max-steps", "7", *TINY)
    assert code == 0, err
    run = workdir / "runs" / "tiny"
    assert "parameters" in out and "runs/tiny" in out
    assert (run / "checkpoints" / "best.safetensors").is_file()
    assert (run / "samples" / "epoch_0001.png").is_file()

    code, out, err = cli("sample", "--num", "3", "--steps", "2", "--seed", "1")
    assert code == 0, err
    assert "most recent run" in out and "runs/tiny" in out
    folder = run / "samples" / "ddim-2-cfg2-seed1"
    images = sorted((folder / "images").iterdir())
    assert [p.name for p in images] == [f"{i:05d}.png" for i in range(1, 13)]  # 4 classes x 3
    assert Image.open(images[0]).size == (28, 28)
    # one row per class, 3 per row, 2-pixel padding, scaled x2
    assert Image.open(folder / "grid.png").size == (2 * (3 * 30 + 2), 2 * (4 * 30 + 2))

    code, out, _ = cli("sample", "--num", "3", "--steps", "2", "--seed", "1")  # same again: a new folder
    assert code == 0 and (run / "samples" / "ddim-2-cfg2-seed1-2" / "grid.png").is_file()


def test_sample_one_class_with_ddpm(cli, trained: Path, tmp_path: Path) -> None:
    code, out, err = cli(
        "sample",
        "--run",
        str(trained),
        "--class",
        "2",
        "--num",
        "5",
        "--sampler",
        "ddpm",
        "--steps",
        "3",
        "--cfg",
        "0",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err
    assert len(list((tmp_path / "o" / "images").iterdir())) == 5
    assert "3 model evaluations" in out


def test_resume_and_stop_after_from_the_cli(cli, workdir: Path) -> None:
    code, out, err = cli("train", "--preset", "tiny", "--max-steps", "9", "--stop-after", "4", *TINY)
    assert code == 0, err
    assert "trained 4 of 9 steps" in out and "--resume" in out
    code, out, err = cli("train", "--preset", "tiny", "--resume", "--max-steps", "9")
    assert code == 0, err
    assert "resuming at step 4" in out and "trained 9 of 9 steps" in out


def test_train_by_the_clock_says_what_it_measured_and_planned(cli, workdir: Path) -> None:
    code, out, err = cli("train", "--preset", "tiny", "--minutes", "0.2", "--run-dir", "runs/clock", *TINY)
    assert code == 0, err
    assert "CPU: " in out and "kernels " in out  # the CPU kind
    assert "precision fp32" in out or "precision bf16" in out
    assert "measured" in out or "set to" in out  # and why
    assert "planned " in out and " s/step to end within 0.2 min" in out
    assert "time used: " in out and (workdir / "runs" / "clock" / "plan.json").is_file()
    one_line_error(cli("train", "--run-dir", "runs/clock", "--resume", "--minutes", "1"), "--minutes", "drop")


def test_presets_command_lists_descriptions(cli) -> None:
    code, out, _ = cli("presets")
    assert code == 0
    for name in ("demo", "mnist-cosine", "mnist-linear", "fashion-mnist", "cifar10-cfg"):
        assert name in out


# ----------------------------------------------------------------------------------- bad input


def test_unknown_preset(cli, workdir: Path) -> None:
    one_line_error(cli("train", "--preset", "mnist-cosin"), "unknown preset", "mnist-cosine")
    assert not (workdir / "runs").exists()


def test_invalid_and_unknown_settings(cli, workdir: Path) -> None:
    one_line_error(cli("train", "--preset", "tiny", "--set", "train.lr=-3"), "train.lr", "greater than 0")
    one_line_error(cli("train", "--preset", "tiny", "--set", "model.widht=3"), "unknown setting model.widht")
    one_line_error(cli("train", "--preset", "tiny", "--set", "oops"), "key=value")
    assert not (workdir / "runs").exists()


def test_missing_dataset(cli, workdir: Path) -> None:
    result = cli("train", "--preset", "mnist-cosine", "--set", f'data_dir="{workdir / "nodata"}"')
    one_line_error(result, "MNIST train split not found", "DIFFKIT_OFFLINE=1")  # the suite forbids downloads
    assert not (workdir / "runs").exists()


def test_existing_run_needs_resume_or_force(cli, workdir: Path) -> None:
    assert cli("train", "--preset", "tiny", "--max-steps", "2", *TINY)[0] == 0
    config = workdir / "runs" / "tiny" / "config.toml"
    before = config.read_text()
    stamp = (workdir / "runs" / "tiny" / "checkpoints" / "last.safetensors").stat().st_mtime_ns
    one_line_error(cli("train", "--preset", "tiny", "--max-steps", "2", *TINY), "already exists", "--resume", "--force")
    assert config.read_text() == before
    assert (workdir / "runs" / "tiny" / "checkpoints" / "last.safetensors").stat().st_mtime_ns == stamp
    code, _, err = cli("train", "--preset", "tiny", "--max-steps", "3", "--force", *TINY)
    assert code == 0, err
    assert "max_steps = 3" in config.read_text()


def test_class_out_of_range(cli, trained: Path, tmp_path: Path) -> None:
    one_line_error(
        cli("sample", "--run", str(trained), "--class", "12", "--out", str(tmp_path / "o")),
        "--class 12",
        "0 to 3",
    )
    assert not (tmp_path / "o").exists()


def test_missing_and_corrupt_checkpoints(cli, trained: Path, tmp_path: Path) -> None:
    one_line_error(
        cli("sample", "--run", str(trained), "--checkpoint", str(tmp_path / "x.safetensors")),
        "does not exist",
    )
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 10)
    one_line_error(cli("sample", "--run", str(trained), "--checkpoint", str(bad)), "corrupt")
    one_line_error(cli("sample", "--run", str(tmp_path / "norun")), "does not exist")


def test_bad_sampler_options(cli, trained: Path) -> None:
    one_line_error(cli("sample", "--run", str(trained), "--sampler", "nope"), "unknown sampler", "ddim")
    one_line_error(cli("sample", "--run", str(trained), "--steps", "0"), "--steps 0")
    one_line_error(cli("sample", "--run", str(trained), "--steps", "100000"), "--steps 100000")
    one_line_error(cli("sample", "--run", str(trained), "--eta", "1.5"), "--eta 1.5")


def test_no_run_yet(cli, workdir: Path) -> None:
    one_line_error(cli("sample"), "no trained run", "diffkit train")


def test_sample_without_run_looks_in_diffkit_runs_dir(
    cli, workdir: Path, trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train` writes under DIFFKIT_RUNS_DIR, so `sample` without --run must look there too (not ./runs)."""
    monkeypatch.setenv("DIFFKIT_RUNS_DIR", str(trained.parent))
    code, out, err = cli("sample", "--num", "1", "--steps", "1", "--out", str(workdir / "o"))
    assert code == 0, err
    assert f"using the most recent run: {trained}" in " ".join(out.split())
    assert len(list((workdir / "o" / "images").iterdir())) == 4  # one per class of the tiny run
    monkeypatch.setenv("DIFFKIT_RUNS_DIR", str(workdir / "elsewhere"))
    one_line_error(cli("sample"), "no trained run in", "elsewhere")


@pytest.mark.parametrize("command", ["sample", "compare-samplers", "inpaint", "interpolate", "super-res"])
def test_run_commands_take_the_shared_run_options(cli, command: str) -> None:
    """`common.run_command` shows Typer the five shared options in place of the command's `args: RunArgs`."""
    code, out, err = cli(command, "--help")
    assert code == 0, err
    for flag in ("--run", "--checkpoint", "--device", "--seed", "--out"):
        assert f" {flag} " in out, flag
    assert " args " not in out.lower()


def test_shared_run_options_reach_the_command(cli, trained: Path, tmp_path: Path) -> None:
    """--seed, --checkpoint and --out arrive: two seeds differ, a seed repeated is the same image."""
    base = ["sample", "--run", str(trained), "--class", "0", "--num", "1", "--steps", "2", "--checkpoint", "last"]
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, out, err = cli(*base, "--seed", str(seed), "--out", str(tmp_path / name))
        assert code == 0, err
        assert "last.safetensors" in out
    pixels = {n: (tmp_path / n / "grid.png").read_bytes() for n in "abc"}
    assert pixels["a"] == pixels["b"] != pixels["c"]


def test_run_command_needs_run_args_first() -> None:
    from diffkit.cli.common import run_command

    def command(steps: int = 1) -> None: ...

    with pytest.raises(TypeError, match="args: RunArgs"):
        run_command(command)


def test_writing_inside_a_run_holds_it_for_the_whole_command(
    cli, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While `sample` writes into the run, no training may start there; writing elsewhere holds nothing."""
    import diffkit.cli.sample as sample_module
    from diffkit.runlock import is_locked, lock_path

    seen: list[bool] = []
    real = sample_module.save_grid

    def save_grid(*args, **kwargs):
        seen.append(is_locked(trained))
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_module, "save_grid", save_grid)
    base = ["sample", "--run", str(trained), "--class", "1", "--num", "1", "--steps", "1"]
    assert cli(*base)[0] == 0
    assert cli(*base, "--out", str(tmp_path / "elsewhere"))[0] == 0
    assert seen == [True, False]
    assert not is_locked(trained) and not lock_path(trained).exists()  # released and tidied on the way out
