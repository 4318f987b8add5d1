"""A run's log: metrics.jsonl (the source of truth), mirrored into TensorBoard when train.tensorboard is on.

Every record goes to metrics.jsonl as one JSON line. With TensorBoard on, its numeric fields also become
scalars at the record's step, in `<run>/tb/`: `loss`, `lr`, `images_per_s` as `train/...`, `val_loss` as
`val/loss`, `fid`, `fid_samples` as `fid/fid`, `fid/samples` (the prefix before the first `_`, when it
names a group). The epoch grids become images and, at the end, the resolved settings the hparams.
The event files are written lazily, on the first record, so building a `RunLog` creates nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from diffkit.atomic import write_text
from diffkit.errors import DiffkitError
from diffkit.runs import RunPaths

# metrics.jsonl keys that belong to a group of their own; every other numeric key is a training figure
_GROUPS = ("val", "fid", "kid")
_NOT_SCALARS = ("step", "epoch")  # the x axis, not a measurement


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key: `loss` -> `train/loss`, `val_loss` -> `val/loss`."""
    group, _, rest = key.partition("_")
    if group in _GROUPS:
        return f"{group}/{rest or key}"
    return f"train/{key}"


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested settings as `{"train.lr": 2e-4, "model.channel_mults": "[1, 2]", ...}`: the hparams plugin
    takes only numbers, booleans and strings, so lists are written as JSON."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        elif value is not None:
            flat[name] = json.dumps(value)
    return flat


class RunLog:
    """metrics.jsonl plus, optionally, TensorBoard. `enabled=False` writes nothing at all (a DDP rank > 0)."""

    def __init__(self, paths: RunPaths, *, tensorboard: bool = False, enabled: bool = True) -> None:
        self.paths, self.enabled = paths, enabled
        self.tensorboard = tensorboard and enabled
        self._writer: Any = None
        self._purge_step: int | None = None  # set on resume: TensorBoard hides what followed it
        self._last: dict[str, float] = {}  # each scalar tag's latest value: the final metrics for hparams
        if self.tensorboard:
            _summary_writer()  # fail now, before training starts, if the package is missing

    def append(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl line; with TensorBoard, its numeric fields as scalars at record["step"]."""
        if not self.enabled:
            return
        with self.paths.metrics.open("a") as f:  # one short write per line: a kill leaves at most a torn last line
            f.write(json.dumps(record) + "\n")
        if not self.tensorboard:
            return
        writer, step = self._tb(), int(record["step"])
        for key, value in record.items():
            if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            tag = scalar_tag(key)
            writer.add_scalar(tag, value, step)
            if math.isfinite(value):
                self._last[tag] = float(value)
        writer.flush()  # readable at once (and after a kill), not after the writer's two-minute timer

    def image(self, tag: str, png_path: str | Path, step: int) -> None:
        """A PNG the run wrote (an epoch grid), as a TensorBoard image at `step`."""
        if not self.tensorboard:
            return
        from diffkit.viz import read_rgb

        writer = self._tb()
        writer.add_image(tag, read_rgb(png_path), step, dataformats="HWC")
        writer.flush()

    def hparams(self, settings: dict[str, Any]) -> None:
        """The resolved settings (flattened) as TensorBoard hparams, with the latest value of every scalar
        as its metrics (the hparams plugin reads those values from the scalars already in the run)."""
        if not self.tensorboard:
            return
        from torch.utils.tensorboard.summary import hparams

        writer = self._tb()
        # written into this run's own event file (SummaryWriter.add_hparams would start a second run beside it)
        for summary in hparams(flatten(settings), dict(self._last)):
            writer.file_writer.add_summary(summary)
        writer.flush()

    def truncate(self, step: int) -> None:
        """On resume: keep the records up to `step` (the resumed run logs the later ones again), and have
        TensorBoard hide the events after `step` that an earlier session wrote."""
        if not self.enabled:
            return
        truncate_metrics(self.paths.metrics, step)
        self._purge_step = step + 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _tb(self) -> Any:
        if self._writer is None:
            self._writer = _summary_writer()(str(self.paths.tensorboard), purge_step=self._purge_step)
            self._purge_step = None  # once: a writer reopened after close() must not purge again
        return self._writer


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DiffkitError(
            "train.tensorboard needs the tensorboard package: pip install 'diffkit[tensorboard]' "
            "(or turn it off: --set train.tensorboard=false)"
        ) from None
    return SummaryWriter


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics.jsonl records up to `step` (a resumed run logs the later ones again); a torn
    last line (a kill mid-write) is dropped too. Written atomically."""
    if not path.is_file():
        return
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        raise DiffkitError(f"{path} cannot be read as text: move it away and --resume again") from None
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    if len(kept) != len(lines):
        write_text(path, "".join(f"{line}\n" for line in kept))
