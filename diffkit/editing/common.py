"""PSNR / SSIM scores of edited images against a reference (the formulas live in `diffkit.metrics`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Scores:
    psnr: Tensor  # (N,) dB
    ssim: Tensor  # (N,)

    def mean(self) -> dict[str, float]:
        return {"psnr": float(self.psnr.mean()), "ssim": float(self.ssim.mean())}

    def as_dict(self) -> dict[str, object]:
        return {
            **self.mean(),
            "psnr_per_image": [round(float(v), 4) for v in self.psnr],
            "ssim_per_image": [round(float(v), 5) for v in self.ssim],
        }


def score(images: Tensor, reference: Tensor, mask: Tensor | None = None) -> Scores:
    """PSNR and SSIM of [-1, 1] images against a reference; `mask` (N, 1, H, W): 1 = the pixels scored."""
    from diffkit.metrics import psnr, ssim

    images, reference = images.float().cpu(), reference.float().cpu()
    region = None if mask is None else mask.float().cpu()
    return Scores(
        psnr(images, reference, data_range=2.0, mask=region), ssim(images, reference, data_range=2.0, mask=region)
    )
