"""Metrics: Fréchet/KID closed forms, statistics files, PSNR/SSIM against references, feature nets."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.ndimage import gaussian_filter

from diffkit import bench, metrics
from diffkit.data import load_images
from diffkit.errors import DiffkitError
from diffkit.models.classifier import SmallClassifier, train_classifier

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("DIFFKIT_DATA_DIR") or REPO.parent / "shared" / "data")


def random_covariance(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


# ------------------------------------------------------------------------------ Fréchet distance


def test_frechet_identical_statistics_is_zero() -> None:
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=20), random_covariance(rng, 20)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_frechet_diagonal_gaussians_match_closed_form() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    var1, var2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")  # inside pytorch-fid
def test_frechet_is_symmetric_and_matches_pytorch_fid() -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(2)
    a = (rng.normal(size=12), random_covariance(rng, 12))
    b = (rng.normal(size=12) + 0.5, random_covariance(rng, 12))
    ab, ba = metrics.frechet_distance(*a, *b), metrics.frechet_distance(*b, *a)
    assert ab == pytest.approx(ba, rel=1e-9)
    assert ab == pytest.approx(calculate_frechet_distance(*a, *b), rel=1e-9)  # an independent oracle


def test_frechet_rank_deficient_covariance_uses_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_sqrtm = scipy.linalg.sqrtm
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: calls.append(a) or real_sqrtm(a))
    mu1, mu2 = np.zeros(3), np.ones(3)
    got = metrics.frechet_distance(mu1, np.diag([1.0, 0.0, 0.0]), mu2, np.diag([4.0, 0.0, 0.0]))
    assert len(calls) == 2  # singular product, then the eps·I retry
    assert math.isfinite(got)
    assert got == pytest.approx(3.0 + (1 + 4 - 2 * 2), abs=1e-4)  # ‖Δμ‖² + Σ(σ1 + σ2 − 2√(σ1σ2))
    zeros = np.zeros((3, 3))
    assert metrics.frechet_distance(mu1, zeros, mu1, zeros) == pytest.approx(0.0, abs=1e-9)


def test_frechet_from_fewer_samples_than_dimensions_is_finite() -> None:
    rng = np.random.default_rng(3)
    stats1 = metrics.feature_statistics(rng.normal(size=(5, 10)))
    stats2 = metrics.feature_statistics(rng.normal(size=(5, 10)) + 1)
    assert math.isfinite(metrics.frechet_distance(*stats1, *stats2))


def test_frechet_mismatched_dimensions() -> None:
    with pytest.raises(DiffkitError, match="same feature net"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_feature_statistics() -> None:
    feats = np.random.default_rng(4).normal(size=(50, 4))
    mu, sigma = metrics.feature_statistics(torch.from_numpy(feats))
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(mu, feats.mean(0))
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False))
    with pytest.raises(DiffkitError, match="at least 2"):
        metrics.feature_statistics(feats[:1])


# ----------------------------------------------------------------------------- kernel distance


def test_kid_same_distribution_near_zero_shifted_positive() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    mean, std = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
    assert abs(mean) < 0.02 and std >= 0
    shifted, _ = metrics.kernel_inception_distance(a, b + 1.0, num_subsets=20, subset_size=200)
    assert shifted > 0.5 and shifted > 20 * abs(mean)


def test_kid_matches_direct_formula_and_is_deterministic() -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.3
    kernel = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    pairs = [(i, j) for i in range(6) for j in range(6) if i != j]
    expected = (
        sum(kernel(x[i], x[j]) + kernel(y[i], y[j]) for i, j in pairs) / 30
        - 2 * sum(kernel(x[i], y[j]) for i in range(6) for j in range(6)) / 36
    )
    mean, std = metrics.kernel_inception_distance(x, y, num_subsets=3, subset_size=1000)  # clipped to 6
    assert mean == pytest.approx(expected, rel=1e-9) and std == pytest.approx(0.0, abs=1e-12)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(60, 3))
    first = metrics.kernel_inception_distance(a, b, num_subsets=5, subset_size=20, seed=3)
    assert metrics.kernel_inception_distance(a, b, num_subsets=5, subset_size=20, seed=3) == first
    with pytest.raises(DiffkitError, match="at least 2"):
        metrics.kernel_inception_distance(a[:1], b)


# ------------------------------------------------------------------------------ statistics files


def test_statistics_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    mu, sigma = rng.normal(size=5), random_covariance(rng, 5)
    path = tmp_path / "stats" / "ref.npz"
    metrics.save_statistics(path, mu, sigma)
    with np.load(path) as raw:  # the layout pytorch-fid reads
        assert sorted(raw.files) == ["mu", "sigma"]
    got_mu, got_sigma = metrics.load_statistics(path)
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)


def test_bad_statistics_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", mean=np.zeros(3))
    with pytest.raises(DiffkitError, match="no mu or sigma"):
        metrics.load_statistics(tmp_path / "other.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(2))
    with pytest.raises(DiffkitError, match=r"not \(D,\) and \(D, D\)"):
        metrics.load_statistics(tmp_path / "shape.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DiffkitError, match="not a readable"):
        metrics.load_statistics(tmp_path / "junk.npz")
    with pytest.raises(DiffkitError, match="does not exist"):
        metrics.load_statistics(tmp_path / "missing.npz")


# ---------------------------------------------------------------------------------- PSNR / SSIM


def reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Wang et al. 2004 written out with scipy's Gaussian filter (mirror borders), per image."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    scores = []
    for i in range(x.shape[0]):
        maps = []
        for c in range(x.shape[1]):
            a, b = x[i, c], y[i, c]

            def blur(t: np.ndarray) -> np.ndarray:
                return gaussian_filter(t, sigma=1.5, radius=5, mode="mirror")

            mu_a, mu_b = blur(a), blur(b)
            var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
            maps.append((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
        ssim_map = np.mean(maps, axis=0)
        weights = np.ones_like(ssim_map) if mask is None else mask[i, 0]
        scores.append((ssim_map * weights).sum() / weights.sum())
    return np.array(scores)


def test_ssim_identical_images_is_one() -> None:
    x = torch.rand(3, 2, 16, 20) * 2 - 1
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_ssim_matches_reference_with_and_without_mask() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 20, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 24, 20, generator=g)).clamp(-1, 1)
    np.testing.assert_allclose(metrics.ssim(x, y).numpy(), reference_ssim(x.numpy(), y.numpy(), 2.0), atol=1e-10)
    mask = torch.zeros(2, 1, 24, 20)
    mask[0, :, 2:10, 3:15] = 1
    mask[1, :, 15:, 12:] = 1  # touches the border: still scored
    np.testing.assert_allclose(
        metrics.ssim(x, y, mask=mask).numpy(), reference_ssim(x.numpy(), y.numpy(), 2.0, mask.numpy()), atol=1e-10
    )


def test_ssim_constant_shift_closed_form() -> None:
    a, c = -0.2, 0.5
    x = torch.full((1, 1, 16, 16), a, dtype=torch.float64)
    c1 = (0.01 * 2.0) ** 2
    expected = (2 * a * (a + c) + c1) / (a**2 + (a + c) ** 2 + c1)  # contrast/structure terms are 1
    assert metrics.ssim(x, x + c).item() == pytest.approx(expected, rel=1e-12)
    digits = torch.rand(2, 1, 16, 16) * 2 - 1
    shifted = metrics.ssim(digits, digits + 0.1)
    assert bool(torch.isfinite(shifted).all()) and bool((shifted < 1).all())


def test_psnr_closed_form_and_mask() -> None:
    x = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    torch.testing.assert_close(
        metrics.psnr(x, x + 0.1), torch.full((2,), 10 * math.log10(4 / 0.01), dtype=torch.float64)
    )
    y = x.clone()
    y[:, :, :4] += 0.5  # top half off by 0.5, bottom half exact
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    torch.testing.assert_close(
        metrics.psnr(x, y, mask=mask), torch.full((2,), 10 * math.log10(4 / 0.25), dtype=torch.float64)
    )
    assert bool(torch.isinf(metrics.psnr(x, y, mask=1 - mask)).all())  # the unchanged half
    assert metrics.psnr(x, x + 0.1, data_range=1.0)[0].item() == pytest.approx(20.0)


def test_psnr_ssim_input_errors() -> None:
    x = torch.zeros(2, 1, 16, 16)
    with pytest.raises(DiffkitError, match="same size"):
        metrics.psnr(x, torch.zeros(2, 1, 8, 8))
    with pytest.raises(DiffkitError, match=r"\(N, 1, H, W\)"):
        metrics.ssim(x, x, mask=torch.ones(2, 3, 16, 16))
    with pytest.raises(DiffkitError, match="selects no pixels"):
        metrics.ssim(x, x, mask=torch.zeros(2, 1, 16, 16))


# ------------------------------------------------------------------------ classifier feature net


@pytest.fixture(scope="module")
def shapes_net() -> metrics.ClassifierFeatureNet:
    train = load_images("synthetic", "train")
    model = train_classifier(train.floats(), train.labels, num_classes=4, epochs=3)
    return metrics.ClassifierFeatureNet(model, "shapes-cnn test", {})


def test_classifier_learns_synthetic_shapes(shapes_net: metrics.ClassifierFeatureNet) -> None:
    test = load_images("synthetic", "test")
    overall, per_class = metrics.class_accuracy(shapes_net, test.floats(), test.labels)
    assert overall >= 0.95, per_class
    assert sorted(per_class) == [0, 1, 2, 3]
    feats = shapes_net.features(test.images[:10])  # uint8 is converted to [-1, 1]
    assert feats.shape == (10, 128) and feats.dtype == np.float64
    np.testing.assert_allclose(feats, shapes_net.features(test.floats()[:10]), rtol=1e-6, atol=1e-6)


def test_feature_net_rejects_wrong_shape(shapes_net: metrics.ClassifierFeatureNet) -> None:
    with pytest.raises(DiffkitError, match=r"expects images of shape \(N, 1, 28, 28\)"):
        shapes_net.features(torch.zeros(2, 3, 28, 28))
    with pytest.raises(DiffkitError, match="expects images"):
        shapes_net.features(torch.zeros(2, 1, 32, 32))
    with pytest.raises(DiffkitError, match="one label per image"):
        metrics.class_accuracy(shapes_net, torch.zeros(2, 1, 28, 28), [0])


def test_training_is_bit_identical_and_restores_global_state() -> None:
    train = load_images("synthetic", "train", limit=400)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    steps: list[tuple[int, int]] = []
    first = train_classifier(
        train.floats(),
        train.labels,
        num_classes=4,
        epochs=1,
        seed=7,
        progress=lambda done, total, _: steps.append((done, total)),
    )
    second = train_classifier(train.floats(), train.labels, num_classes=4, epochs=1, seed=7)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert steps[-1] == (4, 4)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_cached_net_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = metrics.classifier_feature_net("synthetic", cache_dir=tmp_path, epochs=1)
    assert first.name.startswith(f"synthetic-cnn v{metrics.DIGIT_NET_VERSION} (synthetic, test acc ")
    info = json.loads((tmp_path / "classifiers" / "synthetic-cnn-v1-synthetic.json").read_text())
    assert info["dataset"] == "synthetic" and info["epochs"] == 1 and info["version"] == metrics.DIGIT_NET_VERSION
    assert (tmp_path / "classifiers" / "synthetic-cnn-v1-synthetic.safetensors").is_file()

    def no_training(*_: object, **__: object) -> SmallClassifier:
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(metrics.features, "train_classifier", no_training)
    second = metrics.classifier_feature_net("synthetic", cache_dir=tmp_path, epochs=1)
    assert second.name == first.name and second.info == first.info
    images = load_images("synthetic", "test", limit=8).floats()
    np.testing.assert_array_equal(first.features(images), second.features(images))
    with pytest.raises(DiffkitError, match="allow training"):
        metrics.classifier_feature_net("synthetic", cache_dir=tmp_path / "empty", train_if_missing=False)


def test_held_out_validation_without_test_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics.features, "try_load", lambda *_: None)  # as if no test split could be found
    net = metrics.classifier_feature_net("synthetic", cache_dir=tmp_path, epochs=1)
    assert "500 held out, held-out acc" in net.name
    assert net.info["train_images"] == 2048 - 500 and net.info["validation_images"] == 500


# ---------------------------------------------------------------------------------- Inception


def random_fid_inception_state() -> dict[str, torch.Tensor]:
    """A randomly initialised state dict with the FID Inception's architecture (captured, not copied)."""
    import pytorch_fid.inception as fid_inception
    import torchvision

    captured: dict[str, torch.Tensor] = {}
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(fid_inception, "load_state_dict_from_url", lambda *_, **__: {})
        mp.setattr(
            torchvision.models.Inception3, "load_state_dict", lambda self, *_, **__: captured.update(self.state_dict())
        )
        fid_inception.fid_inception_v3()
    finally:
        mp.undo()
    return captured


