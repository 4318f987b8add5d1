"""The GPU-ready paths, exercised on the CPU: the precision rule, fp16 with a gradient scaler, devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffkit.devices import configure, resolve_device, to_device
from diffkit.errors import DiffkitError
from diffkit.precision import FP32, cuda_choice
from diffkit.settings import load_settings, parse_overrides
from diffkit.training import Trainer, train_run

SETS = ["data.limit=64", "train.batch_size=8", "train.max_steps=6", "train.log_every=1", "sample.steps=2"]


def fp16(*extra: str):
    return load_settings("tiny", parse_overrides([*SETS, "train.precision=fp16", *extra]))


def test_the_gpu_precision_rule() -> None:
    ampere = cuda_choice("A100", True, (8, 0))
    assert ampere.name == "bf16" and not ampere.needs_grad_scaler
    turing = cuda_choice("T4", False, (7, 5))
    assert turing.name == "fp16" and turing.needs_grad_scaler and turing.dtype == torch.float16
    pascal = cuda_choice("P100", False, (6, 0))
    assert pascal.name == "fp32" and pascal.dtype is None and not FP32.needs_grad_scaler


def test_fp16_trains_with_a_gradient_scaler_and_resumes_exactly(tmp_path: Path) -> None:
    trainer, straight = train_run(fp16(), tmp_path / "straight")
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 0
    state = torch.load(trainer.paths.state("last"), weights_only=True)
    assert state["grad_scaler"]["scale"] == trainer.scaler.get_scale()  # the scale is part of the exact state
    train_run(fp16(), tmp_path / "split", stop_after=3)
    resumed, second = train_run(fp16(), tmp_path / "split", resume=True)
    assert resumed.scaler.is_enabled() and straight.losses[3:] == second.losses


def test_an_fp16_overflow_skips_the_step_instead_of_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Overflowing fp16 gradients are routine: the scaler skips that step and halves its scale."""
    real = Trainer.apply_precision

    def huge_scale(self: Trainer) -> None:
        real(self)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120, growth_interval=10**6)

    monkeypatch.setattr(Trainer, "apply_precision", huge_scale)
    trainer, result = train_run(fp16("train.max_steps=3"), tmp_path / "overflow")
    assert result.steps == 3 and trainer.scaler.get_scale() < 2.0**120  # backed off, not diverged
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_devices_on_a_machine_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DiffkitError, match="no CUDA GPU is available: use --device cpu or auto"):
        resolve_device("cuda")
    before = torch.backends.cuda.matmul.allow_tf32
    configure(torch.device("cpu"))  # TF32 is a GPU matter: nothing changes on the CPU
    assert torch.backends.cuda.matmul.allow_tf32 == before
    batch = torch.arange(6, dtype=torch.uint8)
    assert torch.equal(to_device(batch, torch.device("cpu")), batch)


def test_device_cuda_without_a_gpu_is_one_line(cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from conftest import one_line_error

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = cli("train", "--preset", "tiny", "--run-dir", str(tmp_path / "r"), "--device", "cuda")
    one_line_error(result, "--device cuda was asked for but no CUDA GPU is available")
    assert not (tmp_path / "r").exists()


def test_sampling_runs_in_inference_mode() -> None:
    from diffkit.denoiser import Prediction
    from diffkit.runs import build_schedule
    from diffkit.samplers import sample

    seen: list[bool] = []

    def denoise(x: torch.Tensor, t: torch.Tensor) -> Prediction:
        seen.append(torch.is_inference_mode_enabled())
        return Prediction(torch.zeros_like(x), x)

    schedule = build_schedule(load_settings("tiny"))
    out = sample("ddim", denoise, torch.randn(2, 1, 8, 8), schedule, 3)
    assert seen == [True, True, True] and out.nfe == 3 and torch.is_inference(out.images)
    assert not torch.is_inference_mode_enabled()  # and only inside the sampler
