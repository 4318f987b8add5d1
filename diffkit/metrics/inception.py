"""pytorch-fid's Inception-v3 pool3 features (2048-d), whose weights are never downloaded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diffkit.errors import DiffkitError
from diffkit.metrics.features import _batches, _check_batch
from diffkit.metrics.frechet import Array
from diffkit.progress import Progress
from diffkit.safeload import load_torch_file

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"

# ---------------------------------------------------------------------------------- Inception


class InceptionFeatureNet:
    """pytorch-fid's Inception-v3 pool3 features (2048-d), the feature space of published FID scores.

    Takes [-1, 1] images of any size with 1 or 3 channels: pytorch-fid resizes them to 299x299
    (bilinear), and 1-channel images are repeated to 3 channels (as grey RGB) first.
    """

    name = "inception-v3 pool3 (pytorch-fid)"
    expected_shape = (3, 299, 299)

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 50, progress: Progress | None = None) -> Array:
        _check_batch(images, self.name, self.expected_shape, sizes_fixed=False)
        parts = []
        for batch in _batches(images, batch_size, progress, "inception features"):
            rgb = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
            pooled = self.model((rgb + 1) / 2)[0]  # pytorch-fid takes [0, 1] and rescales to [-1, 1] itself
            parts.append(pooled.reshape(pooled.shape[0], -1))
        return torch.cat(parts).double().numpy() if parts else np.zeros((0, 2048))


def inception_feature_net(weights: str | Path | None = None) -> InceptionFeatureNet:
    """pytorch-fid's InceptionV3 (pool3 block) with its FID weights, from `weights` or the torch hub cache.

    Never downloads: without the file, raises DiffkitError saying where to put it.
    """
    from pytorch_fid.inception import InceptionV3

    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME
    path = Path(weights).expanduser() if weights else hub_file
    if not path.is_file():
        where = f"{path} does not exist" if weights else f"{FID_WEIGHTS_NAME} is not in {hub_file.parent}"
        raise DiffkitError(
            f"Inception FID weights not found ({where}): download {FID_WEIGHTS_URL} into "
            f"{hub_file.parent}, or pass --inception-weights PATH"
        )
    fix = f"give pytorch-fid's Inception weights file, {FID_WEIGHTS_NAME} from {FID_WEIGHTS_URL}"
    state = load_torch_file(path, "Inception weights", fix)  # weights_only: a payload in the file never runs
    try:
        with _loading_from(state):
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise DiffkitError(
            f"{path} is not pytorch-fid's Inception weights file ({type(err).__name__}): give "
            f"{FID_WEIGHTS_NAME} from {FID_WEIGHTS_URL}"
        ) from None
    return InceptionFeatureNet(model)


@contextmanager
def _loading_from(state: object) -> Iterator[None]:
    """Have pytorch-fid's model take `state` (already loaded safely) where it would call
    torch.hub.load_state_dict_from_url, whose torch.load may run code and may download: neither happens,
    and none of pytorch-fid's model code needs copying."""
    import pytorch_fid.inception as fid_inception

    original = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *_, **__: state
    try:
        yield
    finally:
        fid_inception.load_state_dict_from_url = original
