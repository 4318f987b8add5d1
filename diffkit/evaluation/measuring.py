"""Measuring sources in a feature space: the feature net, cached dataset features, statistics,
distances, class accuracy, and images generated from a run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffkit.atomic import atomic_write
from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.evaluation.sources import SUBSET_SEED, Images, Source
from diffkit.generation import cycled_classes, generate
from diffkit.metrics.features import (
    ClassifierFeatureNet,
    FeatureNet,
    class_accuracy,
    classifier_feature_net,
    default_cache_dir,
    digit_feature_net,
    prediction_accuracy,
)
from diffkit.metrics.frechet import (
    MIN_SAMPLES,
    Array,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    load_statistics,
    save_statistics,
    statistics_metadata,
)
from diffkit.metrics.inception import inception_feature_net
from diffkit.progress import Progress
from diffkit.runs import LoadedRun
from diffkit.sampling import SamplingPlan
from diffkit.settings import Settings

FEATURE_CHOICES = ("auto", "digits", "inception")
DIGIT_SHAPE = (1, 28, 28)
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # the usual KID protocol (Bińkowski et al. 2018), see kid_subset_size
CLASSIFIER_DATASETS = {"mnist": "digits", "mnist-5k": "digits"}  # runs whose classes the digit CNN judges
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
    if dataset in CLASSIFIER_DATASETS:
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


PREVIEW_ROWS = 10  # generated images kept per class (or in all, unconditional) for the report's picture


def generated_features(
    denoiser: Denoiser,
    plan: SamplingPlan,
    num: int,
    classes: torch.Tensor | None,
    net: FeatureNet,
    *,
    judge: ClassifierFeatureNet | None = None,
    keep: int = 0,
    progress: Progress | None = None,
) -> tuple[Array, torch.Tensor | None, torch.Tensor]:
    """Generate `num` images and measure them as they are made: each batch's features (and the judge's
    predicted classes) are kept and its images dropped, so what is held is the features and one batch,
    whatever `num`. Returns the features, the predictions (with a judge) and the first `keep` images."""
    features: list[Array] = []
    predicted: list[torch.Tensor] = []

    def take(first: int, images: torch.Tensor) -> None:
        features.append(net.features(images))
        if judge is not None:
            predicted.append(judge.predict(images))

    out = generate(denoiser, plan, num=num, classes=classes, progress=progress, on_batch=take, keep=keep)
    return np.concatenate(features), torch.cat(predicted) if judge is not None else None, out.images


def measure_run(
    run: LoadedRun,
    num: int,
    plan: SamplingPlan,
    net: FeatureNet,
    *,
    judge: ClassifierFeatureNet | None = None,
    progress: Progress | None = None,
) -> tuple[Measured, Accuracy | None, torch.Tensor]:
    """`num` images from a run, classes in turn (num / K each), one seed for all, measured batch by batch
    (see `generated_features`): the statistics, the class accuracy (with a judge), a few images to show."""
    classes = cycled_classes(run.num_classes, None, num)
    label = f"run:{run.root} ({plan.sampler} {plan.steps} steps)"  # guidance: a column of its own
    if judge is not None and classes is None:
        raise DiffkitError(f"{label} has no classes: class accuracy needs a class-conditional run")

    def tick(done: int, total: int, message: str = "") -> None:
        if progress is not None:
            progress(done, total, f"sampling, guidance {plan.cfg:g}")

    keep = max(1, run.num_classes) * PREVIEW_ROWS
    feats, predicted, preview = generated_features(
        run.denoiser(plan), plan, num, classes, net, judge=judge, keep=keep, progress=tick
    )
    mu, sigma = feature_statistics(feats)
    accuracy = None
    if predicted is not None and classes is not None:
        accuracy = Accuracy(*prediction_accuracy(predicted, classes))
    return Measured(label, num, mu, sigma, feats, net.name), accuracy, preview
