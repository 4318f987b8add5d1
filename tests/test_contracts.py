"""The written contracts between modules: the network contract, a plan checked once on its way to `generate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffkit.generation import generate
from diffkit.models import DenoisingNetwork, UNet, network
from diffkit.runs import load_run
from diffkit.samplers.registry import SamplerSpec


def test_the_unet_meets_the_network_contract_and_a_stranger_does_not() -> None:
    unet = UNet(image_size=8, base_channels=8, channel_mults=(1,), norm_groups=4, num_classes=3)
    assert isinstance(unet, DenoisingNetwork) and network(unet).num_classes == 3
    with pytest.raises(TypeError, match="lacks image_size, in_channels, num_classes, cond_channels"):
        network(nn.Linear(2, 2))


def test_a_plan_is_checked_once_on_its_way_to_generate(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = SamplerSpec.check

    def counting(self: SamplerSpec, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SamplerSpec, "check", counting)
    run = load_run(tiny_run, device="cpu")
    plan = run.plan(sampler="ddim", steps=2)
    generate(run.denoiser(plan), plan, num=2, classes=torch.tensor([0, 1]))
    assert calls == ["ddim"]
    generate(run.denoiser(plan), plan.but(steps=3), num=2, classes=torch.tensor([0, 1]))  # a changed plan: again
    assert calls == ["ddim", "ddim"]


def test_the_library_imports_nothing_from_the_cli() -> None:
    """The CLI is a thin layer over the library: the app, the Python face and the library never reach back."""
    root = Path(__file__).resolve().parents[1] / "diffkit"
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.relative_to(root).parts[0] not in ("cli", "__main__.py")  # the entry point starts the CLI
        and any(s in path.read_text() for s in ("from diffkit.cli", "import diffkit.cli", "from diffkit import cli"))
    ]
    assert offenders == []
