"""Feature nets (one small protocol), classifier nets and class accuracy, and the digit CNN (trained once, cached)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from diffkit.atomic import atomic_write, write_json
from diffkit.data import ImageSet, default_data_dir, load_images, to_float
from diffkit.errors import DiffkitError
from diffkit.metrics.frechet import Array
from diffkit.models.classifier import SmallClassifier, train_classifier
from diffkit.progress import Progress
from diffkit.settings import resolve_cache_dir as default_cache_dir

DIGIT_NET_VERSION = 1  # bump when the architecture or the training recipe changes: invalidates caches
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
    return prediction_accuracy(net.predict(images), target)


def prediction_accuracy(predicted: Tensor, target: Tensor) -> tuple[float, dict[int, float]]:
    """Fraction of `predicted` classes equal to `target` (both (N,)), overall and per class present."""
    correct = predicted == target
    per_class = {int(c): float(correct[target == c].float().mean()) for c in torch.unique(target)}
    return float(correct.float().mean()), per_class


# -------------------------------------------------------------------------------- digit CNN net


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
    test = try_load(_TEST_SOURCES.get(dataset, dataset), "test", data_dir)
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


def try_load(name: str, split: str, data_dir: Path) -> ImageSet | None:
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
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights_path, lambda tmp: save_file(state, str(tmp)))
    write_json(info_path, info)
