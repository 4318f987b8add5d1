"""`diffkit distill`: a tiny teacher -> student -> sample / fid round trip, exact resume, the guidance input, bad input.

The teacher is the session's tiny run (4 classes, T = 100); the student halves 4 -> 2 -> 1 steps in a few
optimiser steps. Quality is measured on the demo (README, "Few-step students"), not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import one_line_error

from diffkit.denoiser import Denoiser
from diffkit.distill import distill_run, student_settings
from diffkit.distill.run import check_teacher
from diffkit.errors import DiffkitError
from diffkit.evaluation import measuring as measure_module
from diffkit.metrics import ClassifierFeatureNet
from diffkit.models import UNet
from diffkit.models.classifier import SmallClassifier
from diffkit.process import VPProcess
from diffkit.runlock import RunLock
from diffkit.runs import RunPaths, load_run, read_checkpoint
from diffkit.samplers import sample
from diffkit.schedules import NoiseSchedule
from diffkit.settings import parse_overrides

STEPS = 6  # two rounds of three: 2 steps, then 1
SETS = ["distill.teacher_steps=4", "train.threads=1", "train.precision=fp32", "train.log_every=1"]


def _settings(teacher: Path, steps: int = 1, max_steps: int = STEPS, *extra: str):
    return student_settings(
        check_teacher(teacher, "progressive"),
        teacher,
        steps,
        "progressive",
        max_steps=max_steps,
        overrides=parse_overrides([*SETS, *extra]),
    )


@pytest.fixture(scope="module")
def student(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distill") / "student"
    distill_run(_settings(tiny_run), root)
    return root


def test_the_student_is_a_run_that_samples_in_its_steps_with_no_flags(cli, student: Path, tiny_run: Path) -> None:
    saved = load_run(student)
    d = saved.settings.distill
    assert d is not None and Path(d.teacher) == tiny_run.resolve() and (d.method, d.steps) == ("progressive", 1)
    assert (saved.settings.sample.sampler, saved.settings.sample.steps, saved.settings.sample.spacing) == (
        "ddim",
        1,
        "trailing",
    )
    assert saved.settings.model.guidance_input and saved.settings.diffusion.objective == "v"  # ε teacher -> v student
    assert (student / "samples" / "epoch_0001.png").is_file()  # the final grid (7 steps per epoch)
    code, out, err = cli("sample", "--run", str(student), "--num", "2", "--out", str(student / "s"))
    assert code == 0, err
    assert "1 model evaluations per image" in out  # one pass per image: one step, guidance as an input
    assert len(list((student / "s" / "images").glob("*.png"))) == 8  # 2 per class


def fid_row(cli, student: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """`diffkit fid run:STUDENT` with an untrained 4-class digit net (the tiny teacher's classes): its report row."""
    torch.manual_seed(0)
    net = ClassifierFeatureNet(SmallClassifier(num_classes=4), "fake-digits", {"key": "fake"})
    monkeypatch.setattr(measure_module, "digit_feature_net", lambda **_: net)
    monkeypatch.setattr(measure_module, "classifier_feature_net", lambda dataset, **_: net)
    monkeypatch.setenv("DIFFKIT_CACHE_DIR", str(tmp_path / "cache"))
    code, _out, err = cli("fid", f"run:{student}", "synthetic:test", "--num", "8", "--class-accuracy")
    assert code == 0, err
    report = json.loads(max(student.glob("eval/*/fid.json"), key=lambda p: p.stat().st_mtime).read_text())
    return report["rows"][0]


def test_fid_of_the_student(cli, student: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    row = fid_row(cli, student, monkeypatch, tmp_path)
    assert row["fid"] > 0 and 0 <= row["class_accuracy"] <= 1


def test_first_round_starts_as_the_teacher(tiny_run: Path) -> None:
    """Zero-initialised guidance MLP: the student's network, before any step, is the teacher's at every w."""
    from diffkit.distill.distiller import start_from

    teacher = load_run(tiny_run)
    student = UNet(**_unet_kwargs(teacher.model), guidance_input=True)
    start_from(student, teacher.model.state_dict(), str(tiny_run))
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([3, 30, 60, 99])
    classes = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        want = teacher.model(x, t, classes)
        for w in (1.0, 2.5):
            assert torch.equal(student(x, t, classes, guidance=torch.full((4,), w)), want)


def _unet_kwargs(model: UNet) -> dict:
    return {
        "image_size": model.image_size,
        "in_channels": model.in_channels,
        "base_channels": model.base_channels,
        "channel_mults": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [14],
        "attention_heads": 2,
        "dropout": 0.0,
        "norm_groups": 4,
        "num_classes": model.num_classes,
    }


def test_guidance_input_is_one_pass_per_step_and_w1_is_conditional() -> None:
    torch.manual_seed(0)
    plain = UNet(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, norm_groups=4, num_classes=3)
    assert not any("guidance" in k for k in plain.state_dict())  # existing runs' weights: no new parameters
    student = UNet(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, norm_groups=4, num_classes=3,
                   guidance_input=True)  # fmt: skip
    with torch.no_grad():  # as if trained: the zero-initialised layers (output, guidance MLP) are not zero
        for p in student.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    batches: list[int] = []
    student.register_forward_hook(lambda _m, args, _o: batches.append(args[0].shape[0]))
    process = VPProcess(NoiseSchedule.create("cosine", 100))
    den = Denoiser(student.eval(), process, 3, cfg_range=(1.0, 3.0))
    x, t, classes = torch.randn(5, 1, 28, 28), torch.full((5,), 40), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        at_one = den(x, t, classes, 1.0)
        ab = process.grid.alpha_bar_at(t.double()).float().reshape(-1, 1, 1, 1)
        conditional = process.predict(student(x, t, classes, guidance=torch.ones(5)), x, t, ab)
        assert torch.allclose(at_one.x0, conditional.x0, atol=1e-6)
        assert not torch.allclose(den(x, t, classes, 2.5).x0, at_one.x0)  # w reaches the network
    assert batches == [5, 5, 5]  # never the doubled cond + uncond batch
    batches.clear()
    result = sample("ddim", den.conditioned(classes, 2.0), torch.randn(5, 1, 28, 28), process.grid, 4)
    assert result.nfe == 4 and batches == [5] * 4  # 4 steps, guided, 4 passes of the batch
    with pytest.raises(DiffkitError, match="outside the guidance range"):
        den(x, t, classes, 3.5)


def _run(root: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(RunPaths(root).weights("last"))[0]


@pytest.mark.parametrize("stop", [3, 4])  # 3: at the round switch, 4: inside the second round (its saved teacher)
def test_a_stopped_distillation_resumes_bit_for_bit(tiny_run: Path, student: Path, tmp_path: Path, stop: int) -> None:
    broken = tmp_path / "broken"
    settings = _settings(tiny_run)
    distill_run(settings, broken, stop_after=stop)
    assert read_checkpoint(RunPaths(broken).weights("last"))[1]["step"] == stop
    distill_run(settings, broken, resume=True)
    whole, parts = _run(student), _run(broken)
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    assert read_checkpoint(RunPaths(broken).weights("last"))[1]["step"] == STEPS


def test_bad_input_is_one_line_and_writes_nothing(
    cli, tiny_run: Path, tiny_sr_run: Path, student: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cases = [
        (["--run", str(tmp_path / "nothing")], ["does not exist"]),
        (["--run", str(tiny_sr_run)], ["super-resolution"]),
        (["--run", str(tiny_run), "--steps", "3"], ["--steps 3 cannot be reached", "32, 16, 8, 4, 2, 1"]),
        (["--run", str(student), "--method", "consistency"], ["progressive student", "cannot teach another method"]),
        (["--run", str(tiny_run), "--method", "magic"], ["unknown distillation method 'magic'"]),
        (["--run", str(tiny_run), "--run-dir", str(tiny_run), "--force"], ["teacher's own directory"]),
    ]
    for args, fragments in cases:
        one_line_error(
            cli("distill", *args, "--run-dir", str(out)) if "--run-dir" not in args else cli("distill", *args),
            *fragments,
        )
        assert not out.exists()
    with RunLock(tiny_run):
        one_line_error(cli("distill", "--run", str(tiny_run), "--run-dir", str(out)), "still training")
    assert not out.exists()
    one_line_error(
        cli("sample", "--run", str(student), "--cfg", "5"), "--cfg 5 is outside the guidance range", "1 to 3"
    )


def test_every_command_reads_the_student(cli, student: Path, tmp_path: Path) -> None:
    """compare-samplers, inpaint, interpolate, the app and the Python API take a student like any run."""
    import diffkit
    from diffkit.app import handlers as h

    code, _, err = cli(
        "compare-samplers",
        "--run",
        str(student),
        "--samplers",
        "ddim,euler",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "cmp"),
    )
    assert code == 0, err
    code, _, err = cli(
        "inpaint",
        "--run",
        str(student),
        "--from",
        "synthetic:test:0..1",
        "--mask",
        "box",
        "--method",
        "replace",
        "--out",
        str(tmp_path / "inp"),
    )
    assert code == 0, err
    assert (tmp_path / "inp" / "scores.json").is_file()
    code, _, err = cli(
        "interpolate", "--run", str(student), "--classes", "0", "2", "--frames", "3", "--out", str(tmp_path / "itp")
    )
    assert code == 0, err
    assert (tmp_path / "itp" / "interpolation.gif").is_file()
    run = diffkit.load(student)
    images = run.sample(1, num=2, progress=False)
    assert len(images) == 2 and images.plan.steps == 1 and images.plan.cfg == run.settings.sample.cfg
    served = h.open_app(student, workdir=tmp_path / "app", device="cpu")
    assert served.error is None
    shown = h.sample(served, class_choice="1", cfg=2.0, sampler="ddim", steps=1, seed=0, num=2)
    assert shown.nfe == 1  # a guided student step is one pass
