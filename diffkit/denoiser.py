"""The one place where a network meets samplers: guidance, the process's parametrisation, clipping.

A `Denoiser` wraps a trained network with its diffusion process (`diffkit.process`). Called on a noisy
batch of variance-preserving states at grid positions t it returns both the clean-image estimate x̂0 and
the noise estimate ε̂. Samplers only ever see `Denoiser.conditioned(...)`, a function (x_t, t) -> Prediction,
so the process, classifier-free guidance and clipping never leak into them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffkit.choices import Clipping, Objective
from diffkit.errors import DiffkitError
from diffkit.models.contract import DenoisingNetwork, network
from diffkit.precision import PrecisionChoice
from diffkit.schedules import NoiseSchedule, sigma_of

if TYPE_CHECKING:
    from diffkit.process import DiffusionProcess

__all__ = ["Clipping", "Denoiser", "Objective", "Prediction"]  # the literals live in diffkit.choices


class Prediction(NamedTuple):
    x0: Tensor
    eps: Tensor


DenoiseFn = Callable[[Tensor, Tensor], Prediction]


def rescale_guidance(guided: Tensor, conditional: Tensor, phi: float) -> Tensor:
    """Lin et al. 2023, §3.4: match the guided prediction's per-sample std to the conditional one."""
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


def dynamic_threshold(x0: Tensor, percentile: float = 0.995) -> Tensor:
    """Saharia et al. 2022 (Imagen): clip to the per-sample percentile s of |x̂0| (s >= 1), divide by s."""
    s = torch.quantile(x0.abs().flatten(1).float(), percentile, dim=1).clamp_min(1.0)
    s = s.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return x0.clamp(-s, s) / s


def check_cfg_range(cfg: float | Tensor, trained: tuple[float, float]) -> None:
    """A guidance-input student knows only the scales it was distilled over: others are a one-line error."""
    low, high = trained
    values = cfg if isinstance(cfg, Tensor) else torch.tensor([float(cfg)])
    if bool(((values < low - 1e-6) | (values > high + 1e-6)).any()):
        shown = f"{float(values.min()):g}" if bool(values.min() < low) else f"{float(values.max()):g}"
        raise DiffkitError(
            f"--cfg {shown} is outside the guidance range this student was distilled for ({low:g} to {high:g}): "
            "choose a scale in that range, or distil again with a wider distill.guidance_min / guidance_max"
        )


