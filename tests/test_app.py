"""`diffkit app` without a browser: each tab's handler on tiny runs, bad input as readable errors, the command."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffkit.app import handlers as h
from diffkit.errors import DiffkitError


@pytest.fixture(scope="module")
def runs(tiny_run: Path, tiny_sr_run: Path) -> dict[str, Path]:
    """The session's tiny class-conditional run (4 classes, drawn shapes) and tiny super-resolution run."""
    return {"gen": tiny_run, "sr": tiny_sr_run}


@pytest.fixture(scope="module")
def app(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> h.AppRun:
    served = h.open_app(runs["gen"], workdir=tmp_path_factory.mktemp("app-work"), device="cpu")
    assert served.error is None
    return served


def size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def not_blank(path: Path) -> bool:
    with Image.open(path) as img:
        return float(np.asarray(img.convert("L"), dtype=np.float32).std()) > 1.0


def test_no_run_is_a_message_not_a_crash(tmp_path: Path) -> None:
    served = h.open_app(None, workdir=tmp_path / "work", runs_dir=tmp_path / "runs")
    assert served.loaded is None and served.error is not None and "no trained run" in served.error
    with pytest.raises(DiffkitError, match="no trained run"):
        h.sample(served, class_choice=h.UNCONDITIONAL, cfg=1, sampler="ddim", steps=2, seed=0, num=1)
    assert h.class_choices(served) == [h.UNCONDITIONAL]
    assert served.served_paths == [str(tmp_path / "work")]


def test_sample_grid_zip_and_timing(app: h.AppRun) -> None:
    out = h.sample(app, class_choice=h.ALL_CLASSES, cfg=2.0, sampler="ddim", steps=3, seed=0, num=2)
    assert size(out.grid) == ((2 * 30 + 2) * 2, (4 * 30 + 2) * 2)  # a row per class (4), 2 per row, scale 2
    assert not_blank(out.grid)
    with zipfile.ZipFile(out.archive) as z:
        assert sorted(z.namelist()) == [*(f"{i:05d}.png" for i in range(1, 9)), "grid.png"]
    assert out.nfe == 3 and out.seconds > 0 and "NFE 3" in out.info and "8 images" in out.info
    one = h.sample(app, class_choice="2", cfg=3.0, sampler="dpm++2m", steps=2, seed=1, num=4)
    assert size(one.grid) == ((2 * 30 + 2) * 2, (2 * 30 + 2) * 2)  # 4 images of one class: a 2x2 grid
    free = h.sample(app, class_choice=h.UNCONDITIONAL, cfg=5.0, sampler="euler", steps=2, seed=1, num=3)
    assert "guidance 1" in free.info  # unconditional: no guidance to apply


def test_sample_bad_input(app: h.AppRun, runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DiffkitError, match="out of range"):
        h.sample(app, class_choice="7", cfg=1, sampler="ddim", steps=2, seed=0, num=1)
    with pytest.raises(DiffkitError, match="unknown sampler"):
        h.sample(app, class_choice="1", cfg=1, sampler="nope", steps=2, seed=0, num=1)
    with pytest.raises(DiffkitError, match="steps"):
        h.sample(app, class_choice="1", cfg=1, sampler="ddim", steps=0, seed=0, num=1)
    sr = h.open_app(runs["sr"], workdir=tmp_path, device="cpu")
    assert "super-resolution" in h.describe(sr)
    with pytest.raises(DiffkitError, match="super-resolution model"):
        h.sample(sr, class_choice=h.UNCONDITIONAL, cfg=1, sampler="ddim", steps=2, seed=0, num=1)


def test_watch_frames_side_by_side(app: h.AppRun) -> None:
    out = h.watch(app, class_choice="1", cfg=2.0, sampler="ddim", steps=3, seed=0, frames=11)
    assert out.states == [0, 1, 2, 3] and len(out.frames) == 4  # at most steps + 1 frames
    assert size(out.frames[0]) == ((2 * 30 + 2) * 8, (30 + 2) * 8)  # x_t | x̂0, enlarged 8 times
    assert all(not_blank(p) for p in out.frames)
    assert "starting noise" in out.caption(0) and "finished image" in out.caption(3)
    with Image.open(out.gif) as gif:
        assert gif.n_frames >= 4
    with pytest.raises(DiffkitError, match="one image"):
        h.watch(app, class_choice=h.ALL_CLASSES, cfg=2.0, sampler="ddim", steps=3, seed=0, frames=4)


def test_compare_rows(app: h.AppRun) -> None:
    out = h.compare(app, samplers=["ddim", "heun"], steps="2,3", num=4, class_choice=h.ALL_CLASSES, cfg=2.0, seed=0)
    rows = [line for line in out.table.splitlines()[2:]]
    assert [r.split("|")[1].strip() for r in rows] == ["ddim", "ddim", "heun", "heun"]
    assert [int(r.split("|")[3]) for r in rows] == [2, 3, 3, 5]  # NFE: Heun costs two evaluations a step
    assert json.loads(out.report.read_text())["num"] == 4 and not_blank(out.picture)
    with pytest.raises(DiffkitError, match="comma-separated"):
        h.compare(app, samplers=["ddim"], steps="ten", num=2, class_choice="1", cfg=1, seed=0)
    with pytest.raises(DiffkitError, match="at least one sampler"):
        h.compare(app, samplers=[], steps="2", num=2, class_choice="1", cfg=1, seed=0)


def test_inpaint_shapes_drawn_and_uploaded_masks(app: h.AppRun, tmp_path: Path) -> None:
    source, sentence = h.digit_source(app)
    assert source == "synthetic:train" and "training set" in sentence
    digit = h.load_digit(app, 3)
    assert digit.image.shape == (1, 1, 28, 28) and digit.label is not None
    assert size(digit.preview) == (280, 280)
    out = h.inpaint_image(
        app, digit, mask_choice="center", methods=["replace", "repaint", "sds"], sampler="ddim", steps=3, seed=0,
        iterations=10,
    )  # fmt: skip
    assert set(out.scores) == {"replace", "repaint", "sds"} and "PSNR" in out.table and not_blank(out.figure)
    layer = np.zeros((280, 280, 4), np.uint8)
    layer[0:140, 0:140, 3] = 255  # the top-left quarter painted over
    mask = h.drawn_mask([layer], 28)
    assert mask.shape == (1, 1, 28, 28) and int((mask == 0).sum()) == 14 * 14
    drawn = h.inpaint_image(app, digit, mask_choice=h.DRAWN, layers=[layer], methods=["replace"], sampler="ddim",
                            steps=2, seed=0)  # fmt: skip
    assert "196 pixels" in drawn.table
    with pytest.raises(DiffkitError, match="nothing is drawn"):
        h.inpaint_image(
            app, digit, mask_choice=h.DRAWN, layers=[], methods=["replace"], sampler="ddim", steps=2, seed=0
        )
    with pytest.raises(DiffkitError, match="not square"):
        h.drawn_mask([np.full((100, 200, 4), 255, np.uint8)], 28)
    wrong = tmp_path / "mask.png"
    Image.new("L", (32, 32), 0).save(wrong)
    with pytest.raises(DiffkitError, match="28x28"):
        h.inpaint_image(app, digit, mask_choice=h.UPLOADED, mask_file=wrong, methods=["replace"], sampler="ddim",
                        steps=2, seed=0)  # fmt: skip
    with pytest.raises(DiffkitError, match="load a test image"):
        h.inpaint_image(app, None, mask_choice="center", methods=["replace"], sampler="ddim", steps=2, seed=0)


def test_inpaint_uploads(app: h.AppRun, tmp_path: Path) -> None:
    picture = tmp_path / "big.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(picture)
    upload = h.load_upload(app, picture)
    assert upload.image.shape == (1, 1, 28, 28) and upload.label is None and "converted" in upload.what
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DiffkitError, match="not an image file"):
        h.load_upload(app, broken)
    with pytest.raises(DiffkitError, match="outside"):
        h.load_digit(app, 10_000)


