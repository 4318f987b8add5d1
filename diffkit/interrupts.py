"""SIGINT and SIGTERM as a request to stop at the next step boundary, never in the middle of a step.

`deferred_signals()` installs handlers that only record the signal; the training loop looks at the
request between steps, saves a consistent `last` checkpoint and stops. A second signal while the
first is pending stops at once (the previous checkpoint stays intact). The previous handlers are
restored on exit. Outside the main thread (where Python cannot install handlers) it does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """Which signal asked the process to stop (None: none yet)."""

    signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + (self.signum or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


_active: StopRequest | None = None


@contextmanager
def deferred_signals() -> Iterator[StopRequest]:
    """Record SIGINT / SIGTERM in the yielded request instead of raising; re-entrant (inner uses share it)."""
    global _active
    if _active is not None:
        yield _active
        return
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None:  # asked twice: stop now, without saving mid-step
            raise SystemExit(128 + signum)
        request.signum = signum

    previous: dict[int, Any] = {s: signal.signal(s, handler) for s in HANDLED}
    _active = request
    try:
        yield request
    finally:
        _active = None
        for s, h in previous.items():
            signal.signal(s, h)
