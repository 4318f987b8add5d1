"""A run written before diffusion processes existed (tests/fixtures/legacy-vp-run, made by diffkit at 9ddfd9f
with the tiny preset) still loads, as process `vp`, and samples the very same pixels with every sampler
(to float32 rounding)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffkit.generation import generate
from diffkit.runs import load_run
from diffkit.samplers import SAMPLERS

FIXTURE = Path(__file__).parent / "fixtures" / "legacy-vp-run"
NEWER = {"consistency"}  # samplers added after the fixture was made (no old pixels to compare with)
OLD_SAMPLERS = [name for name in SAMPLERS if name not in NEWER]


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("legacy") / "run"
    shutil.copytree(FIXTURE, root)  # loading may write caches beside a run: never into the repository
    return root


def test_the_fixture_covers_every_sampler() -> None:
    assert set(load_file(str(FIXTURE / "reference.safetensors"))) == set(OLD_SAMPLERS)


@pytest.mark.parametrize("sampler", OLD_SAMPLERS)
def test_an_old_run_samples_the_same_pixels(legacy: Path, sampler: str) -> None:
    with safe_open(str(FIXTURE / "reference.safetensors"), "pt") as f:
        meta, reference = f.metadata(), f.get_tensor(sampler)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as when the references were made: convolutions may sum in another order on more
    try:
        run = load_run(legacy, "last", device="cpu")
        plan = run.plan(sampler=sampler, steps=int(meta["steps"]), cfg=float(meta["cfg"]), seed=int(meta["seed"]))
        classes = torch.tensor([int(c) for c in meta["classes"].split(",")])
        images = generate(run.denoiser(plan), plan, num=len(classes), classes=classes).images
    finally:
        torch.set_num_threads(threads)
    # the same pixels up to the last bit of float32: another CPU kind's SIMD kernels (AVX2, AVX-512, AMX) may
    # round a sum differently (2.4e-7 seen for ddpm on an AVX-512 Xeon); any change in the maths moves them by
    # orders of magnitude more
    torch.testing.assert_close(images, reference, rtol=0.0, atol=1e-5, msg=lambda m: f"{sampler}: {m}")
