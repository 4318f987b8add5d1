"""The Python face (`diffkit.load`, `diffkit.train`, the run's methods): the same images and the same one-line
errors as the CLI, PIL images in and out, str and Path alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffkit
from diffkit.api.training import overrides_of

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tiny_run: Path) -> diffkit.Run:
    return diffkit.load(str(tiny_run))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def cli_error(cli, *args: str) -> str:
    code, _, err = cli(*args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0].removeprefix("diffkit: error: ")


def test_import_is_light() -> None:
    """`import diffkit` loads neither torch nor the library: the face is imported on first use."""
    code = "import sys, diffkit; print('torch' in sys.modules, 'diffkit.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["False", "False"]


def test_load_takes_str_path_and_the_latest_run(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = diffkit.load(str(tiny_run)), diffkit.load(tiny_run)
    assert a.root == b.root == tiny_run
    monkeypatch.setenv("DIFFKIT_RUNS_DIR", str(tiny_run.parent))
    assert diffkit.load().root == tiny_run
    with pytest.raises(diffkit.DiffkitError, match="does not exist"):
        diffkit.load(tiny_run / "missing")


def test_sample_gives_the_cli_images(run: diffkit.Run, cli, tmp_path: Path) -> None:
    """Seed 5, class 1, three images: the PNGs `diffkit sample` writes are the PIL images, pixel for pixel."""
    samples = run.sample(label=1, num=3, seed=5, progress=False)
    assert samples.labels == [1, 1, 1] and samples.tensor.shape == (3, 1, 28, 28)
    assert float(samples.tensor.min()) >= -1 and float(samples.tensor.max()) <= 1
    out = tmp_path / "cli"
    code, _, err = cli("sample", "--run", str(run.root), "--class", "1", "--num", "3", "--seed", "5", "--out", str(out))
    assert code == 0, err
    for i, image in enumerate(samples.images, 1):
        assert image.mode == "L" and image.size == (28, 28)
        with Image.open(out / "images" / f"{i:05d}.png") as written:
            assert np.array_equal(pixels(image), pixels(written))


def test_sample_layouts_grid_and_png(run: diffkit.Run) -> None:
    every = run.sample(num=2, progress=False)  # a row per class
    assert every.labels == [0, 0, 1, 1, 2, 2, 3, 3] and every.nrow == 2
    some = run.sample([3, 0], num=2, progress=False)
    assert some.labels == [3, 3, 0, 0] and some.nrow == 2
    grid = every.grid(scale=1)
    assert grid.size == (2 * 30 + 2, 4 * 30 + 2)  # torchvision's layout: 2 px padding around 28 px cells
    assert every.grid(nrow=8, scale=3).size == (3 * (8 * 30 + 2), 3 * (30 + 2))
    png = every._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(__import__("io").BytesIO(png)) as shown:
        assert shown.size == every.grid().size
    # a sampler option as a keyword reaches the sampler's plan, checked by its spec
    assert dict(run.sample(0, num=1, sampler="ddim", eta=0.5, progress=False).plan.options) == {"eta": 0.5}


def test_save_writes_numbered_pngs_and_never_overwrites(run: diffkit.Run, tmp_path: Path) -> None:
    samples = run.sample(label=2, num=2, seed=1, progress=False)
    paths = samples.save(tmp_path / "five")
    assert [p.name for p in paths] == ["00001.png", "00002.png"]
    with Image.open(paths[1]) as written:
        assert np.array_equal(pixels(written), pixels(samples.images[1]))
    before = paths[0].read_bytes()
    other = run.sample(label=3, num=2, seed=9, progress=False)
    with pytest.raises(diffkit.DiffkitError, match=r"already holds 00001\.png"):
        other.save(tmp_path / "five")
    assert paths[0].read_bytes() == before
    assert not list((tmp_path / "five").glob(".*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize(
    ("kwargs", "flags"),
    [
        ({"label": 9}, ["--class", "9"]),
        ({"cfg": -1.0}, ["--cfg", "-1"]),
        ({"steps": 0}, ["--steps", "0"]),
        ({"steps": 500}, ["--steps", "500"]),
        ({"sampler": "nope"}, ["--sampler", "nope"]),
        ({"sampler": "euler", "eta": 0.5}, ["--sampler", "euler", "--eta", "0.5"]),
        ({"num": 0}, ["--num", "0"]),
    ],
)
def test_a_mistake_reads_as_the_cli_line(run: diffkit.Run, cli, kwargs: dict, flags: list[str]) -> None:
    """The same mistake from Python raises DiffkitError with the very line the CLI prints."""
    with pytest.raises(diffkit.DiffkitError) as caught:
        run.sample(progress=False, **kwargs)
    expected = cli_error(cli, "sample", "--run", str(run.root), *flags)
    if "--num" in flags:  # typer refuses --num 0 itself (min=1); the library says it with the setting's limit
        assert "num" in str(caught.value) and "greater than or equal to 1" in str(caught.value)
    else:
        assert str(caught.value) == expected
    assert "\n" not in str(caught.value)


def test_unknown_sampler_option(run: diffkit.Run) -> None:
    with pytest.raises(diffkit.DiffkitError, match="unknown sampler option 'etaa'"):
        run.sample(etaa=0.5, progress=False)


def test_watch_records_the_denoising(run: diffkit.Run) -> None:
    watched = run.watch(label=2, steps=4, seed=3, progress=False)
    assert watched.states == [0, 1, 2, 3, 4] and len(watched.frames) == 5 and len(watched.predictions) == 5
    assert watched.gif[:6] == b"GIF89a"
    # the last frame is the finished image, the one `sample` draws with the same seed
    plain = run.sample(label=2, num=1, steps=4, seed=3, progress=False)
    assert torch.equal(watched.process.xt[0, -1], plain.tensor[0])
    assert torch.equal(watched.samples.tensor, plain.tensor)
    assert watched.figure().size[1] > watched.figure().size[0] / 5  # two labelled rows: x_t and x̂0


def test_inpaint_takes_pil_paths_and_arrays(run: diffkit.Run, tmp_path: Path) -> None:
    """PIL in, PIL out: the kept pixels are the input's exactly; a path and an array give the same result."""
    source = run.sample(label=1, num=1, seed=2, progress=False).images[0]
    done = run.inpaint(source, "center", "replace", seed=4, steps=3, progress=False)
    out = done.images["replace"][0]
    mask = done.mask[0, 0].numpy().astype(bool)
    assert out.size == (28, 28) and mask.sum() < mask.size
    assert np.array_equal(pixels(out)[mask], pixels(source)[mask])
    assert not np.array_equal(pixels(out)[~mask], pixels(source)[~mask])  # the hole was filled
    source.save(tmp_path / "digit.png")
    from_path = run.inpaint(tmp_path / "digit.png", "center", seed=4, steps=3, progress=False)
    from_str = run.inpaint(str(tmp_path / "digit.png"), "center", seed=4, steps=3, progress=False)
    from_array = run.inpaint(np.asarray(source), np.asarray(done.mask[0, 0].numpy() > 0.5), seed=4, steps=3)
    for other in (from_path, from_str, from_array):
        assert np.array_equal(pixels(other.images["replace"][0]), pixels(out))
    assert set(done.scores["replace"]) == {"psnr", "ssim"}
    assert done.figure().size[0] > 28 * 3


