"""Pictures in and out of the Python face: PIL images, file paths, data sources, arrays and tensors in;
PIL images, PNG bytes and numbered files out. Inside, images stay (N, C, H, W) floats in [-1, 1]."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffkit.data import from_pixels, read_image, resize_images, source_images, to_float, to_uint8
from diffkit.editing import mask_from_spec
from diffkit.errors import DiffkitError
from diffkit.progress import Progress
from diffkit.settings import Settings
from diffkit.viz import save_images, to_pil

ImageInput = Any  # a PIL image, a path (str or Path), a data source ("mnist:test:0..3"), an array, a tensor


def pil_images(images: Tensor) -> list[Any]:
    """(N, C, H, W) in [-1, 1] as N PIL images ("L" for one channel, else "RGB")."""
    return [to_pil(img) for img in to_uint8(images)]


def images_in(given: ImageInput, settings: Settings) -> tuple[Tensor, Tensor | None, str]:
    """Any picture input (or a list of them) at the run's size and channels: (N, C, H, W) in [-1, 1],
    the labels when the input has them (a labelled data source, a `Samples`), and a description."""
    items = list(given) if isinstance(given, list | tuple) else [given]
    if not items:
        raise DiffkitError("no image was given: give a PIL image, a file path, a data source or an array")
    parts = [_one(item, settings) for item in items]
    images = torch.cat([p[0] for p in parts])
    labelled = all(p[1] is not None for p in parts)
    labels = torch.cat([p[1] for p in parts if p[1] is not None]) if labelled else None
    return images, labels, ", ".join(p[2] for p in parts)


def _one(item: ImageInput, settings: Settings) -> tuple[Tensor, Tensor | None, str]:
    d = settings.data
    if hasattr(item, "tensor") and hasattr(item, "labels"):  # a Samples result: the model's own images
        labels = torch.tensor(item.labels) if item.labels is not None else None
        return _tensor(item.tensor, settings), labels, "samples"
    if isinstance(item, str | Path):
        path = Path(item)
        if isinstance(item, str) and ":" in item and not path.exists():  # mnist:test:0..3
            images, labels = source_images(item, settings)
            return images, labels, item
        image, note = read_image(path, image_size=d.image_size, channels=d.channels)
        _note(note)
        return image, None, str(path)
    if isinstance(item, Tensor):
        return _tensor(item, settings), None, "a tensor"
    if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
        arr = np.asarray(item.convert("L" if d.channels == 1 else "RGB"))
        original = f"{item.size[0]}x{item.size[1]} {item.mode}"
        image, note = from_pixels(arr, original, "the image", image_size=d.image_size, channels=d.channels)
        _note(note)
        return image, None, "a PIL image"
    if isinstance(item, np.ndarray):
        return _array(item, settings), None, "an array"
    raise DiffkitError(
        f"cannot read an image from a {type(item).__name__}: give a PIL image, a file path, a data source "
        "such as mnist:test:0, a NumPy array or a tensor"
    )


def _array(arr: np.ndarray, settings: Settings) -> Tensor:
    """(H, W), (H, W, C) with C in 1, 3, 4, (N, H, W) or (N, H, W, C); uint8 0..255, bool, or floats in [0, 1]."""
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4)):
        arr = arr[None]
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise DiffkitError(
            f"an array of shape {arr.shape} is not an image: give (H, W), (H, W, C) or (N, H, W[, C]) with C 1, 3 or 4"
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise DiffkitError("array pixels must be uint8 (0 to 255) or floats from 0 to 1: rescale the array")
        arr = np.round(arr.astype(np.float64) * 255).astype(np.uint8)
    t = torch.from_numpy(np.array(arr[..., :3])).permute(0, 3, 1, 2)  # a writable copy
    d = settings.data
    return to_float(resize_images(t.contiguous(), d.image_size, d.channels))


def _tensor(x: Tensor, settings: Settings) -> Tensor:
    """A tensor (C, H, W) or (N, C, H, W) in [-1, 1], the library's convention, at the run's size."""
    x = x.detach().cpu().float()
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4 or not bool(torch.isfinite(x).all()) or x.min() < -1.001 or x.max() > 1.001:
        raise DiffkitError(
            f"a tensor of shape {tuple(x.shape)} is not an image batch: give (N, C, H, W) or (C, H, W) in [-1, 1]"
        )
    d = settings.data
    if x.shape[1:] == (d.channels, d.image_size, d.image_size):
        return x.clamp(-1, 1)
    return to_float(resize_images(to_uint8(x), d.image_size, d.channels))


def mask_in(mask: ImageInput, n: int, size: int, seed: int) -> Tensor:
    """A mask as (n, 1, size, size), 1 = keep, 0 = hole: a shape name ("center", ...), a PNG path, or a
    picture (PIL image or array; white / True / >= 0.5 keeps, black / False / < 0.5 is the hole)."""
    if isinstance(mask, str | Path):
        return mask_from_spec(str(mask), n, size, seed)
    if isinstance(mask, Tensor):
        keep = mask.detach().cpu().float()
        keep = keep.reshape(1, 1, *keep.shape[-2:]) if keep.ndim in (2, 3) else keep
    else:
        if hasattr(mask, "convert"):  # a PIL image
            mask = np.asarray(mask.convert("L"))
        arr = np.asarray(mask)
        arr = arr[..., 0] if arr.ndim == 3 else arr
        if arr.ndim != 2:
            raise DiffkitError(f"a mask of shape {arr.shape} is not a picture: give (H, W) with 1 = keep, 0 = hole")
        half = 128 if arr.dtype == np.uint8 else 0.5
        keep = torch.from_numpy(np.ascontiguousarray(arr >= half)).float().reshape(1, 1, *arr.shape)
    if keep.shape[-2:] != (size, size):
        raise DiffkitError(
            f"the mask is {keep.shape[-1]}x{keep.shape[-2]} but the model's images are {size}x{size}: "
            f"give a {size}x{size} mask (white = keep, black = hole)"
        )
    if bool((keep == 1).all()):
        raise DiffkitError("the mask keeps every pixel, so there is nothing to fill: black marks the hole")
    return keep.expand(n, -1, -1, -1).contiguous() if keep.shape[0] == 1 else keep


def save_numbered(images: Tensor, folder: str | Path) -> list[Path]:
    """00001.png, 00002.png, ... in `folder`, each written atomically; a folder already holding any of
    those names is refused (nothing is overwritten)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DiffkitError(f"{folder} exists and is not a directory: choose another folder")
    taken = [folder / f"{i:05d}.png" for i in range(1, len(images) + 1) if (folder / f"{i:05d}.png").exists()]
    if taken:
        raise DiffkitError(
            f"{folder} already holds {taken[0].name}: choose another (new or empty) folder; nothing was overwritten"
        )
    return save_images(images, folder)


def _note(note: str | None) -> None:
    if note:
        print(f"note: {note}")


def text_progress(what: str, enabled: bool = True) -> Progress | None:
    """A progress line for notebooks and terminals ("sampling 40/100"), redrawn in place (a carriage
    return) at most five times a second, and ended with a newline when the work is done."""
    if not enabled:
        return None
    last = [0.0]

    def show(done: int, total: int, message: str = "", /) -> None:
        now = time.perf_counter()
        if done < total and now - last[0] < 0.2:
            return
        last[0] = now
        text = message or what
        print(f"\r{text} {done}/{total}", end="\n" if done >= total else "", file=sys.stdout, flush=True)

    return show


def label_list(labels: Tensor | None) -> list[int] | None:
    return None if labels is None else [int(c) for c in labels]
