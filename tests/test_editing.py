"""Inpainting, interpolation and super-resolution: known-answer checks with an exact Gaussian denoiser,
behaviour checks with tiny trained runs, and every bad input of the three commands (one line, exit 2)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from conftest import one_line_error
from PIL import Image
from torch import Tensor, nn

from diffkit.denoiser import Denoiser
from diffkit.editing import (
    ddim_invert,
    degrade,
    inpaint,
    interpolate_classes,
    interpolate_images,
    interpolate_seeds,
    make_masks,
    mask_from_spec,
    random_condition,
    read_mask,
    slerp,
    super_resolve,
    upsample,
)
from diffkit.editing.inpaint import repaint_path
from diffkit.errors import DiffkitError
from diffkit.generation import generate, initial_noise
from diffkit.models import UNet
from diffkit.process import VPProcess
from diffkit.runs import load_run
from diffkit.sampling import SamplingPlan
from diffkit.schedules import NoiseSchedule
from diffkit.settings import load_settings, parse_overrides

SR = ["model.task=super-res", "model.cond_channels=1", "model.num_classes=0"]


@pytest.fixture(scope="module")
def runs(tiny_run: Path, tiny_sr_run: Path) -> dict[str, Path]:
    """The session's two tiny runs: a class-conditional generator (4 classes) and a super-resolution model."""
    return {"gen": tiny_run, "sr": tiny_sr_run}


@pytest.fixture(scope="module")
def gen(runs: dict[str, Path]) -> Denoiser:
    """fp32 whatever the machine would choose: bf16's rounding depends on the batch, and these tests
    compare batched paths with single images exactly."""
    loaded = load_run(runs["gen"], device="cpu")
    return loaded.denoiser(loaded.plan().but(precision="fp32"))


def digits(n: int = 3, seed: int = 0) -> Tensor:
    """Bright squares on black, in [-1, 1]: stand-ins for real images."""
    x = -torch.ones(n, 1, 28, 28)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        lo = int(torch.randint(2, 12, (1,), generator=g))
        x[i, :, lo : lo + 12, lo : lo + 10] = 1.0
    return x


# ------------------------------------------------------------------------- exact Gaussian denoiser
# For data x0 ~ N(μ, s² I), E[x0 | x_t] = μ + a s² / (a² s² + 1 - a²) (x_t - a μ), a = sqrt(ᾱ_t).

MU, STD = 0.3, 0.2
SCHEDULE = NoiseSchedule.create("cosine", 200)


class GaussianNet(nn.Module):
    """Outputs the exact ε for Gaussian data; shaped like a UNet so `Denoiser` and `generate` take it."""

    in_channels, image_size, cond_channels, num_classes = 1, 8, 0, 0  # the network contract

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, so the device can be read from it

    def forward(self, x: Tensor, t: Tensor, classes: Tensor | None = None) -> Tensor:
        ab = SCHEDULE.alpha_bar_at(t.cpu()).to(x).reshape(-1, 1, 1, 1)
        x0 = MU + ab.sqrt() * STD**2 / (ab * STD**2 + 1 - ab) * (x - ab.sqrt() * MU)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


def gaussian() -> Denoiser:
    return Denoiser(GaussianNet(), VPProcess(SCHEDULE, "eps"))


