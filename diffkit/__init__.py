"""diffkit: image diffusion models for learning, teaching and research.

```python
import diffkit
run = diffkit.load("runs/demo")          # or diffkit.train("demo", minutes=2)
run.sample(label=5, num=16).images       # sixteen 5s as PIL images
```

The names below are imported on first use (see `diffkit.api`), so `import diffkit` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from diffkit.errors import DiffkitError

if TYPE_CHECKING:
    from diffkit.api import (
        Denoising,
        Fid,
        Inpainted,
        Interpolated,
        Run,
        Samples,
        SuperResolved,
        load,
        presets,
        samplers,
        train,
    )

__version__ = "0.1.0"
__all__ = [
    "Denoising",
    "DiffkitError",
    "Fid",
    "Inpainted",
    "Interpolated",
    "Run",
    "Samples",
    "SuperResolved",
    "__version__",
    "load",
    "presets",
    "samplers",
    "train",
]
_FACE = set(__all__) - {"DiffkitError", "__version__"}


def __getattr__(name: str) -> Any:
    if name in _FACE:  # torch and the rest load here, on first use, not at `import diffkit`
        api = importlib.import_module("diffkit.api")
        if name == "samplers":  # the subpackage, which is callable (see diffkit/samplers/__init__.py)
            return importlib.import_module("diffkit.samplers")
        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_FACE])
