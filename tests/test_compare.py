"""compare-samplers, plot-schedules, and sample's --process / --gif / --export-dir / --spacing / --clip / --rescale."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from PIL import Image
from torch import Tensor

from diffkit.compare import DEFAULT_SPREAD, compare_samplers
from diffkit.data import to_uint8
from diffkit.export import export_digits
from diffkit.frames import record_process
from diffkit.generation import cycled_classes, generate, initial_noise
from diffkit.runs import LoadedRun, load_run
from diffkit.samplers import SAMPLERS
from diffkit.sampling import SamplingPlan, rows_for
from diffkit.settings import load_settings, parse_overrides
from diffkit.training import train_run

FAST = ["data.limit=32", "train.batch_size=8", "train.max_steps=2", "train.threads=1", "train.log_every=1"]
TILE = 28 + 2  # a 28x28 image plus the grid's 2-pixel padding


def _train(root: Path, *extra: str) -> Path:
    train_run(load_settings("tiny", parse_overrides([*FAST, *extra])), root)
    return root


@pytest.fixture(scope="module")
def run(tiny_run: Path) -> Path:
    """The session's tiny class-conditional run: 4 classes, T = 100."""
    return tiny_run


@pytest.fixture(scope="module")
def uncond(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("uncond") / "runs" / "uncond", "model.num_classes=0")


@pytest.fixture(scope="module")
def loaded(run: Path) -> LoadedRun:
    return load_run(run, device="cpu")


# ------------------------------------------------------------------------------ compare-samplers


def test_compare_samplers_cli_writes_rows_table_and_picture(cli, run: Path) -> None:
    code, out, err = cli(
        "compare-samplers", "--run", str(run), "--samplers", "ddim,heun", "--steps", "2,3", "--num", "3", "--seed", "4"
    )
    assert code == 0, err
    folder = run / "compare" / "cfg2-seed4"
    report = json.loads((folder / "compare.json").read_text())
    got = [(r["sampler"], r["steps"], r["nfe"]) for r in report["rows"]]
    assert got == [("ddim", 2, 2), ("ddim", 3, 3), ("heun", 2, 3), ("heun", 3, 5)]  # heun: 2n - 1 evaluations
    for row in report["rows"]:
        assert row["seconds"] > 0 and math.isclose(row["seconds_per_image"], row["seconds"] / 3, rel_tol=1e-3)
    assert report["classes"] == [0, 1, 2] and report["seed"] == 4 and report["cfg"] == 2.0
    for text in ("NFE", "wall time", "time / image", "heun", str(folder / "compare.png")):
        assert text in out, text
    width, height = Image.open(folder / "compare.png").size
    assert height == 3 * (4 * TILE + 2)  # four rows, pixels enlarged 3x
    assert width > 3 * (3 * TILE + 2)  # three columns plus the captions
    assert (
        cli("compare-samplers", "--run", str(run), "--samplers", "ddim", "--steps", "2", "--num", "1", "--seed", "4")[0]
        == 0
    )
    assert (run / "compare" / "cfg2-seed4-2" / "compare.json").is_file()  # never overwritten


def test_every_row_starts_from_the_same_noise_and_classes(loaded: LoadedRun) -> None:
    seen: list[Tensor | None] = []
    steps_seen: list[tuple[int, int]] = []

    def brightness(images: Tensor, classes: Tensor | None) -> dict[str, float]:
        seen.append(classes)
        return {"mean": float(images.mean())}

    base = SamplingPlan(cfg=2.0, seed=1, batch_size=3)
    plans = rows_for(base, [("ddim", 3), ("ddpm", 3), ("ddim", 3), ("ddpm", 3)], {})
    classes = cycled_classes(4, None, 5)
    result = compare_samplers(
        loaded.denoiser(),
        plans,
        num=5,
        classes=classes,
        quality=[brightness],
        progress=lambda d, t: steps_seen.append((d, t)),
    )
    rows = result.rows
    assert torch.equal(rows[0].images, rows[2].images) and torch.equal(rows[1].images, rows[3].images)
    assert not torch.equal(rows[0].images, rows[1].images)
    # the same noise as any other command with this seed: image i's noise depends only on (seed, i)
    direct = generate(loaded.denoiser(), SamplingPlan(steps=3, cfg=2.0, seed=1), num=5, classes=classes)
    assert torch.equal(rows[0].images, direct.images)
    assert all(c is not None and torch.equal(c, classes) for c in seen) and len(seen) == 4
    assert result.metric_names == ["mean"] and "mean" in result.record()["rows"][0]
    assert "mean" in rows[0].caption()
    assert steps_seen[-1] == (24, 24)  # 4 rows x 3 steps x 2 batches