def exact(**fields: object) -> SamplingPlan:
    """A plan for the exact Gaussian denoiser: no clipping, so its answers stay exact."""
    return SamplingPlan(clipping="none", **fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ masks


def test_mask_kinds_follow_the_convention() -> None:
    masks = {
        kind: make_masks(kind, 4, 28, seed=1) for kind in ("center", "box", "left", "right", "top", "bottom", "brush")
    }
    for kind, m in masks.items():
        assert m.shape == (4, 1, 28, 28) and set(m.unique().tolist()) == {0.0, 1.0}, kind
    assert masks["center"][0, 0, 14, 14] == 0 and masks["center"][0, 0, 0, 0] == 1  # 0 = hole, 1 = keep
    assert masks["left"][0, 0, :, :14].sum() == 0 and masks["left"][0, 0, :, 14:].min() == 1
    assert masks["top"][0, 0, :14].sum() == 0
    assert not torch.equal(masks["brush"][0], masks["brush"][1])  # random kinds differ per image ...
    torch.testing.assert_close(make_masks("brush", 4, 28, seed=1), masks["brush"])  # ... but a seed fixes them


def test_png_masks_threshold_at_half_grey_and_check_the_size(tmp_path: Path) -> None:
    arr = torch.full((28, 28), 255, dtype=torch.uint8)
    arr[:, :10] = 127  # just under 50% grey: hole
    arr[:, 10:12] = 128  # at 50%: keep
    Image.fromarray(arr.numpy()).save(tmp_path / "m.png")
    m = read_mask(tmp_path / "m.png", 28)
    assert m[0, 0, 0, :10].sum() == 0 and m[0, 0, 0, 10:].min() == 1
    Image.new("L", (32, 32), 0).save(tmp_path / "big.png")
    with pytest.raises(DiffkitError, match="32x32 but the model's images are 28x28"):
        read_mask(tmp_path / "big.png", 28)
    Image.new("L", (28, 28), 255).save(tmp_path / "white.png")
    with pytest.raises(DiffkitError, match="nothing to fill"):
        mask_from_spec(str(tmp_path / "white.png"), 2, 28)


# --------------------------------------------------------------------------------------- inpainting


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("replace", {"sampler": "ddim", "steps": 4}),
        ("replace", {"sampler": "ddpm", "steps": 4}),
        ("replace", {"sampler": "heun", "steps": 3}),
        ("repaint", {"steps": 6, "jump": 2, "resample": 3}),
        ("sds", {"iterations": 5}),
    ],
)
def test_known_pixels_are_preserved_exactly(gen: Denoiser, method: str, options: dict) -> None:
    x, masks = digits(3), make_masks("brush", 3, 28, seed=2)
    planned = {k: options.pop(k) for k in ("sampler", "steps") if k in options}
    plan = SamplingPlan(cfg=2.0, seed=3, **planned)
    out = inpaint(gen, x, masks, plan, method=method, classes=torch.tensor([0, 1, 2]), **options)
    keep = masks.bool().expand_as(x)
    assert torch.equal(out.images[keep], x[keep])  # bit for bit, not approximately
    assert not torch.equal(out.images[~keep], x[~keep])  # and the hole was filled
    assert out.images.shape == x.shape and out.images.abs().max() <= 1


def test_inpainting_is_deterministic_for_a_seed(gen: Denoiser) -> None:
    x, masks = digits(2), make_masks("center", 2, 28)
    for method in ("replace", "repaint"):
        a = inpaint(gen, x, masks, SamplingPlan(steps=4, seed=5), method=method, jump=2, resample=2).images
        b = inpaint(gen, x, masks, SamplingPlan(steps=4, seed=5), method=method, jump=2, resample=2).images
        c = inpaint(gen, x, masks, SamplingPlan(steps=4, seed=6), method=method, jump=2, resample=2).images
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_repaint_time_path() -> None:
    assert repaint_path(4, 2, 1) == [0, 1, 2, 3, 4]  # no resampling: plain DDPM
    # blocks of 2 levels counted from the clean end are each denoised twice
    assert repaint_path(4, 2, 2) == [0, 1, 2, 1, 0, 1, 2, 3, 4, 3, 2, 3, 4]
    path = repaint_path(50, 10, 10)
    downs = sum(b > a for a, b in itertools.pairwise(path))
    assert downs == 50 + 9 * 10 * 5 and path[-1] == 50 and min(path) == 0


def test_replace_with_an_exact_denoiser_keeps_the_known_region_and_fills_from_the_prior() -> None:
    x = torch.full((64, 1, 8, 8), -0.9)  # known pixels far from the prior's mean
    masks = make_masks("left", 64, 8)
    out = inpaint(gaussian(), x, masks, exact(steps=50), method="replace").images
    hole = out[:, :, :, :4]
    assert torch.equal(out[:, :, :, 4:], x[:, :, :, 4:])
    # independent pixels: the hole is a draw from N(μ, s²), whatever the known pixels are
    assert hole.mean().item() == pytest.approx(MU, abs=0.02)
    assert hole.std().item() == pytest.approx(STD, abs=0.02)


def test_sds_reduces_its_loss() -> None:
    x = torch.full((4, 1, 8, 8), -0.8)
    masks = make_masks("center", 4, 8)
    out = inpaint(gaussian(), x, masks, exact(), method="sds", iterations=60, lr=0.1)
    assert out.final_loss < 0.25 * out.initial_loss
    assert len(out.losses) == 60 and out.nfe == 60 + 8
    hole = out.images[~masks.bool()]
    assert hole.mean().item() == pytest.approx(MU, abs=0.05)  # mode seeking: pulled to the prior's mode


