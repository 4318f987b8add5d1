"""Evaluation: FID, KID and class accuracy between image sources, the real-data floor, guidance sweeps.

A *source* is one of

* a dataset split, as diffkit.data spells it: `mnist:test`, `mnist-5k`, `synthetic:train`;
* a folder of images (any existing directory; its images' own channels are kept);
* an `.npz` of statistics (`mu`, `sigma`: pytorch-fid's format; diffkit also records the feature net);
* `run:DIR`: samples generated from a trained run with a chosen sampler, step count and guidance.

One source gives its statistics; two give the distance between them. Every score is reported with the
name of its feature space, and no feature space is ever swapped for another: `auto` means the digit CNN
for 28x28 grayscale images and Inception for anything else, and Inception without its weights file is
an error, not a quiet return to digits.

The library never prints: long steps report through `progress(done, total, message)`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from diffkit.atomic import atomic_write, write_json
from diffkit.data import DATASETS, load_images, parse_source, to_float
from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.generation import cycled_classes, generate
from diffkit.metrics import (
    MIN_SAMPLES,
    Array,
    ClassifierFeatureNet,
    FeatureNet,
    class_accuracy,
    classifier_feature_net,
    default_cache_dir,
    digit_feature_net,
    feature_statistics,
    frechet_distance,
    inception_feature_net,
    kernel_inception_distance,
    load_statistics,
    save_statistics,
    statistics_metadata,
)
from diffkit.progress import Progress
from diffkit.runs import LoadedRun, load_run
from diffkit.sampling import SamplingPlan
from diffkit.settings import Settings, resolve_data_dir
from diffkit.viz import plot_guidance_sweep, save_grid

SourceKind = Literal["dataset", "folder", "stats", "run"]

RUN_PREFIX = "run:"
FEATURE_CHOICES = ("auto", "digits", "inception")
DIGIT_SHAPE = (1, 28, 28)
DEFAULT_RUN_SAMPLES = 1000  # generated images per run source when --num is not given
SUBSET_SEED = 0  # which images a --num subset of a dataset or folder takes: fixed, so caches and reruns agree
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # the usual KID protocol (Bińkowski et al. 2018), see kid_subset_size
_CLASSIFIER_DATASETS = {"mnist": "digits", "mnist-5k": "digits"}  # runs whose classes the digit CNN judges

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
    """Images of a source as measured: float [-1, 1] (N, C, H, W), their classes (or None), a description."""

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
    return Images(to_float(images), labels if has_labels else None, label, notes)


def _folder_images(path: Path | None) -> tuple[Tensor, Tensor]:
    """A folder's images with their own channels: grey files, or RGB files whose channels all agree,
    become one channel (a lossless reading of e.g. `diffkit sample --export-dir --rgb`)."""
    data = load_images("folder", path=str(path), channels=3)
    images = data.images
    if bool((images == images[:, :1]).all()):
        images = images[:, :1].contiguous()
    return images, data.labels


# ------------------------------------------------------------------------------------- feature nets


def choose_feature_net(
    choice: str,
    shapes: Sequence[tuple[int, ...]],
    *,
    inception_weights: Path | None = None,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> FeatureNet:
    """The feature net `choice` names; `auto`: digits when every image is 1x28x28, else Inception."""
    if choice not in FEATURE_CHOICES:
        raise DiffkitError(f"unknown --features {choice!r}: choose one of {', '.join(FEATURE_CHOICES)}")
    if choice == "auto":
        choice = "digits" if shapes and all(tuple(s) == DIGIT_SHAPE for s in shapes) else "inception"
        if choice == "inception":
            sizes = ", ".join(sorted({"x".join(map(str, s)) for s in shapes}))
            try:
                return inception_feature_net(inception_weights)
            except DiffkitError as err:  # say why auto went to Inception, then how to get its weights
                raise DiffkitError(
                    f"--features auto chose Inception for {sizes} images (the digit CNN takes 1x28x28 only), and {err}"
                ) from None
    if choice == "digits":
        return digit_feature_net(data_dir=data_dir, cache_dir=cache_dir, progress=_prefixed(progress, "digit CNN"))
    return inception_feature_net(inception_weights)


def _prefixed(progress: Progress | None, prefix: str) -> Progress | None:
    if progress is None:
        return None

    def report(done: int, total: int, message: str = "", /) -> None:
        progress(done, total, f"{prefix}: {message}")

    return report


def probe(net: FeatureNet, shape: tuple[int, ...], what: str) -> None:
    """Fail now, with the feature net's own message, if images of `shape` will not fit it (before any sampling)."""
    try:
        net.features(torch.zeros(MIN_SAMPLES, *shape), batch_size=MIN_SAMPLES)
    except DiffkitError as err:
        raise DiffkitError(f"{what}: {err}") from None


