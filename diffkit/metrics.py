"""Image-quality metrics: FID and KID in a chosen feature space, PSNR and SSIM, class accuracy.

Feature spaces ("feature nets") share one small protocol, `FeatureNet`:

* `digit_feature_net()`: a small CNN trained (deterministically, once, then cached) on MNIST digits.
  Its name, e.g. "digits-cnn v1 (mnist-5k, test acc 98.4%)", says which digits it learned from.
* `inception_feature_net()`: pytorch-fid's Inception-v3 pool3 features (2048-d), the standard FID space.
  Its weights are never downloaded: they must already be in the torch hub cache or given by path.

Scores from different feature nets are not comparable: always report the feature net's name with them.
Images are float tensors in [-1, 1], shape (N, C, H, W). This module must not import rich: long jobs
report through an optional `progress(done, total, message)` callable instead.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffkit.data import ImageSet, default_data_dir, load_images, to_float
from diffkit.errors import DiffkitError
from diffkit.models.classifier import SmallClassifier, train_classifier
from diffkit.progress import Progress

Array = npt.NDArray[np.float64]

MIN_SAMPLES = 2  # a covariance (and the unbiased MMD) needs two samples
DIGIT_NET_VERSION = 1  # bump when the architecture or the training recipe changes: invalidates caches
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"

# ------------------------------------------------------------------------------ Fréchet distance


def feature_statistics(features: npt.ArrayLike | Tensor) -> tuple[Array, Array]:
    """Mean (D,) and covariance (D, D) of (N, D) features, in float64 (sample covariance, as pytorch-fid)."""
    feats = _as_features(features)
    if feats.shape[0] < MIN_SAMPLES:
        raise DiffkitError(
            f"need at least {MIN_SAMPLES} images to estimate feature statistics, got {feats.shape[0]}: use more images"
        )
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def _as_features(features: npt.ArrayLike | Tensor) -> Array:
    if isinstance(features, Tensor):
        features = features.detach().cpu().double().numpy()
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2:
        raise DiffkitError(f"features must be a 2-D (N, D) array, got shape {feats.shape}: flatten them first")
    return feats


def frechet_distance(
    mu1: npt.ArrayLike, sigma1: npt.ArrayLike, mu2: npt.ArrayLike, sigma2: npt.ArrayLike, eps: float = 1e-6
) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017).

    d² = |mu1 - mu2|² + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^½)
    """
    m1, m2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = m1.shape[0]
    if m1.shape != m2.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise DiffkitError(
            f"statistics do not match: means {m1.shape} and {m2.shape}, covariances {s1.shape} and "
            f"{s2.shape}; compute both with the same feature net"
        )
    root = _checked_sqrtm(s1 @ s2)
    if root is None:
        # As pytorch-fid: a singular product (e.g. fewer images than feature dimensions) has no stable
        # root, so add eps·I to both covariances. Unlike pytorch-fid the traces use the offset
        # covariances too: the result is then the exact distance between the two regularised Gaussians
        # (never below zero) rather than a mix that comes out slightly negative for equal statistics.
        offset = eps * np.eye(d)
        s1, s2 = s1 + offset, s2 + offset
        root = _checked_sqrtm(s1 @ s2)
    diff = m1 - m2
    distance = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(_real_part(root)))
    return max(distance, 0.0)  # the true value is >= 0; rounding can leave -1e-12


def _real_part(root: npt.NDArray[Any] | None) -> Array:
    """The root without the negligible imaginary part rounding leaves; an error when it is not negligible."""
    if root is None:
        raise DiffkitError(
            "the Fréchet distance is numerically unstable (no square root of the covariance "
            "product): use more images than feature dimensions"
        )
    if np.iscomplexobj(root):
        imaginary = float(np.max(np.abs(np.diagonal(root).imag)))
        if imaginary > 1e-3:
            raise DiffkitError(
                f"the Fréchet distance is numerically unstable (imaginary part {imaginary:.3g}): "
                "use more images than feature dimensions"
            )
        root = root.real
    return np.asarray(root, dtype=np.float64)


def _checked_sqrtm(a: Array) -> npt.NDArray[Any] | None:
    """scipy's matrix square root, or None when scipy finds `a` singular or the root is not accurate."""
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        root = scipy.linalg.sqrtm(a)
    if any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught):
        return None
    if not np.all(np.isfinite(root)):
        return None
    scale = max(float(np.linalg.norm(a)), np.finfo(np.float64).tiny)
    if float(np.linalg.norm(root @ root - a)) / scale > 1e-6:
        return None
    return np.asarray(root)


