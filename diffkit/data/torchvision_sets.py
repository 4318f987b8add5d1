"""MNIST, Fashion-MNIST and CIFAR-10 in torchvision's folder layout, and fetching them with torchvision when allowed.

A missing dataset is downloaded (`data.download`, and no DIFFKIT_OFFLINE=1) through a staging folder, with a short
socket timeout, so an unreachable network is one line in seconds and a failed download leaves nothing behind.
"""

from __future__ import annotations

import gzip
import http.client
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffkit.data.images import ImageSet
from diffkit.errors import DiffkitError
from diffkit.settings import offline


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
