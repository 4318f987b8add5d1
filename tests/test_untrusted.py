"""No file diffkit loads can run code: each loader gets a file whose unpickling would create a marker file.

A pickle payload is refused (or ignored) by every loader, through the library and the CLI, and the marker
never appears. The loaders: resume states, the Inception FID weights (by path and from the torch hub
cache), checkpoints, .npz statistics, the feature cache (.npy), and the CIFAR-10 batches torchvision unpickles.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffkit.errors import DiffkitError


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a loader ran the payload"


def _torch_payload(path: Path, marker: Path) -> Path:
    torch.save({"x": Payload(marker)}, path)
    return path


def test_payload_is_real(tmp_path: Path, marker: Path) -> None:
    """The payload works when loaded unsafely (so the other tests could fail)."""
    path = _torch_payload(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


def test_resume_state_payload(tmp_path: Path, marker: Path) -> None:
    from diffkit.runs import load_state

    with pytest.raises(DiffkitError, match="would run code"):
        load_state(_torch_payload(tmp_path / "last.state.pt", marker))


def test_inception_weights_payload_by_path(tmp_path: Path, marker: Path) -> None:
    from diffkit.metrics import inception_feature_net

    with pytest.raises(DiffkitError, match=r"Inception weights .* would run code"):
        inception_feature_net(_torch_payload(tmp_path / "evil.pth", marker))


def test_inception_weights_payload_in_hub_cache(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffkit.metrics import inception_feature_net
    from diffkit.metrics.inception import FID_WEIGHTS_NAME

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    _torch_payload(tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_NAME, marker)
    with pytest.raises(DiffkitError, match="would run code"):
        inception_feature_net()


def test_inception_weights_payload_cli(cli, tmp_path: Path, marker: Path) -> None:
    from conftest import one_line_error

    evil = _torch_payload(tmp_path / "evil.pth", marker)
    result = cli(
        "fid",
        "synthetic:test:0..15",
        "synthetic:train:0..15",
        "--features",
        "inception",
        "--inception-weights",
        str(evil),
    )
    one_line_error(result, "would run code")


def test_checkpoint_payload(tmp_path: Path, marker: Path) -> None:
    from diffkit.runs import read_checkpoint

    with pytest.raises(DiffkitError, match="corrupt or not a diffkit checkpoint"):
        read_checkpoint(_torch_payload(tmp_path / "evil.safetensors", marker))


def test_npz_statistics_payload(tmp_path: Path, marker: Path) -> None:
    from diffkit.metrics.frechet import load_statistics, statistics_metadata

    path = tmp_path / "evil.npz"
    np.savez(path, mu=np.array([Payload(marker)], dtype=object), sigma=np.eye(2))
    assert statistics_metadata(path) == {}
    with pytest.raises(DiffkitError):
        load_statistics(path)


def test_feature_cache_payload(tmp_path: Path, marker: Path) -> None:
    from diffkit.evaluation.measuring import _cached_features, _features_path

    path = _features_path("evil", tmp_path)
    path.parent.mkdir(parents=True)
    np.save(path, np.array([Payload(marker)], dtype=object))
    assert _cached_features("evil", tmp_path) is None  # refused, so the features are computed again


def test_cifar10_batches_payload(tmp_path: Path, marker: Path) -> None:
    """torchvision unpickles CIFAR-10's batches, but only after their MD5 sums match the published ones."""
    import pickle

    from diffkit.data.registry import load_images

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))]:
        (folder / name).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(DiffkitError, match="CIFAR-10 not found"):
        load_images("cifar10", "test", data_dir=tmp_path, download=False)