# ----------------------------------------------------------------------------- kernel distance


def kernel_inception_distance(
    features1: npt.ArrayLike | Tensor,
    features2: npt.ArrayLike | Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean and std over random subsets of the unbiased MMD² estimate.

    Kernel k(x, y) = (x·y / d + 1)³. Subsets are drawn without replacement by a generator seeded with
    `seed`, so the result is deterministic; `subset_size` is clipped to the smaller set.
    """
    f1, f2 = _as_features(features1), _as_features(features2)
    if f1.shape[1] != f2.shape[1]:
        raise DiffkitError(
            f"features have different dimensions ({f1.shape[1]} and {f2.shape[1]}): compute both "
            "with the same feature net"
        )
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < MIN_SAMPLES:
        raise DiffkitError(
            f"KID needs at least {MIN_SAMPLES} images per set, got {f1.shape[0]} and {f2.shape[0]}: use more images"
        )
    rng = np.random.default_rng(seed)
    mmds = np.array(
        [
            _mmd2_unbiased(f1[rng.choice(f1.shape[0], m, replace=False)], f2[rng.choice(f2.shape[0], m, replace=False)])
            for _ in range(max(1, num_subsets))
        ]
    )
    return float(mmds.mean()), float(mmds.std())


def _mmd2_unbiased(x: Array, y: Array) -> float:
    """Unbiased MMD²: within-set kernel means leave out the diagonal (k(x_i, x_i) is not a cross-pair)."""
    m, d = x.shape

    def kernel(a: Array, b: Array) -> Array:
        return (a @ b.T / d + 1.0) ** 3

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


# ------------------------------------------------------------------------------ statistics files


def save_statistics(
    path: str | Path, mu: npt.ArrayLike, sigma: npt.ArrayLike, meta: dict[str, str] | None = None
) -> None:
    """Write `mu` and `sigma` as an .npz that pytorch-fid reads (`python -m pytorch_fid stats.npz ...`).

    `meta` (e.g. {"feature_net": name}) is stored as extra string arrays, which pytorch-fid ignores.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    arrays |= {f"meta_{key}": np.asarray(str(value)) for key, value in (meta or {}).items()}
    with path.open("wb") as out:  # a file object, so numpy does not append a second ".npz"
        np.savez(out, **arrays)


def statistics_metadata(path: str | Path) -> dict[str, str]:
    """The `meta` strings save_statistics stored in an .npz ({} for files from pytorch-fid or unreadable ones)."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            return {
                key.removeprefix("meta_"): str(data[key])
                for key in data.files
                if key.startswith("meta_") and data[key].dtype.kind == "U"
            }
    except (OSError, ValueError, AttributeError, TypeError):  # not an .npz: load_statistics says why
        return {}


def load_statistics(path: str | Path) -> tuple[Array, Array]:
    """`mu` and `sigma` from an .npz written by save_statistics or pytorch-fid."""
    path = Path(path)
    if not path.is_file():
        raise DiffkitError(f"statistics file {path} does not exist: give the path of an .npz with mu and sigma")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DiffkitError(f"{path} is not a readable .npz file ({err}): give an .npz with mu and sigma") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DiffkitError(
            f"{path} holds a single array, not an .npz with mu and sigma: give an .npz written by "
            "diffkit or pytorch-fid"
        )
    with data:
        missing = [key for key in ("mu", "sigma") if key not in data.files]
        if missing:
            raise DiffkitError(
                f"{path} has no {' or '.join(missing)} array (it has "
                f"{', '.join(data.files) or 'nothing'}): give an .npz written by diffkit or pytorch-fid"
            )
        try:
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
        except (OSError, ValueError, TypeError) as err:
            raise DiffkitError(f"{path} has unreadable mu/sigma arrays ({err}): give an .npz of numbers") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DiffkitError(
            f"{path} holds mu {mu.shape} and sigma {sigma.shape}, not (D,) and (D, D): "
            "give an .npz written by diffkit or pytorch-fid"
        )
    return mu, sigma


# ---------------------------------------------------------------------------------- PSNR / SSIM


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio per image (N,), in dB: 10 log10(range² / MSE); identical images give inf.

    With `mask` (N or 1, 1, H, W; 1 = score this pixel) the MSE is taken over the masked pixels only.
    """
    x, y, weights = _pair(x, y, mask)
    squared = (x - y) ** 2
    mse = (squared * weights).sum(dim=(1, 2, 3)) / (weights.sum(dim=(1, 2, 3)) * x.shape[1])
    return 10 * torch.log10(data_range**2 / mse)


def ssim(x: Tensor, y: Tensor, data_range: float = 2.0, mask: Tensor | None = None) -> Tensor:
    """Structural similarity per image (N,) (Wang et al. 2004): 11x11 Gaussian window, σ = 1.5, K1 0.01, K2 0.03.

    Local statistics are computed at every pixel, with mirror padding at the borders so that a mask near
    the edge is still scored (so values differ slightly from implementations that crop the border);
    the SSIM map is averaged over channels, then over the image or the masked region.
    """
    x, y, weights = _pair(x, y, mask)
    if min(x.shape[-2:]) <= _SSIM_RADIUS:
        raise DiffkitError(
            f"SSIM needs images larger than {_SSIM_RADIUS}x{_SSIM_RADIUS}, got "
            f"{tuple(x.shape[-2:])}: score larger images"
        )
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t: Tensor) -> Tensor:
        return _gaussian_blur(t, sigma=1.5, radius=_SSIM_RADIUS)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    per_pixel = ssim_map.mean(dim=1, keepdim=True)
    return (per_pixel * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3))


