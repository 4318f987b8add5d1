"""PSNR and SSIM of images against a reference, optionally over a masked region."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit.errors import DiffkitError

# ---------------------------------------------------------------------------------- PSNR / SSIM


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio per image (N,), in dB: 10 log10(range² / MSE); identical images give inf.

    With `mask` (N or 1, 1, H, W; 1 = score this pixel) the MSE is taken over the masked pixels only.
    """
    x, y, weights = _pair(x, y, mask)
    squared = (x - y) ** 2
    mse = (squared * weights).sum(dim=(1, 2, 3)) / (weights.sum(dim=(1, 2, 3)) * x.shape[1])
    return 10 * torch.log10(data_range**2 / mse)


def ssim(x: Tensor, y: Tensor, data_range: float = 2.0, mask: Tensor | None = None) -> Tensor:
    """Structural similarity per image (N,) (Wang et al. 2004): 11x11 Gaussian window, σ = 1.5, K1 0.01, K2 0.03.

    Local statistics are computed at every pixel, with mirror padding at the borders so that a mask near
    the edge is still scored (so values differ slightly from implementations that crop the border);
    the SSIM map is averaged over channels, then over the image or the masked region.
    """
    x, y, weights = _pair(x, y, mask)
    if min(x.shape[-2:]) <= _SSIM_RADIUS:
        raise DiffkitError(
            f"SSIM needs images larger than {_SSIM_RADIUS}x{_SSIM_RADIUS}, got "
            f"{tuple(x.shape[-2:])}: score larger images"
        )
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t: Tensor) -> Tensor:
        return _gaussian_blur(t, sigma=1.5, radius=_SSIM_RADIUS)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    per_pixel = ssim_map.mean(dim=1, keepdim=True)
    return (per_pixel * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3))


_SSIM_RADIUS = 5  # 11x11 window


def _gaussian_blur(t: Tensor, sigma: float, radius: int) -> Tensor:
    """Separable normalised Gaussian filter per channel, mirror padding (d c b | a b c d | c b a)."""
    offsets = torch.arange(-radius, radius + 1, dtype=t.dtype, device=t.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = t.shape[1]
    padded = F.pad(t, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _pair(x: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Both image batches in float64 plus per-pixel weights (N, 1, H, W), after checking shapes."""
    if x.ndim != 4 or x.shape != y.shape:
        raise DiffkitError(
            f"images to compare must both be (N, C, H, W) of one shape, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}: convert them to the same size first"
        )
    x, y = x.detach().double(), y.detach().double().to(x.device)
    n, _, h, w = x.shape
    if mask is None:
        return x, y, torch.ones(n, 1, h, w, dtype=x.dtype, device=x.device)
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (h, w) or mask.shape[0] not in (1, n):
        raise DiffkitError(
            f"mask must be (N, 1, H, W) = ({n}, 1, {h}, {w}) (or (1, 1, H, W)), got "
            f"{tuple(mask.shape)}: give one single-channel mask per image"
        )
    weights = mask.detach().double().to(x.device).expand(n, 1, h, w)
    if bool((weights.sum(dim=(1, 2, 3)) <= 0).any()):
        raise DiffkitError("a mask selects no pixels (all zeros) for some image: mark the region to score with 1")
    return x, y, weights