def test_interpolate_classes_and_seeds(app: h.AppRun) -> None:
    common = dict(seed_a=0, seed_b=1, frames=5, steps=2, cfg=2.0, seed=0)
    out = h.interpolate(app, mode="classes", class_a="0", class_b="3", seed_class=None, **common)
    assert len(out.frames) == 5 and out.positions[0] == 0 and out.positions[-1] == 1
    assert size(out.frames[0]) == (280, 280) and not_blank(out.strip)
    assert "position 0.50" in out.caption(2)
    seeds = h.interpolate(app, mode="seeds", class_a="0", class_b="0", seed_class="1", **common)
    assert "seed 0 → seed 1, class 1" in seeds.info
    with pytest.raises(DiffkitError, match="two classes"):
        h.interpolate(app, mode="classes", class_a=h.UNCONDITIONAL, class_b="1", seed_class=None, **common)


def test_run_overview(app: h.AppRun) -> None:
    out = h.overview(app)
    assert out.curves is not None and out.curves.is_file()
    assert out.grids and all(p.is_file() for p, _ in out.grids)
    assert "[model]" in out.config and "step 7" in out.summary
    assert "diffusion process vp: T = 100, predicts eps" in out.summary
    # the run is shared by the session: another module's sweep may already be in it
    if not list((app.require().root / "eval").glob("*/guidance_sweep.png")):
        assert out.sweep is None and "No FID-vs-guidance sweep" in out.sweep_text
    folder = app.require().root / "eval" / "fid-ddim-3-n10-seed0"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(folder / "guidance_sweep.png")
    # fid.json rows say "cfg"; reports written before that said "guidance", and still read
    rows = [{"guidance": 1.0, "fid": 30.5}, {"cfg": 2.0, "fid": 20.25, "class_accuracy": 0.9}]
    (folder / "fid.json").write_text(json.dumps({"feature_net": "digits", "rows": rows}))
    out = h.overview(app)
    assert out.sweep == folder / "guidance_sweep.png"
    assert "| 1.0 | 30.5 |" in out.sweep_text and "| 2.0 | 20.25 | 0.9 |" in out.sweep_text


