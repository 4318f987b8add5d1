"""A small CNN classifier for small images: the feature space of digit FID/KID and the judge of class accuracy.

Three 3x3 conv stages (BatchNorm, ReLU, 2x2 average pooling between them), a 3x3 adaptive pool, a
`feature_dim`-wide hidden layer (the penultimate features) and a linear head. Kept small on purpose:
it trains on the 5,000 mnist-5k digits in well under a minute on two CPU cores and still classifies the
MNIST test split at ~98%. Average pooling rather than max pooling: on CPU, PyTorch's max pooling costs
more than the convolutions of a net this size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffkit.progress import Progress


def _conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU())


class SmallClassifier(nn.Module):
    """Logits for images in [-1, 1], shape (N, channels, image_size, image_size)."""

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        width: int = 16,
        feature_dim: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.body = nn.Sequential(
            _conv(channels, width),
            nn.AvgPool2d(2),
            _conv(width, 2 * width),
            nn.AvgPool2d(2),
            _conv(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(3),  # any image size -> 3x3, keeping a little spatial layout
            nn.Flatten(),
        )
        self.hidden = nn.Linear(2 * width * 9, feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    @property
    def feature_dim(self) -> int:
        return self.hidden.out_features

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (N, feature_dim), taken before the ReLU.

        Pre-activation on purpose: after the ReLU some units are zero for every image ("dead"), which
        makes the feature covariance singular and the Fréchet distance less stable.
        """
        return self.hidden(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# ------------------------------------------------------------------------------------------ training


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed the global RNG, require deterministic kernels and use one CPU thread; restore all afterwards.

    One thread: for a net this small, thread start-up and synchronisation cost more than they save
    (training is ~3x faster single-threaded on a busy 2-core machine), and the floating-point
    summation order then no longer depends on how many cores the machine has.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def augment(
    x: Tensor, generator: torch.Generator, degrees: float = 10.0, scale: float = 0.1, shift_px: float = 2.0
) -> Tensor:
    """Small random rotations, scalings and shifts of [-1, 1] images; uncovered pixels become -1 (black)."""
    n, size = x.shape[0], x.shape[-1]
    uniform = torch.rand(n, 4, generator=generator) * 2 - 1
    angle = uniform[:, 0] * math.radians(degrees)
    zoom = 1 + uniform[:, 1] * scale
    shift = uniform[:, 2:] * (2 * shift_px / size)  # affine_grid measures shifts in half-widths
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1  # zero padding = black


def train_classifier(
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    epochs: int,
    seed: int = 0,
    batch_size: int = 100,
    lr: float = 5e-3,
    progress: Progress | None = None,
) -> SmallClassifier:
    """Train a SmallClassifier on float [-1, 1] images; the same seed gives bit-identical weights.

    Data order and augmentation come from one seeded generator in this process (no loader workers),
    so the only other source of variation is the kernel choice, which deterministic() pins.
    """
    n, channels, size = images.shape[0], images.shape[1], images.shape[-1]
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size  # drop the ragged last batch: tiny batches upset BatchNorm
    total = epochs * steps_per_epoch
    with deterministic(seed):
        model = SmallClassifier(channels=channels, image_size=size, num_classes=num_classes)
        generator = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                loss = F.cross_entropy(model(augment(images[idx], generator)), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if progress is not None:
                    done = epoch * steps_per_epoch + step + 1
                    progress(done, total, f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
    return model.eval()
