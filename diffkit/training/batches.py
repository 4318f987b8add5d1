"""A run's images as the training loop draws them: the split, the global batch, and each step's rows.

The data order is a fixed permutation per epoch (a pure function of the seed and the epoch), the same
on every rank, so resuming mid-epoch is exact and any number of processes sees the same global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffkit.data import ImageSet, resolve_data, to_float, train_val_split
from diffkit.devices import to_device
from diffkit.distributed import Rows, World, draw_rows
from diffkit.errors import DiffkitError
from diffkit.settings import Settings


class TrainingData:
    """The training and validation images, the global batch, and the run's length in steps."""

    def __init__(self, settings: Settings, world: World, device: torch.device) -> None:
        t = settings.train
        self.settings, self.device = settings, device
        data = world.main_first(lambda: resolve_data(settings))  # rank 0 downloads, then the rest read
        self.train_set, self.val_set = train_val_split(data, settings.data.val_fraction)
        if len(self.train_set) < 1:
            raise DiffkitError("no training images left after the validation split: lower data.val_fraction")
        self.batch_size = min(t.batch_size, len(self.train_set))  # the global batch, all processes together
        self.rows: Rows | None = world.split(self.batch_size) if world.distributed else None
        self.steps_per_epoch = max(1, len(self.train_set) // self.batch_size)
        # with a budget the clock fixes the length and only max_steps caps it (a parent preset's epochs do not)
        if t.max_minutes is not None:
            self.step_cap = t.max_steps
        else:
            self.step_cap = t.max_steps or (t.epochs or 1) * self.steps_per_epoch
        self._order: tuple[int, Tensor] | None = None  # (epoch, its data order), see epoch_order

    def batch(self, step: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """This process's rows of global batch `step` (flips drawn from `gen` when data.hflip)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        idx = self.epoch_order(epoch)[pos * self.batch_size : (pos + 1) * self.batch_size]
        flip = None
        if self.settings.data.hflip:
            flip = draw_rows(self.rows, len(idx), lambda k: torch.rand(k, generator=gen, device=self.device))
        if self.rows is not None:
            idx = idx[self.rows.start : self.rows.stop]
        x0, labels = self.on_device(self.train_set, idx)
        if flip is not None:
            x0 = torch.where((flip < 0.5)[:, None, None, None], x0.flip(-1), x0)
        return x0, labels

    def epoch_order(self, epoch: int) -> Tensor:
        """The permutation of the training images in `epoch`, made once per epoch rather than at every step."""
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.settings.train.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.train_set), generator=gen))
        return self._order[1]

    def on_device(self, images: ImageSet, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Images `idx` of `images` on the run's device as floats in [-1, 1] (sent as uint8), and their labels."""
        return to_float(to_device(images.images[idx], self.device)), to_device(images.labels[idx], self.device)
