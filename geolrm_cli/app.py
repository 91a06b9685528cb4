"""The ``geolrm`` command: a thin Typer layer over :mod:`pipelines`.

Each subcommand lives in ``geolrm_cli/commands/<name>.py``; it parses options, shows progress
and calls library functions. Heavy libraries (torch, transformers, rembg, ...) are imported
inside the command bodies so that ``geolrm --help`` answers instantly.
"""

from __future__ import annotations

import sys

import typer

from geolrm_cli.commands import render as _render

app = typer.Typer(
    name="geolrm",
    help=(
        "Turn one photo, or a set of posed photos, into a 3D asset (3D Gaussians, meshes, videos) "
        "with GeoLRM.\n\n"
        "Examples:\n\n"
        "  geolrm render examples/spot_gaussians.ply --video -o turntable.mp4\n\n"
        "Run `geolrm COMMAND --help` for the options of each command."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

app.command("render", help=_render.__doc__, no_args_is_help=True)(_render.render)


def main() -> None:
    """Console-script entry point: one-line errors with exit code 2 for bad input."""
    from geolrm_cli.console import run_cli

    sys.exit(run_cli(app))


if __name__ == "__main__":
    main()
