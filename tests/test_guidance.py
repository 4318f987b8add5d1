"""The run picks its own default guidance (`train.auto_cfg`, diffkit.training.guidance).

The digit CNN is replaced by a scorer that prefers one scale, so a tiny run on drawn shapes shows the
whole path in seconds: the sweep, plan.json and metrics.jsonl, and every command that samples the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffkit.app.handlers.served import AppRun, defaults
from diffkit.errors import DiffkitError
from diffkit.evaluation import FidRequest, evaluate
from diffkit.evaluation import measuring as measure_module
from diffkit.metrics import ClassifierFeatureNet
from diffkit.models.classifier import SmallClassifier
from diffkit.precision import FP32
from diffkit.runs import RunPaths, load_run
from diffkit.settings import load_settings, parse_overrides
from diffkit.training import Trainer, train_run
from diffkit.training import guidance as guidance_module
from diffkit.training.budget import SAVE_S, SWEEP_OVERHEAD, reserve, sweep_samples
from diffkit.training.guidance import GuidanceRow, GuidanceSweep, Yardstick, choose, crossing

TINY = [
    "data.limit=64",
    "train.batch_size=8",
    "train.max_steps=7",
    "train.threads=1",
    "sample.steps=2",
    "train.auto_cfg_samples=20",
    "train.auto_cfg_scales=[1.0, 2.5, 4.0]",
    "train.auto_cfg_refine_samples=10",
]


def _prefer(monkeypatch: pytest.MonkeyPatch, best: float) -> list[tuple[float, int, int]]:
    """Score FID = 1 + 10 |g - best| with full class accuracy; returns the calls made (guidance, num, steps)."""
    calls: list[tuple[float, int, int]] = []

    def score(denoiser, plan, num, progress):  # type: ignore[no-untyped-def]
        assert denoiser.num_classes == 4  # the run's own network
        calls.append((plan.cfg, num, plan.steps))
        return 1.0 + 10 * abs(plan.cfg - best), 1.0

    monkeypatch.setattr(guidance_module, "yardstick", lambda settings, held_out: Yardstick(score, "fake", "fake"))
    return calls


def test_choice_rule() -> None:
    rows = [GuidanceRow(1.0, 9.0, 0.936), GuidanceRow(1.5, 16.1, 0.99), GuidanceRow(2.0, 34.5, 0.997)]
    row, met = choose(rows, 0.98)  # the fast-CPU figures: 1 is best by FID but below the bar
    assert (row.cfg, met) == (1.5, True)
    slow = [GuidanceRow(1.5, 25.7, 0.934), GuidanceRow(2.0, 32.8, 0.964), GuidanceRow(3.0, 40.0, 0.964)]
    row, met = choose(slow, 0.98)  # none reaches 98 %: the most accurate, ties broken by FID
    assert (row.cfg, met) == (2.0, False)


def test_the_choice_lands_where_accuracy_crosses_the_bar() -> None:
    # a slow run's sweep: 1.5 just under the bar, so the rule alone takes 2 at FID 13.8
    rows = [
        GuidanceRow(1.0, 10.2, 0.920, 175),
        GuidanceRow(1.25, 7.9, 0.9588, 437),
        GuidanceRow(1.5, 8.8, 0.9794, 437),
        GuidanceRow(2.0, 13.8, 0.9886, 175),
    ]
    best, met = choose(rows, 0.98)
    assert (best.cfg, met) == (2.0, True)
    point = crossing(rows, best, 0.98)
    assert point is not None  # 1.5 + 0.5 * (0.98 - 0.9794) / (0.9886 - 0.9794) = 1.533, rounded up to 1.55
    assert point.cfg == 1.55 and point.judged == 0
    assert point.accuracy == pytest.approx(0.9794 + 0.1 * (0.9886 - 0.9794)) and point.accuracy >= 0.98
    assert point.fid == pytest.approx(8.8 + 0.1 * 5.0)
    # no crossing: the lower scale passes too, has the higher FID, or the crossing rounds up to the scale itself
    passes = GuidanceRow(1.5, 8.8, 0.985)
    assert crossing([*rows[:2], passes], passes, 0.98) is None  # 1.25 fails, but the crossing rounds up to 1.5
    assert crossing([GuidanceRow(1.25, 7.0, 0.982), passes], passes, 0.98) is None  # 1.25 passes too
    falling = [GuidanceRow(1.0, 9.0, 0.97), GuidanceRow(1.5, 8.0, 0.99)]
    assert crossing(falling, falling[1], 0.98) is None  # FID still falls: 1.5 is the lowest FID anyway
    near = [GuidanceRow(1.0, 6.0, 0.90), GuidanceRow(1.25, 7.0, 0.981)]
    assert crossing(near, near[1], 0.98) is None  # 1.2469 rounds up to 1.25
    assert crossing(rows, rows[0], 0.98) is None  # nothing below the lowest scale


def test_a_second_look_at_the_scales_near_the_bar() -> None:
    """200 samples put 1.25 just under 98 %; 300 more (a second seed) lift it over, and it wins on FID."""
    fid = {1.0: 5.0, 1.25: 6.0, 1.5: 8.0, 2.0: 20.0}
    first = {1.0: 0.90, 1.25: 0.975, 1.5: 0.99, 2.0: 1.0}
    calls: list[tuple[float, int, int]] = []

    def scorer(second: dict[float, float]):  # type: ignore[no-untyped-def]
        def score(denoiser, plan, num, progress):  # type: ignore[no-untyped-def]
            calls.append((plan.cfg, num, plan.seed))
            return fid[plan.cfg] + plan.seed, (first if plan.seed == 0 else second)[plan.cfg]

        return Yardstick(score, "r", "f")

    from diffkit.sampling import SamplingPlan

    plan = SamplingPlan(sampler="ddpm", steps=4, cfg=2.0, seed=0)
    sweep = GuidanceSweep(scorer({1.25: 0.99, 1.5: 0.99}), list(fid), 200, None, 0.98, refine_samples=300)
    choice = sweep.run(None, plan)  # type: ignore[arg-type]  # the scorer never looks at the denoiser
    # within two standard errors (1.98 points at 200): 1.25 and 1.5; not 1 (90 %) and not 2 (100 %)
    assert calls[4:] == [(1.25, 300, 1), (1.5, 300, 1)]
    assert (choice.chosen, choice.met) == (1.25, True)
    assert choice.row.accuracy == pytest.approx((0.975 * 200 + 0.99 * 300) / 500) and choice.row.judged == 500
    assert choice.row.fid == 6.0  # FID stays the first pass's: the same noise and count for every scale
    assert [r.judged for r in choice.rows] == [200, 500, 500, 200]

    calls.clear()  # the other way: a scale that passed on 200 fails on 500
    first[1.25] = 0.985
    choice = GuidanceSweep(scorer({1.25: 0.97, 1.5: 0.99}), list(fid), 200, None, 0.98, refine_samples=300).run(
        None,  # type: ignore[arg-type]
        plan,
    )
    assert choice.rows[1].accuracy == pytest.approx(0.976)  # and 1.5 passes at 99 %: the bar is crossed at 1.32
    assert (choice.chosen, choice.bracket) == (1.35, (1.25, 1.5)) and "between 1.25 and 1.5" in choice.reason
    assert choice.to_dict()["interpolated"]["cfg"] == 1.35 and choice.metrics()["guidance"] == 1.35
    without = GuidanceSweep(scorer({}), list(fid), 200, None, 0.98).run(None, plan)  # type: ignore[arg-type]
    assert without.chosen == 1.25 and len(calls) == 4 + 2 + 4  # no second look when refine_samples = 0

    # the clock reserves the worst case: the two costliest scales looked at again, cut in proportion
    assert sweep.network_passes(4) == ((1 + 2 + 2 + 2) * 200 + (2 + 2) * 300) * 4
    assert sweep.refined(100) == 150 and sweep.network_passes(4, 100) == (7 * 100 + 4 * 150) * 4
    assert "300 more at the 2 nearest that bar" in sweep.describe()


def test_the_sweep_counts_the_passes_it_will_make() -> None:
    """Counted by sampling two images: two passes a step with guidance, one at guidance 1; inside a guidance
    interval only some steps are guided; autoguidance adds the guide's pass at every step."""
    from diffkit.process import build_process
    from diffkit.runs import build_model
    from diffkit.training.guidance import count_sweep_passes

    def counted(*extra: str, autoguidance: float = 1.0) -> dict[float, float]:
        s = load_settings("tiny", parse_overrides([*TINY, "model.num_classes=4", "sample.sampler=ddpm", *extra]))
        sweep = GuidanceSweep(
            Yardstick(lambda *a: (0.0, 1.0), "r", "f"), [1.0, 2.5], 20, 10, 0.98, autoguidance=autoguidance
        )
        torch.manual_seed(0)
        count_sweep_passes(sweep, s, build_model(s).eval(), build_process(s.diffusion), FP32)
        return sweep.passes

    assert counted() == {1.0: 10, 2.5: 20}  # 10 steps (train.auto_cfg_steps), no interval
    assert counted("sample.cfg_interval=[0.0, 1e9]") == {1.0: 10, 2.5: 20}  # every level inside
    inside = counted("sample.cfg_interval=[0.3, 5.0]")
    assert inside[1.0] == 10 and 10 < inside[2.5] < 20  # guided only at some steps
    assert counted(autoguidance=1.5) == {1.0: 20, 2.5: 30}


