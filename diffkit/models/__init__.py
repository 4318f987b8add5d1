"""Networks: the denoising UNet (and, later, small feature networks)."""

from diffkit.models.unet import UNet, count_parameters

__all__ = ["UNet", "count_parameters"]
