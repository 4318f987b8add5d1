"""Precision that chooses itself: the decision rule, the cache, and a probe that changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.models import UNet
from diffkit.precision import PrecisionChoice, choose_precision, decide
from diffkit.process import VPProcess
from diffkit.schedules import NoiseSchedule
from diffkit.settings import Settings, TrainSettings, load_settings, parse_overrides

CPU = torch.device("cpu")


def small_unet(base: int = 8) -> UNet:
    torch.manual_seed(0)
    return UNet(
        image_size=8,
        in_channels=1,
        base_channels=base,
        channel_mults=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[],
        attention_heads=1,
        mid_attention=False,
        dropout=0.1,
        norm_groups=4,
        num_classes=3,
    )


def times(fp32: float, bf16: float, fp32_cl: float = 9.0, bf16_cl: float = 9.0) -> dict[tuple[bool, bool], float]:
    return {(False, False): fp32, (True, False): bf16, (False, True): fp32_cl, (True, True): bf16_cl}


def test_decision_follows_the_measured_times() -> None:
    # the AVX2 kind: bf16 is emulated, 8x slower to train
    slow = decide(times(fp32=0.1, bf16=0.8))
    assert slow.name == "fp32" and "8.0x slower" in slow.reason and not slow.channels_last
    # an AVX-512-bf16 CPU: 1.7x faster
    fast = decide(times(fp32=0.17, bf16=0.1))
    assert fast.name == "bf16" and "1.7x faster" in fast.reason and fast.dtype is torch.bfloat16
    # a near tie is not worth bf16's rounding
    tie = decide(times(fp32=0.105, bf16=0.1))
    assert tie.name == "fp32" and tie.dtype is None
    # channels-last is taken where it wins, for the format chosen; an unmeasured variant never wins
    layout = decide(times(fp32=0.12, bf16=0.8, fp32_cl=0.1, bf16_cl=0.05))
    assert layout.name == "bf16" and layout.channels_last and "channels-last 16.00x faster" in layout.reason
    cl = decide({(False, False): 0.12, (False, True): 0.1, (True, False): 0.9})
    assert cl.name == "fp32" and cl.channels_last and cl.fp32_s == 0.1 and "1.20x faster" in cl.reason
    assert not decide({(False, False): 0.1, (False, True): 0.099, (True, False): 0.9}).channels_last  # within 5 %


def test_auto_measures_once_then_uses_the_cache(tmp_path: Path) -> None:
    calls: list[str] = []

    def measured(fp32_s: float, bf16_s: float):
        def measure() -> dict[tuple[bool, bool], float]:
            calls.append("probe")
            return times(fp32_s, bf16_s)

        return measure

    model = small_unet()
    first = choose_precision("auto", model, mode="train", device=CPU, cache=tmp_path, measure=measured(0.1, 0.8))
    assert first.name == "fp32" and calls == ["probe"] and "(cached)" not in first.reason
    again = choose_precision("auto", model, mode="train", device=CPU, cache=tmp_path, measure=measured(0.3, 0.1))
    assert again.name == "fp32" and again.reason.endswith("(cached)") and calls == ["probe"]
    # another network shape, or inference instead of training, is measured on its own
    other = choose_precision(
        "auto", small_unet(base=12), mode="train", device=CPU, cache=tmp_path, measure=measured(0.3, 0.1)
    )
    infer = choose_precision("auto", model, mode="sample", device=CPU, cache=tmp_path, measure=measured(0.3, 0.1))
    assert other.name == infer.name == "bf16" and calls == ["probe"] * 3
    assert len(list((tmp_path / "precision").glob("*.json"))) == 3


def test_cache_is_keyed_by_the_cpu_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_unet()
    choose_precision("auto", model, mode="train", device=CPU, cache=tmp_path, measure=lambda: times(0.3, 0.1))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the emulated AVX2 kind is another machine
    emulated = choose_precision(
        "auto", model, mode="train", device=CPU, cache=tmp_path, measure=lambda: times(0.1, 0.8)
    )
    assert emulated.name == "fp32" and "(cached)" not in emulated.reason


def test_explicit_precision_is_not_measured(tmp_path: Path) -> None:
    def never() -> dict[tuple[bool, bool], float]:
        raise AssertionError("explicit precision must not probe")

    for name in ("fp32", "bf16"):
        choice = choose_precision(name, small_unet(), mode="train", device=CPU, cache=tmp_path, measure=never)  # type: ignore[arg-type]
        assert choice.name == name


@pytest.mark.parametrize("mode", ["train", "sample"])
def test_the_real_probe_leaves_weights_and_random_state_alone(tmp_path: Path, mode: str) -> None:
    model = small_unet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    choice = choose_precision("auto", model, mode=mode, device=CPU, batch=4, cache=tmp_path)  # type: ignore[arg-type]
    assert choice.name in ("fp32", "bf16") and choice.fp32_s and choice.bf16_s
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert PrecisionChoice.from_dict(choice.to_dict()) == choice


def test_channels_last_changes_the_layout_not_the_values() -> None:
    model = small_unet().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    schedule = NoiseSchedule.create("cosine", 100)
    x, t, classes = torch.randn(4, 1, 8, 8), torch.full((4,), 50.0), torch.tensor([0, 1, 2, 0])
    plain = Denoiser(model, VPProcess(schedule), 3)(x, t, classes, cfg=2.0)
    choice = PrecisionChoice("fp32", "test", channels_last=True)
    assert choice.layout(x).is_contiguous(memory_format=torch.channels_last)
    fast = Denoiser(choice.prepare(model), VPProcess(schedule), 3, precision=choice)(x, t, classes, 2.0)
    assert torch.allclose(plain.eps, fast.eps, atol=1e-5)


def test_bf16_sampling_stays_close_to_fp32_and_returns_fp32() -> None:
    model = small_unet().eval()
    with torch.no_grad():  # the UNet's last layer starts at zero: give it real outputs
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    schedule = NoiseSchedule.create("cosine", 100)
    x, t, classes = torch.randn(4, 1, 8, 8), torch.full((4,), 50.0), torch.tensor([0, 1, 2, 0])
    plain = Denoiser(model, VPProcess(schedule), 3)(x, t, classes, cfg=2.0)
    bf16 = Denoiser(model, VPProcess(schedule), 3, precision=PrecisionChoice("bf16", "test"))(x, t, classes, 2.0)
    assert bf16.x0.dtype == torch.float32 and bf16.eps.dtype == torch.float32
    assert not torch.equal(plain.eps, bf16.eps)  # autocast really ran
    assert torch.allclose(plain.eps, bf16.eps, atol=0.1)


def test_old_bf16_setting_still_loads_as_precision() -> None:
    assert TrainSettings(max_steps=1, bf16=True).precision == "bf16"  # type: ignore[call-arg]
    assert TrainSettings(max_steps=1, bf16=False).precision == "fp32"  # type: ignore[call-arg]
    old = Settings.model_validate({"train": {"max_steps": 3, "bf16": True}})
    assert old.train.precision == "bf16"
    with pytest.raises(DiffkitError, match=r"train\.bf16 was replaced by train\.precision"):
        load_settings("tiny", parse_overrides(["train.bf16=true", "train.precision=fp32"]))
    assert load_settings("demo").train.precision == "auto" and load_settings("demo").sample.precision == "auto"
