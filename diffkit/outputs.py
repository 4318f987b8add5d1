"""One writer per output, found writable before the work: `claim` takes an exclusive lock on an output
(a file or a folder) before anything is computed, and the existence checks run under it.

The lock is `fcntl.flock` on `<folder>/.<name>.lock` beside the output, so a second process aiming at the
same output is refused at once with one line (or, for the numbered folders of `fresh_dir`, moves on to
the next free name), instead of both working and the last silently replacing the other. The operating
system drops the lock when its process dies; a lock file a killed process left is taken over.

A folder written piece by piece (an export) is written into a staging folder `.<name>.partial` beside it
and renamed into place when complete: a stopped export leaves no folder that looks complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from diffkit.atomic import disk_error
from diffkit.errors import DiffkitError
from diffkit.runlock import lock_file


class OutputBusy(DiffkitError):
    """Another live process holds the claim on this output."""


def _unwritable(path: Path, flag: str, exc: OSError) -> DiffkitError:
    refused = disk_error(path, exc, "nothing was written")
    reason = str(refused) if refused else f"cannot write {path} ({exc.strerror})"
    return DiffkitError(f"{flag} {path}: {reason.removeprefix(f'cannot write {path}: ')}")


def _owner(lock: Path) -> str:
    try:
        pid = lock.read_text().split()[0]
        return f" (pid {int(pid)})"
    except (OSError, ValueError, IndexError):
        return ""


@contextmanager
def claim(path: Path, flag: str = "output") -> Iterator[Path]:
    """Hold the exclusive claim on output `path` (creating its folder, which must be writable) while the
    block runs; raises OutputBusy (one line) when another process holds it."""
    lock = path.parent / f".{path.name}.lock"
    top = _first_missing(path)  # folders made for this output are removed again if it stays empty
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path.parent, flag, exc) from None

    def busy() -> DiffkitError:
        return OutputBusy(
            f"{flag} {path} is being written by another diffkit process{_owner(lock)}: "
            f"wait for it to finish or choose another {flag}"
        )

    fd = lock_file(lock, fcntl.LOCK_EX, busy, lambda exc: _unwritable(path.parent, flag, exc))
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):  # unlink before unlock: a waiter then retries on a new file
            lock.unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if top is not None:
            _remove_empty(path, top)


def _first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its folders that does not exist yet (None when `path` exists)."""
    if path.exists():
        return None
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


def _remove_empty(path: Path, top: Path) -> None:
    """Remove `path` and its folders up to `top` while they are empty: a failed command leaves nothing."""
    for folder in (path, *path.parents):
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # not empty (the output was written), or a file
            return
        if folder == top:
            return


def check_writable(folder: Path, flag: str) -> None:
    """A file can be created in `folder` (read-only mounts and permissions are found before the work)."""
    probe = folder / f".diffkit-write-test-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise _unwritable(folder, flag, exc) from None


def is_fresh(folder: Path) -> bool:
    """A folder an output may go into: absent, or empty."""
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def fresh_dir(path: Path, held: ExitStack, flag: str = "--out") -> Path:
    """`path`, or `path-2`, `path-3`, ...: the first that is new or empty and that no other process is
    writing, claimed on `held` and created (checked writable) before the work."""
    n = 1
    while True:
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        n += 1
        if not is_fresh(candidate):
            continue
        with ExitStack() as trying:
            try:
                trying.enter_context(claim(candidate, flag))
            except OutputBusy:
                continue
            if not is_fresh(candidate):  # filled while we looked: another name
                continue
            try:
                candidate.mkdir(exist_ok=True)
            except OSError as exc:
                raise _unwritable(candidate, flag, exc) from None
            check_writable(candidate, flag)
            held.push(trying.pop_all())
            return candidate


@contextmanager
def staged_folder(directory: Path, flag: str) -> Iterator[Path]:
    """Claim `directory` (new or empty), yield a staging folder beside it to fill, and rename the staging
    folder into place when the block ends normally. On an error or interruption the staging folder is
    removed (a killed process's is removed by the next claim), so `directory` only ever appears complete."""
    with claim(directory, flag):
        if directory.exists() and not directory.is_dir():
            raise DiffkitError(f"{flag} {directory} is a file: give a new or empty folder")
        if not is_fresh(directory):
            raise DiffkitError(f"{flag} {directory} is not empty: give a new or empty folder (nothing was written)")
        staging = directory.with_name(f".{directory.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed process: ours now
        try:
            staging.mkdir()
        except OSError as exc:
            raise _unwritable(directory.parent, flag, exc) from None
        try:
            yield staging
            os.replace(staging, directory)  # onto an absent or empty folder: one rename
        finally:
            shutil.rmtree(staging, ignore_errors=True)