_SSIM_RADIUS = 5  # 11x11 window


def _gaussian_blur(t: Tensor, sigma: float, radius: int) -> Tensor:
    """Separable normalised Gaussian filter per channel, mirror padding (d c b | a b c d | c b a)."""
    offsets = torch.arange(-radius, radius + 1, dtype=t.dtype, device=t.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = t.shape[1]
    padded = F.pad(t, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _pair(x: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Both image batches in float64 plus per-pixel weights (N, 1, H, W), after checking shapes."""
    if x.ndim != 4 or x.shape != y.shape:
        raise DiffkitError(
            f"images to compare must both be (N, C, H, W) of one shape, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}: convert them to the same size first"
        )
    x, y = x.detach().double(), y.detach().double().to(x.device)
    n, _, h, w = x.shape
    if mask is None:
        return x, y, torch.ones(n, 1, h, w, dtype=x.dtype, device=x.device)
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (h, w) or mask.shape[0] not in (1, n):
        raise DiffkitError(
            f"mask must be (N, 1, H, W) = ({n}, 1, {h}, {w}) (or (1, 1, H, W)), got "
            f"{tuple(mask.shape)}: give one single-channel mask per image"
        )
    weights = mask.detach().double().to(x.device).expand(n, 1, h, w)
    if bool((weights.sum(dim=(1, 2, 3)) <= 0).any()):
        raise DiffkitError("a mask selects no pixels (all zeros) for some image: mark the region to score with 1")
    return x, y, weights


# --------------------------------------------------------------------------------- feature nets


class FeatureNet(Protocol):
    """A feature space for FID/KID: `name` says which (print it with every score)."""

    name: str
    expected_shape: tuple[int, int, int]  # (C, H, W) of the images it takes

    def features(self, images: Tensor, batch_size: int = ..., progress: Progress | None = None) -> Array:
        """(N, D) float64 features of [-1, 1] images (N, C, H, W)."""
        ...


def _batches(images: Tensor, batch_size: int, progress: Progress | None, what: str) -> Iterator[Tensor]:
    n = images.shape[0]
    for start in range(0, n, max(1, batch_size)):
        batch = images[start : start + batch_size]
        yield to_float(batch) if batch.dtype == torch.uint8 else batch.float()
        if progress is not None:
            progress(min(start + batch_size, n), n, what)


def _check_batch(images: Tensor, name: str, expected: tuple[int, int, int], sizes_fixed: bool = True) -> None:
    shape = tuple(images.shape[1:])
    channels_ok = shape[:1] == expected[:1] or (not sizes_fixed and shape[:1] in ((1,), (3,)))
    if images.ndim != 4 or not channels_ok or (sizes_fixed and shape != expected):
        want = f"(N, {', '.join(map(str, expected))})" if sizes_fixed else "(N, 1 or 3, H, W)"
        raise DiffkitError(
            f"{name} expects images of shape {want}, got {tuple(images.shape)}: convert them "
            "(channels and size) first, e.g. with diffkit.data.resize_images"
        )


class ClassifierFeatureNet:
    """A trained SmallClassifier used as a feature net (penultimate features) and as a judge of classes."""

    def __init__(self, model: SmallClassifier, name: str, info: dict[str, Any]) -> None:
        self.model = model.eval()
        self.name = name
        self.info = info
        self.expected_shape = (model.channels, model.image_size, model.image_size)

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 1000, progress: Progress | None = None) -> Array:
        _check_batch(images, self.name, self.expected_shape)
        parts = [self.model.features(b) for b in _batches(images, batch_size, progress, "features")]
        return torch.cat(parts).double().numpy() if parts else np.zeros((0, self.model.feature_dim))

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 1000) -> Tensor:
        """Predicted class per image (N,)."""
        _check_batch(images, self.name, self.expected_shape)
        parts = [self.model(b).argmax(1) for b in _batches(images, batch_size, None, "")]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def class_accuracy(
    classifier_net: ClassifierFeatureNet | SmallClassifier, images: Tensor, labels: Tensor | npt.ArrayLike
) -> tuple[float, dict[int, float]]:
    """Fraction of `images` the classifier puts in their `labels` class, overall and per class present."""
    net = (
        classifier_net
        if isinstance(classifier_net, ClassifierFeatureNet)
        else ClassifierFeatureNet(classifier_net, "classifier", {})
    )
    target = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if target.shape[0] != images.shape[0] or images.shape[0] == 0:
        raise DiffkitError(
            f"need one label per image, got {target.shape[0]} labels for {images.shape[0]} images: "
            "pass matching images and labels"
        )
    if bool((target < 0).any()):
        raise DiffkitError("some images have no label (-1): class accuracy needs labelled images")
    correct = net.predict(images) == target
    per_class = {int(c): float(correct[target == c].float().mean()) for c in torch.unique(target)}
    return float(correct.float().mean()), per_class


# -------------------------------------------------------------------------------- digit CNN net


def default_cache_dir() -> Path:
    return Path(os.environ.get("DIFFKIT_CACHE_DIR") or Path.home() / ".cache" / "diffkit")


# Where each training set is tested; mnist-5k digits are MNIST training digits, so MNIST's test split.
_TEST_SOURCES = {"mnist-5k": "mnist", "mnist": "mnist"}
_HELD_OUT = 500  # validation images kept back when no test split can be found
_TRAIN_IMAGES_SEEN = 40_000  # epochs = this / training-set size (clamped): same work for any set size


def digit_feature_net(
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    train_if_missing: bool = True,
    progress: Progress | None = None,
) -> ClassifierFeatureNet:
    """The digit CNN feature net: loaded from the cache, else trained (full MNIST train when present, else
    mnist-5k) and cached. Trains in ~20-40 s on two CPU cores on mnist-5k."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    dataset = "mnist" if _has_mnist_train(data_dir) else "mnist-5k"
    return classifier_feature_net(
        dataset,
        label="digits-cnn",
        data_dir=data_dir,
        cache_dir=cache_dir,
        train_if_missing=train_if_missing,
        progress=progress,
    )


def _has_mnist_train(data_dir: Path) -> bool:
    raw = data_dir / "MNIST" / "raw"
    return any(
        (raw / f"train-images-idx3-ubyte{s}").is_file() and (raw / f"train-labels-idx1-ubyte{s}").is_file()
        for s in ("", ".gz")
    )


def classifier_feature_net(
    dataset: str,
    *,
    label: str | None = None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    train_if_missing: bool = True,
    epochs: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> ClassifierFeatureNet:
    """A SmallClassifier trained on `dataset`'s train split, cached under `cache_dir`/classifiers.

    It is tested on the matching test split when that can be loaded; otherwise it trains on all but
    500 images and reports accuracy on those (a separate cache entry, since it is a different net).
    """
    label = label or f"{dataset}-cnn"
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    test = _try_load(_TEST_SOURCES.get(dataset, dataset), "test", data_dir)
    key = f"{label}-v{DIGIT_NET_VERSION}-{dataset}" + ("" if test is not None else f"-holdout{_HELD_OUT}")
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    weights_path, info_path = folder / "classifiers" / f"{key}.safetensors", folder / "classifiers" / f"{key}.json"
    cached = _load_cached(weights_path, info_path, key)
    if cached is None:
        if not train_if_missing:
            raise DiffkitError(
                f"no cached {label} feature net at {weights_path}: allow training it (about a "
                "minute on CPU) or copy the cache files there"
            )
        model, info = _train_and_test(dataset, test, data_dir, epochs, seed, progress)
        info["key"] = key
        _save_cached(model, info, weights_path, info_path)
        cached = model, info
    model, info = cached
    accuracy = f"{info['validation_kind']} acc {info['accuracy']:.1%}"
    training_set = dataset if test is not None else f"{dataset} less {_HELD_OUT} held out"
    return ClassifierFeatureNet(model, f"{label} v{DIGIT_NET_VERSION} ({training_set}, {accuracy})", info)


def _try_load(name: str, split: str, data_dir: Path) -> ImageSet | None:
    try:
        return load_images(name, split, data_dir=data_dir)
    except DiffkitError:
        return None


def _train_and_test(
    dataset: str, test: ImageSet | None, data_dir: Path, epochs: int | None, seed: int, progress: Progress | None
) -> tuple[SmallClassifier, dict[str, Any]]:
    train = load_images(dataset, "train", data_dir=data_dir)
    if test is None:  # hold out a fixed slice (chosen independently of the training seed)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1234))
        train, test = train.subset(order[_HELD_OUT:]), train.subset(order[:_HELD_OUT])
        kind, source = "held-out", f"{dataset}:train ({_HELD_OUT} held out)"
    else:
        kind, source = "test", test.name
    epochs = epochs or int(np.clip(round(_TRAIN_IMAGES_SEEN / len(train)), 3, 8))
    start = time.perf_counter()
    model = train_classifier(
        train.floats(), train.labels, num_classes=train.num_classes, epochs=epochs, seed=seed, progress=progress
    )
    seconds = time.perf_counter() - start
    net = ClassifierFeatureNet(model, dataset, {})
    accuracy, _ = class_accuracy(net, test.floats(), test.labels)
    info = {
        "dataset": dataset,
        "version": DIGIT_NET_VERSION,
        "epochs": epochs,
        "seed": seed,
        "train_images": len(train),
        "accuracy": accuracy,
        "validation": source,
        "validation_kind": kind,
        "validation_images": len(test),
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "channels": model.channels,
        "image_size": model.image_size,
        "num_classes": model.num_classes,
    }
    return model, info


def _load_cached(weights_path: Path, info_path: Path, key: str) -> tuple[SmallClassifier, dict[str, Any]] | None:
    """The cached net, or None when absent, unreadable or from another version (then it is retrained)."""
    from safetensors.torch import load_file

    if not (weights_path.is_file() and info_path.is_file()):
        return None
    try:
        info = json.loads(info_path.read_text())
        if info.get("key") != key or info.get("version") != DIGIT_NET_VERSION:
            return None
        model = SmallClassifier(
            channels=info["channels"], image_size=info["image_size"], num_classes=info["num_classes"]
        )
        model.load_state_dict(load_file(str(weights_path)))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None
    return model.eval(), info


def _save_cached(model: SmallClassifier, info: dict[str, Any], weights_path: Path, info_path: Path) -> None:
    """Write weights, then the JSON, each atomically: a concurrent reader sees the old pair or the new one."""
    from safetensors.torch import save_file

    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with _atomic(weights_path) as tmp:
        save_file(state, str(tmp))
    with _atomic(info_path) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- Inception


class InceptionFeatureNet:
    """pytorch-fid's Inception-v3 pool3 features (2048-d), the feature space of published FID scores.

    Takes [-1, 1] images of any size with 1 or 3 channels: pytorch-fid resizes them to 299x299
    (bilinear), and 1-channel images are repeated to 3 channels (as grey RGB) first.
    """

    name = "inception-v3 pool3 (pytorch-fid)"
    expected_shape = (3, 299, 299)

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 50, progress: Progress | None = None) -> Array:
        _check_batch(images, self.name, self.expected_shape, sizes_fixed=False)
        parts = []
        for batch in _batches(images, batch_size, progress, "inception features"):
            rgb = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
            pooled = self.model((rgb + 1) / 2)[0]  # pytorch-fid takes [0, 1] and rescales to [-1, 1] itself
            parts.append(pooled.reshape(pooled.shape[0], -1))
        return torch.cat(parts).double().numpy() if parts else np.zeros((0, 2048))


def inception_feature_net(weights: str | Path | None = None) -> InceptionFeatureNet:
    """pytorch-fid's InceptionV3 (pool3 block) with its FID weights, from `weights` or the torch hub cache.

    Never downloads: without the file, raises DiffkitError saying where to put it.
    """
    from pytorch_fid.inception import InceptionV3

    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME
    path = Path(weights).expanduser() if weights else hub_file
    if not path.is_file():
        where = f"{path} does not exist" if weights else f"{FID_WEIGHTS_NAME} is not in {hub_file.parent}"
        raise DiffkitError(
            f"Inception FID weights not found ({where}): download {FID_WEIGHTS_URL} into "
            f"{hub_file.parent}, or pass --inception-weights PATH"
        )
    try:
        with _hub_cache_holding(path):
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as err:
        raise DiffkitError(
            f"{path} is not pytorch-fid's Inception weights file ({type(err).__name__}): give "
            f"{FID_WEIGHTS_NAME} from {FID_WEIGHTS_URL}"
        ) from None
    return InceptionFeatureNet(model)


@contextmanager
def _hub_cache_holding(weights: Path) -> Iterator[None]:
    """Point torch hub at a temporary cache that holds `weights` under pytorch-fid's file name.

    pytorch-fid loads its weights with torch.hub.load_state_dict_from_url, which downloads only when the
    file is missing from <hub dir>/checkpoints: with the file there it just loads it, so no network is
    touched and none of pytorch-fid's model code needs copying.
    """
    previous = getattr(torch.hub, "_hub_dir", None)  # None = derived from $TORCH_HOME; restore exactly that
    with tempfile.TemporaryDirectory(prefix="diffkit-hub-") as tmp:
        target = Path(tmp) / "checkpoints" / FID_WEIGHTS_NAME
        target.parent.mkdir()
        try:
            target.symlink_to(weights.resolve())
        except OSError:  # no symlinks (some filesystems): a copy works too, it is just slower
            import shutil

            shutil.copyfile(weights, target)
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            setattr(torch.hub, "_hub_dir", previous)  # noqa: B010 (private attribute, no public reset)


# ---------------------------------------------------------------------------------- benchmark


def benchmark_features_fid(
    n: int = 10_000,
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    net: ClassifierFeatureNet | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Time digit-CNN features of `n` 28x28 images plus the FID between two halves (even and odd images).

    Images: mnist:test when present, else mnist-5k, tiled to `n`. Getting the net (training it when not
    cached) is timed separately as `net_seconds` and not part of `total_seconds`.
    """
    start = time.perf_counter()
    net = net or digit_feature_net(data_dir=data_dir, cache_dir=cache_dir, progress=progress)
    net_seconds = time.perf_counter() - start
    images, source = _benchmark_images(n, Path(data_dir) if data_dir else default_data_dir())
    start = time.perf_counter()
    feats = net.features(images)
    features_seconds = time.perf_counter() - start
    start = time.perf_counter()
    # Even vs odd images rather than first vs second half: MNIST's test split puts its two writer
    # populations in its two halves, which would measure that shift instead of the noise floor.
    fid = frechet_distance(*feature_statistics(feats[0::2]), *feature_statistics(feats[1::2]))
    fid_seconds = time.perf_counter() - start
    total = features_seconds + fid_seconds
    return {
        "images": n,
        "source": source,
        "feature_net": net.name,
        "net_seconds": round(net_seconds, 3),
        "features_seconds": round(features_seconds, 3),
        "fid_seconds": round(fid_seconds, 3),
        "total_seconds": round(total, 3),
        "images_per_second": round(n / total, 1),
        "fid_even_odd": fid,
        "threads": torch.get_num_threads(),
    }


def _benchmark_images(n: int, data_dir: Path) -> tuple[Tensor, str]:
    if n < 2 * MIN_SAMPLES:
        raise DiffkitError(f"the benchmark needs at least {2 * MIN_SAMPLES} images, got {n}: use a larger n")
    data = _try_load("mnist", "test", data_dir)
    source = "mnist:test"
    if data is None:
        data, source = load_images("mnist-5k", "train"), "mnist-5k"
    repeats = -(-n // len(data))
    return data.images.repeat(repeats, 1, 1, 1)[:n], source + (f" tiled x{repeats}" if repeats > 1 else "")
