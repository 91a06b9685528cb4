"""Options shared by several commands (one definition, the same help everywhere)."""

from __future__ import annotations

from enum import Enum

import typer


class Up(str, Enum):
    """Up axis of a Gaussian file."""

    minus_y = "-y"
    y = "y"
    z = "z"


ASSUME_UP = typer.Option(
    Up.minus_y,
    "--up",
    help="Up axis of PLY files whose header does not record it (3DGS habit: -y). "
    "geolrm's own files record their frame.",
)
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")
