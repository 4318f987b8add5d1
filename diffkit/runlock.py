"""One owner per run directory: an advisory `fcntl.flock` on `<run>/.lock`, held while training.

The operating system releases the lock when its process dies, however it dies, so a lock can never
be left held by a dead process. The file records the owner's pid: a file left behind by a process
that died without cleaning up (kill -9, a crash) is *stale*: it is reported and taken over.

Training holds the lock exclusively (`RunLock`). A command that only writes files of its own inside a
run (samples/..., compare/..., eval/...) holds it shared (`SharedRunLock`) while it works: any number
of those run side by side, none while the run trains, and no training (nor `--force`) starts under
them. Reading a run's checkpoints takes no lock: they are replaced atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from diffkit.errors import DiffkitError

LOCK_NAME = ".lock"


def lock_path(root: Path) -> Path:
    return root / LOCK_NAME


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_owner(root: Path) -> int | None:
    """The pid recorded in the lock file of `root`, if there is a readable one."""
    try:
        first = lock_path(root).read_text().split()
        return int(first[0]) if first else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def is_locked(root: Path) -> bool:
    """Whether a live process holds the lock of run directory `root` right now."""
    path = lock_path(root)
    if not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _owner(root: Path) -> str:
    """` (pid N)` when the lock file names its owner (a training does; writers sharing it do not)."""
    owner = read_owner(root)
    return f" (pid {owner})" if owner else ""


def in_use_error(root: Path) -> DiffkitError:
    return DiffkitError(
        f"run directory {root} is in use by another diffkit process{_owner(root)}: wait for it to finish or "
        "choose another --run-dir"
    )


def check_not_in_use(root: Path) -> None:
    """The one-line error for a run directory another live process holds (checked before anything else)."""
    if is_locked(root):
        raise in_use_error(root)


def _lock_file(root: Path, operation: int, refused: Callable[[Path], DiffkitError]) -> int:
    """An open descriptor of `root`'s lock file holding `operation` (LOCK_EX or LOCK_SH), else `refused(root)`."""

    def unwritable(exc: OSError) -> DiffkitError:
        return DiffkitError(f"cannot lock run directory {root} ({exc.strerror}): is it writable?")

    return lock_file(lock_path(root), operation, lambda: refused(root), unwritable)


def lock_file(
    path: Path, operation: int, refused: Callable[[], DiffkitError], unwritable: Callable[[OSError], DiffkitError]
) -> int:
    """An open descriptor of lock file `path` (created if needed) holding `operation` (LOCK_EX or LOCK_SH)
    without waiting, else `refused()`; a file that cannot be created is `unwritable(error)`."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise unwritable(exc) from None
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise refused() from None
        try:  # the file we locked may have been removed and replaced by its owner's release: retry
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def being_trained_error(root: Path) -> DiffkitError:
    return DiffkitError(
        f"run {root} is being trained by another diffkit process{_owner(root)}, and this would write inside it: "
        "write elsewhere (--out DIR outside the run; reading its checkpoints is fine) or wait for it to finish"
    )


class SharedRunLock:
    """`with SharedRunLock(root):` while writing files of one's own inside run `root` (see the module's
    docstring); raises DiffkitError while the run trains. The lock file is removed by the last holder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd: int | None = None

    def __enter__(self) -> SharedRunLock:
        self.fd = _lock_file(self.root, fcntl.LOCK_SH, being_trained_error)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.fd is None:
            return
        try:  # the last holder (no one else shares it) tidies the file away, as RunLock does
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with contextlib.suppress(OSError):
                lock_path(self.root).unlink(missing_ok=True)
        except BlockingIOError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


class RunLock:
    """`with RunLock(root) as lock:` holds the run's lock (creating `root` if needed) or raises DiffkitError.

    `lock.stale_pid` is the pid of an earlier owner that ended without releasing (killed, crashed) and
    whose lock file was taken over (else None); `lock.stale_alive` whether that pid runs again (reused);
    `lock.created_root` says whether `root` was created here (so a failed start can remove it again).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd: int | None = None
        self.stale_pid: int | None = None
        self.stale_alive = False
        self.created_root = False
        self.created_top: Path | None = None  # the outermost folder created for `root` (to remove on a failed start)

    def acquire(self) -> RunLock:
        if self.root.exists() and not self.root.is_dir():
            raise DiffkitError(f"run directory {self.root} exists and is not a directory: choose another --run-dir")
        if not self.root.exists():
            top = self.root
            while not top.parent.exists() and top.parent != top:
                top = top.parent
            try:
                self.root.mkdir(parents=True)
                self.created_root, self.created_top = True, top
            except FileExistsError:
                pass
            except OSError as exc:
                raise DiffkitError(
                    f"cannot create run directory {self.root} ({exc.strerror}): choose another --run-dir"
                ) from None
        fd = _lock_file(self.root, fcntl.LOCK_EX, in_use_error)
        owner = read_owner(self.root)
        if owner is not None and owner != os.getpid():  # a clean release removes the file: this one was left
            self.stale_pid, self.stale_alive = owner, _pid_alive(owner)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):  # unlink before unlock: a waiter then retries on a new file
            lock_path(self.root).unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def abandon(self) -> None:
        """A start that failed: release, and remove the folders the lock created (a new run leaves nothing)."""
        self.release()
        if self.created_top is not None:
            shutil.rmtree(self.created_top, ignore_errors=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
