"""FID of generated batches against fixed reference statistics: compare-samplers' quality columns
and the small-sample FID logged during training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.evaluation.measuring import (
    CLASSIFIER_DATASETS,
    Measured,
    choose_feature_net,
    class_judge,
    dataset_cache_key,
    generated_features,
    measure,
    probe,
    read_statistics,
)
from diffkit.evaluation.sources import Images, load_source_images, loadable, parse_eval_source
from diffkit.generation import cycled_classes
from diffkit.metrics import (
    Array,
    ClassifierFeatureNet,
    FeatureNet,
    class_accuracy,
    feature_statistics,
    frechet_distance,
)
from diffkit.metrics.features import prediction_accuracy
from diffkit.progress import Progress
from diffkit.sampling import SamplingPlan
from diffkit.settings import Settings, resolve_data_dir

# ------------------------------------------------------------------------------------ other callers


@dataclass
class SampleQuality:
    """FID of a batch of generated images against fixed reference statistics, and class accuracy: the
    per-row quality hook of compare-samplers and the small-sample FID logged during training."""

    net: FeatureNet
    reference: Measured
    judge: ClassifierFeatureNet | None = None

    def __call__(self, images: Tensor, classes: Tensor | None) -> dict[str, float]:
        out = {"fid": self.fid(self.net.features(images))}
        if self.judge is not None and classes is not None:
            out["class_acc"] = class_accuracy(self.judge, images, classes)[0]
        return out

    def score(
        self, denoiser: Denoiser, plan: SamplingPlan, num: int, progress: Progress | None = None
    ) -> tuple[float, float | None]:
        """FID of `num` images drawn with `plan` (classes in turn, measured batch by batch) and, with a
        judge and a class-conditional denoiser, the fraction the judge puts in their requested class."""
        classes = cycled_classes(denoiser.num_classes, None, num)
        judge = self.judge if classes is not None else None
        feats, predicted, _ = generated_features(denoiser, plan, num, classes, self.net, judge=judge, progress=progress)
        accuracy = None
        if predicted is not None and classes is not None:
            accuracy = prediction_accuracy(predicted, classes)[0]
        return self.fid(feats), accuracy

    def fid(self, features: Array) -> float:
        """FID of images with these features (from `net`) against the reference."""
        mu, sigma = feature_statistics(features)
        return frechet_distance(mu, sigma, self.reference.mu, self.reference.sigma)

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
    if d.dataset in CLASSIFIER_DATASETS and loadable("mnist:test", data_dir):
        return "mnist:test"
    return d.path if d.dataset == "folder" and d.path else f"{d.dataset}:{d.split}"


def sample_quality(
    settings: Settings,
    reference: str | Images | None = None,
    *,
    features: str = "auto",
    with_accuracy: bool = True,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> SampleQuality:
    """A SampleQuality for images from a run with these settings; a named dataset's features are cached,
    given images (`Images`) are measured here."""
    data_dir = data_dir or resolve_data_dir(settings.data_dir)
    shape = (settings.data.channels, settings.data.image_size, settings.data.image_size)
    net = choose_feature_net(features, [shape], data_dir=data_dir, cache_dir=cache_dir, progress=progress)
    probe(net, shape, "generated images")
    judge = None
    if with_accuracy and settings.model.num_classes:
        judge = class_judge(settings, data_dir=data_dir, cache_dir=cache_dir, progress=progress)
    if isinstance(reference, Images):
        return SampleQuality(net, measure(reference, net, progress=progress), judge)
    source = parse_eval_source(reference or default_reference(settings, data_dir))
    if source.kind == "stats":
        ref, _ = read_statistics(source, net)
    elif source.kind == "run":
        raise DiffkitError(f"{source} is a run: give fixed reference images or statistics to compare against")
    else:
        images = load_source_images(source, None, data_dir=data_dir)
        key = dataset_cache_key(source, None, net, data_dir) if source.kind == "dataset" else None
        ref = measure(images, net, cache_key=key, cache_dir=cache_dir, progress=progress)
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

    def __call__(self, denoiser: Denoiser, progress: Progress | None = None) -> dict[str, Any]:
        classes = cycled_classes(denoiser.num_classes, None, self.num)
        plan = self.plan.guided_by(denoiser.guide)
        plan = plan.with_sampler(TRAIN_FID_SAMPLER, min(TRAIN_FID_STEPS, denoiser.schedule.timesteps))
        net = self.quality.net
        features, _, _ = generated_features(denoiser, plan, self.num, classes, net, progress=progress)  # by batch
        fid = self.quality.fid(features)
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
