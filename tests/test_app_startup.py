"""`diffkit app` at its edges: an explicit --run that is not a run, a network-wide --host, the upload
size limit, and SIGTERM removing the app's temporary folder (uploads included), as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REPO, one_line_error

pytest.importorskip("gradio")


def test_explicit_run_that_is_not_a_run(cli, tmp_path: Path) -> None:
    one_line_error(cli("app", "--run", str(tmp_path / "nope")), "is not a diffkit run")


def test_network_host_warns_and_uploads_are_limited(cli, tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradio

    launched: dict[str, object] = {}
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kw: launched.update(kw))
    code, out, err = cli("app", "--run", str(tiny_run), "--host", "0.0.0.0", "--device", "cpu")
    assert code == 0, err
    assert "reachable from the network" in " ".join(out.split())
    assert launched["server_name"] == "0.0.0.0" and launched["max_file_size"] == "32mb"


def _app_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("diffkit-app-*"))


def test_sigterm_removes_the_temp_folder(tiny_run: Path) -> None:
    before = _app_dirs()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffkit", "app", "--run", str(tiny_run), "--port", "7931", "--device", "cpu"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (_app_dirs() - before) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    made = _app_dirs() - before
    assert made, proc.communicate()[0] if proc.poll() is not None else "no temp folder appeared"
    time.sleep(3)  # into the server's loop
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert not any(p.exists() for p in made)
