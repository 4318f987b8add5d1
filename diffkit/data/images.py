"""Images in memory (`ImageSet`: uint8 with labels) and conversions: floats in [-1, 1], resizing, image files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit.errors import DiffkitError

MAX_INPUT_PIXELS = 4096 * 4096  # an input image larger than this is refused, not decoded (memory)


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


def check_pixels(img: Any, path: Path) -> None:
    """Refuse, before decoding, an image whose pixel count would take more memory than any use here needs."""
    if img.width * img.height > MAX_INPUT_PIXELS:
        raise DiffkitError(
            f"{path} is {img.width}x{img.height}: larger than the {MAX_INPUT_PIXELS:,} pixels diffkit reads; "
            "shrink it first"
        )


def decode_image(path: Path, mode: str, unreadable: str) -> tuple[np.ndarray, str]:
    """The pixels of image file `path` in PIL `mode` ("L", "RGB"), and its original "WxH MODE".

    A file that is not a readable image is one DiffkitError saying `unreadable`; one too large is
    refused by `check_pixels` before it is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            check_pixels(img, path)
            found = f"{img.width}x{img.height} {img.mode}"
            if img.mode.startswith("I"):  # 16-bit grey: scaled to 8 bits (convert() would clip at 255)
                grey = (np.asarray(img, np.float64) / 257).round().clip(0, 255).astype(np.uint8)
                return np.asarray(Image.fromarray(grey).convert(mode)), found
            return np.asarray(img.convert(mode)), found
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise DiffkitError(unreadable) from None


def read_image(path: str | Path, *, image_size: int, channels: int) -> tuple[Tensor, str | None]:
    """One image file as float (1, C, H, W) in [-1, 1], converted to the model's size and channels.

    Returns the image and a note describing any conversion, for the CLI to print.
    """
    path = Path(path)
    if not path.is_file():
        raise DiffkitError(f"image {path} does not exist: give the path of a PNG or JPEG file")
    mode = "L" if channels == 1 else "RGB"
    arr, original = decode_image(path, mode, f"{path} is not an image file diffkit can read: give a PNG or JPEG")
    return from_pixels(arr, original, path.name, image_size=image_size, channels=channels)


def from_pixels(
    arr: np.ndarray, original: str, name: str, *, image_size: int, channels: int
) -> tuple[Tensor, str | None]:
    """Decoded pixels, uint8 (H, W) or (H, W, C), as `read_image` returns them: float (1, C, H, W) in [-1, 1]
    at the model's size and channels, and a note naming any conversion (`original` is "WxH MODE")."""
    t = torch.from_numpy(arr.copy())
    t = t.reshape(1, 1, *t.shape) if t.ndim == 2 else t.permute(2, 0, 1).unsqueeze(0)
    converted = resize_images(t.contiguous(), image_size, channels)
    target = f"{image_size}x{image_size} {'L' if channels == 1 else 'RGB'}"
    note = None if original == target else f"converted {name} from {original} to {target}"
    return to_float(converted), note
