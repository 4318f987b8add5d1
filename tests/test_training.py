from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffkit.errors import DiffkitError
from diffkit.runs import RunPaths, read_checkpoint, save_checkpoint, split_weights
from diffkit.settings import Settings, load_settings, parse_overrides
from diffkit.training import ema_decay_at, ema_update, lr_factor, param_groups, train_run


def tiny_settings(*extra: str) -> Settings:
    # 64 shapes, 56 for training in batches of 8: 7 steps per epoch
    return load_settings(
        "tiny",
        parse_overrides(
            [
                "data.limit=64",
                "train.batch_size=8",
                "train.max_steps=10",
                "train.sample_every_epochs=0",
                "sample.steps=2",
                "train.threads=1",
                *extra,
            ]
        ),
    )


def test_ema_arithmetic() -> None:
    model, ema = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
        for p in ema.parameters():
            p.fill_(0.0)
    ema_update(ema, model, decay=0.9)
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in ema.parameters())
    ema_update(ema, model, decay=0.9)
    assert all(torch.allclose(p, torch.full_like(p, 0.19)) for p in ema.parameters())  # 0.9*0.1 + 0.1
    assert ema_decay_at(0, 0.999, warmup=True) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999, warmup=True) == pytest.approx(91 / 100)
    assert ema_decay_at(10**6, 0.999, warmup=True) == pytest.approx(0.999)
    assert ema_decay_at(0, 0.999, warmup=False) == pytest.approx(0.999)


def test_lr_warmup_then_cosine() -> None:
    assert lr_factor(0, 100, 10, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine", 0.2) == pytest.approx(0.6)  # halfway: (1 + 0.2) / 2
    assert lr_factor(100, 100, 10, "cosine", 0.2) == pytest.approx(0.2)
    assert lr_factor(70, 100, 10, "constant", 0.0) == pytest.approx(1.0)


def test_no_weight_decay_on_norms_biases_embeddings() -> None:
    model = nn.Sequential(nn.Embedding(3, 4), nn.Linear(4, 4), nn.GroupNorm(2, 4))
    decay, keep = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 4)]  # only the linear weight
    assert len(keep["params"]) == 4  # embedding table, linear bias, norm weight and bias


def test_checkpoint_round_trip_is_bit_exact(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    model, ema = nn.Conv2d(2, 3, 3), nn.Conv2d(2, 3, 3)
    save_checkpoint(paths, "last", model, ema, {"step": 7}, {"step": 7, "x": torch.arange(3)})
    tensors, meta = read_checkpoint(paths.weights("last"))
    assert meta == {"step": 7}
    for name, value in model.state_dict().items():
        assert torch.equal(split_weights(tensors, "model")[name], value)
    for name, value in ema.state_dict().items():
        assert torch.equal(split_weights(tensors, "ema")[name], value)
    assert sorted(p.name for p in paths.checkpoints.iterdir()) == [
        "last.safetensors",
        "last.state.pt",
    ]  # no temp files
    state = torch.load(paths.state("last"), weights_only=True)
    assert state["step"] == 7 and torch.equal(state["x"], torch.arange(3))


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DiffkitError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(DiffkitError, match="corrupt"):
        read_checkpoint(bad)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(RunPaths(run).weights("last"))[0]


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    # 10 steps over 7-step epochs: the break at step 4 is mid-epoch, so data order, RNG, EMA,
    # optimiser and LR-schedule state must all be restored exactly.
    _, straight = train_run(tiny_settings(), tmp_path / "straight")
    _, first = train_run(tiny_settings(), tmp_path / "split", stop_after=4)
    assert first.steps == 4
    _, second = train_run(tiny_settings(), tmp_path / "split", resume=True)
    assert second.steps == 10
    assert first.losses + second.losses == straight.losses  # bit-exact, not approximately
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_reduces_loss_and_writes_the_run(tmp_path: Path) -> None:
    trainer, result = train_run(tiny_settings("train.max_steps=21", "train.sample_every_epochs=1"), tmp_path / "r")
    paths = trainer.paths
    assert sum(result.losses[-5:]) / 5 < sum(result.losses[:5]) / 5
    for f in (
        paths.config,
        paths.metrics,
        paths.curves,
        paths.weights("last"),
        paths.weights("best"),
        paths.state("last"),
        paths.samples / "epoch_0003.png",
    ):
        assert f.is_file(), f
    lines = paths.metrics.read_text().splitlines()
    assert any('"val_loss"' in line for line in lines) and any('"images_per_s"' in line for line in lines)
    assert "num_classes = 4" in paths.config.read_text()  # settled from the dataset and saved