@dataclass
class Denoiser:
    """A network plus its process: (x_t, t, classes, cfg) -> Prediction.

    `x_t` holds variance-preserving states and `t` (possibly fractional) positions in [0, T - 1] on the
    process's grid (`schedule`), whatever the process. `classes` uses -1 (or None) for "no class";
    it may instead be float weights (N, num_classes + 1) mixing class embeddings (last column: no class).
    The guidance scale s (`cfg`) mixes unconditional u and conditional c predictions as u + s (c - u): s = 0 is
    unconditional, s = 1 conditional, s > 1 stronger; both come from one batched forward pass.
    Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself") adds
    (w - 1)(d - g) at every step, where d is the prediction being guided (c, or u when unconditional) and
    g a weaker `guide` network's for the same input (the run's earlier snapshot): one more pass of the guide.
    """

    model: nn.Module
    process: DiffusionProcess
    num_classes: int = 0
    clipping: Clipping = "none"
    rescale_phi: float = 0.0
    cond: Tensor | None = None  # extra input channels (super-resolution), one per batch item
    precision: PrecisionChoice | None = None  # bf16 autocast for the network when chosen; maths stays fp32
    # a guidance-distilled student (`diffkit distill`): the scale is a network input, valid in this range
    cfg_range: tuple[float, float] | None = None
    # guidance only where the noise level σ = sqrt((1 - ᾱ)/ᾱ) lies in (low, high], conditional elsewhere
    # (Kynkäänniemi et al. 2024): guidance at high noise collapses variety, at low noise it only sharpens
    cfg_interval: tuple[float, float] | None = None
    guide: nn.Module | None = None  # autoguidance's weaker network (same inputs and outputs as `model`)
    guide_weight: float = 1.0  # w; 1: no autoguidance

    @property
    def schedule(self) -> NoiseSchedule:
        """The grid samplers step on."""
        return self.process.grid

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this denoiser makes (a UNet, or anything with the same attributes)."""
        net = self.network
        return net.in_channels, net.image_size, net.image_size

    @property
    def network(self) -> DenoisingNetwork:
        return network(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: Tensor, classes: Tensor | None = None, cfg: float | Tensor = 1.0) -> Prediction:
        n = x_t.shape[0]
        t = t.to(x_t.device).float().expand(n) if t.ndim == 0 else t.to(x_t.device).float()
        alpha_bar = self.schedule.alpha_bar_at(t.cpu()).to(x_t.device, x_t.dtype).reshape(-1, 1, 1, 1)
        null = torch.full((n,), -1, dtype=torch.long, device=x_t.device)
        if classes is not None and classes.is_floating_point():  # class weights: "no class" is the last row
            null = F.one_hot(torch.full_like(null, self.num_classes), self.num_classes + 1).to(classes)
        x_in, noise_input = self.process.network_inputs(x_t, t, alpha_bar)
        if self.cfg_interval is not None and self.cfg_range is None and classes is not None:
            cfg = self._within_interval(cfg, alpha_bar.flatten())
        scale = cfg if isinstance(cfg, Tensor) else None  # per-image scales (N,)
        guided: tuple[Tensor, Tensor] | None = None  # (labels, the prediction for them) that autoguidance steers
        if self.cfg_range is not None:  # a guidance-distilled student: w is an input, one pass
            check_cfg_range(cfg, self.cfg_range)
            w = torch.as_tensor(cfg, dtype=torch.float32, device=x_t.device).expand(n)
            output = self._forward(x_in, noise_input, null if classes is None else classes, cfg=w)
        elif classes is None or self.num_classes == 0 or (scale is None and cfg == 0.0):
            output = self._forward(x_in, noise_input, null)
            guided = (null, output)
        elif scale is None and cfg == 1.0:
            output = self._forward(x_in, noise_input, classes)
            guided = (classes, output)
        else:  # conditional and unconditional in one batch
            both = self._forward(
                torch.cat([x_in, x_in]), torch.cat([noise_input, noise_input]), torch.cat([classes, null]), True
            )
            cond_out, uncond_out = both.chunk(2)
            w_out = cfg if scale is None else scale.to(cond_out).reshape(-1, *([1] * (cond_out.ndim - 1)))
            output = uncond_out + w_out * (cond_out - uncond_out)
            if self.rescale_phi > 0:
                output = rescale_guidance(output, cond_out, self.rescale_phi)
            guided = (classes, cond_out)
        if self.guide is not None and self.guide_weight != 1.0 and guided is not None:
            labels, good = guided
            bad = self._forward(x_in, noise_input, labels, net=self.guide)
            output = output + (self.guide_weight - 1.0) * (good - bad)
        pred = self.process.predict(output.float(), x_t, t, alpha_bar)
        if self.clipping == "none":
            return pred
        x0 = pred.x0.clamp(-1, 1) if self.clipping == "clip" else dynamic_threshold(pred.x0)
        eps = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt().clamp_min(1e-8)
        return Prediction(x0, eps)

    def _within_interval(self, cfg: float | Tensor, alpha_bar: Tensor) -> float | Tensor:
        """The scale per image with guidance off (1, conditional) outside `cfg_interval`: a plain 1 when every
        image is outside, so the step costs one pass, not two. A scale of 0 (unconditional) stays 0."""
        assert self.cfg_interval is not None
        if not isinstance(cfg, Tensor) and cfg in (0.0, 1.0):
            return cfg
        low, high = self.cfg_interval
        sigma = sigma_of(alpha_bar.double())  # inf at pure noise
        inside = (sigma > low) & (sigma <= high)
        if bool(inside.all()):
            return cfg
        if not isinstance(cfg, Tensor) and not bool(inside.any()):
            return 1.0
        scale = torch.as_tensor(cfg, dtype=torch.float32, device=inside.device).expand(inside.shape[0])
        return torch.where(inside, scale, torch.ones_like(scale))

    def _forward(
        self,
        x: Tensor,
        t: Tensor,
        classes: Tensor,
        repeat_cond: bool = False,
        cfg: Tensor | None = None,
        net: nn.Module | None = None,
    ) -> Tensor:
        """One pass of `net` (the model by default) in the chosen precision, output in fp32."""
        labels = (
            classes
            if classes.is_floating_point()
            else torch.where(classes < 0, torch.full_like(classes, self.num_classes), classes)
        )
        cond = self.cond
        if cond is not None and repeat_cond:
            cond = torch.cat([cond, cond])
        extra: dict[str, Tensor] = {"cond": cond} if cond is not None else {}
        if cfg is not None:  # the network's own name for its scale input (UNet `guidance_input`)
            extra["guidance"] = cfg
        net = self.model if net is None else net
        if self.precision is None:
            out = net(x, t, labels if self.num_classes else None, **extra)
        else:
            with self.precision.autocast(x.device):
                out = net(self.precision.layout(x), t, labels if self.num_classes else None, **extra)
        return out.float()  # guidance and the objective algebra in fp32

    def conditioned(self, classes: Tensor | None = None, cfg: float | Tensor = 1.0) -> DenoiseFn:
        """Fix classes and the guidance scale: the (x_t, t) -> Prediction function that samplers take."""

        def denoise(x_t: Tensor, t: Tensor) -> Prediction:
            return self(x_t, t, classes, cfg)

        return denoise
