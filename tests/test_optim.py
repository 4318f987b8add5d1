"""Muon (diffkit.optim): the orthogonalisation, which weights it takes, its AdamW half, convergence."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from diffkit.models import UNet
from diffkit.optim import (
    NEWTON_SCHULZ,
    Muon,
    build_optimizer,
    describe_optimizer,
    hidden_matrices,
    orthogonalise,
    orthogonalise_all,
)
from diffkit.settings import TrainSettings


@pytest.mark.parametrize("shape", [(24, 216), (96, 24), (3, 48, 432), (5, 5)])
def test_newton_schulz_gives_about_the_orthogonal_factor(shape: tuple[int, ...]) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    o = orthogonalise(g)
    assert o.shape == g.shape and o.dtype == g.dtype
    # Jordan's quintic trades exactness for speed: singular values land in about [0.7, 1.2], not at 1
    sv = torch.linalg.svdvals(o)
    assert sv.min() > 0.5 and sv.max() < 1.3
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    exact = u @ vh
    cosine = (o * exact).sum(dim=(-2, -1)) / (o.norm(dim=(-2, -1)) * exact.norm(dim=(-2, -1)))
    assert (cosine > 0.95).all()  # the same directions as U Vᵀ
    torch.testing.assert_close(orthogonalise(3.0 * g), o)  # the gradient's scale does not matter


def test_the_gram_iteration_is_newton_schulz_on_the_matrices() -> None:
    """orthogonalise_all iterates on X Xᵀ only; the plain iteration X ← (aI + bXXᵀ + c(XXᵀ)²) X, written out
    here, must give the same matrices, for tensors of several shapes (tall, wide, batched) at once."""
    gen = torch.Generator().manual_seed(1)
    mats = [torch.randn(*shape, generator=gen) for shape in [(2, 24, 216), (48, 24), (3, 48, 432), (24, 72), (6, 6)]]
    mats.append(torch.randn(24, 3, generator=gen) @ torch.randn(3, 96, generator=gen))  # rank 3, like a gradient

    def plain(g: torch.Tensor) -> torch.Tensor:
        x = g if g.shape[-2] <= g.shape[-1] else g.mT
        x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
        a, b, c = NEWTON_SCHULZ
        for _ in range(5):
            gram = x @ x.mT
            x = a * x + (b * gram + c * gram @ gram) @ x
        return x if g.shape[-2] <= g.shape[-1] else x.mT

    together = orthogonalise_all(mats)
    for g, o in zip(mats, together, strict=True):
        assert o.shape == g.shape
        torch.testing.assert_close(o, plain(g), rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(o, orthogonalise(g))  # alone or with others: the same


def demo_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(
        image_size=28,
        in_channels=1,
        base_channels=8,
        channel_mults=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[],
        norm_groups=4,
        num_classes=10,
        patch_size=2,
    )


def test_muon_takes_the_hidden_matrices_and_leaves_pixels_and_embeddings_to_adamw() -> None:
    model = demo_unet()
    hidden = {id(p) for p in hidden_matrices(model)}
    names = {n for n, p in model.named_parameters() if id(p) in hidden}
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert names == {f"{n}.weight" for n in convs} - {"input_conv.weight", "out.2.weight"}
    assert "down.0.conv1.weight" in names and "up.0.skip.weight" in names  # 3x3 and 1x1 kernels
    assert not names & {"time_mlp.0.weight", "mid.0.emb.weight", "class_emb.weight"}  # embeddings stay on AdamW
    train = TrainSettings(max_steps=10, optimizer="muon", lr=1e-3, muon_lr=0.03, weight_decay=0.01)
    opt = build_optimizer(model, train)
    assert isinstance(opt, Muon)
    muon_groups = [g for g in opt.param_groups if g["muon"]]
    assert len(muon_groups) == 1 and {id(p) for p in muon_groups[0]["params"]} == hidden
    assert muon_groups[0]["lr"] == 0.03 and muon_groups[0]["weight_decay"] == 0.01
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))  # each once
    assert opt.param_groups[0]["lr"] == 1e-3 and not opt.param_groups[0]["muon"]  # what the log's "lr" reads
    assert isinstance(build_optimizer(model, TrainSettings(max_steps=10)), torch.optim.AdamW)  # the default


def test_the_adamw_half_is_torchs_adamw() -> None:
    torch.manual_seed(1)
    ours_net = nn.Sequential(nn.Linear(6, 5), nn.GroupNorm(1, 5))
    torch_net, start = copy.deepcopy(ours_net), copy.deepcopy(ours_net)

    def groups(net: nn.Sequential) -> list[dict]:  # decay on the matrix, none on the bias and the norm
        return [{"params": [net[0].weight], "weight_decay": 0.1}, {"params": [net[0].bias, *net[1].parameters()]}]

    ours = Muon(groups(ours_net), lr=1e-2, betas=(0.9, 0.99))  # no group marked "muon": all AdamW
    theirs = torch.optim.AdamW(groups(torch_net), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0)
    x = torch.randn(16, 6)
    for _ in range(5):
        for net, opt in ((ours_net, ours), (torch_net, theirs)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(ours_net.parameters(), torch_net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert not torch.equal(ours_net[0].weight, start[0].weight)  # the steps did move it


def test_muon_solves_a_least_squares_problem() -> None:
    # W A = B has the exact solution W*; orthogonalised steps of a shrinking size walk W there
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(12, 64, generator=gen)
    w_true = torch.randn(8, 12, generator=gen)
    w = nn.Parameter(torch.zeros(8, 12))
    opt = Muon([{"params": [w], "muon": True, "lr": 0.3}], lr=1e-3, betas=(0.9, 0.999), momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.98**s)
    loss0 = (w_true @ a).pow(2).mean().item()
    for _ in range(200):
        opt.zero_grad()
        loss = (w @ a - w_true @ a).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
    assert loss.item() < 1e-3 * loss0
    torch.testing.assert_close(w.detach(), w_true, atol=0.05, rtol=0.0)


def test_the_muon_state_round_trips_through_a_state_dict() -> None:
    model = demo_unet()
    opt = build_optimizer(model, TrainSettings(max_steps=10, optimizer="muon"))
    x, t, y = torch.randn(4, 1, 28, 28), torch.rand(4) * 1000, torch.randint(0, 10, (4,))
    model(x, t, y).pow(2).mean().backward()
    opt.step()
    copy_model = copy.deepcopy(model)
    restored = build_optimizer(copy_model, TrainSettings(max_steps=10, optimizer="muon"))
    restored.load_state_dict(opt.state_dict())
    for m, o in ((model, opt), (copy_model, restored)):
        o.zero_grad()
        m(x, t, y).pow(2).mean().backward()
        o.step()
    for p, q in zip(model.parameters(), copy_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_the_start_line_names_each_half_at_its_peak_learning_rate() -> None:
    model = demo_unet()
    opt = build_optimizer(model, TrainSettings(max_steps=10, optimizer="muon", lr=2e-3, muon_lr=0.02))
    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.01)  # warm-up: the current lr is 1 % of the peak
    line = describe_optimizer(opt)
    n = len(hidden_matrices(model))
    assert line.startswith(f"Muon (lr 0.02, momentum 0.95) for {n} hidden convolution kernels")
    assert line.endswith(f"AdamW (lr 0.002, betas 0.9/0.999) for the other {len(list(model.parameters())) - n}")
    adamw = build_optimizer(model, TrainSettings(max_steps=10, lr=1e-4))
    assert describe_optimizer(adamw) == "AdamW (lr 0.0001, betas 0.9/0.999)"
