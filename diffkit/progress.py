"""The one progress type: library functions report (done, total[, message]) and know nothing of rich."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Called as work advances: units done, units in all, and optionally what is being done now."""

    def __call__(self, done: int, total: int, message: str = "", /) -> None: ...
