"""Image-quality metrics: FID and KID in a chosen feature space, PSNR and SSIM, class accuracy.

`frechet` (Fréchet distance, KID, .npz statistics), `image` (PSNR, SSIM), `features` (the feature-net
protocol, classifier nets and their cache), `inception` (pytorch-fid's network).

Feature spaces ("feature nets") share one small protocol, `FeatureNet`:

* `digit_feature_net()`: a small CNN trained (deterministically, once, then cached) on MNIST digits.
  Its name, e.g. "digits-cnn v1 (mnist-5k, test acc 98.4%)", says which digits it learned from.
* `inception_feature_net()`: pytorch-fid's Inception-v3 pool3 features (2048-d), the standard FID space.
  Its weights are never downloaded: they must already be in the torch hub cache or given by path.

Scores from different feature nets are not comparable: always report the feature net's name with them.
Images are float tensors in [-1, 1], shape (N, C, H, W). This module must not import rich: long jobs
report through an optional `progress(done, total, message)` callable instead.
"""

from diffkit.metrics.features import (
    DIGIT_NET_VERSION,
    ClassifierFeatureNet,
    FeatureNet,
    class_accuracy,
    classifier_feature_net,
    default_cache_dir,
    digit_feature_net,
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
from diffkit.metrics.image import psnr, ssim
from diffkit.metrics.inception import FID_WEIGHTS_NAME, FID_WEIGHTS_URL, InceptionFeatureNet, inception_feature_net

__all__ = [
    "DIGIT_NET_VERSION",
    "FID_WEIGHTS_NAME",
    "FID_WEIGHTS_URL",
    "MIN_SAMPLES",
    "Array",
    "ClassifierFeatureNet",
    "FeatureNet",
    "InceptionFeatureNet",
    "class_accuracy",
    "classifier_feature_net",
    "default_cache_dir",
    "digit_feature_net",
    "feature_statistics",
    "frechet_distance",
    "inception_feature_net",
    "kernel_inception_distance",
    "load_statistics",
    "psnr",
    "save_statistics",
    "ssim",
    "statistics_metadata",
]
