"""The ``geolrm`` command: a thin Typer layer over :mod:`pipelines`.

Each subcommand lives in ``geolrm_cli/commands/<name>.py``; it parses options, shows progress
and calls library functions. Heavy libraries (torch, transformers, rembg, ...) are imported
inside the command bodies so that ``geolrm --help`` answers instantly.
"""

from __future__ import annotations

import sys

import typer

from geolrm_cli.commands import app as _app
from geolrm_cli.commands import eval as _eval
from geolrm_cli.commands import gen as _gen
from geolrm_cli.commands import mesh as _mesh
from geolrm_cli.commands import recon as _recon
from geolrm_cli.commands import render as _render
from geolrm_cli.commands import train as _train
from geolrm_cli.commands import view as _view
from geolrm_cli.commands import weights as _weights

app = typer.Typer(
    name="geolrm",
    help=(
        "Turn one photo, or a set of posed photos, into a 3D asset (3D Gaussians, meshes, videos) "
        "with GeoLRM.\n\n"
        "Examples:\n\n"
        "  geolrm gen photo.png -o out/\n\n"
        "  geolrm recon views/ --cameras transforms.json -o out/\n\n"
        "  geolrm render examples/spot/spot.ply --video -o turntable.mp4\n\n"
        "  geolrm train objects/ -o runs/mine --size 224\n\n"
        "  geolrm view out/\n\n"
        "  geolrm app\n\n"
        "Run `geolrm COMMAND --help` for the options of each command."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

app.command("gen", no_args_is_help=True)(_gen.gen)
app.command("recon", no_args_is_help=True)(_recon.recon)
app.command("render", no_args_is_help=True)(_render.render)
app.command("mesh", no_args_is_help=True)(_mesh.mesh)
app.command("eval", no_args_is_help=True)(_eval.eval_cmd)
app.command("train", no_args_is_help=True)(_train.train)
app.command("view", no_args_is_help=True)(_view.view)
app.command("app")(_app.app_cmd)
app.add_typer(_weights.app, name="weights", help=_weights.__doc__)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"geolrm {version('geolrm')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Turn one photo, or a set of posed photos, into a 3D asset with GeoLRM."""


def main() -> None:
    """Console-script entry point: one-line errors with exit code 2 for bad input."""
    from pipelines.device import enable_mps_fallback

    enable_mps_fallback()  # before torch is imported: torch reads it once, at import
    from geolrm_cli.console import run_cli

    sys.exit(run_cli(app))


if __name__ == "__main__":
    main()