def test_quality_hook_adds_columns_to_the_cli_table(
    cli, run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffkit.cli.compare as command

    monkeypatch.setattr(command, "_quality", lambda *_: [lambda images, classes: {"brightness": 0.25}])
    code, out, err = cli(
        "compare-samplers",
        "--run",
        str(run),
        "--samplers",
        "euler",
        "--steps",
        "2",
        "--num",
        "2",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err
    assert "brightness" in out and "0.25" in out
    assert json.loads((tmp_path / "o" / "compare.json").read_text())["rows"][0]["brightness"] == 0.25


def test_default_spread_is_valid_and_spacing_goes_to_the_samplers_that_take_it(cli, run: Path, tmp_path: Path) -> None:
    for plan in rows_for(SamplingPlan(), DEFAULT_SPREAD, {}):
        plan.check(1000, 10)
    assert {name for name, _ in DEFAULT_SPREAD} == set(SAMPLERS)
    code, _, err = cli(
        "compare-samplers",
        "--run",
        str(run),
        "--samplers",
        "dpm++2m,euler",
        "--steps",
        "3",
        "--num",
        "1",
        "--spacing",
        "logsnr",
        "--clip",
        "clip",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "o" / "compare.json").read_text())["rows"]
    assert [r["options"] for r in rows] == [{"spacing": "logsnr"}, {}]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--samplers", "ddim,plms"],
            ["unknown sampler 'plms'", "ddpm, ddim, pndm, dpm++2m, dpm++3m, dpm++2m-sde, euler, heun"],
        ),
        (["--steps", "0"], ["--steps 0", "1 to 100"]),
        (["--steps", "5,101"], ["--steps 101", "1 to 100"]),
        (["--steps", "5,x"], ["--steps", "comma-separated"]),
        (["--samplers", "ddim", "--eta", "1.5"], ["--eta 1.5", "0"]),
        (["--samplers", "euler,heun", "--spacing", "trailing"], ["--spacing applies to", "not euler, heun"]),
        (["--samplers", "ddim", "--spacing", "uniform"], ["unknown timestep spacing 'uniform'", "logsnr"]),
        (["--class", "9"], ["--class 9", "0 to 3"]),
        (["--samplers", "ddim", "--clip", "hard"], ["--clip 'hard'", "none, clip, dynamic"]),
    ],
)
def test_compare_bad_input(cli, run: Path, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    one_line_error(cli("compare-samplers", "--run", str(run), *args, "--out", str(tmp_path / "o")), *fragments)
    assert not (tmp_path / "o").exists()


def test_guidance_on_an_unconditional_model_is_refused(cli, uncond: Path, tmp_path: Path) -> None:
    one_line_error(
        cli(
            "compare-samplers",
            "--run",
            str(uncond),
            "--samplers",
            "ddim",
            "--steps",
            "2",
            "--cfg",
            "3",
            "--out",
            str(tmp_path / "o"),
        ),
        "--cfg 3",
        "unconditional",
    )
    one_line_error(cli("sample", "--run", str(uncond), "--cfg", "3", "--out", str(tmp_path / "o")), "unconditional")
    assert not (tmp_path / "o").exists()
    code, _, err = cli(
        "compare-samplers", "--run", str(uncond), "--samplers", "ddim", "--steps", "2", "--out", str(tmp_path / "o")
    )
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "compare.json").read_text())["num"] == 8  # no classes: 8 images


# -------------------------------------------------------------------------------- plot-schedules


def _cosine(t: float, s: float = 0.008) -> float:
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2


