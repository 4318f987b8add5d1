"""The Python face of diffkit: one import, two calls, pictures out.

```python
import diffkit
run = diffkit.train("demo", minutes=2)        # or diffkit.load("runs/demo")
run.sample(label=5, num=16, cfg=3)            # a notebook shows the grid; .images are PIL images
```

| module     | what                                                                                  |
| run        | `load` and `Run`: sample, watch, inpaint, interpolate, super_resolve, fid              |
| training   | `train`: `diffkit train` from Python, progress as printed lines                        |
| results    | `Samples`, `Denoising`, `Inpainted`, `Interpolated`, `SuperResolved`, `Fid`            |
| pictures   | PIL images, paths, data sources, arrays and tensors in; PIL images and PNG files out   |

Each call makes the library calls of the matching CLI command, so a mistake raises `DiffkitError` with
the one line the CLI prints.
"""

from __future__ import annotations

import diffkit.samplers as _samplers
from diffkit.api.results import Denoising, Fid, Inpainted, Interpolated, Samples, SuperResolved
from diffkit.api.run import Run, load
from diffkit.api.training import train


def presets() -> dict[str, str]:
    """The presets diffkit finds (shipped, and DIFFKIT_PRESETS_DIR's), each with its one-line description."""
    from diffkit.settings import list_presets

    return {name: description for name, (_, description) in sorted(list_presets().items())}


def samplers() -> dict[str, str]:
    """The samplers by name, each with a one-line summary (`run.sample(sampler=NAME)`); `diffkit.samplers`
    is the samplers subpackage, which is callable to the same effect (see there)."""
    return _samplers()  # type: ignore[operator]


__all__ = [
    "Denoising",
    "Fid",
    "Inpainted",
    "Interpolated",
    "Run",
    "Samples",
    "SuperResolved",
    "load",
    "presets",
    "samplers",
    "train",
]