def test_inception_missing_weights_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *_, **__: pytest.fail("tried to download"))
    with pytest.raises(DiffkitError, match=r"not in .*hub/checkpoints.*--inception-weights PATH"):
        metrics.inception_feature_net()
    with pytest.raises(DiffkitError, match=r"nope\.pth does not exist"):
        metrics.inception_feature_net(tmp_path / "nope.pth")


def test_inception_plumbing_with_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytorch_fid.inception as fid_inception

    weights = tmp_path / "my-weights.pth"
    torch.save(random_fid_inception_state(), weights)  # a plain state dict: loads with weights_only=True
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *_, **__: pytest.fail("tried to download"))
    original = fid_inception.load_state_dict_from_url
    net = metrics.inception_feature_net(weights)
    assert fid_inception.load_state_dict_from_url is original  # pytorch-fid's loader is back in place
    grey = torch.rand(2, 1, 32, 32) * 2 - 1
    feats = net.features(grey, batch_size=2)
    assert feats.shape == (2, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()
    np.testing.assert_allclose(feats[:1], net.features(grey[:1].expand(-1, 3, -1, -1)), rtol=1e-5)
    with pytest.raises(DiffkitError, match=r"inception-v3 pool3 \(pytorch-fid\) expects"):
        net.features(torch.zeros(1, 2, 32, 32))


def test_inception_unreadable_weights_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_text("garbage")
    with pytest.raises(DiffkitError, match=r"Inception weights .*bad.pth cannot be read"):
        metrics.inception_feature_net(bad)


# ------------------------------------------------------------------------- real digits (slow)


@pytest.mark.slow
def test_digit_net_on_real_mnist(tmp_path: Path) -> None:
    data_dir = shared_data_dir()
    if not (data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no MNIST test split in {data_dir}: set DIFFKIT_DATA_DIR to the shared data folder")
    net = metrics.digit_feature_net(data_dir=data_dir, cache_dir=tmp_path)
    assert net.info["validation"] == "mnist:test"
    assert net.info["accuracy"] >= 0.97, net.name
    assert net.name.startswith("digits-cnn v1 (mnist") and "test acc" in net.name
    result = bench.benchmark_features_fid(2000, data_dir=data_dir, net=net)
    assert result["source"] == "mnist:test" and result["images"] == 2000
    assert 0 <= result["fid_even_odd"] < 10
    print(f"\n{net.name}: trained in {net.info['train_seconds']} s; benchmark {result}")
