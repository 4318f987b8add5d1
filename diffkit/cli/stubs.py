"""Commands of the design that are not built yet: each says so plainly and exits with code 2."""

from __future__ import annotations

import typer

from diffkit.errors import DiffkitError

NOT_BUILT = {
    "interpolate": "interpolation between classes, seeds or images",
    "inpaint": "inpainting with replace / RePaint / SDS",
    "super-res": "SR3-style super-resolution",
    "fid": "FID / KID / class accuracy",
    "plot-schedules": "noise schedule plots",
    "compare-samplers": "side-by-side sampler comparison",
}


def register(app: typer.Typer) -> None:
    registered = {c.name for c in app.registered_commands}
    for name, what in NOT_BUILT.items():
        if name in registered:
            continue

        def stub(ctx: typer.Context, _what: str = what, _name: str = name) -> None:
            raise DiffkitError(f"`diffkit {_name}` ({_what}) is not built yet in this version of diffkit")

        app.command(
            name,
            help=f"NOT BUILT YET: {what}.",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )(stub)
