"""Editing with a trained model: inpainting, interpolation and super-resolution.

Each is a thin layer over the samplers, never a new copy of a sampling loop:

- inpainting `replace` is a per-step constraint (the sampler callback puts the known pixels back,
  re-noised to the current level), so it works with every registered sampler; `repaint` walks
  RePaint's up-and-down time path with DDPM steps; `sds` optimises the hole's pixels directly;
- interpolation is a choice of start noise (slerp) or of class embedding, then deterministic DDIM;
- super-resolution is conditioning channels (`Denoiser.cond`) holding the bicubic upsample.

Mask convention, used everywhere in diffkit: a mask is a float tensor (N, 1, H, W) with
**1 = keep** (a known pixel, copied from the input) and **0 = hole** (filled by the model). In a mask
PNG, white (at least 50% grey) keeps and black marks the hole.
"""

from diffkit.editing.common import Scores, score
from diffkit.editing.inpaint import (
    METHODS,
    InpaintResult,
    check_methods,
    figure_rows,
    inpaint,
    inpaint_each,
    masked_view,
)
from diffkit.editing.interpolate import (
    Interpolation,
    ddim_invert,
    interpolate_classes,
    interpolate_images,
    interpolate_seeds,
    slerp,
)
from diffkit.editing.masks import MASK_KINDS, make_masks, mask_from_spec, read_mask
from diffkit.editing.superres import SuperResolved, degrade, random_condition, super_resolve, upsample

__all__ = [
    "MASK_KINDS",
    "METHODS",
    "InpaintResult",
    "Interpolation",
    "Scores",
    "SuperResolved",
    "check_methods",
    "ddim_invert",
    "degrade",
    "figure_rows",
    "inpaint",
    "inpaint_each",
    "interpolate_classes",
    "interpolate_images",
    "interpolate_seeds",
    "make_masks",
    "mask_from_spec",
    "masked_view",
    "random_condition",
    "read_mask",
    "score",
    "slerp",
    "super_resolve",
    "upsample",
]
