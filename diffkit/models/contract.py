"""The network contract: what every other module may ask of a denoising network (the UNet is one).

A network is called as `network(x, noise_input, classes=None, cond=None)`:
- `x` (N, C, H, W): the (process-scaled) noisy images; `noise_input` (N,): the process's noise-level input;
- `classes`: (N,) class indices with `num_classes` meaning "no class", or float weights (N, num_classes + 1)
  mixing class embeddings (None: no class); `cond` (N, cond_channels, H, W): extra input channels;
and returns (N, C, H, W) in the process's parametrisation. Samplers, the precision probe, generation and the
editing commands read the four attributes below, and nothing else of a network.
"""

from __future__ import annotations

from typing import Protocol, cast, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class DenoisingNetwork(Protocol):
    image_size: int  # H = W
    in_channels: int  # C of the images it makes
    num_classes: int  # 0: unconditional
    cond_channels: int  # extra input channels (super-resolution's upsampled image); 0: none

    def __call__(
        self, x: Tensor, noise_input: Tensor, classes: Tensor | None = None, cond: Tensor | None = None
    ) -> Tensor: ...


def network(model: nn.Module) -> DenoisingNetwork:
    """`model` seen through the contract (its attributes are checked once, here, rather than guessed at each use)."""
    missing = [
        name for name in ("image_size", "in_channels", "num_classes", "cond_channels") if not hasattr(model, name)
    ]
    if missing:
        raise TypeError(f"{type(model).__name__} lacks {', '.join(missing)}: see diffkit.models.contract")
    return cast(DenoisingNetwork, model)
