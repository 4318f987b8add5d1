from __future__ import annotations

import pytest
import torch

from diffkit.models import UNet, count_parameters


@pytest.mark.parametrize(
    ("size", "channels", "mults", "attn", "classes"),
    [
        (28, 1, (1, 2, 2), (7,), 10),
        (28, 1, (1, 2, 2), (), 0),
        (32, 3, (1, 2, 2, 2), (16, 8), 10),
        (32, 3, (1, 2), (), 0),
    ],
)
def test_unet_shapes(size: int, channels: int, mults: tuple[int, ...], attn: tuple[int, ...], classes: int) -> None:
    shape = {
        "image_size": size,
        "in_channels": channels,
        "base_channels": 16,
        "channel_mults": mults,
        "num_res_blocks": 1,
        "attention_resolutions": attn,
    }
    model = UNet(**shape, num_classes=classes)  # type: ignore[arg-type]
    x = torch.randn(3, channels, size, size)
    t = torch.tensor([0, 500, 999])
    labels = torch.tensor([1, 2, classes]) if classes else None  # includes the null class
    out = model(x, t, labels)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer
    # a conditional model differs from its unconditional twin by exactly the class table (K + 1 rows, the
    # last the null class, of the 4 x base_channels embedding width)
    twin = UNet(**shape, num_classes=0)  # type: ignore[arg-type]
    assert count_parameters(model) - count_parameters(twin) == ((classes + 1) * 4 * 16 if classes else 0)


def test_attention_only_where_asked() -> None:
    from diffkit.models.unet import AttentionBlock

    def n_attn(**kw: object) -> int:
        m = UNet(base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=2, **kw)  # type: ignore[arg-type]
        return sum(isinstance(x, AttentionBlock) for x in m.modules())

    assert n_attn(attention_resolutions=(), mid_attention=False) == 0
    assert n_attn(attention_resolutions=(), mid_attention=True) == 1
    assert n_attn(attention_resolutions=(7,), mid_attention=False) == 2 + 3  # down blocks + up blocks at 7x7


def test_class_and_time_change_the_output_after_training_steps() -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 1, 28, 28)
    for _ in range(3):  # zero-initialised layers need a few steps before class and time reach the output
        opt.zero_grad()
        loss = (model(x, torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 3])) - x).pow(2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        a = model(x[:1], torch.tensor([5]), torch.tensor([0]))
        b = model(x[:1], torch.tensor([5]), torch.tensor([1]))
        c = model(x[:1], torch.tensor([900]), torch.tensor([0]))
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, c)


def test_conditioning_channels() -> None:
    model = UNet(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, cond_channels=1)
    out = model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), cond=torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="cond"):
        model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))


def test_patches_fold_into_channels_and_still_resolve_every_pixel() -> None:
    """patch_size 2: the UNet works at 14 x 14 on 4 channels (a quarter of the 3x3 convolutions' work at
    the same widths), and its output still differs pixel by pixel: it fits a 1-pixel checkerboard, which
    an output constant over 2 x 2 patches could not (that would leave the whole variance, 1)."""
    torch.manual_seed(0)
    flat = UNet(image_size=28, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, mid_attention=False)
    patched = UNet(
        image_size=28, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, mid_attention=False, patch_size=2
    )
    assert patched.input_conv.in_channels == 4 and patched.out[-1].out_channels == 4
    x, t = torch.randn(8, 1, 28, 28), torch.full((8,), 500.0)
    assert patched(x, t).shape == x.shape
    # the same layers bar the first and last convolution, each on a quarter of the positions
    assert count_parameters(patched) - count_parameters(flat) == 3 * 16 * 9 + 3 * (16 * 9 + 1)
    board = (torch.arange(28)[:, None] + torch.arange(28)[None, :]) % 2 * 2.0 - 1.0
    target = board.expand(8, 1, 28, 28)
    opt = torch.optim.Adam(patched.parameters(), lr=3e-3)
    for _ in range(60):
        loss = (patched(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_patch_size_must_divide_the_image() -> None:
    with pytest.raises(ValueError, match="patch_size 3 must divide image_size 28"):
        UNet(image_size=28, base_channels=16, patch_size=3)
