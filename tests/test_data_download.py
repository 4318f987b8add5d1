"""Datasets that fetch themselves (data.download, DIFFKIT_OFFLINE), without ever reaching the network:
an unreachable network is monkeypatched, and the "mirror" is a loopback HTTP server over fake IDX files."""

from __future__ import annotations

import gzip
import hashlib
import socket
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision.datasets as tvd
from conftest import one_line_error

from diffkit.data import DOWNLOAD_TIMEOUT_S, load_images, resolve_data
from diffkit.errors import DiffkitError
from diffkit.settings import load_settings, parse_overrides


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads allowed again for this test (conftest forbids them for the whole suite)."""
    monkeypatch.delenv("DIFFKIT_OFFLINE", raising=False)


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """No network at all: urlopen and every socket connect fail. Returns the socket timeout of each urlopen call."""
    timeouts: list[float | None] = []

    def urlopen(*_: object, **__: object) -> None:
        timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    def connect(*_: object, **__: object) -> None:
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return timeouts


def test_unreachable_network_fails_fast_with_one_line(cli, workdir: Path, monkeypatch, online, unreachable) -> None:
    data_dir = workdir / "data"
    data_dir.mkdir()
    monkeypatch.setenv("DIFFKIT_DATA_DIR", str(data_dir))
    result = cli("train", "--preset", "tiny", "--set", "data.dataset=mnist")
    one_line_error(
        result,
        f"downloading MNIST into {data_dir / 'MNIST' / 'raw'} failed",
        "Network is unreachable",
        f"put the files in {data_dir / 'MNIST' / 'raw'} yourself",
        "DIFFKIT_OFFLINE=1",
        "--set data.download=false",
    )
    assert unreachable and all(t == DOWNLOAD_TIMEOUT_S for t in unreachable)  # every attempt under the short timeout
    assert socket.getdefaulttimeout() is None  # and the process's default is back afterwards
    assert list(data_dir.iterdir()) == []  # no staging folder, nothing half-downloaded
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(
    ("name", "folder", "title"),
    [("mnist", "MNIST/raw", "MNIST"), ("fashion-mnist", "FashionMNIST/raw", "FashionMNIST"),
     ("cifar10", "cifar-10-batches-py", "CIFAR-10")],
)  # fmt: skip
def test_every_torchvision_dataset_fails_the_same_way(tmp_path: Path, online, unreachable, name, folder, title) -> None:
    with pytest.raises(DiffkitError) as caught:
        load_images(name, "train", data_dir=tmp_path, download=True)
    message = str(caught.value)
    assert f"downloading {title} into {tmp_path / folder} failed" in message and "\n" not in message
    assert "DIFFKIT_OFFLINE=1" in message and unreachable
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("offline", "args", "fragment"),
    [
        ("1", [], "downloads are forbidden by DIFFKIT_OFFLINE=1"),
        (None, ["--set", "data.download=false"], "allow the download with --set data.download=true"),
    ],
)
def test_forbidden_downloads_never_try(
    cli, workdir: Path, monkeypatch, online, unreachable, offline, args, fragment
) -> None:
    data_dir = workdir / "data"
    monkeypatch.setenv("DIFFKIT_DATA_DIR", str(data_dir))
    if offline:
        monkeypatch.setenv("DIFFKIT_OFFLINE", offline)
    result = cli("train", "--preset", "tiny", "--set", "data.dataset=mnist", *args)
    raw = data_dir / "MNIST" / "raw"
    one_line_error(result, f"MNIST train split not found in {raw}", "put the files there", fragment)
    assert unreachable == []  # no download was attempted at all
    assert not data_dir.exists() and not (workdir / "runs").exists()


# ----------------------------------------------------------------------------- a local fake source


def idx_images(images: torch.Tensor) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x0803, n, h, w) + images.numpy().tobytes()


def idx_labels(labels: torch.Tensor) -> bytes:
    return struct.pack(">II", 0x0801, len(labels)) + labels.to(torch.uint8).numpy().tobytes()


@pytest.fixture
def fake_mnist() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "train-images": torch.randint(0, 256, (6, 28, 28), generator=g, dtype=torch.uint8),
        "train-labels": torch.tensor([3, 1, 4, 1, 5, 9]),
        "t10k-images": torch.randint(0, 256, (3, 28, 28), generator=g, dtype=torch.uint8),
        "t10k-labels": torch.tensor([2, 7, 1]),
    }


class _Quiet(SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *_: object) -> None:  # no request lines on stderr
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def mirror(tmp_path: Path, fake_mnist: dict[str, torch.Tensor], monkeypatch) -> Iterator[tuple[list[str], dict]]:
    """A loopback HTTP server over gzipped IDX files, set as torchvision's only MNIST mirror (md5s to match).
    Yields the paths it served and the resources table (which a test may corrupt)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    resources = {}
    for stem, tensor in fake_mnist.items():
        raw = idx_labels(tensor) if stem.endswith("labels") else idx_images(tensor)
        name = f"{stem}-idx{1 if stem.endswith('labels') else 3}-ubyte.gz"
        (folder / name).write_bytes(gzip.compress(raw))
        resources[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    served: list[str] = []
    handler = type("Handler", (_Quiet,), {"requests": served})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(tvd.MNIST, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
    monkeypatch.setattr(tvd.MNIST, "resources", [(name, md5) for name, md5 in resources.items()])
    try:
        yield served, resources
    finally:
        server.shutdown()
        server.server_close()


def test_download_lands_where_the_loader_looks(tmp_path: Path, online, mirror, fake_mnist) -> None:
    served, _ = mirror
    data_dir = tmp_path / "data"
    settings = load_settings("tiny", parse_overrides(["data.dataset=mnist", f'data_dir="{data_dir}"']))
    assert settings.data.download  # the default
    data = resolve_data(settings)
    assert set(served) == {f"/{name}" for name, _ in tvd.MNIST.resources}  # from the loopback mirror
    raw = data_dir / "MNIST" / "raw"
    assert {p.name for p in raw.iterdir()} >= {f"{s}-idx{1 if 'labels' in s else 3}-ubyte.gz" for s in fake_mnist}
    assert [p.name for p in data_dir.iterdir()] == ["MNIST"]  # the staging folder is gone
    assert torch.equal(data.images[:, 0], fake_mnist["train-images"])
    assert torch.equal(data.labels, fake_mnist["train-labels"])
    # torchvision fetched the test split too; both are read from disk now, with no further request
    before = len(served)
    test = load_images("mnist", "test", data_dir=data_dir, download=True)
    assert torch.equal(test.images[:, 0], fake_mnist["t10k-images"]) and test.labels.tolist() == [2, 7, 1]
    assert len(served) == before


def test_a_failed_download_leaves_no_partial_dataset(tmp_path: Path, monkeypatch, online, mirror) -> None:
    served, resources = mirror
    # the last file arrives corrupted (its checksum does not match): the three before it were complete
    bad = [(n, "0" * 32 if n.startswith("t10k-labels") else md5) for n, md5 in resources.items()]
    monkeypatch.setattr(tvd.MNIST, "resources", bad)
    data_dir = tmp_path / "data"
    with pytest.raises(DiffkitError, match=r"Error downloading t10k-labels-idx1-ubyte\.gz; last: .*corrupted"):
        load_images("mnist", "train", data_dir=data_dir, download=True)
    assert set(served) == set(f"/{name}" for name in resources)  # all four were fetched
    assert list(data_dir.iterdir()) == []  # neither the good files nor the bad one look like a dataset