def test_inpainting_refuses_bad_masks(gen: Denoiser) -> None:
    with pytest.raises(DiffkitError, match=r"does not fit images"):
        inpaint(gen, digits(2), torch.ones(2, 1, 14, 14), SamplingPlan(steps=2))
    with pytest.raises(DiffkitError, match="0 \\(hole\\) or 1 \\(keep\\)"):
        inpaint(gen, digits(2), torch.full((2, 1, 28, 28), 0.5), SamplingPlan(steps=2))


# ------------------------------------------------------------------------------------ interpolation


def test_slerp_ends_and_norm() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 8, 8, generator=g), torch.randn(1, 8, 8, generator=g)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    assert mid.norm().item() == pytest.approx(((a.norm() + b.norm()) / 2).item(), rel=0.05)  # no shrinking
    assert (a + b).norm().item() / 2 < 0.8 * mid.norm().item()  # as a straight line would


def test_class_interpolation_ends_are_the_plain_samples(gen: Denoiser) -> None:
    result = interpolate_classes(gen, 1, 3, SamplingPlan(steps=4, cfg=2.0, seed=7), frames=4)
    assert result.frames.shape == (4, 1, 28, 28) and result.positions == [0, 1 / 3, 2 / 3, 1]
    for end, cls in ((0, 1), (-1, 3)):
        plain = generate(gen, SamplingPlan(steps=4, cfg=2.0, seed=7), num=1, classes=torch.tensor([cls]))
        torch.testing.assert_close(result.frames[end], plain.images[0], atol=1e-5, rtol=0)
    assert not torch.allclose(result.frames[1], result.frames[0])


def test_class_weights_mix_embeddings_exactly() -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1, norm_groups=4, num_classes=3).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5.0, 50.0])
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 3]), 4).float()  # 3 = the null class
    assert torch.equal(model(x, t, one_hot), model(x, t, torch.tensor([2, 3])))
    half = torch.tensor([[0.5, 0.5, 0, 0]] * 2)
    emb = model.class_emb.weight
    assert torch.allclose(half @ emb, (emb[0] + emb[1]) / 2)


def test_seed_interpolation_ends_are_the_plain_samples(gen: Denoiser) -> None:
    plan = SamplingPlan(steps=4, cfg=1.5)
    result = interpolate_seeds(gen, 11, 12, plan, frames=3, class_id=2)
    for end, seed in ((0, 11), (-1, 12)):
        plain = generate(gen, plan.but(seed=seed), num=1, classes=torch.tensor([2]))
        torch.testing.assert_close(result.frames[end], plain.images[0], atol=1e-5, rtol=0)
    again = interpolate_seeds(gen, 11, 12, plan, frames=3, class_id=2)
    assert torch.equal(again.frames, result.frames)  # deterministic


def test_ddim_inversion_round_trips_with_an_exact_denoiser() -> None:
    den = gaussian()
    x = MU + STD * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    errors = []
    for steps in (50, 100):
        latent = ddim_invert(den.conditioned(), x, SCHEDULE, steps)
        assert latent.std().item() == pytest.approx(1.0, abs=0.15)  # a noise-like start point
        back = generate(den, exact(steps=steps), num=3, classes=None, noise=latent).images
        errors.append((back - x).abs().max().item())
    # ε̂(x_t', t) ≈ ε̂(x_t, t) is a first-order approximation: twice the steps, half the error
    assert errors[1] < 0.05 and errors[1] < 0.6 * errors[0]


def test_image_interpolation_ends_are_the_decoded_inversions(gen: Denoiser) -> None:
    x = digits(2)
    result = interpolate_images(gen, x[:1], x[1:], SamplingPlan(steps=4), frames=3)
    latents = ddim_invert(gen.conditioned(), x, gen.schedule, 4)
    plain = generate(gen, SamplingPlan(steps=4), num=2, classes=None, noise=latents).images
    torch.testing.assert_close(result.frames[[0, -1]], plain, atol=1e-5, rtol=0)


# -------------------------------------------------------------------------------- super-resolution


def test_degradation_shapes_and_conditioning() -> None:
    x = digits(4)
    assert degrade(x, 4).shape == (4, 1, 7, 7) and degrade(x, 2).shape == (4, 1, 14, 14)
    assert degrade(x, 4)[0, 0, 0, 0] == pytest.approx(-1.0)  # area mean of a black block
    up = upsample(degrade(x, 4), 28)
    assert up.shape == x.shape and up.abs().max() <= 1
    cond = random_condition(x, [2, 4], torch.Generator().manual_seed(0))
    candidates = [upsample(degrade(x, s), 28) for s in (2, 4)]
    for i in range(4):
        assert any(torch.equal(cond[i], c[i]) for c in candidates)


