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

`sources` (what a source string means, and its images), `measuring` (feature nets, statistics,
distances, class accuracy), `report` (rows, the floor, fid.json), `sweep` (`evaluate`, a row per
guidance scale), `quality` (FID of generated batches: compare-samplers' columns, training-time FID).
"""

from diffkit.evaluation.measuring import (
    DIGIT_SHAPE,
    FEATURE_CHOICES,
    Accuracy,
    Distance,
    Measured,
    accuracy_of,
    choose_feature_net,
    class_judge,
    distance,
    kid_subset_size,
    measure,
    measure_run,
    read_statistics,
    save_measured,
)
from diffkit.evaluation.quality import SampleQuality, TrainingFid, default_reference, sample_quality, training_fid
from diffkit.evaluation.report import FidReport, Floor, Row
from diffkit.evaluation.sources import RUN_PREFIX, Images, Source, load_source_images, parse_eval_source
from diffkit.evaluation.sweep import DEFAULT_RUN_SAMPLES, FidRequest, check_request, evaluate

__all__ = [
    "DEFAULT_RUN_SAMPLES",
    "DIGIT_SHAPE",
    "FEATURE_CHOICES",
    "RUN_PREFIX",
    "Accuracy",
    "Distance",
    "FidReport",
    "FidRequest",
    "Floor",
    "Images",
    "Measured",
    "Row",
    "SampleQuality",
    "Source",
    "TrainingFid",
    "accuracy_of",
    "check_request",
    "choose_feature_net",
    "class_judge",
    "default_reference",
    "distance",
    "evaluate",
    "kid_subset_size",
    "load_source_images",
    "measure",
    "measure_run",
    "parse_eval_source",
    "read_statistics",
    "sample_quality",
    "save_measured",
    "training_fid",
]
