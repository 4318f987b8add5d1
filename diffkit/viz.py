"""Pictures: image grids, per-image files, and matplotlib plots. No maths here.

Library images are float tensors in [-1, 1], shape (N, C, H, W); this module turns them into files.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffkit.atomic import atomic_write
from diffkit.data import to_uint8


def make_grid(images: Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """A single (C, H, W) uint8 image laying out `images` in rows of `nrow` (torchvision's layout)."""
    from torchvision.utils import make_grid as tv_make_grid

    grid = tv_make_grid(
        (images.detach().float().cpu().clamp(-1, 1) + 1) / 2, nrow=nrow, padding=padding, pad_value=pad_value
    )
    return (grid * 255).round().to(torch.uint8)


def grid_image(images: Tensor, nrow: int, padding: int = 2, scale: int = 1) -> Any:
    """`images` as one PIL grid with `nrow` images per row; `scale` enlarges pixels (nearest)."""
    return enlarge(to_pil(make_grid(images, nrow, padding)), scale)


def enlarge(pil: Any, scale: int) -> Any:
    """A PIL image `scale` times larger, each pixel a block (nearest neighbour): small digits stay sharp."""
    from PIL import Image

    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST) if scale > 1 else pil


def save_grid(images: Tensor, path: str | Path, nrow: int, padding: int = 2, scale: int = 1) -> Path:
    """Write `images` as one PNG grid with `nrow` images per row; `scale` enlarges pixels (nearest)."""
    return save_pil(grid_image(images, nrow, padding, scale), path)


def save_pil(pil: Any, path: str | Path) -> Path:
    """A PIL image as a PNG, atomically."""
    path = Path(path)
    atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"))
    return path


