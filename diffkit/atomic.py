"""Atomic file writes: a unique temporary file beside the target, then one rename.

A reader (or a crash) sees the old file or the new one, never half of one; two writers never share
a temporary name. A write the disk refuses (full, read-only, over quota, not permitted) is one line
saying that the previous file is kept. Temporaries a killed writer left (`.NAME.XXXX.tmp`) are removed
by `clean_stale` when the folder's owner next starts.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffkit.errors import DiffkitError

# what the disk can refuse, in words a user can act on
DISK_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
}
STALE_PATTERN = ".*.tmp"


def disk_error(path: Path, exc: OSError, kept: str | None = None) -> DiffkitError | None:
    """The one-line error for a write the disk refused (None for other OS errors)."""
    reason = DISK_ERRORS.get(exc.errno or 0)
    if reason is None:
        return None
    if kept is None:
        kept = f"the previous {path.name} is kept unchanged" if path.exists() else "nothing was written there"
        kept += " (free space or choose another place)"
    return DiffkitError(f"cannot write {path}: {reason}; {kept}")


def temporary_beside(path: Path) -> Path:
    """A fresh, empty temporary file in `path`'s folder (named so that `clean_stale` finds it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write(path: Path, write: Callable[[Path], object], *, kept: str | None = None) -> Path:
    """Call `write(tmp)` on a fresh temporary path in `path`'s folder, then rename it onto `path`."""
    tmp: Path | None = None
    try:
        tmp = temporary_beside(path)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        refused = disk_error(path, exc, kept)
        if refused is None:
            raise
        raise refused from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return path


def write_durably(path: Path, data: bytes) -> None:
    """`data` into `path` (not atomically), on the disk (fsync) before this returns: a rename after it
    survives power loss too, not only a killed process."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: Path, data: bytes, *, kept: str | None = None) -> Path:
    """`data` into `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), kept=kept)


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, record: Any) -> Path:
    return write_text(path, json.dumps(record, indent=2) + "\n")


def write_report(folder: Path, stem: str, record: Any, markdown: str) -> str:
    """A benchmark's `<stem>.json` and `<stem>.md` in `folder`, each atomically; returns the line that
    says where they went."""
    json_path, md_path = write_json(folder / f"{stem}.json", record), write_text(folder / f"{stem}.md", markdown)
    return f"wrote {json_path} and {md_path}"


def link_into(src: Path, dst: Path) -> None:
    """Make `dst` the same content as `src`, atomically: a hard link (no copying) where the file system has
    them, else a copy; either way renamed onto `dst`."""
    if dst.exists() and os.path.samefile(src, dst):  # rename(2) between two links of one file does nothing
        return

    def write(tmp: Path) -> None:
        tmp.unlink()
        hard_link(src, tmp)

    atomic_write(dst, write)


def hard_link(src: Path, dst: Path) -> None:
    """A new name `dst` for `src`'s file (no copying), or a copy where the file system has no hard links."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        shutil.copyfile(src, dst)


def clean_stale(folder: Path) -> list[Path]:
    """Remove the temporaries a killed writer left in `folder`; only its owner may call this (under its lock)."""
    removed = []
    for tmp in folder.glob(STALE_PATTERN):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