def test_plot_schedules_writes_plots_and_closed_form_values(cli, tmp_path: Path, run: Path) -> None:
    code, out, err = cli(
        "plot-schedules",
        "--schedules",
        "cosine,linear",
        "--zero-terminal-snr",
        "--run",
        str(run),
        "--out",
        str(tmp_path / "p"),
    )
    assert code == 0, err
    names = {"schedules", "beta", "alpha_bar", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "log_snr"}
    for name in names:
        assert Image.open(tmp_path / "p" / f"{name}.png").size[0] > 300
    values = json.loads((tmp_path / "p" / "schedules.json").read_text())
    assert set(values) == {"cosine", "cosine (ZTSNR)", "linear", "linear (ZTSNR)", "run tiny", "processes"}
    assert set(values["processes"]) == {"run tiny (vp)"}  # the run's process; named processes only when asked
    cosine = values["cosine"]
    for key, q in (("alpha_bar(T/4)", 0.25), ("alpha_bar(T/2)", 0.5), ("alpha_bar(3T/4)", 0.75)):
        assert math.isclose(cosine[key], _cosine(q), rel_tol=1e-9), key  # ᾱ after q·T steps is ᾱ(q)
        assert f"{_cosine(q):.4f}" in out
    betas = [1e-4 + i * (0.02 - 1e-4) / 999 for i in range(1000)]
    assert math.isclose(values["linear"]["alpha_bar(T/2)"], math.prod(1 - b for b in betas[:500]), rel_tol=1e-9)
    last = math.prod(1 - b for b in betas)
    assert math.isclose(values["linear"]["terminal_snr"], last / (1 - last), rel_tol=1e-6)
    assert values["cosine (ZTSNR)"]["terminal_snr"] == 0.0 and values["linear (ZTSNR)"]["terminal_snr"] == 0.0
    assert values["run tiny"]["timesteps"] == 100
    assert math.isclose(values["run tiny"]["alpha_bar(T/2)"], _cosine(0.5), rel_tol=1e-9)


def test_plot_schedules_draws_the_processes_side_by_side(cli, tmp_path: Path) -> None:
    """Closed form: flow's grid spans log-SNR ±2 ln 999, edm's -2 ln 80 .. -2 ln 0.002; training puts the median
    log-SNR at -2 P_mean for edm (ln σ ~ N(P_mean, ·)) and at 0 for flow (log-SNR = -2 logit t, logit t ~ N(0, 1))."""
    code, out, err = cli("plot-schedules", "--processes", "edm,flow", "--out", str(tmp_path / "p"))
    assert code == 0, err
    assert Image.open(tmp_path / "p" / "processes.png").size[0] > 1000 and "training median" in out
    values = json.loads((tmp_path / "p" / "schedules.json").read_text())["processes"]
    assert math.isclose(values["flow"]["log_snr_max"], 2 * math.log(999), rel_tol=1e-6)
    assert math.isclose(values["flow"]["log_snr_min"], -2 * math.log(999), rel_tol=1e-6)
    assert math.isclose(values["edm"]["log_snr_max"], -2 * math.log(0.002), rel_tol=1e-6)
    assert math.isclose(values["edm"]["log_snr_min"], -2 * math.log(80), rel_tol=1e-6)
    assert abs(values["edm"]["training_median_log_snr"] - 2.4) < 0.3  # within a histogram bin (0.33 wide)
    assert abs(values["flow"]["training_median_log_snr"]) < 0.3
    one_line_error(
        cli("plot-schedules", "--processes", "vp,sde", "--out", str(tmp_path / "q")), "unknown process 'sde'"
    )


def test_plot_schedules_bad_input(cli, tmp_path: Path) -> None:
    one_line_error(
        cli("plot-schedules", "--schedules", "cosine,quadratic", "--out", str(tmp_path / "p")),
        "unknown schedule 'quadratic'",
        "linear, cosine, sigmoid",
    )
    one_line_error(cli("plot-schedules", "--timesteps", "1", "--out", str(tmp_path / "p")), "--timesteps 1")
    one_line_error(cli("plot-schedules", "--run", str(tmp_path), "--out", str(tmp_path / "p")), "config.toml")
    assert not (tmp_path / "p").exists()