# ---------------------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    """A source in a feature space: its Gaussian statistics and, when it came from images, the features."""

    label: str
    num: int
    mu: Array
    sigma: Array
    features: Array | None  # None for statistics read from an .npz: no KID for those
    feature_net: str


def measure(
    images: Images,
    net: FeatureNet,
    *,
    cache_key: str | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> Measured:
    """Features and statistics of `images`; with `cache_key`, features are kept on disk and reused."""
    feats = _cached_features(cache_key, cache_dir) if cache_key else None
    if feats is None:
        feats = net.features(images.images, progress=_prefixed(progress, f"features of {images.label}"))
        if cache_key:
            _store_features(cache_key, cache_dir, feats)
    mu, sigma = feature_statistics(feats)
    return Measured(images.label, feats.shape[0], mu, sigma, feats, net.name)


def dataset_cache_key(source: Source, num: int | None, net: FeatureNet, data_dir: Path) -> str:
    """Dataset splits do not change, so their features are cached by source, subset, data dir and net."""
    info = getattr(net, "info", {})
    text = json.dumps([source.text, num, SUBSET_SEED, str(data_dir.resolve()), net.name, info.get("key")])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _features_path(key: str, cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / "features" / f"{key}.npy"


def _cached_features(key: str, cache_dir: Path | None) -> Array | None:
    path = _features_path(key, cache_dir)
    try:
        return np.load(path, allow_pickle=False).astype(np.float64)
    except (OSError, ValueError):  # absent or damaged: compute again
        return None


def _store_features(key: str, cache_dir: Path | None, feats: Array) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as out:  # float32 holds the net's float32 outputs exactly, at half the size
            np.save(out, feats.astype(np.float32))

    atomic_write(_features_path(key, cache_dir), write)


def read_statistics(source: Source, net: FeatureNet | None) -> tuple[Measured, list[str]]:
    """An .npz source, checked against the feature net in use (by recorded name, else by dimension)."""
    assert source.path is not None
    mu, sigma = load_statistics(source.path)
    meta = statistics_metadata(source.path)
    recorded = meta.get("feature_net")
    notes = []
    if net is not None:
        dim = _feature_dim(net)
        if recorded and recorded != net.name:
            raise DiffkitError(
                f"{source} holds statistics in the {recorded} feature space, but this comparison "
                f"uses {net.name}: recompute them with the same --features"
            )
        if dim is not None and mu.shape[0] != dim:
            raise DiffkitError(
                f"{source} holds {mu.shape[0]}-dimensional statistics, but {net.name} features "
                f"have {dim} dimensions: compute both with the same feature net (--features)"
            )
        if not recorded:
            notes.append(f"{source} does not say which feature net made it; taken to be {net.name}")
    name = recorded or (net.name if net is not None else "unrecorded feature net")
    num = int(meta["num"]) if meta.get("num", "").isdigit() else 0
    return Measured(meta.get("source", source.text), num, mu, sigma, None, name), notes


def _feature_dim(net: FeatureNet) -> int | None:
    if isinstance(net, ClassifierFeatureNet):
        return net.model.feature_dim
    return 2048 if "inception" in net.name else None


def save_measured(path: Path, measured: Measured) -> Path:
    """pytorch-fid compatible statistics, plus the feature net, source and image count they came from."""
    save_statistics(
        path,
        measured.mu,
        measured.sigma,
        meta={"feature_net": measured.feature_net, "source": measured.label, "num": str(measured.num)},
    )
    return path


# ---------------------------------------------------------------------------------------- comparing


@dataclass
class Distance:
    fid: float
    kid: tuple[float, float] | None  # (mean, std over subsets)
    kid_subset: int = 0  # images per KID subset


def kid_subset_size(n1: int, n2: int) -> int:
    """The usual 1000 images per subset, but at most half the smaller set: subsets as large as the set
    would all be the same images, and their spread (the reported std) would be zero, not an error bar."""
    return max(MIN_SAMPLES, min(KID_SUBSET_SIZE, min(n1, n2) // 2))


def distance(a: Measured, b: Measured, *, kid: bool = False, seed: int = 0) -> Distance:
    """FID between two measured sources and, with `kid`, KID with its standard deviation."""
    fid = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    if not kid:
        return Distance(fid, None)
    if a.features is None or b.features is None:
        stats = a.label if a.features is None else b.label
        raise DiffkitError(f"KID needs images, and {stats} is a statistics file: drop --kid or give its images")
    size = kid_subset_size(len(a.features), len(b.features))
    return Distance(fid, kernel_inception_distance(a.features, b.features, KID_SUBSETS, size, seed), size)


@dataclass
class Accuracy:
    overall: float
    per_class: dict[int, float]


def class_judge(
    settings: Settings,
    run: str = "this run",
    *,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> ClassifierFeatureNet:
    """A classifier trained on the run's own dataset (the digit CNN for MNIST digits) to judge its classes;
    `run` names the run in messages."""
    num_classes = settings.model.num_classes or 0
    if num_classes == 0:
        raise DiffkitError(
            f"class accuracy needs a class-conditional run, and {run} is unconditional: drop --class-accuracy"
        )
    dataset = settings.data.dataset
    if dataset in _CLASSIFIER_DATASETS:
        net = digit_feature_net(data_dir=data_dir, cache_dir=cache_dir, progress=_prefixed(progress, "digit CNN"))
    elif dataset == "folder":
        raise DiffkitError(
            f"{run} was trained on a folder of images, for which diffkit has no classifier: "
            "drop --class-accuracy (it works for runs on named datasets such as mnist-5k)"
        )
    else:
        net = classifier_feature_net(
            dataset, data_dir=data_dir, cache_dir=cache_dir, progress=_prefixed(progress, f"{dataset} classifier")
        )
    if net.model.num_classes != num_classes:
        raise DiffkitError(
            f"the {dataset} classifier knows {net.model.num_classes} classes but {run} makes "
            f"{num_classes}: class accuracy needs a run trained on the dataset's own classes"
        )
    return net


def accuracy_of(judge: ClassifierFeatureNet, images: Images) -> Accuracy:
    if images.labels is None:
        raise DiffkitError(f"{images.label} has no classes: class accuracy needs a class-conditional run")
    overall, per_class = class_accuracy(judge, images.images, images.labels)
    return Accuracy(overall, per_class)


# -------------------------------------------------------------------------------------------- runs


def run_images(run: LoadedRun, num: int, plan: SamplingPlan, progress: Progress | None = None) -> Images:
    """`num` images from a run, classes in turn (so each class gets num / K of them), one seed for all."""
    classes = cycled_classes(run.num_classes, None, num)
    label = f"run:{run.root} ({plan.sampler} {plan.steps} steps)"  # guidance: a column of its own

    def tick(done: int, total: int, message: str = "") -> None:
        if progress is not None:
            progress(done, total, f"sampling, guidance {plan.guidance:g}")

    out = generate(run.denoiser(plan), plan, num=num, classes=classes, progress=tick)
    return Images(out.images, classes, label)


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
    return next((c for c in candidates if _loadable(c, data_dir)), None)


def _loadable(source: str, data_dir: Path) -> bool:
    try:
        parse_source(source, data_dir=data_dir)
    except DiffkitError:
        return False
    return True


# -------------------------------------------------------------------------------------------- report


@dataclass
class Row:
    """One line of the result: a guidance scale of a run (or the single comparison when there is no run)."""

    guidance: float | None
    num: int
    distance: Distance | None = None
    accuracy: Accuracy | None = None
    preview: Tensor | None = None  # a few generated images, for a picture

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"guidance": self.guidance, "num": self.num}
        if self.distance is not None:
            out["fid"] = self.distance.fid
            if self.distance.kid is not None:
                out["kid"], out["kid_std"] = self.distance.kid
                out["kid_subset_size"] = self.distance.kid_subset
        if self.accuracy is not None:
            out["class_accuracy"] = self.accuracy.overall
            out["class_accuracy_per_class"] = {str(k): v for k, v in self.accuracy.per_class.items()}
        return out


@dataclass
class Floor:
    """The same comparison between two sets of real images: what a perfect model would score."""

    sources: tuple[str, str]
    num: int
    distance: Distance

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sources": list(self.sources), "num": self.num, "fid": self.distance.fid}
        if self.distance.kid is not None:
            out["kid"], out["kid_std"] = self.distance.kid
            out["kid_subset_size"] = self.distance.kid_subset
        return out


@dataclass
class FidReport:
    feature_net: str
    sources: list[str]  # as measured (run sources describe their sampling)
    nums: list[int]
    rows: list[Row]
    floor: Floor | None = None
    statistics: Measured | None = None  # the one source's statistics, in one-source mode
    saved_statistics: Path | None = None
    sampling: SamplingPlan | None = None
    run: Path | None = None  # the run sampled, if any: reports go inside it by default
    num_classes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def compares(self) -> bool:
        return len(self.sources) == 2

    @property
    def best(self) -> Row | None:
        """The guidance scale with the lowest FID, when several were tried."""
        scored = [r for r in self.rows if r.distance is not None and r.guidance is not None]
        return min(scored, key=lambda r: r.distance.fid) if len(scored) > 1 else None  # type: ignore[union-attr]

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "feature_net": self.feature_net,
            "sources": self.sources,
            "nums": self.nums,
            "rows": [r.record() for r in self.rows],
        }
        if self.sampling is not None:
            p = self.sampling
            out["sampling"] = {"sampler": p.sampler, "steps": p.steps, "seed": p.seed, "batch_size": p.batch_size}
            out["sampling"] |= {"options": p.sampler_options} if p.options else {}
        if self.floor is not None:
            out["floor"] = self.floor.record()
        if self.best is not None:
            out["best_guidance"] = self.best.guidance
        if self.statistics is not None:
            out["statistics"] = {
                "num": self.statistics.num,
                "dims": int(self.statistics.mu.shape[0]),
                "trace_sigma": float(np.trace(self.statistics.sigma)),
            }
        if self.saved_statistics is not None:
            out["saved_statistics"] = str(self.saved_statistics)
        out["notes"] = self.notes
        return out

    def save(self, folder: Path) -> list[Path]:
        """fid.json, plus a guidance-sweep plot (several scales) and a preview grid per generated scale."""
        report = write_json(folder / "fid.json", self.record())
        written = [report]
        if len(self.rows) > 1:
            floor = self.floor.distance.fid if self.floor is not None else None
            written.append(
                plot_guidance_sweep(
                    [r.record() for r in self.rows],
                    folder / "guidance_sweep.png",
                    feature_net=self.feature_net,
                    floor_fid=floor,
                )
            )
        for row in self.rows:
            if row.preview is not None:
                nrow = self.num_classes or max(1, math.isqrt(len(row.preview)))
                written.append(save_grid(row.preview, folder / f"samples-cfg{row.guidance:g}.png", nrow=nrow, scale=2))
        return written


# --------------------------------------------------------------------------------------- the command


@dataclass
class FidRequest:
    """Everything `diffkit fid` takes; see `evaluate`."""

    sources: Sequence[str]
    features: str = "auto"
    inception_weights: Path | None = None
    num: int | None = None  # images per image source (a fixed random subset of datasets and folders)
    kid: bool = False
    class_accuracy: bool = False
    save_stats: Path | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance: Sequence[float] | None = None  # several scales: a guidance sweep
    seed: int | None = None
    checkpoint: str = "best"
    device: str = "auto"
    batch_size: int | None = None
    data_dir: Path | None = None
    cache_dir: Path | None = None
    floor: bool = True


def check_request(request: FidRequest, sources: Sequence[Source]) -> None:
    """Combinations that cannot mean anything, refused before any work."""
    if not 1 <= len(sources) <= 2:
        raise DiffkitError(f"give one source (its statistics) or two (the distance between them), not {len(sources)}")
    runs = [s for s in sources if s.kind == "run"]
    if request.num is not None and request.num < MIN_SAMPLES:
        raise DiffkitError(
            f"--num {request.num} is too few: a covariance needs at least {MIN_SAMPLES} images "
            "(FID is only meaningful with hundreds)"
        )
    if request.kid and len(sources) != 2:
        raise DiffkitError("--kid compares two sources: give a second source or drop --kid")
    if request.save_stats is not None and len(sources) != 1:
        raise DiffkitError("--save-stats saves the statistics of one source: give one source")
    if request.class_accuracy and not runs:
        raise DiffkitError("--class-accuracy judges generated images: give a class-conditional run as run:DIR")
    guidance = list(request.guidance or [])
    if guidance and not runs:
        raise DiffkitError("--cfg sets the guidance of generated images: give a run as run:DIR, or drop --cfg")
    if len(guidance) > 1 and len(runs) != 1:
        raise DiffkitError("a guidance sweep (several --cfg values) needs exactly one run source")
    if len(guidance) > 1 and request.save_stats is not None:
        raise DiffkitError("--save-stats saves one set of statistics: give a single --cfg value")
    if not runs and (request.sampler or request.steps is not None or request.seed is not None):
        raise DiffkitError("--sampler, --steps and --seed set how a run is sampled: give a run as run:DIR")


def evaluate(request: FidRequest, progress: Progress | None = None) -> FidReport:
    """Statistics of one source, or FID (and KID, class accuracy, the real floor) between two."""
    opened = _open(request)
    net, judge = _nets(request, opened, progress)
    fixed, notes = _measure_fixed(request, opened, net, progress)
    feature_name = net.name if net is not None else next(iter(fixed.values())).feature_net
    rows, sampling, measured = _rows(request, opened, fixed, net, judge, progress)
    first_run = next(iter(opened.runs.values()), None)
    report = FidReport(
        feature_name,
        [m.label for m in measured],
        [m.num for m in measured],
        rows,
        sampling=sampling,
        notes=opened.notes + notes,
        run=first_run.root if first_run else None,
        num_classes=first_run.num_classes if first_run else 0,
    )
    if len(opened.sources) == 1:
        report.statistics = measured[0]
        if request.save_stats is not None:
            report.saved_statistics = save_measured(request.save_stats, measured[0])
    elif request.floor and net is not None:
        report.floor = _floor(opened.sources, measured, net, request, opened.data_dir, progress)
    report.notes += _small_sample_notes(measured)
    return report


@dataclass
class _Opened:
    """The sources of a request, with runs loaded and dataset / folder images read (cheap; no sampling)."""

    sources: list[Source]
    runs: dict[int, LoadedRun]  # source index -> the loaded run
    images: dict[int, Images]  # source index -> images of a dataset or folder
    data_dir: Path
    notes: list[str]

    def shapes(self) -> dict[int, tuple[int, ...]]:
        """(C, H, W) of every source with images, runs included (from their settings)."""
        out = {i: tuple(im.images.shape[1:]) for i, im in self.images.items()}
        for i, run in self.runs.items():
            d = run.settings.data
            out[i] = (d.channels, d.image_size, d.image_size)
        return out


def _open(request: FidRequest) -> _Opened:
    sources = [parse_eval_source(t) for t in request.sources]
    check_request(request, sources)
    runs = {
        i: load_run(s.path, request.checkpoint, device=request.device)  # type: ignore[arg-type]
        for i, s in enumerate(sources)
        if s.kind == "run"
    }
    data_dir = _data_dir(request, runs.values())
    images = {
        i: load_source_images(s, request.num, data_dir=data_dir)
        for i, s in enumerate(sources)
        if s.kind in ("dataset", "folder")
    }
    notes = [note for im in images.values() for note in im.notes]
    return _Opened(sources, runs, images, data_dir, notes)


def _nets(
    request: FidRequest, opened: _Opened, progress: Progress | None
) -> tuple[FeatureNet | None, ClassifierFeatureNet | None]:
    """The feature net (none when every source is an .npz) and the class judge, both checked against
    every source's image shape now, so a mismatch fails before any sampling."""
    shapes = opened.shapes()
    net = None
    if shapes:
        net = choose_feature_net(
            request.features,
            list(shapes.values()),
            inception_weights=request.inception_weights,
            data_dir=opened.data_dir,
            cache_dir=request.cache_dir,
            progress=progress,
        )
        for i, shape in shapes.items():
            probe(net, shape, str(opened.sources[i]))
    judge = None
    if request.class_accuracy:
        i, run = next(iter(opened.runs.items()))
        judge = class_judge(
            run.settings, str(run.root), data_dir=opened.data_dir, cache_dir=request.cache_dir, progress=progress
        )
        probe(judge, shapes[i], str(run.root))
    return net, judge


def _measure_fixed(
    request: FidRequest, opened: _Opened, net: FeatureNet | None, progress: Progress | None
) -> tuple[dict[int, Measured], list[str]]:
    """Statistics of the sources that do not depend on guidance: .npz files, datasets (cached), folders."""
    fixed: dict[int, Measured] = {}
    notes: list[str] = []
    for i, s in enumerate(opened.sources):
        if s.kind == "stats":
            fixed[i], stat_notes = read_statistics(s, net)
            notes += stat_notes
        elif i in opened.images:
            assert net is not None
            key = dataset_cache_key(s, request.num, net, opened.data_dir) if s.kind == "dataset" else None
            fixed[i] = measure(opened.images[i], net, cache_key=key, cache_dir=request.cache_dir, progress=progress)
    return fixed, notes


def _data_dir(request: FidRequest, runs: Iterable[LoadedRun]) -> Path:
    """The request's data_dir, else `resolve_data_dir` (DIFFKIT_DATA_DIR, else the first run's data_dir)."""
    if request.data_dir is not None:
        return request.data_dir
    return resolve_data_dir(next((run.settings.data_dir for run in runs), None))


def _rows(
    request: FidRequest,
    opened: _Opened,
    fixed: dict[int, Measured],
    net: FeatureNet | None,
    judge: ClassifierFeatureNet | None,
    progress: Progress | None,
) -> tuple[list[Row], SamplingPlan | None, list[Measured]]:
    """One row per guidance scale: generate from each run source, measure, compare, judge classes."""
    count = len(opened.sources)
    if not opened.runs:
        measured = [fixed[i] for i in range(count)]
        dist = distance(*measured, kid=request.kid) if count == 2 else None
        return [Row(None, measured[-1].num, dist)], None, measured
    num = request.num or DEFAULT_RUN_SAMPLES
    scales: list[float | None] = list(request.guidance) if request.guidance else [None]
    # every scale checked before the first image is generated (e.g. --cfg 2 on an unconditional run)
    plans = {
        (i, scale): run.plan(
            sampler=request.sampler, steps=request.steps, cfg=scale, seed=request.seed, batch_size=request.batch_size
        )
        for i, run in opened.runs.items()
        for scale in scales
    }
    rows, measured = [], []
    for scale in scales:
        measured = []
        row = Row(None, num)
        for i in range(count):
            if i not in opened.runs:
                measured.append(fixed[i])
                continue
            plan, run = plans[(i, scale)], opened.runs[i]
            images = run_images(run, num, plan, progress)
            assert net is not None
            measured.append(measure(images, net, progress=progress))
            row.guidance = plan.guidance
            row.preview = images.images[: max(1, run.num_classes) * 10]
            if judge is not None:
                row.accuracy = accuracy_of(judge, images)
        if count == 2:
            row.distance = distance(*measured, kid=request.kid)
        rows.append(row)
    return rows, next(iter(plans.values())), measured


def _floor(
    sources: Sequence[Source],
    measured: Sequence[Measured],
    net: FeatureNet,
    request: FidRequest,
    data_dir: Path,
    progress: Progress | None,
) -> Floor | None:
    """Real against real with the same feature net and image count, when one side is a dataset split and
    the other generated images or a folder: the score a model that matched the data would get."""
    kinds = [s.kind for s in sources]
    if sorted(kinds) not in (["dataset", "run"], ["dataset", "folder"]):
        return None
    ref = kinds.index("dataset")
    other = 1 - ref
    partner = floor_partner(sources[ref], data_dir)
    if partner is None:
        return None
    num = measured[other].num
    partner_source = Source("dataset", partner)
    images = load_source_images(partner_source, num, data_dir=data_dir)
    key = dataset_cache_key(partner_source, num, net, data_dir)
    real = measure(images, net, cache_key=key, cache_dir=request.cache_dir, progress=progress)
    return Floor((real.label, measured[ref].label), real.num, distance(real, measured[ref], kid=request.kid))


def _small_sample_notes(measured: Sequence[Measured]) -> list[str]:
    dims = int(measured[0].mu.shape[0])
    small = [m for m in measured if 0 < m.num < dims]
    return [
        f"{m.label}: {m.num} images for {dims}-dimensional features; FID is biased upwards and noisy with "
        "fewer images than dimensions (use hundreds or more)"
        for m in small
    ]


# ------------------------------------------------------------------------------------ other callers


@dataclass
class SampleQuality:
    """FID of a batch of generated images against fixed reference statistics, and class accuracy: the
    per-row quality hook of compare-samplers and the small-sample FID logged during training."""

    net: FeatureNet
    reference: Measured
    judge: ClassifierFeatureNet | None = None

    def __call__(self, images: Tensor, classes: Tensor | None) -> dict[str, float]:
        mu, sigma = feature_statistics(self.net.features(images))
        out = {"fid": frechet_distance(mu, sigma, self.reference.mu, self.reference.sigma)}
        if self.judge is not None and classes is not None:
            out["class_acc"] = class_accuracy(self.judge, images, classes)[0]
        return out

    def describe(self, num: int) -> str:
        """What the numbers are, to print beside them: sample count, reference, feature space."""
        text = f"FID of {num} images against {self.reference.label} ({self.reference.num} images), "
        text += f"features: {self.net.name}"
        dims = int(self.reference.mu.shape[0])
        if num < dims:
            text += f"; with fewer images than its {dims} dimensions FID is mostly sample-size bias (use --num 500+)"
        return text + ("; class_acc: the classifier agrees with the requested class" if self.judge else "")


def default_reference(settings: Settings, data_dir: Path) -> str:
    """mnist:test for digit runs when it is there, else the run's own training data."""
    d = settings.data
    if d.dataset in _CLASSIFIER_DATASETS and _loadable("mnist:test", data_dir):
        return "mnist:test"
    return d.path if d.dataset == "folder" and d.path else f"{d.dataset}:{d.split}"


def sample_quality(
    settings: Settings,
    reference: str | None = None,
    *,
    features: str = "auto",
    with_accuracy: bool = True,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> SampleQuality:
    """A SampleQuality for images from a run with these settings; the reference's features are cached."""
    data_dir = data_dir or resolve_data_dir(settings.data_dir)
    shape = (settings.data.channels, settings.data.image_size, settings.data.image_size)
    net = choose_feature_net(features, [shape], data_dir=data_dir, cache_dir=cache_dir, progress=progress)
    probe(net, shape, "generated images")
    source = parse_eval_source(reference or default_reference(settings, data_dir))
    if source.kind == "stats":
        ref, _ = read_statistics(source, net)
    elif source.kind == "run":
        raise DiffkitError(f"{source} is a run: give fixed reference images or statistics to compare against")
    else:
        images = load_source_images(source, None, data_dir=data_dir)
        key = dataset_cache_key(source, None, net, data_dir) if source.kind == "dataset" else None
        ref = measure(images, net, cache_key=key, cache_dir=cache_dir, progress=progress)
    judge = None
    if with_accuracy and settings.model.num_classes:
        judge = class_judge(settings, data_dir=data_dir, cache_dir=cache_dir, progress=progress)
    return SampleQuality(net, ref, judge)


# ------------------------------------------------------------------------------- during training

TRAIN_FID_SAMPLER, TRAIN_FID_STEPS = "ddim", 20  # fast settings: the curve's trend matters, not its level


@dataclass
class TrainingFid:
    """The small-sample FID logged during training (train.fid_every_epochs): `num` EMA samples, classes
    in turn, with the run's [sample] plan (guidance, seed, clipping) at DDIM 20 steps, against fixed
    reference statistics."""

    quality: SampleQuality
    num: int
    plan: SamplingPlan

    def __call__(self, denoiser: Denoiser) -> dict[str, Any]:
        classes = cycled_classes(denoiser.num_classes, None, self.num)
        plan = self.plan.with_sampler(TRAIN_FID_SAMPLER, min(TRAIN_FID_STEPS, denoiser.schedule.timesteps))
        out = generate(denoiser, plan, num=self.num, classes=classes)
        fid = self.quality(out.images, None)["fid"]
        # the sample count and feature space travel with the number: a 500-image FID is not a 10k one
        return {
            "fid": fid,
            "fid_samples": self.num,
            "fid_features": self.quality.net.name,
            "fid_reference": self.quality.reference.label,
        }


def training_fid(settings: Settings, *, progress: Progress | None = None) -> TrainingFid:
    """Built when training starts, so a bad combination fails before the first step, not after an epoch.

    The reference is mnist:test for digit runs when it is present, else the training data itself.
    """
    if settings.model.task == "super-res":
        raise DiffkitError(
            "train.fid_every_epochs needs a model that generates from noise, not a super-resolution "
            "model: set train.fid_every_epochs=0"
        )
    data_dir = resolve_data_dir(settings.data_dir)
    quality = sample_quality(settings, None, with_accuracy=False, data_dir=data_dir, progress=progress)
    plan = SamplingPlan.from_settings(settings.sample, settings.model.num_classes or 0)
    return TrainingFid(quality, settings.train.fid_samples, plan)
