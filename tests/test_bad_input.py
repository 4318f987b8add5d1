# ruff: noqa: E501  (the case table reads best one case a line)
"""Hostile and mistaken input across every command: one line on stderr, exit 2, no traceback, nothing changed.

Each case runs the real entry point in a working directory holding a copy of a tiny trained run and a
few hostile files; the whole tree is hashed before and after, so a case that writes, replaces or
deletes anything fails, as does one that succeeds, crashes or prints more than one line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffkit.runlock import RunLock, SharedRunLock
from diffkit.settings import load_settings, parse_overrides
from diffkit.training import train_run

TINY = ["--set", "data.limit=64", "--set", "train.batch_size=8", "--set", "train.threads=1"]
PNG_HEADER = b"\x89PNG\r\n\x1a\n"


class Payload:
    """Unpickling this would run a command: a hostile resume state."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad") / "tiny"
    settings = load_settings(
        "tiny",
        parse_overrides(
            ["data.limit=64", "train.batch_size=8", "train.max_steps=3", "train.threads=1", "sample.steps=2"]
        ),
    )
    train_run(settings, root, stop_after=2)  # resumable: last.state.pt is there
    return root


def _files(here: Path) -> None:
    """The hostile and ordinary files the cases point at."""
    (here / "a-file").write_text("not a directory\n")
    (here / "text.png").write_text("this is text, not a PNG\n")
    (here / "truncated.png").write_bytes(PNG_HEADER + b"\x00\x00\x00\rIHDR" + b"\x00" * 5)
    (here / "latin1.toml").write_bytes("description = 'caf\xe9'\n".encode("latin-1"))
    (here / "bad.toml").write_text("[model\nbase_channels = 8\n")
    (here / "stats.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 40)  # a zip header, then nothing
    (here / "text.npz").write_text("mu, sigma\n")
    (here / "existing.npz").write_bytes(b"precious")
    (here / "junk.safetensors").write_bytes(b"\x00" * 64)
    (here / "notrun").mkdir()
    (here / "notrun" / "keep.txt").write_text("precious\n")
    bad = {"model.w": torch.tensor([float("nan")]), "ema.w": torch.tensor([1.0])}
    save_file(bad, str(here / "nan.safetensors"))
    raw = zlib.compress(b"\x00" * 8)
    (here / "big.png").write_bytes(_png(5_000, 5_000, raw))  # 25 megapixels, in a few bytes
    (here / "nested.toml").write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    import numpy as np

    np.savez(here / "nan.npz", mu=np.array([np.nan, 0.0]), sigma=np.eye(2))
    (here / "one" / "a").mkdir(parents=True)
    (here / "one" / "a" / "0.png").write_bytes((here / "text.png").read_bytes())
    from PIL import Image

    Image.new("L", (28, 28), 128).save(here / "one" / "a" / "0.png")


def _png(width: int, height: int, data: bytes) -> bytes:
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_HEADER + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _state(run: Path, value: object) -> None:
    torch.save(value, run / "checkpoints" / "last.state.pt")


def _nan_last(run: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(run / "checkpoints" / "last.safetensors"))
    first = next(k for k, v in tensors.items() if v.dtype.is_floating_point)
    tensors[first] = tensors[first] * float("nan")
    save_file(tensors, str(run / "checkpoints" / "last.safetensors"), metadata={"diffkit": '{"step": 2}'})


def _int_weights(run: Path) -> None:
    """A checkpoint whose float weights were cast to integers (its metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = run / "checkpoints" / "last.safetensors"  # `best` falls back to it: this run has no validation yet
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file({k: v.round().to(torch.int32) for k, v in load_file(str(path)).items()}, str(path), metadata=meta)


def _plan(run: Path, text: str) -> None:
    (run / "plan.json").write_text(text)


def _config(run: Path, data: bytes) -> None:
    (run / "config.toml").write_bytes(data)


R = "tiny"  # the run's folder in the working directory
S = ["sample", "--run", R, "--num", "1", "--steps", "2"]
Setup = Callable[[Path], object] | None

# (id, command line, fragments of the one error line, setup applied to the run copy first)
CASES: list[tuple[str, list[str], list[str], Setup]] = [
    # flags beyond the settings' own limits (finite numbers, ranges)
    ("sample-cfg-negative", [*S, "--cfg", "-5"], ["--cfg -5.0", "sample.cfg"], None),
    ("sample-cfg-nan", [*S, "--cfg", "nan"], ["--cfg nan"], None),
    ("sample-cfg-inf", [*S, "--cfg", "inf"], ["--cfg inf"], None),
    ("sample-eta-out-of-range", [*S, "--eta", "2"], ["--eta"], None),
    ("sample-steps-zero", ["sample", "--run", R, "--steps", "0"], ["--steps 0"], None),
    ("sample-batch-size-zero", [*S, "--batch-size", "0"], ["--batch-size"], None),
    ("sample-rescale-nan", [*S, "--rescale", "nan"], ["--rescale"], None),
    ("inpaint-cfg-negative", ["inpaint", "--run", R, "--class", "0", "--cfg", "-1"], ["--cfg -1.0"], None),
    ("interpolate-cfg-nan", ["interpolate", "--run", R, "--classes", "0", "1", "--cfg", "nan"], ["--cfg"], None),
    ("compare-cfg-inf", ["compare-samplers", "--run", R, "--cfg", "inf"], ["--cfg inf"], None),
    ("compare-steps-zero", ["compare-samplers", "--run", R, "--steps", "0,10"], ["--steps 0"], None),
    ("compare-eta-negative", ["compare-samplers", "--run", R, "--samplers", "ddim", "--eta", "-1"], ["--eta"], None),
    ("fid-cfg-nan-in-sweep", ["fid", f"run:{R}", "mnist:test", "--cfg", "1,nan"], ["--cfg nan"], None),
    ("super-res-steps-zero", ["super-res", "--run", R, "--from", "synthetic:test:0..1", "--steps", "0"], ["--steps"], None),
    ("train-lr-nan", ["train", "--preset", "tiny", "--run-dir", "new", "--set", "train.lr=nan", *TINY], ["train.lr"], None),
    ("train-grad-clip-inf", ["train", "--preset", "tiny", "--run-dir", "new", "--set", "train.grad_clip=inf", *TINY], ["grad_clip"], None),
    ("train-wrong-type", ["train", "--preset", "tiny", "--run-dir", "new", "--set", "train.batch_size='x'"], ["batch_size"], None),
    ("train-unknown-optimizer", ["train", "--preset", "tiny", "--run-dir", "new", "--set", "train.optimizer='sgd'", *TINY], ["train.optimizer", "muon"], None),
    ("train-muon-lr-zero", ["train", "--preset", "tiny", "--run-dir", "new", "--set", "train.muon_lr=0", *TINY], ["train.muon_lr"], None),
    # sizes that multiply memory
    ("sample-too-many-images", ["sample", "--run", R, "--num", "6000", "--steps", "2"], ["too large", "--export-dir"], None),
    ("sample-process-too-many", ["sample", "--run", R, "--num", "1000", "--steps", "20", "--process"], ["images x frames"], None),
    ("interpolate-too-many-frames", ["interpolate", "--run", R, "--seeds", "1", "2", "--frames", "100000"], ["--frames"], None),
    ("inpaint-huge-image", ["inpaint", "--run", R, "--image", "big.png"], ["larger than"], None),
    ("compare-too-many-images", ["compare-samplers", "--run", R, "--samplers", "ddim", "--steps", "1", "--num", "1000000"], ["too large", "GiB", "lower --num"], None),
    ("fid-too-many-run-samples", ["fid", f"run:{R}", "synthetic:test", "--num", "200000"], ["--num 200,000", "at most 100,000"], None),
    # outputs that exist and are not folders, or would be replaced: checked before the work
    ("sample-out-is-a-file", [*S, "--out", "a-file"], ["not a directory"], None),
    ("sample-out-under-a-file", [*S, "--out", "a-file/sub"], ["not a directory"], None),
    ("sample-export-dir-is-a-file", [*S, "--export-dir", "a-file"], ["--export-dir", "not a directory"], None),
    ("inpaint-out-is-a-file", ["inpaint", "--run", R, "--class", "0", "--out", "a-file"], ["not a directory"], None),
    ("interpolate-out-is-a-file", ["interpolate", "--run", R, "--seeds", "1", "2", "--out", "a-file"], ["not a directory"], None),
    ("compare-out-is-a-file", ["compare-samplers", "--run", R, "--out", "a-file"], ["not a directory"], None),
    ("schedules-out-is-a-file", ["plot-schedules", "--out", "a-file"], ["not a directory"], None),
    ("fid-save-stats-exists", ["fid", "mnist:test", "--save-stats", "existing.npz"], ["already exists", "--force"], None),
    ("fid-save-stats-is-a-dir", ["fid", "mnist:test", "--save-stats", "notrun"], ["is a directory"], None),
    ("train-run-dir-is-a-file", ["train", "--preset", "tiny", "--run-dir", "a-file", *TINY], ["not a directory"], None),
    ("train-force-on-non-run", ["train", "--preset", "tiny", "--run-dir", "notrun", "--force", *TINY], ["refusing to delete"], None),
    ("train-exists", ["train", "--preset", "tiny", "--run-dir", R, *TINY], ["already exists"], None),
    # files that are not what they claim
    ("inpaint-text-as-png", ["inpaint", "--run", R, "--image", "text.png"], ["not an image file"], None),
    ("inpaint-truncated-png", ["inpaint", "--run", R, "--image", "truncated.png"], ["not an image file"], None),
    ("inpaint-mask-not-an-image", ["inpaint", "--run", R, "--class", "0", "--mask", "text.png"], ["mask"], None),
    ("interpolate-images-text", ["interpolate", "--run", R, "--images", "text.png", "truncated.png"], ["not an image"], None),
    ("preset-not-utf8", ["train", "--preset", "latin1.toml", "--run-dir", "new"], ["not UTF-8"], None),
    ("preset-bad-toml", ["train", "--preset", "bad.toml", "--run-dir", "new"], ["not valid TOML"], None),
    ("config-not-utf8", [*S], ["not UTF-8"], lambda run: _config(run, b"name = '\xff\xfe'\n")),
    ("config-bad-toml", ["plot-schedules", "--run", R], ["not valid TOML"], lambda run: _config(run, b"[[[")),
    ("checkpoint-junk", [*S, "--checkpoint", "junk.safetensors"], ["corrupt"], None),
    ("checkpoint-nan-weights", [*S, "--checkpoint", "nan.safetensors"], ["non-finite"], None),
    ("fid-broken-zip-npz", ["fid", "stats.npz", "text.npz"], ["npz"], None),
    ("fid-text-npz", ["fid", "text.npz", "stats.npz"], ["npz"], None),
    ("resume-pickle-payload", ["train", "--run-dir", R, "--resume"], ["refused", "would run code"], lambda run: _state(run, {"x": Payload()})),
    ("resume-state-is-a-list", ["train", "--run-dir", R, "--resume"], ["lacks"], lambda run: _state(run, [1, 2, 3])),
    ("resume-state-garbage", ["train", "--run-dir", R, "--resume"], ["cannot be read"], lambda run: (run / "checkpoints" / "last.state.pt").write_bytes(b"\x80\x05garbage")),
    ("resume-state-wrong-optimizer", ["train", "--run-dir", R, "--resume"], ["does not fit"], lambda run: _state(run, {**torch.load(run / "checkpoints" / "last.state.pt", weights_only=True), "optimizer": {"state": {}, "param_groups": []}})),
    ("resume-nan-weights", ["train", "--run-dir", R, "--resume"], ["non-finite"], _nan_last),
    # a run directory another process owns
    # round two (issue 18): numbers past int64, devices, damaged plans, deep TOML, tiny and huge data
    ("sample-seed-past-int64", [*S, "--seed", "18446744073709551616"], ["--seed"], None),
    ("interpolate-seeds-past-int64", ["interpolate", "--run", R, "--seeds", "1", "18446744073709551616"], ["--seeds"], None),
    ("compare-seed-past-int64", ["compare-samplers", "--run", R, "--seed", "18446744073709551616"], ["--seed"], None),
    ("train-seed-past-int64", ["train", "--preset", "tiny", "--run-dir", "new", "--set", "train.seed=18446744073709551616", *TINY], ["train.seed"], None),
    ("sample-device-tpu", [*S, "--device", "tpu"], ["--device tpu", "auto, cpu or cuda"], None),
    ("sample-device-meta", [*S, "--device", "meta"], ["--device meta"], None),
    ("inpaint-device-gpu", ["inpaint", "--run", R, "--class", "0", "--device", "gpu"], ["--device gpu"], None),
    ("resume-plan-wrong-shape", ["train", "--run-dir", R, "--resume"], ["plan.json is damaged"], lambda run: _plan(run, '{"precision": [1, 2]}')),
    ("preset-nested-too-deep", ["train", "--preset", "nested.toml", "--run-dir", "new"], ["nested too deeply"], None),
    ("train-one-image-folder", ["train", "--preset", "tiny", "--run-dir", "new", "--set", "data.dataset='folder'", "--set", "data.path='one'", *TINY], ["1 image", "at least 2"], None),
    ("fid-huge-index-range", ["fid", "synthetic:test:0..10000000000", "synthetic:train"], ["outside"], None),
    ("checkpoint-int-weights", [*S], ["integer tensors"], _int_weights),
    ("fid-nan-statistics", ["fid", "nan.npz", "nan.npz"], ["NaN"], None),
    ("train-max-steps-past-any-run", ["train", "--preset", "tiny", "--run-dir", "new", "--max-steps", str(2**70), *TINY], ["max_steps"], None),
    ("resume-locked-run", ["train", "--run-dir", R, "--resume"], ["in use by another diffkit process"], "lock"),
    ("force-locked-run", ["train", "--preset", "tiny", "--run-dir", R, "--force", *TINY], ["in use"], "lock"),
    # writing inside a run being trained (its lock held exclusively), and training one being written into
    ("sample-into-a-training-run", [*S], ["being trained", "--out DIR outside the run"], "lock"),
    ("export-into-a-training-run", [*S, "--export-dir", f"{R}/export"], ["being trained"], "lock"),
    ("compare-into-a-training-run", ["compare-samplers", "--run", R, "--samplers", "ddim", "--steps", "1"], ["being trained"], "lock"),
    ("interpolate-into-a-training-run", ["interpolate", "--run", R, "--seeds", "1", "2", "--frames", "2"], ["being trained"], "lock"),
    ("fid-into-a-training-run", ["fid", f"run:{R}", "synthetic:test"], ["being trained"], "lock"),
    ("schedules-into-a-training-run", ["plot-schedules", "--run", R], ["being trained"], "lock"),
    ("resume-a-run-being-written-into", ["train", "--run-dir", R, "--resume"], ["in use by another diffkit process"], "shared"),
    ("force-a-run-being-written-into", ["train", "--preset", "tiny", "--run-dir", R, "--force", *TINY], ["in use"], "shared"),
]  # fmt: skip


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".lock":
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root))] = "dir"
    return out


def test_at_least_forty_cases() -> None:
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("args", "fragments", "setup"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(cli, workdir: Path, trained: Path, args: list[str], fragments: list[str], setup: Setup) -> None:
    from test_cli import one_line_error

    run = workdir / R
    shutil.copytree(trained, run)
    _files(workdir)
    held: ExitStack = ExitStack()  # another owner (flock conflicts between open files, even in one process)
    if setup == "lock":
        held.enter_context(RunLock(run))  # a training
    elif setup == "shared":
        held.enter_context(SharedRunLock(run))  # a command writing inside the run
    elif setup is not None:
        setup(run)
    before = _tree(workdir)
    with held:
        result = cli(*args)
    one_line_error(result, *fragments)
    assert "weights_only=False" not in result[2]
    assert _tree(workdir) == before  # nothing written, replaced or removed
    assert not (workdir / "PWNED").exists()  # the hostile state ran no code


def test_long_values_are_cut_and_unknown_variables_warned(cli, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_cli import one_line_error

    huge = "[" + "1," * 2_000_000 + "1]"
    result = cli("train", "--preset", "tiny", "--run-dir", "new", "--set", f"model.channel_mults={huge}", *TINY)
    one_line_error(result, "characters)")
    assert len(result[2]) < 1000  # one line, not 6 MB
    monkeypatch.setenv("DIFFKIT_TRIAN__LR", "3")
    code, _, err = cli("train", "--preset", "tiny", "--run-dir", "new", "--set", "train.lr=nan", *TINY)
    assert code == 2 and "DIFFKIT_TRIAN__LR is not a setting diffkit reads" in err


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from diffkit.data.images import decode_image

    path = tmp_path / "grey16.png"
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16)).save(path)  # black, mid-grey, white
    assert Image.open(path).mode.startswith("I")
    for mode in ("L", "RGB"):
        pixels, found = decode_image(path, mode, "unreadable")
        assert pixels.reshape(3, -1)[:, 0].tolist() == [0, 128, 255] and "3x1" in found
