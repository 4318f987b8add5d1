"""`diffkit app`: serve an interactive web page over a trained run (needs the `app` extra: gradio)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from diffkit.cli import common as opt
from diffkit.cli.common import console
from diffkit.errors import DiffkitError
from diffkit.runs import is_run

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


INSTALL_HINT = "diffkit app needs the app extra (gradio): pip install 'diffkit[app]'"


def app_command(
    run: opt.RunOption = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (default: this machine only; 0.0.0.0 serves the network).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to serve on.")] = 7860,
    checkpoint: opt.CheckpointOption = None,
    device: opt.DeviceOption = "auto",
) -> None:
    """Serve a local web page over a trained run: sample, watch it denoise, compare, inpaint, interpolate."""
    if importlib.util.find_spec("gradio") is None:  # checked without importing it: other commands stay fast
        print(INSTALL_HINT, file=sys.stderr)
        raise typer.Exit(2)
    if run is not None and not is_run(run):  # an explicit --run must be one; with none, the page says so
        raise DiffkitError(f"--run {run} is not a diffkit run (no config.toml): give a run directory made by train")
    if host not in LOOPBACK:
        console.print(
            f"[yellow]warning:[/yellow] --host {host} makes the page reachable from the network, by anyone who "
            "can reach this machine (it has no login); use 127.0.0.1 to keep it to this machine"
        )
    workdir = Path(tempfile.mkdtemp(prefix="diffkit-app-"))
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the finally below removes the uploads, as Ctrl-C does
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workdir / "gradio"))
    try:
        from diffkit.app.handlers import open_app

        served = open_app(run, workdir=workdir, checkpoint=checkpoint or "best", device=device)
        if served.loaded is None:
            console.print(f"[yellow]no run to serve:[/yellow] {served.error} (the page says so too)")
        else:
            console.print(f"serving [bold]{served.loaded.root}[/bold] ({served.loaded.checkpoint.name})")
        console.print(f"open [bold]http://{host}:{port}[/bold] in a browser; Ctrl-C stops the server")
        from diffkit.app.ui import serve

        serve(served, host=host, port=port)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
