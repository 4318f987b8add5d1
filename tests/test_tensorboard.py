"""TensorBoard mirroring of a run's log (train.tensorboard / --tensorboard), read back with tensorboard's own reader."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RUN, one_line_error
from PIL import Image

from diffkit.runlog import RunLog, scalar_tag
from diffkit.runs import RunPaths
from diffkit.settings import load_settings, parse_overrides
from diffkit.training import train_run

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'diffkit[tensorboard]')")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

# 14 steps over 7-step epochs: a log line every 2 steps, two validations and two grids
TB_RUN = [*TINY_RUN, "train.max_steps=14", "train.log_every=2", "train.tensorboard=true"]


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})  # 0: keep all
    acc.Reload()
    return acc


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tb") / "runs" / "tiny"
    train_run(load_settings("tiny", parse_overrides(TB_RUN)), root)
    return root


def test_scalars_mirror_metrics_jsonl(tb_run: Path) -> None:
    assert list((tb_run / "tb").glob("events.out.tfevents.*"))
    acc = events(tb_run / "tb")
    assert {"train/loss", "train/lr", "train/images_per_s", "val/loss"} <= set(acc.Tags()["scalars"])
    rows = records(tb_run)
    for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("val_loss", "val/loss")):
        logged = {r["step"]: r[key] for r in rows if key in r}
        mirrored = {e.step: e.value for e in acc.Scalars(tag)}
        assert logged and mirrored.keys() == logged.keys(), tag
        # TensorBoard keeps float32: the same numbers, at the same steps
        assert all(mirrored[s] == float(np.float32(v)) for s, v in logged.items()), tag
    assert sorted(e.step for e in acc.Scalars("val/loss")) == [7, 14]


def test_epoch_grids_are_images_equal_to_the_pngs(tb_run: Path) -> None:
    acc = events(tb_run / "tb")
    grids = acc.Images("samples/grid")
    assert [g.step for g in grids] == [7, 14]
    for grid, png in zip(grids, ("epoch_0001.png", "epoch_0002.png"), strict=True):
        shown = np.asarray(Image.open(io.BytesIO(grid.encoded_image_string)).convert("RGB"))
        written = np.asarray(Image.open(tb_run / "samples" / png).convert("RGB"))
        assert shown.shape == written.shape and np.array_equal(shown, written)


def test_hparams_are_the_resolved_settings(tb_run: Path) -> None:
    acc = events(tb_run / "tb")
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["train.lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["train.max_steps"].number_value == 14
    assert start.hparams["data.dataset"].string_value == "synthetic"
    assert start.hparams["model.channel_mults"].string_value == "[1, 2]"
    assert start.hparams["model.num_classes"].number_value == 4  # settled from the data before training
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    assert {"train/loss", "val/loss"} <= {m.name.tag for m in experiment.metric_infos}


def test_without_tensorboard_no_tb_folder(tiny_run: Path) -> None:
    assert (tiny_run / "metrics.jsonl").is_file() and not (tiny_run / "tb").exists()


def test_tags_follow_the_metrics_keys() -> None:
    assert [scalar_tag(k) for k in ("loss", "lr", "images_per_s", "val_loss", "fid", "fid_samples", "kid")] == [
        "train/loss",
        "train/lr",
        "train/images_per_s",
        "val/loss",
        "fid/fid",
        "fid/samples",
        "kid/kid",
    ]


def test_resume_hides_the_events_after_the_resumed_step(tmp_path: Path) -> None:
    """A run killed after logging step 6 but saved at step 4: the resumed session's steps 5 and 6 replace the old."""
    paths = RunPaths(tmp_path)
    first = RunLog(paths, tensorboard=True)
    for step in range(1, 7):
        first.append({"step": step, "epoch": 0.1, "loss": float(step), "fid_features": "fake", "done": True})
    first.close()
    second = RunLog(paths, tensorboard=True)
    second.truncate(4)
    for step in (5, 6):
        second.append({"step": step, "epoch": 0.1, "loss": 10.0 * step})
    second.close()
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3, 4, 5, 6]
    acc = events(tmp_path / "tb")
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 50), (6, 60)]
    assert acc.Tags()["scalars"] == ["train/loss"]  # strings and booleans are not scalars


def test_disabled_runlog_writes_nothing(tmp_path: Path) -> None:
    log = RunLog(RunPaths(tmp_path / "run"), tensorboard=True, enabled=False)
    log.append({"step": 1, "loss": 0.5})
    log.image("samples/grid", tmp_path / "missing.png", 1)
    log.hparams({"train": {"lr": 1e-3}})
    log.truncate(0)
    log.close()
    assert not (tmp_path / "run").exists()


CLI_TINY = ["--set", "data.limit=64", "--set", "train.batch_size=8", "--set", "train.threads=1"]


def test_cli_flag_turns_it_on_and_saves_it(cli, workdir: Path) -> None:
    code, out, err = cli("train", "--preset", "tiny", "--max-steps", "2", "--tensorboard", *CLI_TINY)
    assert code == 0, err
    run = workdir / "runs" / "tiny"
    assert "tensorboard = true" in (run / "config.toml").read_text()
    assert "TensorBoard: runs/tiny/tb (view: tensorboard --logdir runs/tiny/tb)" in out
    assert "train/loss" in events(run / "tb").Tags()["scalars"]
    # --no-tensorboard wins over a preset or --set that turns it on
    args = ("--max-steps", "2", "--no-tensorboard", "--set", "train.tensorboard=true", *CLI_TINY)
    code, _, err = cli("train", "--preset", "tiny", "--run-dir", str(workdir / "off"), *args)
    assert code == 0, err
    assert not (workdir / "off" / "tb").exists()


def test_missing_package_is_one_line(cli, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    result = cli("train", "--preset", "tiny", "--max-steps", "2", "--tensorboard", *CLI_TINY)
    one_line_error(result, "pip install 'diffkit[tensorboard]'")
    assert not (workdir / "runs").exists()


def test_under_two_processes_only_rank_0_writes(tmp_path: Path) -> None:
    from test_distributed import REPO, SETS, torchrun

    run = tmp_path / "ddp"
    torchrun(str(REPO / "tests" / "ddp_worker.py"), str(run), str(tmp_path / "out"), "straight", *SETS,
             "train.tensorboard=true", cwd=tmp_path)  # fmt: skip
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1  # one writer: rank 0's
    mirrored = [e.step for e in events(run / "tb").Scalars("train/loss")]
    assert mirrored == [r["step"] for r in records(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]