def test_super_resolution_shape_range_and_determinism(runs: dict[str, Path]) -> None:
    den = load_run(runs["sr"], device="cpu").denoiser()
    low = degrade(digits(3), 4)
    plan = SamplingPlan(steps=3, seed=1)
    a = super_resolve(den, low, plan)
    assert a.images.shape == (3, 1, 28, 28) and a.images.abs().max() <= 1 and a.bicubic.shape == (3, 1, 28, 28)
    assert torch.equal(a.images, super_resolve(den, low, plan).images)
    # other batch sizes: the same noise per image, equal up to float rounding in batched convolutions
    torch.testing.assert_close(a.images, super_resolve(den, low, plan.but(batch_size=2)).images, atol=1e-5, rtol=0)
    with pytest.raises(DiffkitError, match="super-resolution model"):
        generate(den, SamplingPlan(steps=2), num=1, classes=None)
    with pytest.raises(DiffkitError, match="cannot do super-resolution"):
        super_resolve(load_run(runs["gen"], device="cpu").denoiser(), low, SamplingPlan(steps=2))


def test_super_res_settings_are_validated() -> None:
    with pytest.raises(DiffkitError, match=r"needs model\.cond_channels"):
        load_settings("tiny", parse_overrides(["model.task=super-res"]))
    with pytest.raises(DiffkitError, match="do not divide"):
        load_settings("tiny", parse_overrides([*SR, "model.sr_scales=[3]"]))
    s = load_settings("mnist-sr")
    assert (s.model.task, s.model.cond_channels, s.model.sr_scales) == ("super-res", 1, [2, 4])
    assert s.model.base_channels == load_settings("demo").model.base_channels  # `extends` merges tables


def test_replace_and_repaint_start_from_the_seeds_initial_noise() -> None:
    """Both sampler-based methods start from x_T as `generate` draws it for the seed (image i: (seed, i))."""

    class Spy(GaussianNet):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[Tensor] = []

        def forward(self, x: Tensor, t: Tensor, classes: Tensor | None = None) -> Tensor:
            self.seen.append(x.clone())
            return super().forward(x, t, classes)

    spy = Spy()
    den = Denoiser(spy, VPProcess(SCHEDULE, "eps"))
    x, masks = torch.zeros(2, 1, 8, 8), make_masks("left", 2, 8)
    for method in ("replace", "repaint"):
        spy.seen.clear()
        inpaint(den, x, masks, exact(steps=3, seed=3), method=method, jump=1, resample=1)
        assert torch.equal(spy.seen[0], initial_noise(2, (1, 8, 8), 3)), method
        assert not torch.equal(spy.seen[0], initial_noise(2, (1, 8, 8), 4))
    # and image i's noise does not depend on how many images are drawn
    assert torch.equal(initial_noise(2, (1, 28, 28), 3)[1], initial_noise(3, (1, 28, 28), 3)[1])


# ---------------------------------------------------------------------------------------------- CLI


def test_inpaint_cli_writes_figure_scores_and_images(cli, runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "inp"
    code, stdout, err = cli(
        "inpaint",
        "--run",
        str(runs["gen"]),
        "--from",
        "synthetic:test:0..2",
        "--mask",
        "box",
        "--method",
        "replace,repaint,sds",
        "--steps",
        "3",
        "--jump",
        "1",
        "--resample",
        "2",
        "--iterations",
        "4",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "PSNR" in stdout and "SSIM" in stdout and str(out) in stdout
    record = json.loads((out / "scores.json").read_text())
    assert set(record) >= {"replace", "repaint", "sds"} and "psnr" in record["replace"]
    assert record["sds"]["sds_loss_initial"] > 0
    # rows: original, mask, masked input, then one per method; 3 images per row, scaled x3
    figure = Image.open(out / "inpaint.png")
    assert figure.height == 3 * (6 * 30 + 2)
    assert len(list((out / "repaint").iterdir())) == 3


def test_inpaint_cli_with_a_png_and_generated_originals(cli, runs: dict[str, Path], tmp_path: Path) -> None:
    Image.new("RGB", (56, 40), (200, 30, 30)).save(tmp_path / "photo.png")
    code, stdout, err = cli(
        "inpaint",
        "--run",
        str(runs["gen"]),
        "--image",
        str(tmp_path / "photo.png"),
        "--mask",
        "top",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "a"),
    )
    assert code == 0, err
    assert "converted photo.png from 56x40 RGB to 28x28 L" in stdout
    code, _, err = cli(
        "inpaint",
        "--run",
        str(runs["gen"]),
        "--class",
        "1",
        "--num",
        "2",
        "--mask",
        "center",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "b"),
    )
    assert code == 0, err