def test_the_sweep_is_reserved_in_the_plan() -> None:
    settings = load_settings("tiny", parse_overrides(TINY))
    sweep = GuidanceSweep(Yardstick(lambda *a: (0.0, 1.0), "r", "f"), [1.0, 2.5, 4.0], 20, None, 0.98)
    assert sweep.network_passes(5) == (1 + 2 + 2) * 20 * 5  # guidance 1 needs one prediction, others two
    three = GuidanceSweep(sweep.yardstick, sweep.scales, 20, 3, 0.98)  # train.auto_cfg_steps = 3
    assert three.network_passes(5) == 5 * 20 * 3
    guided = GuidanceSweep(sweep.yardstick, sweep.scales, 20, None, 0.98, autoguidance=1.5)
    assert guided.network_passes(5) == (2 + 3 + 3) * 20 * 5  # and the guide's pass at every step
    assert "each with autoguidance 1.5" in guided.describe()
    # at most 15 % of the budget: fewer samples when they do not fit, none below 100
    assert sweep_samples(200, 0.1, 360.0) == 200
    assert sweep_samples(200, 0.4, 360.0) == 135
    assert sweep_samples(200, 0.6, 360.0) == 0
    assert sweep_samples(20, 100.0, 360.0) == 0 and sweep_samples(20, 1.0, 360.0) == 20
    plain = reserve(settings, 0.01, val_images=8, timesteps=100, with_fid=False)
    swept = reserve(settings, 0.01, val_images=8, timesteps=100, with_fid=False, sweep_passes=500)
    # 500 passes of 0.01 s, and the sampler's arithmetic and the scoring on top
    assert swept.sweep_s == pytest.approx(5.0 * SWEEP_OVERHEAD) and SWEEP_OVERHEAD > 1
    assert swept.final_s == pytest.approx(plain.final_s + swept.sweep_s)
    # sampling timed in its own (larger) batches: the sweep and the grids follow it, validation does not
    cheap = reserve(settings, 0.01, val_images=8, timesteps=100, with_fid=False, sweep_passes=500, sample_image_s=0.004)
    assert cheap.sweep_s == pytest.approx(500 * 0.004 * SWEEP_OVERHEAD)
    grids = swept.epoch_end_s - (8 * 0.01 + SAVE_S)  # the epoch ends' grids, amortised
    assert cheap.epoch_end_s == pytest.approx(8 * 0.01 + SAVE_S + grids * 0.4) and grids > 0