# -------------------------------------------------------------------------------------- process


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_process_grids_for_every_sampler_with_guidance_and_a_class(
    cli, run: Path, tmp_path: Path, sampler: str
) -> None:
    code, _, err = cli(
        "sample",
        "--run",
        str(run),
        "--sampler",
        sampler,
        "--steps",
        "4",
        "--class",
        "1",
        "--cfg",
        "3",
        "--num",
        "2",
        "--process",
        "--frames",
        "3",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err
    for name in ("process_xt.png", "process_x0.png"):  # 2 images x 3 frames, pixels doubled
        assert Image.open(tmp_path / "o" / name).size == (2 * (3 * TILE + 2), 2 * (2 * TILE + 2))
    gif = Image.open(tmp_path / "o" / "process.gif")
    assert gif.size == (2 * (2 * TILE + 2), 2 * (TILE + 2)) and gif.n_frames >= 2
    assert (tmp_path / "o" / "grid.png").is_file()


def test_recorded_process_starts_at_the_noise_and_ends_at_the_images(loaded: LoadedRun) -> None:
    classes = cycled_classes(4, None, 5)
    plan = SamplingPlan(steps=4, options=(("spacing", "linspace"),), cfg=2.0, seed=3, batch_size=2)
    out, process = record_process(loaded.denoiser(), plan, num=5, classes=classes, frames=3)
    assert process.states == [0, 2, 4] and process.xt.shape == (5, 3, 1, 28, 28)
    assert torch.equal(process.xt[:, 0], initial_noise(5, (1, 28, 28), 3).clamp(-1, 1))
    assert torch.equal(process.xt[:, -1], out.images) and torch.equal(process.x0[:, -1], out.images)
    # frame 0's x̂0 is the prediction made from the noise at the first timestep (t = T - 1 with linspace)
    first = loaded.denoiser().conditioned(classes, 2.0)(initial_noise(5, (1, 28, 28), 3), torch.tensor(99.0))
    torch.testing.assert_close(process.x0[:, 0], first.x0.clamp(-1, 1))
    _, whole = record_process(loaded.denoiser(), plan.but(batch_size=250), num=5, classes=classes, frames=3)
    torch.testing.assert_close(whole.x0, process.x0)  # batches are stitched back in order


def test_gif_alone(cli, run: Path, tmp_path: Path) -> None:
    code, _, err = cli("sample", "--run", str(run), "--num", "1", "--steps", "3", "--gif", "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert (tmp_path / "o" / "process.gif").is_file() and not (tmp_path / "o" / "process_xt.png").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--steps", "4", "--process", "--frames", "6"], ["--frames 6", "2 to 5"]),
        (["--steps", "100", "--process", "--frames", "51"], ["--frames 51", "2 to 50"]),
        (["--steps", "4", "--process", "--frames", "1"], ["--frames 1"]),
        (["--frames", "3"], ["--frames goes with --process"]),
    ],
)
def test_process_bad_input(cli, run: Path, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    one_line_error(cli("sample", "--run", str(run), *args, "--out", str(tmp_path / "o")), *fragments)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------- export


def test_export_dir_holds_exactly_the_numbered_files(cli, run: Path, tmp_path: Path) -> None:
    target = tmp_path / "fid"
    code, _, err = cli(
        "sample", "--run", str(run), "--num", "12", "--steps", "2", "--batch-size", "5", "--export-dir", str(target)
    )
    assert code == 0, err
    assert sorted(p.name for p in target.iterdir()) == [f"{i:05d}.png" for i in range(1, 13)]
    first = Image.open(target / "00001.png")
    assert first.mode == "L" and first.size == (28, 28)
    assert not (run / "samples" / "ddim-2-cfg2-seed0").exists()  # no grid anywhere
    code, _, err = cli(
        "sample", "--run", str(run), "--num", "3", "--steps", "2", "--export-dir", str(tmp_path / "rgb"), "--rgb"
    )
    assert code == 0, err
    assert [Image.open(p).mode for p in sorted((tmp_path / "rgb").iterdir())] == ["RGB"] * 3


def test_export_refuses_a_non_empty_folder_and_odd_flags(cli, run: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "00001.png").write_bytes(b"keep")
    one_line_error(cli("sample", "--run", str(run), "--export-dir", str(tmp_path / "full")), "not empty")
    assert (tmp_path / "full" / "00001.png").read_bytes() == b"keep"
    one_line_error(cli("sample", "--run", str(run), "--rgb"), "--rgb goes with --export-dir")
    one_line_error(cli("sample", "--run", str(run), "--export-dir", str(tmp_path / "e"), "--process"), "--export-dir")
    assert not (tmp_path / "e").exists()


def test_export_names_and_class_cycle() -> None:
    assert export_digits(1) == 5 and export_digits(99_999) == 5 and export_digits(100_000) == 6
    labels = cycled_classes(4, None, 10)
    assert labels is not None and labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    fixed = cycled_classes(4, 2, 3)
    assert fixed is not None and fixed.tolist() == [2, 2, 2]
    assert cycled_classes(0, None, 3) is None


# --------------------------------------------------------------------------- sample's new options


@pytest.mark.parametrize(
    ("extra", "flags", "changes"),
    [
        (["--spacing", "trailing"], {"spacing": "trailing"}, True),
        (["--spacing", "leading", "--sampler", "dpm++2m"], {"spacing": "leading", "sampler": "dpm++2m"}, True),
        # logsnr is dpm++2m's own default: asking for it changes nothing (the plan leaves the default to the spec)
        (["--spacing", "logsnr", "--sampler", "dpm++2m"], {"spacing": "logsnr", "sampler": "dpm++2m"}, False),
        (
            ["--clip", "dynamic", "--rescale", "0.7", "--cfg", "4"],
            {"clip": "dynamic", "rescale": 0.7, "cfg": 4.0},
            True,
        ),
        (["--clip", "none", "--sampler", "heun"], {"clip": "none", "sampler": "heun"}, True),
        (["--cfg-interval", "0.5,3", "--cfg", "4"], {"cfg_interval": (0.5, 3.0), "cfg": 4.0}, True),
    ],
)
def test_sample_spacing_clipping_and_rescale_reach_the_sampler(
    cli, run: Path, loaded: LoadedRun, tmp_path: Path, extra: list[str], flags: dict, changes: bool
) -> None:
    """The files hold exactly what the library makes with the same plan, and each option changes them
    (unless it asks for what the sampler does anyway)."""
    code, _, err = cli("sample", "--run", str(run), "--num", "1", "--steps", "3", *extra, "--out", str(tmp_path / "o"))
    assert code == 0, err
    files = sorted((tmp_path / "o" / "images").iterdir())
    written = torch.stack([torch.from_numpy(np.array(Image.open(f))).reshape(1, 28, 28) for f in files])
    classes = torch.arange(4)
    plan = loaded.plan(steps=3, **flags)
    expected = generate(loaded.denoiser(plan), plan, num=4, classes=classes).images
    assert torch.equal(written, to_uint8(expected))
    baseline_flags = {k: v for k, v in flags.items() if k == "sampler"}
    baseline = loaded.plan(steps=3, **baseline_flags)
    plain = generate(loaded.denoiser(baseline), baseline, num=4, classes=classes).images
    assert changes == (not torch.equal(to_uint8(plain), written))
    assert plan.clipping == flags.get("clip", "clip") and plan.rescale == flags.get("rescale", 0.0)
    assert plan.sampler_options.get("spacing") == flags.get("spacing")
    assert plan.cfg_interval == flags.get("cfg_interval")


def test_cfg_interval_from_settings_and_all_overrides_it(loaded: LoadedRun) -> None:
    """sample.cfg_interval is the run's default; "all" (every noise level) draws what no interval draws,
    from Python as from the flag."""
    from diffkit.api import Run
    from diffkit.sampling import parse_cfg_interval

    classes = torch.arange(4)
    plain_plan = loaded.plan(steps=3, cfg=4.0)
    plain = generate(loaded.denoiser(plain_plan), plain_plan, num=4, classes=classes).images
    settings = loaded.settings.model_copy(deep=True)
    settings.sample.cfg_interval = (0.5, 3.0)
    narrowed = SamplingPlan.from_settings(settings.sample, loaded.num_classes, steps=3, cfg=4.0)
    assert narrowed.cfg_interval == (0.5, 3.0)
    guided_less = generate(loaded.denoiser(narrowed), narrowed, num=4, classes=classes).images
    assert not torch.equal(guided_less, plain)
    every = narrowed.but(cfg_interval=parse_cfg_interval("all"))
    torch.testing.assert_close(generate(loaded.denoiser(every), every, num=4, classes=classes).images, plain)
    api = Run(loaded).sample([0, 1, 2, 3], num=1, steps=3, cfg=4.0, cfg_interval=(0.5, 3.0), progress=False)
    assert api.plan.cfg_interval == (0.5, 3.0)
    torch.testing.assert_close(api.tensor, guided_less)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--sampler", "euler", "--spacing", "trailing"], ["--spacing applies to ddpm, ddim, pndm, dpm++2m", "euler"]),
        (["--spacing", "uniform"], ["unknown timestep spacing", "linspace"]),
        (["--clip", "hard"], ["--clip 'hard'", "dynamic"]),
        (["--rescale", "1.5"], ["--rescale 1.5"]),
        (["--cfg-interval", "3,1"], ["cfg interval (3.0, 1.0)", "0 <= LOW < HIGH"]),
        (["--cfg-interval", "nan,2"], ["cfg interval", "0 <= LOW < HIGH"]),
        (["--cfg-interval", "0.3"], ["--cfg-interval '0.3' is not LOW,HIGH"]),
        (["--sampler", "pndm", "--eta", "0.5"], ["--eta applies to ddim", "pndm"]),
        (["--eta", "-0.1"], ["--eta -0.1"]),
        (["--steps", "101"], ["--steps 101", "1 to 100"]),
    ],
)
def test_sample_bad_input(cli, run: Path, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    one_line_error(cli("sample", "--run", str(run), *args, "--out", str(tmp_path / "o")), *fragments)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------ memory: batch by batch


def test_generate_holds_one_batch_when_asked(loaded: LoadedRun, monkeypatch: pytest.MonkeyPatch) -> None:
    """With on_batch and keep, the images and their starting noise are made and dropped a batch at a time,
    and every image is still exactly the one the all-at-once call makes (noise depends on (seed, i) only)."""
    import diffkit.generation as generation

    plan, classes = SamplingPlan(steps=2, cfg=2.0, seed=3, batch_size=4), cycled_classes(4, None, 10)
    whole = generate(loaded.denoiser(), plan, num=10, classes=classes)
    noise_sizes: list[int] = []
    real_noise = generation.initial_noise

    def counted_noise(n: int, *args, **kwargs) -> Tensor:
        noise_sizes.append(n)
        return real_noise(n, *args, **kwargs)

    monkeypatch.setattr(generation, "initial_noise", counted_noise)
    batches: list[Tensor] = []
    kept = generate(loaded.denoiser(), plan, num=10, classes=classes, on_batch=lambda _, x: batches.append(x), keep=3)
    assert noise_sizes == [4, 4, 2] and [len(b) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat(batches), whole.images) and torch.equal(kept.images, whole.images[:3])
    none = generate(loaded.denoiser(), plan, num=10, classes=classes, keep=0)
    assert none.images.shape == (0, 1, 28, 28) and none.nfe == whole.nfe


def test_compare_keeps_a_picture_of_each_row_and_measures_all(loaded: LoadedRun) -> None:
    """A row measures every one of its images, keeps the first PICTURE_COLUMNS for the picture."""
    from diffkit.compare import PICTURE_COLUMNS

    seen: list[int] = []

    def count(images: Tensor, _: Tensor | None) -> dict[str, float]:
        seen.append(len(images))
        return {"n": float(len(images))}

    num = PICTURE_COLUMNS + 5
    plans = rows_for(SamplingPlan(steps=1, seed=0, batch_size=64), [("ddim", 1), ("euler", 1)], {})
    result = compare_samplers(loaded.denoiser(), plans, num=num, classes=None, quality=[count])
    assert seen == [num, num]
    assert [len(r.images) for r in result.rows] == [PICTURE_COLUMNS] * 2 and result.record()["num"] == num
    row = result.rows[0]
    assert row.metrics["n"] == num and math.isclose(row.seconds_per_image, row.seconds / num)


def test_held_images_are_bounded_by_bytes_not_count() -> None:
    from diffkit.errors import DiffkitError
    from diffkit.generation import MAX_HELD_BYTES, check_held

    fits = MAX_HELD_BYTES // (4 * 28 * 28)
    check_held(fits, (1, 28, 28), "this", "fix")  # exactly at the limit: fine
    with pytest.raises(DiffkitError, match=r"this is too large: it holds 685 images of 3x512x512 .*: fix"):
        check_held(685, (3, 512, 512), "this", "fix")  # 685 x 3 MiB > 2 GiB
