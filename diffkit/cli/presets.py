"""`diffkit presets`: the presets diffkit can find, with their descriptions."""

from __future__ import annotations

from rich.table import Table

from diffkit.cli.common import console
from diffkit.settings import list_presets, preset_dirs


def presets_command() -> None:
    """List the presets with a one-line description each."""
    table = Table("preset", "description", "file")
    for name, (path, description) in sorted(list_presets().items()):
        table.add_row(name, description, str(path))
    console.print(table)
    console.print(f"looked in: {', '.join(str(d) for d in preset_dirs())} (add more with DIFFKIT_PRESETS_DIR)")