def test_ui_builds_and_guards(app: h.AppRun, tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    from diffkit.app import ui

    assert ui.build(app) is not None
    assert ui.build(h.open_app(None, workdir=tmp_path, runs_dir=tmp_path / "none")) is not None
    _, message = ui._guard(1, lambda: (_ for _ in ()).throw(DiffkitError("bad\n  input")))
    assert "bad input" in message and "Traceback" not in message
    _, message = ui._guard(1, lambda: (_ for _ in ()).throw(ZeroDivisionError("division by zero")))
    assert "unexpected error (ZeroDivisionError)" in message


def test_app_command_without_gradio(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffkit.cli.webapp as webapp

    real = webapp.importlib.util.find_spec
    monkeypatch.setattr(webapp.importlib.util, "find_spec", lambda name: None if name == "gradio" else real(name))
    code, _, err = cli("app")
    assert code == 2 and err.strip() == webapp.INSTALL_HINT and "pip install 'diffkit[app]'" in err


def test_other_commands_do_not_import_gradio() -> None:
    code = "import sys; from diffkit.cli import app; print('gradio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "False"


# ------------------------------------------------------------------ the page's rough edges (issue 19)


def test_sampling_reports_every_step(app: h.AppRun) -> None:
    heard: list[tuple[int, int, str]] = []
    h.sample(
        app, class_choice="1", cfg=2.0, sampler="ddim", steps=3, seed=0, num=2, progress=lambda *a: heard.append(a)
    )
    assert [(d, t) for d, t, _ in heard] == [(1, 3), (2, 3), (3, 3)]
    assert heard[-1][2] == "step 3 of 3"
    heard.clear()
    h.watch(
        app,
        class_choice="2",
        cfg=2.0,
        sampler="dpm++2m",
        steps=4,
        seed=0,
        frames=3,
        progress=lambda *a: heard.append(a),
    )
    assert [d for d, _, _ in heard] == [1, 2, 3, 4]


def test_bad_numbers_are_refused_not_clamped(app: h.AppRun) -> None:
    common = dict(class_choice="1", cfg=2.0, sampler="ddim", num=1)
    with pytest.raises(DiffkitError, match="steps must be >= 1"):
        h.sample(app, steps=0, seed=0, **common)
    with pytest.raises(DiffkitError, match=r"--steps 99999 is out of range: use 1 to 100"):
        h.sample(app, steps=99_999, seed=0, **common)
    with pytest.raises(DiffkitError, match="seed must be >= 0"):
        h.sample(app, steps=2, seed=-1, **common)


def test_inpaint_methods_side_by_side(app: h.AppRun) -> None:
    digit = h.load_digit(app, 1)
    out = h.inpaint_image(
        app, digit, mask_choice="center", methods=["replace", "repaint"], sampler="ddim", steps=2, seed=0
    )
    width, height = size(out.figure)
    assert width == (5 * 30 + 2) * 6 and height < width / 3  # original, mask, masked input and two methods in a row


def test_page_messages_hide_server_paths_and_frames_count_from_one(app: h.AppRun) -> None:
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    from diffkit.app import ui

    where = "/tmp/diffkit-app-x1y2/gradio/" + "ab" * 32 + "/notanimage.png"
    message = ui._error(f"{where} is not an image file diffkit can read: give a PNG or JPEG")
    assert "notanimage.png is not an image file" in message and "/tmp" not in message and "gradio" not in message
    out = h.watch(app, class_choice="1", cfg=2.0, sampler="ddim", steps=4, seed=0, frames=5)
    frame, caption = ui._show_frame(out, 4)  # the slider's 4th position
    assert frame == str(out.frames[3]) and caption.startswith("frame 4 of 5")
    assert ui._show_frame(out, 1)[1].startswith("frame 1 of 5") and "starting noise" in ui._show_frame(out, 1)[1]


def test_the_run_tab_does_not_repeat_the_header_and_sweeps(app: h.AppRun) -> None:
    out = h.overview(app)
    assert "run **" not in out.summary and "step 7" in out.summary and "precision" in out.summary
    plot, text = h.sweep(app, 20)
    assert plot.is_file() and size(plot)[0] > 400
    assert [line.split("|")[1].strip() for line in text.splitlines()[4:]] == ["0.0", "1.0", "2.0", "3.0", "5.0"]
    with pytest.raises(DiffkitError, match="images per scale"):
        h.sweep(app, 0)
