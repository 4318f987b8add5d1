"""Diffusion processes (vp, edm, flow): closed-form training targets, one contract between training and
sampling, their grids, every sampler on every process against the exact Gaussian denoiser, settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffkit.errors import DiffkitError
from diffkit.process import DiffusionProcess, EDMProcess, FlowProcess, VPProcess, build_process
from diffkit.samplers import SAMPLERS, sample
from diffkit.samplers.accuracy import MU, STD, gaussian_denoiser, gaussian_noise, measure, processes
from diffkit.schedules import NoiseSchedule
from diffkit.settings import Settings, load_settings, parse_overrides, settings_to_dict

ALL = {
    "vp-eps": VPProcess(NoiseSchedule.create("cosine", 1000), "eps"),
    "vp-v": VPProcess(NoiseSchedule.create("linear", 1000), "v", min_snr_gamma=5.0),
    "edm": EDMProcess(),
    "flow": FlowProcess(),
    "flow-uniform": FlowProcess("uniform"),
}


def batch(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64) * 0.5, torch.randn(
        n, 1, 4, 4, generator=g, dtype=torch.float64
    )


def vp_view(process: DiffusionProcess, x0: torch.Tensor, level: torch.Tensor, noise: torch.Tensor):
    """The sampler's view of a training example: the VP state, its grid position t and ᾱ."""
    alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in process.path(level))
    x = alpha * x0 + sigma * noise
    scale = (alpha**2 + sigma**2).sqrt()
    ab = alpha**2 / scale**2
    t = (
        level.double()
        if isinstance(process, VPProcess)
        else process.grid.sigma_to_t(sigma.reshape(-1) / alpha.reshape(-1))
    )
    return x / scale, t, ab