def png_bytes(pil: Any) -> bytes:
    """A PIL image encoded as PNG (what a notebook displays)."""
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def save_images(
    images: Tensor,
    directory: str | Path,
    *,
    start: int = 1,
    digits: int = 5,
    rgb: bool = False,
    prefix: str = "",
) -> list[Path]:
    """One PNG per image: <prefix>00001.png, 00002.png, ...; `rgb` writes 3-channel files (as FID tools expect)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(to_uint8(images)):
        pil = to_pil(img)
        paths.append(save_pil(pil.convert("RGB") if rgb else pil, directory / f"{prefix}{start + i:0{digits}d}.png"))
    return paths


def to_pil(img: Tensor) -> Any:
    """One uint8 (C, H, W) image as a PIL image ("L" for one channel, else "RGB")."""
    from PIL import Image

    arr = img.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB")


def read_rgb(path: str | Path) -> Any:
    """A PNG this module wrote, back as an (H, W, 3) uint8 array (what TensorBoard's image summary takes)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def plot_training_curves(metrics_file: str | Path, out: str | Path) -> Path | None:
    """Training loss (smoothed), validation loss and learning rate against step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(metrics_file)
    if not path.is_file():  # nothing logged yet (a run shorter than train.log_every, without validation)
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
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
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out


def _ema(values: Sequence[float], alpha: float = 0.1) -> list[float]:
    out, acc = [], values[0]
    for v in values:
        acc = (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out


def save_gif(frames: Tensor, path: str | Path, duration: float = 0.12, scale: int = 4, bounce: bool = True) -> Path:
    """An animated GIF of `frames` (N, C, H, W) in [-1, 1]; `duration` seconds per frame, pixels enlarged
    `scale` times; `bounce` plays the frames forwards then backwards so the loop has no jump."""
    path = Path(path)
    data = gif_bytes(frames, duration, scale, bounce)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def gif_bytes(frames: Tensor, duration: float = 0.12, scale: int = 4, bounce: bool = True) -> bytes:
    """The GIF of `save_gif`, in memory (a notebook shows it with IPython.display.Image(data=...))."""
    pils = [enlarge(to_pil(img), scale) for img in to_uint8(frames)]
    if bounce and len(pils) > 2:
        pils = pils + pils[-2:0:-1]
    buffer = io.BytesIO()
    pils[0].save(buffer, format="GIF", save_all=True, append_images=pils[1:], duration=round(duration * 1000), loop=0)
    return buffer.getvalue()


def grid_frames(frames: Sequence[Tensor], nrow: int, hold: int = 8) -> Tensor:
    """Frame k the grid of batch `frames[k]`, back in [-1, 1]; the last held `hold` frames longer."""
    grids = [make_grid(batch, nrow).float() / 127.5 - 1 for batch in frames]
    return torch.stack(grids + [grids[-1]] * hold)


FIGURE_FRAME = 0.6  # light grey in [-1, 1]: the frame of labelled figures and their empty cells


def save_labelled_rows(
    rows: Sequence[Tensor], labels: Sequence[str], path: str | Path, scale: int = 3, padding: int = 2
) -> Path:
    """`labelled_rows` written as a PNG, atomically."""
    return save_pil(labelled_rows(rows, labels, scale, padding), path)


def labelled_rows(rows: Sequence[Tensor], labels: Sequence[str], scale: int = 3, padding: int = 2) -> Any:
    """A PIL figure with one row per tensor (N_i, C, H, W) in [-1, 1] and its label written to the left.

    Cells are framed in light grey, so white image borders (a mask's kept region) stay visible."""
    from PIL import Image, ImageDraw, ImageFont

    width = max(len(r) for r in rows)
    blank = torch.full_like(rows[0][:1], FIGURE_FRAME)  # short rows are padded with frame-coloured cells
    cells = torch.cat([torch.cat([r, blank.expand(width - len(r), -1, -1, -1)]) for r in rows])
    grid = enlarge(to_pil(make_grid(cells, width, padding, pad_value=(FIGURE_FRAME + 1) / 2)).convert("RGB"), scale)
    font = ImageFont.load_default(size=max(10, 4 * scale + 2))
    label_width = max(int(font.getlength(label)) for label in labels) + 12
    figure = Image.new("RGB", (grid.width + label_width, grid.height), "white")
    figure.paste(grid, (label_width, 0))
    draw = ImageDraw.Draw(figure)
    row_height = grid.height / len(rows)
    for i, label in enumerate(labels):
        draw.text((6, (i + 0.5) * row_height), label, fill="black", font=font, anchor="lm")
    return figure


def captioned_row(cells: Tensor, labels: Sequence[str], scale: int = 6, padding: int = 2) -> Any:
    """A PIL figure of `cells` (N, C, H, W) in [-1, 1] side by side, each with its label above it."""
    from PIL import Image, ImageDraw, ImageFont

    grid = enlarge(
        to_pil(make_grid(cells, len(cells), padding, pad_value=(FIGURE_FRAME + 1) / 2)).convert("RGB"), scale
    )
    size = max(10, 2 * scale + 4)
    font = ImageFont.load_default(size=size)
    top = size + 12
    figure = Image.new("RGB", (grid.width, grid.height + top), "white")
    figure.paste(grid, (0, top))
    draw = ImageDraw.Draw(figure)
    cell = cells.shape[-1] + padding
    for i, label in enumerate(labels):
        draw.text(
            ((padding + i * cell + cells.shape[-1] / 2) * scale, top / 2), label, fill="black", font=font, anchor="mm"
        )
    return figure


def save_grid_gif(frames: Sequence[Tensor], path: str | Path, nrow: int, scale: int = 2, hold: int = 8) -> Path:
    """An animated GIF whose frame k is the grid of batch `frames[k]` (N, C, H, W) in [-1, 1]; the last
    frame is held `hold` frames longer so the finished images can be seen before the loop restarts."""
    return save_gif(grid_frames(frames, nrow, hold), path, scale=scale, bounce=False)


SCHEDULE_PANELS = {
    "beta": "β_t",
    "alpha_bar": "ᾱ_t",
    "sqrt_alpha_bar": "√ᾱ_t (signal scale)",
    "sqrt_one_minus_alpha_bar": "√(1 - ᾱ_t) (noise scale)",
    "log_snr": "log-SNR  log(ᾱ_t / (1 - ᾱ_t))",
}


def plot_schedules(curves: dict[str, dict[str, Tensor]], out_dir: str | Path) -> list[Path]:
    """`schedules.png` (every quantity in one figure) and one PNG per quantity, each overlaying all schedules.

    `curves` maps a schedule's name to its quantities by name (see `SCHEDULE_PANELS`), each over t = 0 .. T-1.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    written = []
    for ax, key in zip(axes.flat, SCHEDULE_PANELS, strict=False):
        _schedule_panel(ax, curves, key)
    axes.flat[-1].axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].legend(handles, labels, loc="center", title="schedule")
    fig.tight_layout()
    written.append(_save_figure(fig, out_dir / "schedules.png"))
    for key in SCHEDULE_PANELS:
        fig, ax = plt.subplots(figsize=(6, 4))
        _schedule_panel(ax, curves, key)
        ax.legend()
        fig.tight_layout()
        written.append(_save_figure(fig, out_dir / f"{key}.png"))
    return written


def _schedule_panel(ax: Any, curves: dict[str, dict[str, Tensor]], key: str) -> None:
    from diffkit.schedules import ZTSNR_SUFFIX

    colours: dict[str, str] = {}
    for name, values in curves.items():
        y = values[key].double()
        # a zero-terminal-SNR variant is dashed, in the colour of the schedule it rescales
        base = name.removesuffix(ZTSNR_SUFFIX)
        colour = colours.setdefault(base, f"C{len(colours)}")
        style = "--" if name.endswith(ZTSNR_SUFFIX) else "-"
        ax.plot((torch.arange(len(y)) + 1) / len(y), y.numpy(), style, color=colour, label=name)  # x: t/T, any T
    ax.set_title(SCHEDULE_PANELS[key])
    ax.set_xlabel("t / T")
    if key == "beta":
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def _save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def plot_guidance_sweep(
    rows: Sequence[dict[str, Any]], path: str | Path, *, feature_net: str, floor_fid: float | None = None
) -> Path:
    """FID, KID (± std) and class accuracy against guidance scale, one panel each (those present).

    `rows` are records with "cfg" (the guidance scale) and any of "fid", "kid"/"kid_std", "class_accuracy"; the lowest
    FID is ringed, and `floor_fid` (real against real) is drawn as a dashed line for reference.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [key for key in ("fid", "kid", "class_accuracy") if any(key in r for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.6), squeeze=False)
    titles = {"fid": "FID (lower is better)", "kid": "KID (lower is better)", "class_accuracy": "class accuracy"}
    for ax, key in zip(axes[0], panels, strict=False):
        present = [r for r in rows if key in r]
        x, y = [r["cfg"] for r in present], [r[key] for r in present]
        errors = [r.get("kid_std", 0.0) for r in present] if key == "kid" else None
        ax.errorbar(x, y, yerr=errors, fmt="o-", capsize=3)
        if key == "fid":
            best = min(present, key=lambda r: r["fid"])
            ax.plot(
                [best["cfg"]],
                [best["fid"]],
                "o",
                ms=12,
                mfc="none",
                mec="C3",
                label=f"best: {best['fid']:.3g} at {best['cfg']:g}",
            )
            if floor_fid is not None:
                ax.axhline(floor_fid, ls="--", color="grey", label=f"real vs real: {floor_fid:.3g}")
            ax.legend(fontsize=8)
        if key == "class_accuracy":
            ax.set_ylim(0, 1.02)
        ax.set_title(titles[key])
        ax.set_xlabel("guidance scale")
        ax.grid(alpha=0.3)
    fig.suptitle(f"features: {feature_net}", fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, Path(path))


PROCESS_PANELS = {
    "alpha": "α (signal scale of the process's own x)",
    "sigma": "σ (noise scale)",
    "log_snr": "log-SNR  log(α² / σ²)",
}


def plot_processes(curves: dict[str, dict[str, Tensor]], path: str | Path) -> Path:
    """`processes.png`: α, σ and log-SNR of each process along its sampling grid (u = 0: least noise,
    1: most), and the density of log-SNR its training draws, all processes overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for i, (name, values) in enumerate(curves.items()):
        colour = f"C{i}"
        for ax, key in zip(axes, PROCESS_PANELS, strict=False):
            ax.plot(values["u"].numpy(), values[key].numpy(), color=colour, label=name)
        axes[3].plot(values["density_log_snr"].numpy(), values["density"].numpy(), color=colour, label=name)
    for ax, title in zip(axes, PROCESS_PANELS.values(), strict=False):
        ax.set_title(title)
        ax.set_xlabel("position on the sampling grid")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[3].set_title("training: density of the noise levels drawn")
    axes[3].set_xlabel("log-SNR")
    axes[3].grid(alpha=0.3)
    axes[3].legend(title="process")
    fig.tight_layout()
    return _save_figure(fig, Path(path))