def test_inpaint_methods_side_by_side_and_its_errors(run: diffkit.Run, cli) -> None:
    both = run.inpaint("synthetic:test:0..1", "left", ["replace", "sds"], steps=2, iterations=3, progress=False)
    assert list(both.images) == ["replace", "sds"] and len(both.images["sds"]) == 2
    with pytest.raises(diffkit.DiffkitError) as caught:
        run.inpaint("synthetic:test:0", "center", "paint", progress=False)
    line = cli_error(cli, "inpaint", "--run", str(run.root), "--from", "synthetic:test:0", "--method", "paint")
    assert str(caught.value) == line


def test_interpolate_ends_are_plain_samples(run: diffkit.Run) -> None:
    between = run.interpolate(classes=(0, 3), frames=4, steps=2, cfg=1.0, seed=6, progress=False)
    assert len(between.frames) == 4 and between.positions == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert between.gif[:6] == b"GIF89a"
    first = run.sample(label=0, num=1, sampler="ddim", steps=2, cfg=1.0, seed=6, progress=False)
    assert torch.allclose(between.result.frames[0], first.tensor[0], atol=1e-5)
    seeds = run.interpolate(seeds=(1, 2), label=2, frames=3, steps=2, progress=False)
    assert len(seeds.frames) == 3
    digit = run.sample(label=1, num=1, seed=4, progress=False).images[0]
    images = run.interpolate(images=("synthetic:test:0", digit), frames=3, steps=2, progress=False)
    assert len(images.frames) == 3 and images.frames[0].size == (28, 28)
    with pytest.raises(diffkit.DiffkitError, match="--cfg does not apply to --images"):
        run.interpolate(images=("synthetic:test:0", digit), cfg=2.0)
    with pytest.raises(diffkit.DiffkitError, match="give exactly one of --classes, --seeds, --images"):
        run.interpolate(classes=(0, 1), seeds=(1, 2))


