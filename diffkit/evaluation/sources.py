"""Image sources for evaluation: dataset splits, folders, .npz statistics and run:DIR, and the real
partner of a reference (the real-vs-real floor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from diffkit.data import DATASETS, load_images, parse_source
from diffkit.errors import DiffkitError

SourceKind = Literal["dataset", "folder", "stats", "run"]
RUN_PREFIX = "run:"
SUBSET_SEED = 0  # which images a --num subset of a dataset or folder takes: fixed, so caches and reruns agree
# ------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Source:
    """What the user named: `kind` says how to get its images or statistics."""

    kind: SourceKind
    text: str  # as written (runs as run:DIR)
    path: Path | None = None  # the folder, .npz file or run directory

    def __str__(self) -> str:
        return self.text


def parse_eval_source(text: str) -> Source:
    """`run:DIR`, an `.npz` file, an existing folder, or a dataset source string; anything else is an error."""
    text = text.strip()
    if text.startswith(RUN_PREFIX):
        path = Path(text[len(RUN_PREFIX) :]).expanduser()
        if not (path / "config.toml").is_file():
            raise DiffkitError(
                f"{path} is not a diffkit run (no config.toml): give run:DIR with a directory made by diffkit train"
            )
        return Source("run", text, path)
    path = Path(text).expanduser()
    if text.endswith(".npz"):
        if not path.is_file():
            raise DiffkitError(
                f"statistics file {path} does not exist: give an .npz with mu and sigma (write one "
                "with diffkit fid SOURCE --save-stats PATH)"
            )
        return Source("stats", text, path)
    if path.is_dir():
        if (path / "config.toml").is_file():  # a run directory given without run: means its samples
            return Source("run", RUN_PREFIX + text, path)
        return Source("folder", text, path)
    if path.is_file():
        raise DiffkitError(
            f"{text} is a file, not a source: give a folder of images, an .npz of statistics, "
            "a dataset split such as mnist:test, or run:DIR"
        )
    name = text.split(":")[0]
    if name not in DATASETS or name == "folder":
        names = ", ".join(n for n in DATASETS if n != "folder")
        raise DiffkitError(
            f"source {text!r} is not a dataset ({names}), an existing folder, an .npz file or "
            "run:DIR: fix the name or the path"
        )
    return Source("dataset", text)


# ------------------------------------------------------------------------------------------- images


@dataclass
class Images:
    """Images of a source as measured (N, C, H, W), their classes (or None), a description.

    Real images stay uint8 [0, 255] (a quarter of float32's memory; feature nets convert batch by batch),
    generated ones are float [-1, 1].
    """

    images: Tensor
    labels: Tensor | None
    label: str  # says exactly what was measured, e.g. "mnist:test (1000 of 10000)"
    notes: list[str] = field(default_factory=list)


def load_source_images(source: Source, num: int | None = None, *, data_dir: Path | None = None) -> Images:
    """A dataset split or a folder, as a fixed random subset of `num` images when that is fewer than all."""
    if source.kind == "dataset":
        data = parse_source(source.text, data_dir=data_dir)
        images, labels = data.images, data.labels
    elif source.kind == "folder":
        images, labels = _folder_images(source.path)
    else:
        raise DiffkitError(f"{source} has no images to load here: it is a {source.kind} source")
    total, label, notes = images.shape[0], source.text, []
    if num is not None and num < total:
        index = torch.randperm(total, generator=torch.Generator().manual_seed(SUBSET_SEED))[:num].sort().values
        images, labels = images[index], labels[index]
        label = f"{source.text} ({num} of {total})"
    elif num is not None and num > total:
        notes.append(f"{source.text} has only {total} images (asked for {num}): using all of them")
    has_labels = bool((labels >= 0).all())
    return Images(images, labels if has_labels else None, label, notes)


def _folder_images(path: Path | None) -> tuple[Tensor, Tensor]:
    """A folder's images with their own channels: grey files, or RGB files whose channels all agree,
    become one channel (a lossless reading of e.g. `diffkit sample --export-dir --rgb`)."""
    data = load_images("folder", path=str(path), channels=3)
    images = data.images
    if bool((images == images[:, :1]).all()):
        images = images[:, :1].contiguous()
    return images, data.labels


# ------------------------------------------------------------------------------------------- floors


def floor_partner(reference: Source, data_dir: Path) -> str | None:
    """Other real images of the reference's kind: its other split (mnist:test <-> mnist-5k), if loadable."""
    if reference.kind != "dataset":
        return None
    parts = reference.text.split(":")
    name = parts[0]
    split = parts[1] if len(parts) > 1 and parts[1] else ("train" if name == "mnist-5k" else "test")
    if name == "mnist-5k":
        candidates = ["mnist:test"]
    elif split == "test":
        candidates = [f"{name}:train"] + (["mnist-5k"] if name == "mnist" else [])
    else:
        candidates = [f"{name}:test"]
    return next((c for c in candidates if loadable(c, data_dir)), None)


def loadable(source: str, data_dir: Path) -> bool:
    try:
        parse_source(source, data_dir=data_dir)
    except DiffkitError:
        return False
    return True
