"""The network sized by the measured speed (train.model_candidates, diffkit.training.sizing)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import tomli
import torch

from diffkit import clock
from diffkit.errors import DiffkitError
from diffkit.settings import load_saved_settings, load_settings, parse_overrides
from diffkit.training import sizing, train_run
from diffkit.training.outcomes import TrainHooks
from diffkit.training.request import start_lines, training_settings
from diffkit.training.sizing import Timed, choose, share_of_peak, size_network, sizing_lines
from tests.conftest import one_line_error

# three shapes of the tiny preset's UNet (base 8, norm groups 4): the widths are what the tests tell apart
CANDIDATES = (
    "[{name='narrow', base_channels=8}, {name='wide', base_channels=16}, "
    "{name='deep', base_channels=16, num_res_blocks=2}]"
)
TINY = ["data.limit=64", "train.batch_size=8", "train.sample_every_epochs=0", "sample.steps=2", "train.threads=1"]
BUDGET = ["train.max_minutes=5", "train.max_steps=100", "train.precision=fp32", f"train.model_candidates={CANDIDATES}"]


def settings(*extra: str):  # type: ignore[no-untyped-def]
    return load_settings("tiny", parse_overrides([*TINY, *extra]))


def fake(name: str, gflop: float, step_s: float) -> Timed:
    return Timed(name, {}, 1000, step_s, gflop, "fp32")


def test_the_rule_takes_the_largest_that_gets_the_minimum_steps() -> None:
    # in 100 s: narrow 1,000 steps, wide 500, deep 200 (listed out of size order: size is GFLOP per step)
    timed = [fake("deep", 4.0, 0.5), fake("narrow", 1.0, 0.1), fake("wide", 2.0, 0.2)]
    assert choose(timed, 100.0, 300)[0] == 2  # wide: 500 >= 300; deep's 200 are too few
    assert "deep would get fewer" in choose(timed, 100.0, 300)[1]
    assert choose(timed, 100.0, 200)[0] == 0  # deep gets exactly 200
    assert choose(timed, 100.0, 201)[0] == 2
    assert choose(timed, 100.0, 1000)[0] == 1  # only narrow
    index, why = choose(timed, 100.0, 1001)  # none: the fastest
    assert index == 1 and "none gets 1,001 steps" in why
    assert choose(timed, 400.0, 300)[0] == 0  # four times the budget: deep's 800 steps suffice


def test_size_network_applies_the_chosen_shape_and_records_the_figures() -> None:
    s = settings(*BUDGET, "train.model_min_steps=600")
    timed = [fake("narrow", 1.0, 0.1), fake("wide", 2.0, 0.2), fake("deep", 3.0, 0.5)]
    sized, record = size_network(s, torch_cpu(), clock_start=time.perf_counter(), timed=timed)
    # usable 300 s x 0.8 = 240 s: narrow 2,400 steps, wide 1,200, deep 480 < 600
    assert record["chosen"] == "wide" and sized.model.base_channels == 16 and sized.model.num_res_blocks == 1
    assert 239.0 <= record["usable_s"] <= 240.0
    assert [c["steps_in_budget"] for c in record["candidates"]] == [2399, 1199, 479]  # a moment has passed
    assert record["candidates"][1]["gflops"] == 10.0  # 2 GFLOP in 0.2 s
    assert s.model.base_channels == 8  # the given settings are left alone
    lines = sizing_lines(record)
    assert lines[0].startswith("network wide of 3 timed here at 1 thread, batch 8")
    assert "10 GFLOP/s in fp32" in lines[1] and "3x3-convolution peak" in lines[1]


def test_the_share_of_peak_is_given_only_when_the_probe_is_a_roofline() -> None:
    assert share_of_peak(50.0, 200.0, "bf16") == ", 25 % of the 200 GFLOP/s bf16 3x3-convolution peak here"
    low = share_of_peak(107.0, 76.0, "bf16")  # what a busy AMX host once printed as "142 %"
    assert "%" not in low and "probe read only 76 GFLOP/s" in low
    assert share_of_peak(50.0, None, "fp32") == ""


def torch_cpu() -> torch.device:
    return torch.device("cpu")


def test_the_measurement_times_and_counts_each_candidate_here() -> None:
    timed = sizing.measure(settings(*BUDGET), torch_cpu())
    by = {t.name: t for t in timed}
    assert [t.name for t in timed] == ["narrow", "wide", "deep"]
    # FLOPs: a conv's cost grows with in x out channels, so doubling the width about quadruples it
    assert 3.0 < by["wide"].gflop_per_step / by["narrow"].gflop_per_step < 4.5
    assert by["deep"].gflop_per_step > 1.3 * by["wide"].gflop_per_step
    assert by["deep"].parameters > by["wide"].parameters > by["narrow"].parameters
    assert all(t.step_s > 0 and t.precision == "fp32" for t in timed)


def _fixed_timings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def measured(s, device):  # type: ignore[no-untyped-def]
        calls.append(1)
        return [fake("narrow", 1.0, 0.1), fake("wide", 2.0, 0.2), fake("deep", 3.0, 0.5)]

    monkeypatch.setattr(sizing, "measure", measured)
    monkeypatch.setattr(clock, "plan_steps", lambda **kwargs: 9)  # the clock is the one thing a test cannot repeat
    monkeypatch.setattr(clock.ClockWatch, "ready", lambda self, budget_s: self.count >= 3)
    return calls


def test_the_run_trains_records_and_resumes_the_chosen_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:  # type: ignore[no-untyped-def]
    calls = _fixed_timings(monkeypatch)
    root = tmp_path / "sized"
    # min steps 1,000 of 240 s: wide (1,200) is the largest that gets them
    trainer, first = train_run(settings(*BUDGET, "train.model_min_steps=1000"), root, stop_after=6)
    assert calls == [1] and first.steps == 6
    saved = load_saved_settings(root / "config.toml")
    assert saved.model.base_channels == 16 and saved.model.num_res_blocks == 1  # wide's, over the tiny [model]
    saved_toml = tomli.loads((root / "config.toml").read_text())
    assert saved_toml["model"]["base_channels"] == 16 and saved_toml["train"]["model_candidates"] == []
    plan = json.loads((root / "plan.json").read_text())
    assert plan["sizing"]["chosen"] == "wide" and [c["name"] for c in plan["sizing"]["candidates"]] == [
        "narrow",
        "wide",
        "deep",
    ]
    assert plan["sizing"]["candidates"][2]["step_s"] == 0.5
    info = trainer._start_info()
    assert start_lines(9, 0, info)[1].startswith("network wide of 3 timed here")
    resumed, _ = training_settings("tiny", run_dir=root, resume=True)  # as `diffkit train --resume` reads it
    _, second = train_run(resumed, root, resume=True)  # the saved config's network, not a new choice
    assert calls == [1] and second.steps == 9
    assert json.loads((root / "plan.json").read_text())["sizing"]["chosen"] == "wide"
    code, _, err = cli("sample", "--run", str(root), "--num", "2", "--steps", "2", "--out", str(tmp_path / "s.png"))
    assert code == 0, err  # the sampler rebuilt wide's network from config.toml and loaded its weights


def test_without_candidates_or_budget_the_network_is_the_preset_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fixed_timings(monkeypatch)
    trainer, _ = train_run(
        settings("train.max_minutes=5", "train.max_steps=100", "train.precision=fp32"), tmp_path / "a"
    )
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert calls == [] and "sizing" not in plan and trainer.model.base_channels == 8
    notes: list[str] = []

    class Hooks(TrainHooks):
        def note(self, message: str) -> None:
            notes.append(message)

    no_budget = [f"train.model_candidates={CANDIDATES}", "train.max_steps=3", "train.precision=fp32"]
    trainer, _ = train_run(settings(*no_budget), tmp_path / "b", hooks=Hooks())
    assert calls == [] and trainer.settings.model.base_channels == 8
    assert notes and "time budget" in notes[0]


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ("[{base_channels=16}]", ["train.model_candidates[0] needs a name"]),
        ("[{name='a', width=16}]", ["train.model_candidates[0] (a) cannot set width", "base_channels"]),
        ("[{name='a', base_channels=4}]", ["train.model_candidates[0] (a): base_channels = 4"]),
        ("[{name='a', base_channels=10}]", ["(a)", "norm_groups=4 must divide"]),
        ("[{name='a', task='super-res'}]", ["cannot set task"]),
        ("[{name='a'}, {name='a'}]", ["distinct names"]),
        ("[{name='a', patch_size=3}]", ["train.model_candidates[0].patch_size 3 does not divide data.image_size 28"]),
        ("'small'", ["train.model_candidates"]),
    ],
)
def test_bad_candidates_are_one_line_errors(cli, workdir: Path, value: str, fragments: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = cli("train", "--preset", "tiny", "--set", f"train.model_candidates={value}")
    one_line_error(result, *fragments)
    with pytest.raises(DiffkitError):
        load_settings("tiny", parse_overrides([f"train.model_candidates={value}"]))


def test_the_demo_preset_sizes_its_network() -> None:
    demo = load_settings("demo")
    names = [c["name"] for c in demo.train.model_candidates]
    assert names == ["patches", "patches-wide"] and demo.train.max_minutes
    first = demo.train.model_candidates[0]  # [model] is the first, the fastest
    assert (first["base_channels"], first["patch_size"]) == (demo.model.base_channels, demo.model.patch_size)


def test_the_cli_prints_a_note_s_setting_names(capsys: pytest.CaptureFixture[str]) -> None:
    from diffkit.cli.train import RichHooks

    RichHooks().note("train.model_candidates apply to a run with a time budget: training [model] as set")
    assert "training [model] as set" in capsys.readouterr().out  # not eaten as rich markup
