"""Pictures: image grids, per-image files, and matplotlib plots. No maths here.

Library images are float tensors in [-1, 1], shape (N, C, H, W); this module turns them into files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from diffkit.data import to_uint8


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp{path.suffix}")


def make_grid(images: Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """A single (C, H, W) uint8 image laying out `images` in rows of `nrow` (torchvision's layout)."""
    from torchvision.utils import make_grid as tv_make_grid

    grid = tv_make_grid((images.detach().float().cpu().clamp(-1, 1) + 1) / 2, nrow=nrow, padding=padding,
                        pad_value=pad_value)
    return (grid * 255).round().to(torch.uint8)


def save_grid(images: Tensor, path: str | Path, nrow: int, padding: int = 2, scale: int = 1) -> Path:
    """Write `images` as one PNG grid with `nrow` images per row; `scale` enlarges pixels (nearest)."""
    from PIL import Image

    path = Path(path)
    grid = make_grid(images, nrow, padding)
    pil = _to_pil(grid)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    tmp = _atomic_target(path)
    pil.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_images(images: Tensor, directory: str | Path, *, start: int = 1, digits: int = 5, rgb: bool = False,
                prefix: str = "") -> list[Path]:
    """One PNG per image: <prefix>00001.png, 00002.png, ...; `rgb` writes 3-channel files (as FID tools expect)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(to_uint8(images)):
        pil = _to_pil(img)
        if rgb:
            pil = pil.convert("RGB")
        path = directory / f"{prefix}{start + i:0{digits}d}.png"
        pil.save(path, format="PNG")
        paths.append(path)
    return paths


def _to_pil(img: Tensor):  # type: ignore[no-untyped-def]
    from PIL import Image

    arr = img.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB")


def plot_training_curves(metrics_file: str | Path, out: str | Path) -> Path | None:
    """Training loss (smoothed), validation loss and learning rate against step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    if not train:
        return None
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in train]
    ax_loss.plot(steps, [r["loss"] for r in train], lw=0.8, alpha=0.5, label="train loss")
    ax_loss.plot(steps, _ema([r["loss"] for r in train]), lw=1.5, label="train loss (smoothed)")
    if val:
        ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_lr.plot(steps, [r["lr"] for r in train])
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    fig.tight_layout()
    out = Path(out)
    tmp = _atomic_target(out)
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _ema(values: Sequence[float], alpha: float = 0.1) -> list[float]:
    out, acc = [], values[0]
    for v in values:
        acc = (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out