def test_super_resolve(tiny_sr_run: Path, run: diffkit.Run) -> None:
    sr = diffkit.load(tiny_sr_run)
    truth = sr.super_resolve("synthetic:test:0..1", scale=4, steps=2, progress=False)
    assert len(truth.images) == 2 and truth.images[0].size == (28, 28)
    assert set(truth.scores) == {"bicubic", "diffusion"}
    small = Image.new("L", (7, 7), 0)
    low = sr.super_resolve(small, scale=4, steps=2, progress=False)
    assert low.truth is None and low.low.shape == (1, 1, 7, 7) and low.images[0].size == (28, 28)
    with pytest.raises(diffkit.DiffkitError, match="not a super-resolution"):
        run.super_resolve(small)


def test_fid_and_a_guidance_sweep(run: diffkit.Run) -> None:
    one = run.fid("synthetic:test", num=20, steps=2, progress=False)
    assert np.isfinite(one.fid) and one.fid > 0 and one.floor is not None and one.floor > 0
    sweep = run.fid("synthetic:test", num=20, steps=2, cfg=[0, 2], progress=False)
    assert [r["cfg"] for r in sweep.rows] == [0.0, 2.0]
    assert sweep.fid == min(r["fid"] for r in sweep.rows)
    assert "real-vs-real floor" in repr(sweep)


def test_settings_config_and_metrics(run: diffkit.Run) -> None:
    assert run.settings.sample.steps == 2 and run.config["sample"]["steps"] == 2
    steps = [m["step"] for m in run.metrics if "loss" in m]
    assert steps and max(steps) == 7
    assert any("val_loss" in m for m in run.metrics)


def test_presets_and_samplers() -> None:
    assert "demo" in diffkit.presets() and diffkit.presets()["demo"]
    assert list(diffkit.samplers())[:2] == ["ddpm", "ddim"] and all(diffkit.samplers().values())
    # the name is also the samplers subpackage's: callable whichever was imported first
    code = "import diffkit.samplers, diffkit; print(len(diffkit.samplers()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert int(out.stdout) == len(diffkit.samplers())


def test_overrides_as_keywords() -> None:
    assert overrides_of({"train__lr": 1e-3, "model": {"dropout": 0.0}, "sample__steps": 3}) == {
        "train": {"lr": 1e-3},
        "model": {"dropout": 0.0},
        "sample": {"steps": 3},
    }
    assert overrides_of({"train": {"lr": 1.0}, "train__batch_size": 4}) == {"train": {"lr": 1.0, "batch_size": 4}}


@pytest.mark.slow
def test_train_returns_the_run_and_refuses_like_the_cli(tmp_path: Path, cli, capsys) -> None:
    root = tmp_path / "runs" / "t"
    trained = diffkit.train(
        "tiny", root, max_steps=3, data__limit=32, train={"batch_size": 8, "threads": 1}, sample__steps=2
    )
    out = capsys.readouterr().out
    assert "step 3/3" in out and "trained 3 of 3 steps" in out
    assert trained.root == root and trained.loaded.meta["step"] == 3
    assert trained.settings.train.batch_size == 8 and trained.settings.data.limit == 32
    with pytest.raises(diffkit.DiffkitError) as caught:
        diffkit.train("tiny", str(root), max_steps=3)
    assert str(caught.value) == cli_error(cli, "train", "--preset", "tiny", "--run-dir", str(root), "--max-steps", "3")
    with pytest.raises(diffkit.DiffkitError, match=r"unknown setting train\.lrr"):
        diffkit.train("tiny", tmp_path / "other", max_steps=3, train__lrr=1.0)
    assert not (tmp_path / "other").exists()
