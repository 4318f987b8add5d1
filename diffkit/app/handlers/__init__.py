"""What each tab of `diffkit app` does, as plain functions: the library calls the CLI commands make.

Every function takes the served run (`AppRun`) and plain values (strings, numbers, file paths) and
returns files written under the app's work directory plus text to show. No sampling loop and no maths
live here: sampling is `generate` / `record_process`, the comparison `compare_samplers`, editing
`diffkit.editing`, pictures `diffkit.viz`, as in `diffkit sample`, `compare-samplers`, `inpaint` and
`interpolate`. Mistakes are `DiffkitError`s with a readable message, which the page shows as they are.

All calls into the library are in this package, so a change of the library's signatures is adapted here:
`served` (the run and the controls), `sampling` (Sample, Watch, Compare), `editing` (Inpaint,
Interpolate), `overview` (Run). The page (`diffkit.app.ui`) uses the names below.
"""

from __future__ import annotations

from diffkit.app.handlers.editing import (
    DRAWN,
    EDITOR_SCALE,
    MASK_CHOICES,
    UPLOADED,
    Inpainted,
    InpaintInput,
    Interpolated,
    digit_source,
    drawn_mask,
    inpaint_image,
    interpolate,
    load_digit,
    load_upload,
    make_mask,
)
from diffkit.app.handlers.overview import RunOverview, overview, sampler_names, sweep
from diffkit.app.handlers.sampling import Compared, Denoising, Sampled, compare, sample, watch
from diffkit.app.handlers.served import ALL_CLASSES, UNCONDITIONAL, AppRun, class_choices, defaults, describe, open_app
from diffkit.progress import Progress

__all__ = [
    "ALL_CLASSES",
    "DRAWN",
    "EDITOR_SCALE",
    "MASK_CHOICES",
    "UNCONDITIONAL",
    "UPLOADED",
    "AppRun",
    "Compared",
    "Denoising",
    "InpaintInput",
    "Inpainted",
    "Interpolated",
    "Progress",
    "RunOverview",
    "Sampled",
    "class_choices",
    "compare",
    "defaults",
    "describe",
    "digit_source",
    "drawn_mask",
    "inpaint_image",
    "interpolate",
    "load_digit",
    "load_upload",
    "make_mask",
    "open_app",
    "overview",
    "sample",
    "sampler_names",
    "sweep",
    "watch",
]