def test_interpolate_cli_writes_strip_and_gif(cli, runs: dict[str, Path], tmp_path: Path) -> None:
    for args in (
        ["--classes", "0", "2"],
        ["--seeds", "1", "2", "--class", "1"],
        ["--images", "synthetic:test:0", "synthetic:test:1"],
    ):
        out = tmp_path / args[0].strip("-")
        code, _, err = cli(
            "interpolate", "--run", str(runs["gen"]), *args, "--frames", "4", "--steps", "2", "--out", str(out)
        )
        assert code == 0, err
        gif = Image.open(out / "interpolation.gif")
        assert gif.n_frames == 6  # forwards, then back without repeating the ends
        assert (out / "strip.png").is_file() and len(list((out / "frames").iterdir())) == 4
    assert "reconstruction" in json.loads((tmp_path / "images" / "interpolation.json").read_text())


def test_super_res_cli_compares_with_bicubic(cli, runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sr"
    code, stdout, err = cli(
        "super-res",
        "--run",
        str(runs["sr"]),
        "--from",
        "synthetic:test:0..3",
        "--scale",
        "2",
        "--steps",
        "2",
        "--out",
        str(out),
    )
    assert code == 0, err
    record = json.loads((out / "super-res.json").read_text())
    assert {"bicubic", "diffusion"} <= set(record) and "bicubic" in stdout and "diffusion" in stdout
    assert Image.open(out / "super-res.png").height == 3 * (4 * 30 + 2)  # low-res, bicubic, diffusion, truth
    Image.new("L", (7, 7), 40).save(tmp_path / "small.png")  # a low-resolution input: no ground truth
    code, stdout, err = cli(
        "super-res",
        "--run",
        str(runs["sr"]),
        "--image",
        str(tmp_path / "small.png"),
        "--steps",
        "2",
        "--out",
        str(tmp_path / "small"),
    )
    assert code == 0, err
    assert "PSNR" not in stdout


def test_bad_inputs_give_one_line_errors(cli, runs: dict[str, Path], tmp_path: Path) -> None:
    gen_run, sr_run = str(runs["gen"]), str(runs["sr"])
    Image.new("L", (20, 20), 0).save(tmp_path / "m20.png")
    (tmp_path / "notes.png").write_text("not an image")
    src = ["--from", "synthetic:test:0..1"]
    cases = [
        (("inpaint", "--run", gen_run, *src, "--mask", str(tmp_path / "m20.png")), ["20x20", "28x28 mask"]),
        (("inpaint", "--run", gen_run, *src, "--mask", "star"), ["unknown mask 'star'"]),
        (("inpaint", "--run", gen_run, *src, "--method", "magic"), ["unknown inpainting method"]),
        (("inpaint", "--run", gen_run, "--image", str(tmp_path / "notes.png")), ["not an image file"]),
        (("inpaint", "--run", gen_run), ["give exactly one of --image, --from, --class"]),
        (("inpaint", "--run", gen_run, *src, "--class", "1"), ["give exactly one of"]),
        (("inpaint", "--run", gen_run, *src, "--method", "repaint", "--sampler", "ddim"), ["--method replace only"]),
        (("inpaint", "--run", sr_run, *src), ["super-resolution model"]),
        (("super-res", "--run", gen_run, *src), ["not a super-resolution model", "mnist-sr"]),
        (("super-res", "--run", sr_run, *src, "--scale", "3"), ["--scale 3 was not trained"]),
        (("super-res", "--run", sr_run, "--image", str(tmp_path / "notes.png")), ["not an image file"]),
        (("super-res", "--run", sr_run, "--image", str(tmp_path / "missing.png")), ["does not exist"]),
        (("interpolate", "--run", gen_run, "--classes", "0", "9"), ["class 9 is out of range"]),
        (("interpolate", "--run", gen_run, "--classes", "0", "1", "--seeds", "1", "2"), ["give exactly one of"]),
        (("interpolate", "--run", sr_run, "--seeds", "1", "2"), ["super-resolution model"]),
        (
            ("interpolate", "--run", gen_run, "--images", str(tmp_path / "notes.png"), "synthetic:test:0"),
            ["not an image file"],
        ),
    ]
    for args, fragments in cases:
        one_line_error(cli(*args), *fragments)
