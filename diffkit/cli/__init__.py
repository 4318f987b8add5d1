"""The `diffkit` command: a Typer app whose commands parse, build settings, call the library, and render."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import typer

from diffkit import __version__
from diffkit.atomic import disk_error

# not cli/app.py: a submodule named `app` would replace the Typer `app` here
from diffkit.cli import compare, distill, fid, inpaint, interpolate, presets, sample, schedules, superres, train, webapp
from diffkit.distributed import launched_rank
from diffkit.errors import DiffkitError

app = typer.Typer(
    name="diffkit",
    help="Train, sample, compare, edit and evaluate image diffusion models.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"diffkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """diffkit: image diffusion models for learning, teaching and research."""


# every command, registered once, under the name users type (function names: <name>_command)
COMMANDS: dict[str, Callable[..., None]] = {
    "train": train.train_command,
    "distill": distill.distill_command,
    "sample": sample.sample_command,
    "compare-samplers": compare.compare_samplers_command,
    "plot-schedules": schedules.plot_schedules_command,
    "inpaint": inpaint.inpaint_command,
    "interpolate": interpolate.interpolate_command,
    "super-res": superres.super_res_command,
    "fid": fid.fid_command,
    "presets": presets.presets_command,
    "app": webapp.app_command,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


def main() -> None:
    """Console entry point: user errors (bad flags too) become one line on stderr and exit code 2."""
    from typer._click import exceptions as click  # typer's own click (typer.BadParameter's module)

    from diffkit.settings import warn_unknown_environment

    for name in warn_unknown_environment():
        print(f"diffkit: warning: {name} is not a setting diffkit reads (misspelt?); it is ignored", file=sys.stderr)
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.NoArgsIsHelpError as exc:  # bare `diffkit` or `diffkit CMD`: the help, as before
        exc.show()
        sys.exit(2)
    except click.ClickException as exc:  # typer's boxed usage errors, as one line naming the fix
        ctx = getattr(exc, "ctx", None)
        where = f"diffkit {ctx.info_name}" if ctx is not None and ctx.parent is not None else "diffkit"
        message = " ".join(exc.format_message().split())
        print(f"diffkit: error: {message} (see {where} --help)", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("diffkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except DiffkitError as exc:
        if not exc.quiet:
            message = " ".join(str(exc).split())
            rank = launched_rank()  # under torchrun every process may fail; each says which it is
            print(f"diffkit{f' (rank {rank})' if rank else ''}: error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("diffkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # the disk refused a write that was not atomic (an image, a log line): one line too
        refused = disk_error(Path(exc.filename or "a file"), exc, "the files written before it are kept")
        if refused is None:
            raise
        print(f"diffkit: error: {' '.join(str(refused).split())}", file=sys.stderr)
        sys.exit(2)