@pytest.mark.parametrize("name", list(ALL))
def test_a_network_that_outputs_its_training_target_recovers_x0_and_the_noise(name: str) -> None:
    """Closed form: the target of (x0, ε) at any level, read back by the sampling side, is exactly (x0, ε)."""
    process = ALL[name]
    x0, noise = batch()
    level = process.draw_levels(64, torch.Generator().manual_seed(1), torch.device("cpu"))
    example = process.example(x0, level, noise)
    x_vp, t, ab = vp_view(process, x0, level, noise)
    pred = process.predict(example.target, x_vp, t, ab)
    torch.testing.assert_close(pred.x0, x0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(pred.eps, noise, atol=1e-6, rtol=1e-6)
    # and the inverse: the output that yields x0 is the training target
    torch.testing.assert_close(process.output_for(x0, x_vp, t, ab), example.target, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["edm", "flow"])
def test_the_network_sees_the_same_inputs_in_training_and_in_sampling(name: str) -> None:
    process = ALL[name]
    x0, noise = batch()
    level = process.draw_levels(64, torch.Generator().manual_seed(2), torch.device("cpu"))
    example = process.example(x0, level, noise)
    x_in, noise_input = process.network_inputs(*vp_view(process, x0, level, noise))
    torch.testing.assert_close(x_in, example.x_in, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(noise_input.double(), example.noise_input.double(), atol=1e-3, rtol=1e-6)


def test_flow_target_is_the_velocity_and_x0_follows() -> None:
    x0, noise = batch()
    level = torch.rand(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    example = FlowProcess().example(x0, level, noise)
    assert torch.equal(example.target, noise - x0) and example.weight is None
    t = level.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(example.x_in, (1 - t) * x0 + t * noise)
    torch.testing.assert_close(example.x_in - t * example.target, x0)  # x̂0 = x_t - t v
    torch.testing.assert_close(example.noise_input, 1000 * level)


def test_edm_preconditioning_gives_unit_variance_inputs_and_the_lambda_weighted_loss() -> None:
    """c_in makes the input unit-variance for data of std σ_data at every σ; the plain MSE on F equals
    λ(σ) ||D - x0||² with λ = (σ² + σ_d²) / (σ σ_d)² (Karras et al. 2022, table 1)."""
    edm = EDMProcess(sigma_data=0.5)
    g = torch.Generator().manual_seed(4)
    x0, noise = (
        torch.randn(4000, 1, 2, 2, generator=g, dtype=torch.float64) * 0.5,
        torch.randn(4000, 1, 2, 2, generator=g, dtype=torch.float64),
    )
    for sigma in (0.01, 0.5, 3.0, 60.0):
        level = torch.full((4000,), sigma, dtype=torch.float64)
        example = edm.example(x0, level, noise)
        assert abs(float(example.x_in.std()) - 1.0) < 0.03, sigma
        output = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_vp, t, ab = vp_view(edm, x0, level, noise)
        d = edm.predict(output, x_vp, t, ab).x0
        lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
        torch.testing.assert_close((output - example.target).pow(2).mean(), lam * (d - x0).pow(2).mean())
        torch.testing.assert_close(example.noise_input, torch.full((4000,), 250 * math.log(sigma), dtype=torch.float64))


def test_training_levels_follow_each_distribution() -> None:
    g, cpu = torch.Generator().manual_seed(5), torch.device("cpu")
    sigmas = EDMProcess(p_mean=-1.2, p_std=1.2).draw_levels(100_000, g, cpu)
    assert abs(float(sigmas.log().mean()) + 1.2) < 0.02 and abs(float(sigmas.log().std()) - 1.2) < 0.02
    t = FlowProcess("logit-normal", 0.5, 1.0).draw_levels(100_000, g, cpu)
    logit = (t / (1 - t)).log()
    assert abs(float(logit.mean()) - 0.5) < 0.02 and abs(float(logit.std()) - 1.0) < 0.02
    u = FlowProcess("uniform").draw_levels(100_000, g, cpu)
    assert float(u.min()) >= 0 and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.005
    vp = VPProcess(NoiseSchedule.create("cosine", 50)).draw_levels(100_000, g, cpu)
    assert vp.dtype == torch.long and int(vp.min()) == 0 and int(vp.max()) == 49


def test_grids() -> None:
    edm = EDMProcess(sigma_min=0.002, sigma_max=80.0).grid
    sig = edm.sigmas
    assert float(sig[0]) == pytest.approx(0.002, rel=1e-9) and float(sig[-1]) == pytest.approx(80.0, rel=1e-9)
    steps = torch.diff(sig.log())
    assert float(steps.max() - steps.min()) < 1e-9  # log-uniform
    # Euler / Heun on this grid use EDM's own σ_i = (σ_max^(1/ρ) + i/(N-1) (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ
    i, rho = torch.arange(18, dtype=torch.float64), 7.0
    want = (80 ** (1 / rho) + i / 17 * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    torch.testing.assert_close(edm.karras_sigmas(18, rho)[:-1], want)
    flow = FlowProcess()
    assert float(flow.grid.alpha_bar[-1]) == 0.0  # ends at pure noise
    t = flow.level_of(flow.grid.alpha_bar)
    torch.testing.assert_close(t, torch.arange(1, 1001, dtype=torch.float64) / 1000)


# Every sampler on every process against the exact Gaussian denoiser, through the process's parametrisation;
# multistep consistency sampling needs a consistency function, not a denoiser (tests/test_distill_consistency.py)
STUDENT_SAMPLERS = {"consistency"}
STEPS = {
    "ddpm": 1000,
    "ddim": 200,
    "pndm": 50,
    "dpm++2m": 50,
    "dpm++3m": 20,
    "dpm++2m-sde": 100,
    "euler": 200,
    "heun": 50,
}


@pytest.mark.parametrize("process_name", ["edm", "flow"])
@pytest.mark.parametrize("sampler", [name for name in SAMPLERS if name not in STUDENT_SAMPLERS])
def test_every_sampler_reproduces_the_data_on_every_process(process_name: str, sampler: str) -> None:
    process = processes()[process_name]
    x = gaussian_noise(4000, 7)
    out = sample(
        sampler,
        gaussian_denoiser(process.grid, process),
        x,
        process.grid,
        STEPS[sampler],
        generator=torch.Generator().manual_seed(8),
    )
    flat = out.images
    assert torch.isfinite(flat).all()
    assert float((flat.mean(0) - MU).abs().max()) < 0.04, flat.mean(0)
    assert float((flat.var(0) / STD**2 - 1).abs().max()) < 0.1, flat.var(0)


@pytest.mark.parametrize("process_name", ["vp", "edm", "flow"])
@pytest.mark.parametrize(("sampler", "order"), [("ddim", 1), ("euler", 1), ("heun", 2), ("dpm++2m", 2), ("dpm++3m", 2)])
def test_deterministic_samplers_converge_at_their_order_on_every_process(
    process_name: str, sampler: str, order: int
) -> None:
    """Doubling the NFE from 25 to 50 (100 for Heun) cuts the ODE error by about 2^order (at least 2^order / 1.5;
    dpm++3m is held to second order: its first and last steps are lower order)."""
    process = processes()[process_name]
    lo, hi = (50, 100) if sampler == "heun" else (25, 50)
    coarse = measure(sampler, lo, n=1024, process=process).ode_error
    fine = measure(sampler, hi, n=1024, process=process).ode_error
    assert coarse / fine > 2**order / 1.5, (coarse, fine)


# ------------------------------------------------------------------------------------------ settings


def test_the_process_is_chosen_by_settings_and_its_options_round_trip(tmp_path: Path) -> None:
    for name, cls in (("vp", VPProcess), ("edm", EDMProcess), ("flow", FlowProcess)):
        settings = load_settings("tiny", parse_overrides([f"diffusion.process={name}"]))
        assert isinstance(build_process(settings.diffusion), cls)
        again = Settings.model_validate(settings_to_dict(settings))
        assert again.diffusion == settings.diffusion
    flow = load_settings("tiny", parse_overrides(["diffusion.process=flow", "diffusion.flow.t_distribution=uniform"]))
    assert build_process(flow.diffusion).t_distribution == "uniform"  # type: ignore[attr-defined]
    assert "schedule" not in settings_to_dict(flow)["diffusion"]  # the preset's vp options do not apply


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (["diffusion.process=sde"], "'vp', 'edm' or 'flow'"),
        (["diffusion.process=flow", "diffusion.objective=v"], "diffusion.objective belongs to process vp, not flow"),
        (
            ["diffusion.process=edm", "diffusion.min_snr_gamma=5"],
            "diffusion.min_snr_gamma belongs to process vp, not edm",
        ),
        (["diffusion.edm.p_mean=-1"], "diffusion.edm belongs to process edm, not vp"),
        (["diffusion.process=flow", "diffusion.edm.p_std=1"], "diffusion.edm belongs to process edm, not flow"),
        (
            ["diffusion.process=edm", "diffusion.edm.sigma_min=5", "diffusion.edm.sigma_max=1"],
            "sigma_max must be larger",
        ),
        (["diffusion.process=flow", "diffusion.flow.t_distribution=normal"], "'logit-normal' or 'uniform'"),
    ],
)
def test_bad_process_settings_are_one_line_errors(sets: list[str], fragment: str) -> None:
    with pytest.raises(DiffkitError) as err:
        load_settings("tiny", parse_overrides(sets))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_an_option_of_another_process_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFKIT_DIFFUSION__PROCESS", "flow")
    settings = load_settings("mnist-linear")  # a vp preset: its schedule is a preset's option, dropped
    assert settings.diffusion.process == "flow" and settings.diffusion.schedule is None
    monkeypatch.setenv("DIFFKIT_DIFFUSION__OBJECTIVE", "v")
    with pytest.raises(DiffkitError, match=r"diffusion\.objective belongs to process vp"):
        load_settings("mnist-linear")


def test_train_refuses_a_foreign_option_writing_nothing(cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import one_line_error

    result = cli("train", "--preset", "tiny", "--set", "diffusion.process=flow", "--set", "diffusion.objective=v")
    one_line_error(result, "diffusion.objective belongs to process vp, not flow")
    assert not (workdir / "runs").exists()


# ------------------------------------------------------------------------------------------ editing


@pytest.fixture(scope="module")
def process_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny runs of the continuous processes (a generator each, and a flow super-resolution model)."""
    from diffkit.training import train_run
    from tests.conftest import TINY_RUN

    root = tmp_path_factory.mktemp("process-runs")
    sr = ["model.task=super-res", "model.cond_channels=1", "model.num_classes=0"]
    runs = {
        "edm": ["diffusion.process=edm"],
        "flow": ["diffusion.process=flow"],
        "flow-sr": ["diffusion.process=flow", *sr],
    }
    for name, sets in runs.items():
        train_run(load_settings("tiny", parse_overrides([*TINY_RUN, *sets])), root / name)
    return {name: root / name for name in runs}


@pytest.mark.parametrize("process", ["edm", "flow"])
def test_inpaint_and_interpolate_work_on_each_process(
    cli, process_runs: dict[str, Path], tmp_path: Path, process: str
) -> None:  # type: ignore[no-untyped-def]
    import json

    run = str(process_runs[process])
    out = tmp_path / "inp"
    args = ["--steps", "3", "--jump", "1", "--resample", "2", "--iterations", "4", "--out", str(out)]
    code, _, err = cli(
        "inpaint",
        "--run",
        run,
        "--from",
        "synthetic:test:0..2",
        "--mask",
        "box",
        "--method",
        "replace,repaint,sds",
        *args,
    )
    assert code == 0, err
    scores = json.loads((out / "scores.json").read_text())
    assert all(math.isfinite(scores[m]["psnr"]) for m in ("replace", "repaint", "sds")), scores
    code, _, err = cli(
        "interpolate",
        "--run",
        run,
        "--images",
        "synthetic:test:0",
        "synthetic:test:1",
        "--frames",
        "4",
        "--steps",
        "3",
        "--out",
        str(tmp_path / "interp"),
    )
    assert code == 0, err
    record = json.loads((tmp_path / "interp" / "interpolation.json").read_text())
    assert math.isfinite(record["reconstruction"]["psnr"]), record


def test_super_res_works_on_flow(cli, process_runs: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    out = tmp_path / "sr"
    code, _, err = cli(
        "super-res",
        "--run",
        str(process_runs["flow-sr"]),
        "--from",
        "synthetic:test:0..3",
        "--scale",
        "2",
        "--steps",
        "3",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert math.isfinite(json.loads((out / "super-res.json").read_text())["diffusion"]["psnr"])


def test_the_run_names_its_process_when_it_trains(cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import TINY_RUN

    sets = [a for s in [*TINY_RUN, "diffusion.process=edm"] for a in ("--set", s)]
    code, out, err = cli("train", "--preset", "tiny", "--run-dir", "runs/e", *sets)
    assert code == 0, err
    assert "diffusion process edm: σ_data 0.5" in " ".join(out.split())
