"""Consistency distillation and its sampler; both methods on edm and flow teachers.

Closed forms first (the boundary condition f(x, σ_min) = x, the multistep sampler on a perfect x̂0), then the
tiny teacher -> consistency student -> sample / fid round trip, exact resume, and bad input. Quality is
measured on the demo (README, "Few-step students"), not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, one_line_error
from test_distill import fid_row
from torch import Tensor

from diffkit.denoiser import Prediction
from diffkit.distill import distill_run, student_settings
from diffkit.distill.run import check_teacher
from diffkit.process import build_process
from diffkit.process.consistency import ConsistencyProcess
from diffkit.runs import RunPaths, load_run, read_checkpoint
from diffkit.samplers import Step, sample
from diffkit.samplers.accuracy import MU, STD, flow, gaussian_noise, processes
from diffkit.settings import DiffusionSettings, load_settings, parse_overrides

STEPS = 6  # optimiser steps of the tiny students
SETS = ["train.threads=1", "train.precision=fp32", "train.log_every=1", "distill.points=6"]


def _settings(teacher: Path, method: str = "consistency", steps: int = 2, *extra: str):
    return student_settings(
        check_teacher(teacher, method),
        teacher,
        steps,
        method,
        max_steps=STEPS,
        overrides=parse_overrides([*SETS, *extra]),
    )


# ------------------------------------------------------------------------------------ closed forms


@pytest.mark.parametrize("name", ["vp", "edm", "flow"])
def test_the_consistency_function_is_the_identity_at_sigma_min_and_the_denoiser_far_from_it(name: str) -> None:
    inner = build_process(DiffusionSettings(process=name))
    process = build_process(DiffusionSettings(process=name, consistency=True))
    assert isinstance(process, ConsistencyProcess)
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    t0 = torch.zeros(3)
    ab0 = process.grid.alpha_bar_at(t0.double()).float().reshape(-1, 1, 1, 1)
    outputs = [torch.randn(3, 1, 8, 8) for _ in range(2)]
    at_min = [process.predict(out, x, t0, ab0).x0 for out in outputs]
    assert torch.equal(at_min[0], at_min[1])  # the network's output has weight exactly 0 there
    torch.testing.assert_close(at_min[0], x / ab0.sqrt(), rtol=1e-6, atol=0)  # f(x, σ_min) = x (x = x_vp / sqrt ᾱ)
    # far from σ_min f is the process's own denoiser (r = 1 - σ_min/σ -> 1): the student starts as its teacher
    t = torch.full((3,), process.grid.timesteps * 0.6)
    ab = process.grid.alpha_bar_at(t.double()).float().reshape(-1, 1, 1, 1)
    f, d = process.predict(outputs[0], x, t, ab).x0, inner.predict(outputs[0], x, t, ab).x0
    assert 0 < float((f - d).abs().max()) < 0.02 * float(d.abs().max())
    # output_for inverts predict, so progressive-style targets would work on a consistency student too
    torch.testing.assert_close(process.predict(process.output_for(d, x, t, ab), x, t, ab).x0, d, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_multistep_consistency_sampling_with_a_perfect_x0_returns_it(steps: int) -> None:
    process = build_process(DiffusionSettings(process="flow"))
    grid = process.grid
    truth = torch.rand(4, 1, 6, 6) * 2 - 1
    seen: list[tuple[Tensor, Tensor]] = []

    def oracle(x: Tensor, t: Tensor) -> Prediction:
        seen.append((x.clone(), t.clone()))
        return Prediction(truth, torch.zeros_like(truth))

    gen = torch.Generator().manual_seed(3)
    start = torch.randn(truth.shape, generator=torch.Generator().manual_seed(9))
    states: list[Step] = []
    result = sample("consistency", oracle, start, grid, steps, generator=gen, callback=states.append)
    assert result.nfe == steps and torch.equal(result.images, truth)
    assert float(seen[0][1][0]) == grid.timesteps - 1  # trailing: the first step is at pure noise
    # every intermediate state is the oracle's x̂0 re-noised to the next level with the generator's noise
    replay = torch.Generator().manual_seed(3)
    for step in states[:-1]:
        ab = float(grid.alpha_bar_at(torch.tensor([step.t], dtype=torch.float64)))
        z = torch.randn(truth.shape, generator=replay)
        torch.testing.assert_close(step.x, ab**0.5 * truth + (1 - ab) ** 0.5 * z)


@pytest.mark.parametrize("name", ["vp", "edm", "flow"])
@pytest.mark.parametrize("steps", [1, 2])
def test_a_perfect_consistency_function_reproduces_gaussian_data_in_one_or_two_steps(name: str, steps: int) -> None:
    """On Gaussian data the consistency function is known (the exact probability-flow map to σ_min): through a
    ConsistencyProcess and the sampler it must give the data's mean and variance at once. (A denoiser's posterior
    mean instead would lose about half the variance: this sampler is for consistency students.)"""
    process = ConsistencyProcess(processes()[name])
    grid = process.grid
    ab0 = float(grid.alpha_bar[0])

    def consistency_fn(x: Tensor, t: Tensor) -> Prediction:
        ab = grid.alpha_bar_at(t[:1]).to(x.dtype)
        x0 = flow(x, float(ab), ab0) / ab0**0.5  # the same trajectory's point at σ_min, in x = x0 + σ ε terms
        return process.predict(process.output_for(x0, x, t, ab), x, t, ab)

    out = sample("consistency", consistency_fn, gaussian_noise(4000, 7), grid, steps, generator=torch.Generator())
    assert float((out.images.mean(0) - MU).abs().max()) < 0.04, out.images.mean(0)
    assert float((out.images.var(0) / STD**2 - 1).abs().max()) < 0.1, out.images.var(0)


# ------------------------------------------------------------------------------ the tiny round trip


@pytest.fixture(scope="module")
def student(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("consistency") / "student"
    distill_run(_settings(tiny_run), root)
    return root


def test_the_consistency_student_samples_in_its_steps_with_no_flags(cli, student: Path, tiny_run: Path) -> None:
    saved = load_run(student)
    d, s = saved.settings.distill, saved.settings.sample
    assert d is not None and (d.method, d.steps, Path(d.teacher)) == ("consistency", 2, tiny_run.resolve())
    assert (s.sampler, s.steps, s.spacing) == ("consistency", 2, "trailing")
    assert saved.settings.diffusion.consistency and saved.settings.diffusion.objective == "v"  # ε teacher -> v
    assert isinstance(saved.process, ConsistencyProcess)
    teacher = read_checkpoint(RunPaths(tiny_run).weights("best"))[0]
    weights = read_checkpoint(RunPaths(student).weights("last"))[0]
    moved = [k for k in teacher if not torch.equal(teacher[k], weights[k])]
    assert moved  # it trained from the teacher's weights
    code, out, err = cli("sample", "--run", str(student), "--num", "2", "--out", str(student / "s"))
    assert code == 0, err
    assert "2 model evaluations per image" in out  # two steps, guidance as an input: one pass each
    assert len(list((student / "s" / "images").glob("*.png"))) == 8  # 2 per class


def test_fid_of_the_consistency_student(cli, student: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    row = fid_row(cli, student, monkeypatch, tmp_path)
    assert row["fid"] > 0 and 0 <= row["class_accuracy"] <= 1


def test_a_stopped_consistency_distillation_resumes_bit_for_bit(tiny_run: Path, student: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    settings = _settings(tiny_run)
    distill_run(settings, broken, stop_after=2)
    assert read_checkpoint(RunPaths(broken).weights("last"))[1]["step"] == 2
    distill_run(settings, broken, resume=True)
    whole, parts = (read_checkpoint(RunPaths(r).weights("last"))[0] for r in (student, broken))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)


def test_bad_consistency_input_is_one_line_and_writes_nothing(
    cli, tiny_run: Path, student: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cases = [
        (
            ["--run", str(tiny_run), "--method", "consistency", "--steps", "8"],
            ["--steps 8 cannot be reached", "1 to 4"],
        ),
        (["--run", str(student), "--method", "consistency"], ["consistency student", "no diffusion model to teach"]),
        (["--run", str(student), "--method", "progressive"], ["consistency student", "cannot teach another method"]),
    ]
    for args, fragments in cases:
        one_line_error(cli("distill", *args, "--run-dir", str(out)), *fragments)
        assert not out.exists()


# ------------------------------------------------------------------- both methods on edm and flow


@pytest.fixture(scope="module", params=["edm", "flow"])
def process_teacher(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffkit.training import train_run

    root = tmp_path_factory.mktemp(f"teacher-{request.param}") / "teacher"
    train_run(load_settings("tiny", parse_overrides([*TINY_RUN, f"diffusion.process={request.param}"])), root)
    return root


@pytest.mark.parametrize(("method", "steps"), [("progressive", 2), ("consistency", 1)])
def test_both_methods_distil_edm_and_flow_teachers(
    cli, process_teacher: Path, tmp_path: Path, method: str, steps: int
) -> None:
    root = tmp_path / "student"
    distill_run(_settings(process_teacher, method, steps, "distill.teacher_steps=4", "distill.substeps=2"), root)
    saved = load_run(root)
    teacher = load_run(process_teacher)
    assert saved.settings.diffusion.process == teacher.settings.diffusion.process  # the teacher's process kept
    assert isinstance(saved.process, ConsistencyProcess) == (method == "consistency")
    code, out, err = cli("sample", "--run", str(root), "--num", "1", "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert f"{steps} model evaluations per image" in out
    images = load_run(root).plan()  # the student's own plan: its sampler and steps, no flags
    assert (images.sampler, images.steps) == ("ddim" if method == "progressive" else "consistency", steps)
