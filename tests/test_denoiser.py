from __future__ import annotations

import pytest
import torch
from torch import nn

from diffkit.denoiser import Denoiser, dynamic_threshold
from diffkit.process import VPProcess
from diffkit.process.vp import min_snr_weight, split_prediction, training_target
from diffkit.schedules import NoiseSchedule


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_objective_conversions_recover_x0_and_eps(objective: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 1, 5, 5, generator=g), torch.randn(6, 1, 5, 5, generator=g)
    ab = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.01, 1e-4]).reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    target = training_target(objective, x0, eps, ab)  # a perfect network outputs exactly this
    pred = split_prediction(objective, target, x_t, ab)
    torch.testing.assert_close(pred.x0, x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(pred.eps, eps, atol=2e-4, rtol=1e-4)


def test_v_target_closed_form() -> None:
    x0, eps, ab = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.tensor(0.36).reshape(1, 1, 1, 1)
    # v = sqrt(ab) eps - sqrt(1-ab) x0 = -0.8
    assert training_target("v", x0, eps, ab).item() == pytest.approx(-0.8)


def test_min_snr_weights_closed_forms() -> None:
    snr = torch.tensor([0.1, 1.0, 5.0, 100.0])
    torch.testing.assert_close(min_snr_weight("eps", snr, 5.0), torch.tensor([1.0, 1.0, 1.0, 0.05]))
    torch.testing.assert_close(min_snr_weight("x0", snr, 5.0), torch.tensor([0.1, 1.0, 5.0, 5.0]))
    torch.testing.assert_close(min_snr_weight("v", snr, 5.0), torch.tensor([0.1 / 1.1, 0.5, 5 / 6, 5 / 101]))


class ClassShift(nn.Module):
    """Outputs x + class value (null class -> 0); counts forward calls and batch sizes."""

    in_channels, image_size, cond_channels = 1, 2, 0  # the network contract (num_classes set below)

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.values = torch.arange(num_classes + 1, dtype=torch.float32)
        self.values[-1] = 0.0
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(x.shape[0])
        if classes is None:  # an unconditional model
            return x * 0 + self.values[-1]
        return x * 0 + self.values[classes].reshape(-1, 1, 1, 1)


def test_guidance_mixes_conditional_and_unconditional_in_one_batch() -> None:
    schedule = NoiseSchedule.create("cosine", 100)
    model = ClassShift(10)
    den = Denoiser(model, VPProcess(schedule, "eps"), num_classes=10)
    x = torch.zeros(3, 1, 2, 2)
    t = torch.full((3,), 50.0)
    classes = torch.tensor([2, 4, 7])
    for scale in (0.0, 1.0, 3.0, 7.5):
        model.calls.clear()
        eps = den(x, t, classes, cfg=scale).eps
        expected = (scale * classes.float()).reshape(-1, 1, 1, 1).expand_as(x)  # u + s (c - u), u = 0
        torch.testing.assert_close(eps, expected)
        assert model.calls == ([3] if scale in (0.0, 1.0) else [6])  # one batched call for CFG


def test_guidance_interval_guides_only_inside_its_noise_levels() -> None:
    schedule = NoiseSchedule.create("cosine", 100)
    sigmas = schedule.sigmas
    # σ grows with t; the ends halfway between grid points: guided for t in 31..70
    low, high = float(sigmas[30:32].mean()), float(sigmas[70:72].mean())
    model = ClassShift(10)
    den = Denoiser(model, VPProcess(schedule, "eps"), num_classes=10, cfg_interval=(low, high))
    x, classes = torch.zeros(2, 1, 2, 2), torch.tensor([3, 5])
    conditional = classes.float().reshape(-1, 1, 1, 1).expand_as(x)
    for step, guided in [(10, False), (30, False), (31, True), (50, True), (70, True), (71, False), (99, False)]:
        model.calls.clear()
        eps = den(x, torch.full((2,), float(step)), classes, cfg=4.0).eps
        torch.testing.assert_close(eps, 4.0 * conditional if guided else conditional)
        assert model.calls == ([4] if guided else [2])  # outside the interval a step costs one pass
    # images at different noise levels in one batch: each by its own; a scale of 0 stays unconditional
    eps = den(x, torch.tensor([50.0, 90.0]), classes, cfg=4.0).eps
    torch.testing.assert_close(eps[:, 0, 0, 0], torch.tensor([12.0, 5.0]))
    torch.testing.assert_close(den(x, torch.full((2,), 90.0), classes, cfg=0.0).eps, torch.zeros_like(x))


def test_autoguidance_steers_away_from_the_guide_at_every_step() -> None:
    """D + (w - 1)(D - G) on the prediction being guided (Karras et al. 2024), on top of CFG and its interval;
    the guide costs one pass of its own on that prediction's input, and a weight of 1 costs nothing."""
    schedule = NoiseSchedule.create("cosine", 100)
    sigmas = schedule.sigmas
    low, high = float(sigmas[30:32].mean()), float(sigmas[70:72].mean())
    model, guide = ClassShift(10), ClassShift(10)
    guide.values = model.values / 2  # a weaker network: half the class shift ...
    guide.values[-1] = -1.0  # ... and -1 where the model's unconditional prediction is 0
    den = Denoiser(model, VPProcess(schedule, "eps"), 10, cfg_interval=(low, high), guide=guide, guide_weight=3.0)
    x, classes = torch.zeros(2, 1, 2, 2), torch.tensor([4, 6])
    c = classes.float().reshape(-1, 1, 1, 1).expand_as(x)  # conditional; unconditional is 0, the guide c / 2
    for step, cfg, expected in [
        (50, 1.0, c + 2.0 * (c - c / 2)),  # conditional: 2c
        (50, 1.5, 1.5 * c + 2.0 * (c - c / 2)),  # inside the interval: CFG and autoguidance, 2.5c
        (90, 1.5, c + 2.0 * (c - c / 2)),  # outside: autoguidance alone
    ]:
        model.calls.clear(), guide.calls.clear()
        torch.testing.assert_close(den(x, torch.full((2,), float(step)), classes, cfg=cfg).eps, expected)
        assert guide.calls == [2]  # the guide sees the guided (conditional) batch only
    unconditional = den(x, torch.full((2,), 50.0), None).eps  # the guide's unconditional pass: 0 + 2 (0 - -1)
    torch.testing.assert_close(unconditional, torch.full_like(x, 2.0))
    guide.calls.clear()
    off = Denoiser(model, VPProcess(schedule, "eps"), 10, guide=guide, guide_weight=1.0)
    torch.testing.assert_close(off(x, torch.full((2,), 50.0), classes).eps, c)
    assert guide.calls == []


def test_clipping_keeps_x0_in_range_and_eps_consistent() -> None:
    schedule = NoiseSchedule.create("cosine", 100)
    model = ClassShift(0)
    den = Denoiser(model, VPProcess(schedule, "x0"), num_classes=0, clipping="clip")
    x = torch.full((1, 1, 2, 2), 3.0)
    model.values = torch.tensor([5.0])  # the x0 prediction is far outside [-1, 1]
    pred = den(x, torch.tensor([10.0]))
    assert pred.x0.max().item() == pytest.approx(1.0)
    ab = schedule.alpha_bar[10].float()
    torch.testing.assert_close(ab.sqrt() * pred.x0 + (1 - ab).sqrt() * pred.eps, x)


def test_dynamic_threshold() -> None:
    x0 = torch.linspace(-3, 3, 1000).reshape(1, 1, 10, 100)
    out = dynamic_threshold(x0, 0.995)
    assert out.abs().max().item() == pytest.approx(1.0)
    small = torch.full((1, 1, 2, 2), 0.5)
    torch.testing.assert_close(dynamic_threshold(small), small)  # s is at least 1: no change inside [-1, 1]
