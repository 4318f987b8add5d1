"""Several processes, one run: torch.distributed, as `torchrun` launches it (gloo on CPU, nccl on CUDA).

torchrun gives every process RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address (one node or
several alike). A process started without them is a world of one, where every method here returns
its input without communicating, so training has a single code path and one process pays nothing.

What the ranks must agree on goes through this module only: the mean loss, "stop now" (a signal seen
by any rank), rank 0's decisions (the clock plan, out of time, the precision probe), and whether rank 0's
start-up (run-directory checks, a dataset download) failed, so that no rank waits on a dead peer.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from diffkit.errors import DiffkitError

T = TypeVar("T")

# A rank waits this long for the others; rank 0's epoch end (a grid, training-time FID on a CPU) can
# take many minutes while the rest wait, so torch's default of 10-30 minutes is too short.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=3)


@dataclass(frozen=True)
class Rows:
    """This process's rows `[start, stop)` of a global batch of `total` split across processes.

    Random draws are made for all `total` rows, in one process's order, and sliced: N processes then
    train on exactly the noise, timesteps and label dropout one process would, for any N.
    """

    start: int
    stop: int
    total: int

    def draw(self, make: Callable[[int], Tensor]) -> Tensor:
        """`make(total)`, this process's rows of it."""
        return make(self.total)[self.start : self.stop]


def draw_rows(rows: Rows | None, n: int, make: Callable[[int], Tensor]) -> Tensor:
    """`make(n)` for a whole batch, or this process's rows of the global batch's draw."""
    return make(n) if rows is None else rows.draw(make)


class RankZeroFailed(DiffkitError):
    """Rank 0 stopped with this error during start-up; the other ranks exit with it, quietly (rank 0 printed it)."""

    quiet = True


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun); needs no process group."""
    return int(os.environ.get("RANK", "0"))


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous or a local server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_launch(processes: int, *args: str) -> tuple[list[str], dict[str, str]]:
    """The torchrun command (and environment) that runs `python ARGS...` as `processes` processes on this
    machine, meeting on a free loopback port: what the tests and the benchmark launch."""
    rendezvous = ["--nproc-per-node", str(processes), "--master-addr", "127.0.0.1"]
    rendezvous += ["--master-port", str(free_loopback_port())]
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: loopback, whatever the host name resolves to
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, *args], env


@dataclass
class World:
    """The processes training one run. `World()` is one process; `World.from_env` joins torchrun's group."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @classmethod
    def from_env(cls, device: torch.device) -> World:
        """Join the process group torchrun describes in the environment (a world of one without it)."""
        size = launched_world_size()
        if size <= 1:
            return cls()
        rank, local_rank = launched_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
            except (RuntimeError, ValueError) as exc:
                reason = " ".join(str(exc).split())[:160]
                raise DiffkitError(
                    f"could not join the {size} training processes ({backend}: {reason}): launch with "
                    "torchrun --nproc-per-node N -m diffkit train ..., with the same --rdzv-endpoint on every node"
                ) from None
        return cls(rank, size, local_rank, backend)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, device: torch.device) -> torch.device:
        """Each process's own GPU on a node (cuda:LOCAL_RANK); CPU processes share the CPU."""
        if device.type == "cuda" and self.distributed:
            gpus = torch.cuda.device_count()
            if self.local_rank >= gpus:
                raise DiffkitError(
                    f"process {self.local_rank} on this machine has no GPU of its own (the machine has {gpus}): "
                    f"use torchrun --nproc-per-node {gpus}, or --device cpu"
                )
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def split(self, batch_size: int) -> Rows:
        """This rank's rows of a global batch: equal contiguous shares (batch_size divisible by size)."""
        if batch_size % self.size:
            raise DiffkitError(
                f"train.batch_size {batch_size} cannot be split evenly across {self.size} processes: "
                f"use a multiple of {self.size} (the batch size is the global batch, shared by the processes)"
            )
        share = batch_size // self.size
        return Rows(self.rank * share, (self.rank + 1) * share, batch_size)

    # --- collectives (each returns its input unchanged in a world of one) --------------------------
    def _tensor(self, values: Sequence[float]) -> torch.Tensor:
        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        return torch.tensor(list(values), dtype=torch.float64, device=device)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks."""
        if not self.distributed:
            return list(values)
        t = self._tensor(values)
        dist.all_reduce(t)
        return t.tolist()

    def mean(self, value: float) -> float:
        return self.sum([value])[0] / self.size

    def agree(self, any_rank: bool, *main_says: bool) -> tuple[bool, ...]:
        """(any rank said `any_rank`, then each of rank 0's flags), in one collective."""
        if not self.distributed:
            return (any_rank, *main_says)
        mine = [float(any_rank)] + [float(flag) * self.is_main for flag in main_says]
        return tuple(v > 0 for v in self.sum(mine))

    def from_main(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (any picklable value)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def main_first(self, fn: Callable[[], T]) -> T:
        """`fn` on rank 0, then on the others (a dataset download must happen once, before the others read)."""
        return self._main(fn, then_others=True)

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """`fn` on rank 0 only (run-directory checks and creation); None on the others."""
        return self._main(fn, then_others=False)

    def _main(self, fn: Callable[[], T], *, then_others: bool) -> Any:
        """Rank 0 runs `fn` and tells the others whether it failed: a DiffkitError there is raised on every
        rank (`RankZeroFailed` on the others), so nobody waits on a peer that has gone."""
        if not self.distributed:
            return fn()
        if self.is_main:
            try:
                result = fn()
            except DiffkitError as exc:
                self.from_main(str(exc))
                raise
            except BaseException:
                self.from_main("rank 0 stopped with an unexpected error (see its output)")
                raise
            self.from_main(None)
            return result
        failure: str | None = self.from_main(None)
        if failure is not None:
            raise RankZeroFailed(failure)
        return fn() if then_others else None

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
