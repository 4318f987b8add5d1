"""Inpainting masks: float (N, 1, H, W), 1 = keep (known pixel), 0 = hole (filled by the model).

Named kinds are drawn per image from (seed, image index), so a seed fixes every mask; a PNG mask is
thresholded at 50% grey (white keeps, black is the hole) and used for every image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffkit.errors import DiffkitError

MASK_KINDS: dict[str, str] = {
    "center": "a centred square hole, half the image side",
    "box": "a random rectangular hole, a quarter to half of the side in each direction",
    "left": "the left half is the hole",
    "right": "the right half is the hole",
    "top": "the top half is the hole",
    "bottom": "the bottom half is the hole",
    "brush": "random thick brush strokes",
}

Holes = Callable[[int, torch.Generator], Tensor]  # (size, generator) -> bool (size, size), True = hole


def _center(size: int, _: torch.Generator) -> Tensor:
    hole = torch.zeros(size, size, dtype=torch.bool)
    side = size // 2
    lo = (size - side) // 2
    hole[lo : lo + side, lo : lo + side] = True
    return hole


def _box(size: int, g: torch.Generator) -> Tensor:
    lo_side, hi_side = max(1, size // 4), max(1, size // 2)
    h, w = (int(torch.randint(lo_side, hi_side + 1, (1,), generator=g)) for _ in range(2))
    top, left = (
        int(torch.randint(0, size - h + 1, (1,), generator=g)),
        int(torch.randint(0, size - w + 1, (1,), generator=g)),
    )
    hole = torch.zeros(size, size, dtype=torch.bool)
    hole[top : top + h, left : left + w] = True
    return hole


def _half(side: str) -> Holes:
    def holes(size: int, _: torch.Generator) -> Tensor:
        hole = torch.zeros(size, size, dtype=torch.bool)
        half = size // 2
        region = {
            "left": (slice(None), slice(0, half)),
            "right": (slice(None), slice(size - half, size)),
            "top": (slice(0, half), slice(None)),
            "bottom": (slice(size - half, size), slice(None)),
        }[side]
        hole[region] = True
        return hole

    return holes


def _brush(size: int, g: torch.Generator) -> Tensor:
    """1-3 strokes, each a polyline of 2-4 segments drawn with a round brush (as in LaMa-style masks)."""
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    hole = torch.zeros(size, size, dtype=torch.bool)

    def rand(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    for _ in range(int(torch.randint(1, 4, (), generator=g))):
        radius = rand(size / 16, size / 9)
        y, x = rand(0, size - 1), rand(0, size - 1)
        for _ in range(int(torch.randint(2, 5, (), generator=g))):
            angle, length = rand(0, 2 * np.pi), rand(size / 6, size / 2.5)
            y2 = min(max(y + length * np.sin(angle), 0.0), size - 1.0)
            x2 = min(max(x + length * np.cos(angle), 0.0), size - 1.0)
            hole |= _segment_distance(yy, xx, (y, x), (y2, x2)) <= radius
            y, x = y2, x2
    return hole


def _segment_distance(yy: Tensor, xx: Tensor, a: tuple[float, float], b: tuple[float, float]) -> Tensor:
    """Distance of every pixel centre to the segment a-b."""
    dy, dx = b[0] - a[0], b[1] - a[1]
    length2 = max(dy * dy + dx * dx, 1e-12)
    u = (((yy - a[0]) * dy + (xx - a[1]) * dx) / length2).clamp(0, 1)
    return ((yy - a[0] - u * dy) ** 2 + (xx - a[1] - u * dx) ** 2).sqrt()


HOLES: dict[str, Holes] = {
    "center": _center,
    "box": _box,
    "left": _half("left"),
    "right": _half("right"),
    "top": _half("top"),
    "bottom": _half("bottom"),
    "brush": _brush,
}


def make_masks(kind: str, n: int, size: int, seed: int = 0) -> Tensor:
    """`n` masks of a named kind; mask i depends only on (kind, seed, i)."""
    if kind not in HOLES:
        raise DiffkitError(
            f"unknown mask {kind!r}: choose one of {', '.join(HOLES)}, or give a PNG file (white = keep, black = hole)"
        )
    g = torch.Generator()
    masks = torch.empty(n, 1, size, size)
    for i in range(n):
        g.manual_seed(seed * 1_000_003 + i)
        masks[i, 0] = (~HOLES[kind](size, g)).float()
    return masks


def read_mask(path: str | Path, size: int) -> Tensor:
    """A mask PNG as (1, 1, size, size): white (>= 50% grey) = keep, black = hole; the size must match."""
    from diffkit.data import decode_image

    path = Path(path)
    if not path.is_file():
        raise DiffkitError(f"mask {path} does not exist: give one of {', '.join(HOLES)} or a PNG file")
    unreadable = f"mask {path} is not an image file diffkit can read: give a PNG (white = keep, black = hole)"
    arr, _ = decode_image(path, "L", unreadable)
    if arr.shape != (size, size):
        raise DiffkitError(
            f"mask {path} is {arr.shape[1]}x{arr.shape[0]} but the model's images are "
            f"{size}x{size}: give a {size}x{size} mask (white = keep, black = hole)"
        )
    return torch.from_numpy(arr >= 128).float().reshape(1, 1, size, size)


def mask_from_spec(spec: str, n: int, size: int, seed: int = 0) -> Tensor:
    """`--mask KIND|PNG` as (n, 1, size, size), refusing masks with nothing to fill."""
    if spec in HOLES or not (Path(spec).suffix or Path(spec).exists()):  # a bare word is meant as a kind
        masks = make_masks(spec, n, size, seed)
    else:
        masks = read_mask(spec, size).expand(n, -1, -1, -1)
    if bool((masks == 1).all()):
        raise DiffkitError(f"mask {spec} keeps every pixel, so there is nothing to fill: black marks the hole")
    return masks.contiguous()


def check_mask(mask: Tensor, images: Tensor) -> Tensor:
    """A library caller's mask, broadcast to the images' batch: (N or 1, 1, H, W) of 0s and 1s."""
    n, _, h, w = images.shape
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (h, w) or mask.shape[0] not in (1, n):
        raise DiffkitError(
            f"mask of shape {tuple(mask.shape)} does not fit images {tuple(images.shape)}: "
            f"give (N or 1, 1, {h}, {w}) with 1 = keep, 0 = hole"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise DiffkitError("mask values must be 0 (hole) or 1 (keep): threshold it first")
    return mask.expand(n, -1, -1, -1).to(images)
