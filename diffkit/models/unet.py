"""A DDPM-style UNet with time and class conditioning (Ho et al. 2020; Nichol & Dhariwal 2021).

Residual blocks with GroupNorm and SiLU, a sinusoidal time embedding, an optional class embedding
with one extra learned "null" class for classifier-free guidance, self-attention at chosen feature
map sizes, and a zero-initialised output so training starts from a predictor of zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GUIDANCE_INPUT_SCALE = 100.0  # w of 0 .. 10 spread over the sinusoids as timesteps 0 .. 1000 are


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in Transformers."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)  # scale and shift (FiLM), as in improved DDPM
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        # upsample to the skip connection's size, so odd sizes (7 -> 4 -> 7) round-trip
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    def __init__(
        self,
        *,
        image_size: int = 28,
        in_channels: int = 1,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] | list[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] | list[int] = (),
        attention_heads: int = 4,
        dropout: float = 0.1,
        norm_groups: int = 8,
        num_classes: int = 0,
        cond_channels: int = 0,
        mid_attention: bool = True,
        guidance_input: bool = False,
        patch_size: int = 1,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        # patch_size p > 1: the network works on (C p², H/p, W/p), a lossless space-to-depth rearrangement
        # (as DiT/U-ViT patchify): about p² fewer FLOPs at the same widths, for CPUs that get few steps
        self.patch_size = patch_size
        self.cond_channels = cond_channels
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # index num_classes is the learned "no class" token used for unconditional predictions
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        # a distilled student's guidance scale w (Meng et al. 2023), added to the time embedding; the last
        # layer starts at zero, so a student initialised from its teacher starts as the teacher
        self.guidance_mlp = (
            nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), zero_init(nn.Linear(emb_dim, emb_dim)))
            if guidance_input
            else None
        )

        patch_area = patch_size * patch_size
        self.input_conv = nn.Conv2d((in_channels + cond_channels) * patch_area, base_channels, 3, padding=1)

        def block(in_ch: int, out_ch: int, size: int) -> nn.Module:
            """A residual block, followed by attention at the resolutions that have it."""
            res = ResBlock(in_ch, out_ch, emb_dim, dropout, norm_groups)
            if size in attention_resolutions:
                return nn.ModuleList([res, AttentionBlock(out_ch, attention_heads, norm_groups)])
            return res

        widths = [base_channels * mult for mult in channel_mults]
        inner = image_size // patch_size
        self.down, skip_channels, size = _down_path(block, base_channels, widths, num_res_blocks, inner)
        ch = widths[-1]
        mid: list[nn.Module] = [ResBlock(ch, ch, emb_dim, dropout, norm_groups)]
        if mid_attention:
            mid.append(AttentionBlock(ch, attention_heads, norm_groups))
        self.mid = nn.ModuleList([*mid, ResBlock(ch, ch, emb_dim, dropout, norm_groups)])
        self.up = _up_path(block, widths, num_res_blocks, skip_channels, size)
        self.out = nn.Sequential(
            nn.GroupNorm(norm_groups, widths[0]),
            nn.SiLU(),
            zero_init(nn.Conv2d(widths[0], in_channels * patch_area, 3, padding=1)),
        )

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def guidance_input(self) -> bool:
        """Whether the guidance scale is an input (a guidance-distilled student): one pass per guided step."""
        return self.guidance_mlp is not None

    def pixel_layers(self) -> list[nn.Module]:
        """The layers that read or write pixels (Muon leaves them to AdamW: diffkit.optim.hidden_matrices)."""
        return [self.input_conv, self.out]

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        classes: Tensor | None = None,
        cond: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> Tensor:
        """x: (N, C, H, W); t: (N,) float or int timesteps; classes: (N,) with `null_class` = none.

        `classes` may also be float weights (N, num_classes + 1) that mix rows of the class-embedding
        table (the last row is the null class): interpolation between classes uses this.
        `guidance` (N,): the guidance scale, for a UNet made with `guidance_input` (unset: 1, conditional).
        """
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.guidance_mlp is not None:
            w = torch.ones(x.shape[0], device=x.device) if guidance is None else guidance.to(x.device)
            w = w.expand(x.shape[0])
            emb = emb + self.guidance_mlp(timestep_embedding(w * GUIDANCE_INPUT_SCALE, self.base_channels))
        if self.class_emb is not None:
            if classes is None:
                classes = torch.full((x.shape[0],), self.null_class, device=x.device, dtype=torch.long)
            if classes.is_floating_point():
                emb = emb + classes.to(emb.dtype) @ self.class_emb.weight
            else:
                emb = emb + self.class_emb(classes)
        if self.cond_channels:
            if cond is None:
                raise ValueError("this UNet needs conditioning channels (cond)")
            x = torch.cat([x, cond], dim=1)
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x, self.patch_size)
        h = self.input_conv(x)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else _apply(layer, h, emb)
            skips.append(h)
        for layer in self.mid:
            h = layer(h) if isinstance(layer, AttentionBlock) else layer(h, emb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h, skips[-1].shape[-2:])
            else:
                h = _apply(layer, torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out(h)
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out


Block = Callable[[int, int, int], nn.Module]  # (in channels, out channels, resolution) -> block


def _down_path(
    block: Block, ch: int, widths: list[int], num_res_blocks: int, size: int
) -> tuple[nn.ModuleList, list[int], int]:
    """The encoder: blocks per level, a downsampling between levels; also the skip widths and the final size."""
    down, skips = nn.ModuleList(), [ch]
    for level, out in enumerate(widths):
        for _ in range(num_res_blocks):
            down.append(block(ch, out, size))
            ch = out
            skips.append(ch)
        if level < len(widths) - 1:
            down.append(Downsample(ch))
            skips.append(ch)
            size = (size + 1) // 2
    return down, skips, size


def _up_path(block: Block, widths: list[int], num_res_blocks: int, skips: list[int], size: int) -> nn.ModuleList:
    """The decoder: one block more per level than the encoder (each takes a skip), upsampling between levels."""
    up, ch = nn.ModuleList(), widths[-1]
    for level in reversed(range(len(widths))):
        for _ in range(num_res_blocks + 1):
            up.append(block(ch + skips.pop(), widths[level], size))
            ch = widths[level]
        if level > 0:
            up.append(Upsample(ch))
            size = size * 2
    return up


def _apply(block: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
    if isinstance(block, nn.ModuleList):  # residual block followed by attention
        return block[1](block[0](h, emb))
    return block(h, emb)
