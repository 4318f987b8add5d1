"""Networks: the denoising UNet (and, later, small feature networks)."""

from diffkit.models.contract import DenoisingNetwork, network
from diffkit.models.unet import UNet, count_parameters

__all__ = ["DenoisingNetwork", "UNet", "count_parameters", "network"]