def test_a_run_samples_with_the_guidance_its_sweep_prefers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    calls = _prefer(monkeypatch, best=2.5)
    root = tmp_path / "run"
    train_run(load_settings("tiny", parse_overrides(TINY)), root)
    # every scale at the run's sampler steps, then a second look at the two of lowest FID near the bar
    # (full accuracy is within two standard errors of 98 % at 20 samples)
    assert calls == [(1.0, 20, 2), (2.5, 20, 2), (4.0, 20, 2), (2.5, 10, 2), (1.0, 10, 2)]

    record = json.loads(RunPaths(root).plan.read_text())["guidance"]
    assert record["chosen"] == 2.5 and record["met_accuracy"] is True
    assert [r["fid"] for r in record["rows"]] == [16.0, 1.0, 16.0]
    assert [r["cfg"] for r in record["rows"]] == [1.0, 2.5, 4.0]
    assert [r["accuracy_samples"] for r in record["rows"]] == [30, 30, 20]
    last = json.loads(RunPaths(root).metrics.read_text().splitlines()[-1])
    assert last["guidance"] == 2.5 and last["guidance_fid"] == 1.0 and len(last["guidance_sweep"]) == 3

    loaded = load_run(root)
    assert loaded.settings.sample.cfg == 2.5 and loaded.plan().cfg == 2.5
    assert loaded.plan(cfg=1.0).cfg == 1.0  # a flag still wins
    assert defaults(AppRun(tmp_path, loaded))["cfg"] == 2.5  # the app's guidance slider starts there
    code, out, err = cli("sample", "--run", str(root), "--num", "1")
    assert code == 0, err
    assert "guidance 2.5 (the run's own" in out and (root / "samples" / "ddim-2-cfg2.5-seed0").is_dir()
    code, out, err = cli("sample", "--run", str(root), "--num", "1", "--cfg", "1")
    assert code == 0, err
    assert "guidance 1, seed" in out and (root / "samples" / "ddim-2-cfg1-seed0").is_dir()

    # diffkit fid --cfg auto: the run's own default, beside a named scale
    monkeypatch.setattr(measure_module, "digit_feature_net", lambda **_: _fake_net(10))
    monkeypatch.setattr(measure_module, "classifier_feature_net", lambda dataset, **_: _fake_net(4))
    monkeypatch.setenv("DIFFKIT_CACHE_DIR", str(tmp_path / "cache"))
    report = evaluate(FidRequest([f"run:{root}", "synthetic:train"], num=20, cfg=[None, 4.0]))
    assert [r.cfg for r in report.rows] == [2.5, 4.0]
    assert any("picked by the run's guidance sweep" in n for n in report.notes)
    code, out, err = cli("fid", f"run:{root}", "synthetic:train", "--num", "20", "--cfg", "auto")
    assert code == 0, err
    assert "guidance 2.5" in out


