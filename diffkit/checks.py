"""Flags checked by the same pydantic limits as the settings they stand for, and outputs checked up front.

The CLI and the Python face (`diffkit.api`) both check here, so a mistake reads the same from either.

`check_flag(SampleSettings, "cfg", cfg, "--cfg")` refuses what `sample.cfg` in a preset may not say
(out of range, NaN, infinite) with one line, before any work starts; `check_output_dir` refuses an
output that exists and is not a folder, before the work rather than after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from diffkit.errors import DiffkitError

T = TypeVar("T")

# sizes that multiply memory, bounded with a clear message
MAX_INTERPOLATION_FRAMES = 200


def check_flag(group: type[BaseModel], field: str, value: T, flag: str) -> T:
    """`value` if the setting `field` of `group` may hold it (None: not given, passes), else a DiffkitError."""
    if value is None:
        return value
    probe = group.model_construct()
    try:
        group.__pydantic_validator__.validate_assignment(probe, field, value)
    except ValidationError as exc:
        msg = exc.errors()[0]["msg"]
        section = group.__name__.removesuffix("Settings").lower()
        raise DiffkitError(
            f"{flag} {value!r} is not allowed: {msg} (the limit of the setting {section}.{field})"
        ) from None
    return value


def check_flags(group: type[BaseModel], field: str, values: Iterable[Any] | None, flag: str) -> None:
    for value in values or ():
        check_flag(group, field, value, flag)


def check_bounded(value: int | None, limit: int, flag: str, why: str) -> None:
    if value is not None and value > limit:
        raise DiffkitError(f"{flag} {value} is too large: at most {limit:,} ({why})")


def check_output_dir(path: Path | None, flag: str = "--out") -> None:
    """An output folder must be a folder or not exist yet (its parents too), checked before any work."""
    if path is None:
        return
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise DiffkitError(f"{flag} {path}: {p} exists and is not a directory; choose another {flag}")
            break


def check_output_file(path: Path | None, flag: str, *, force: bool) -> None:
    """An output file is never replaced unless asked (`--force`); its folder must be creatable."""
    if path is None:
        return
    if path.is_dir():
        raise DiffkitError(f"{flag} {path} is a directory: give a file name")
    if path.exists() and not force:
        raise DiffkitError(f"{flag} {path} already exists: choose another name, or add --force to replace it")
    check_output_dir(path.parent, flag)


def check_sample_flags(**flags: Any) -> None:
    """Each flag (`cfg=...`, `steps=[10, 20]`) against the [sample] setting of the same name."""
    from diffkit.settings import SampleSettings

    for name, value in flags.items():
        values = value if isinstance(value, list | tuple) else [value]
        check_flags(SampleSettings, name, values, "--" + name.replace("_", "-"))


def one_of(given: Mapping[str, object]) -> str:
    """The single option given among mutually exclusive ones ({"--image": value, ...}), else a one-line error."""
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) != 1:
        got = f" (got {' and '.join(chosen)})" if chosen else ""
        raise DiffkitError(f"give exactly one of {', '.join(given)}{got}")
    return chosen[0]


def parse_csv(text: str, kind: type, option: str) -> list[Any]:
    """A comma-separated flag value as a list of `kind` (`--cfg 0,1,2`), or one line naming the flag."""
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DiffkitError(
            f"{option} {text!r} is not a comma-separated list of {kind.__name__}s: e.g. 10,20,50"
        ) from None