def _fake_net(num_classes: int) -> ClassifierFeatureNet:
    torch.manual_seed(0)
    return ClassifierFeatureNet(SmallClassifier(num_classes=num_classes), "fake", {"key": "fake"})


def test_unconditional_and_switched_off_runs_skip_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _prefer(monkeypatch, best=2.5)
    root = tmp_path / "uncond"
    train_run(load_settings("tiny", parse_overrides([*TINY, "model.num_classes=0"])), root)
    assert calls == []
    assert "guidance" not in json.loads(RunPaths(root).plan.read_text())
    assert all("guidance" not in json.loads(line) for line in RunPaths(root).metrics.read_text().splitlines())
    assert load_run(root).plan().cfg == 1.0

    off = Trainer(load_settings("tiny", parse_overrides([*TINY, "train.auto_cfg=false"])), RunPaths(tmp_path / "off"))
    assert off.sweep is None and "train.auto_cfg = false" in off.sweep_note


def test_other_data_has_no_yardstick(tmp_path: Path) -> None:
    trainer = Trainer(load_settings("tiny", parse_overrides(TINY)), RunPaths(tmp_path / "shapes"))
    assert trainer.sweep is None and "no yardstick for synthetic" in trainer.sweep_note


def test_the_guidance_settings_are_checked() -> None:
    for bad, words in [
        ("train.auto_cfg_scales=[]", "auto_cfg_scales"),
        ("train.auto_cfg_scales=[1.0, 1.0]", "distinct"),
        ("train.auto_cfg_scales=[-1.0]", "between 0 and 100"),
        ("train.auto_cfg_samples=5", "auto_cfg_samples"),
        ("train.auto_cfg_min_accuracy=1.5", "auto_cfg_min_accuracy"),
    ]:
        with pytest.raises(DiffkitError, match=words):
            load_settings("tiny", parse_overrides([bad]))


def test_the_demo_benchmark_reports_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffkit import bench_demo

    _prefer(monkeypatch, best=2.5)
    root = tmp_path / "run"
    train_run(load_settings("tiny", parse_overrides(TINY)), root)
    monkeypatch.setattr(measure_module, "digit_feature_net", lambda **_: _fake_net(10))
    monkeypatch.setattr(measure_module, "classifier_feature_net", lambda dataset, **_: _fake_net(4))
    monkeypatch.setenv("DIFFKIT_CACHE_DIR", str(tmp_path / "cache"))
    result = bench_demo.measure_demo(root, num=20, scales=[1.0, 4.0], reference="synthetic:train")
    assert result["steps"] == 7 and result["images_per_s"] > 0 and "thread" in result["cpu_kind"]
    assert result["guidance_sweep"]["chosen"] == 2.5
    quality = result["quality"]
    assert [r["cfg"] for r in quality["rows"]] == [1.0, 2.5, 4.0]  # the picked scale measured too
    assert all(r["fid"] > 0 and 0 <= r["class_accuracy"] <= 1 for r in quality["rows"])
    assert quality["samples"] == 20 and quality["sampler"] == "ddim 2"
    text = bench_demo.markdown(result, "test")
    assert "| 2.5 (picked) |" in text and "7 steps" in text


def test_a_stop_during_the_sweep_drops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    def score(denoiser, plan, num, progress):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first scale is being sampled
        progress(num // 2, num)
        raise AssertionError("the sweep went on after a stop request")

    monkeypatch.setattr(guidance_module, "yardstick", lambda settings, held_out: Yardstick(score, "fake", "fake"))
    root = tmp_path / "run"
    _, result = train_run(load_settings("tiny", parse_overrides(TINY)), root)
    assert result.steps == 7  # the training itself was complete
    assert "guidance" not in json.loads(RunPaths(root).plan.read_text())
    last = json.loads(RunPaths(root).metrics.read_text().splitlines()[-1])
    assert last["skipped"] == "guidance sweep: stop requested"
    assert load_run(root).plan().cfg == 2.0  # the preset's sample.cfg stays
