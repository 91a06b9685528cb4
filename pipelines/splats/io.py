"""Read / write Gaussians by file extension (``.ply`` or ``.splat``)."""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines.errors import InputError
from pipelines.splats.gaussians import Gaussians
from pipelines.splats.ply import load_ply, save_ply
from pipelines.splats.splat import load_splat, save_splat

FORMATS = (".ply", ".splat")


def load_gaussians(path: str | Path, assume_up: str = "-y", quiet: bool = False) -> Gaussians:
    """Load Gaussians into geolrm's z-up world from ``.ply`` or ``.splat``.

    Args:
        path: the file.
        assume_up: up axis for files that do not record their frame.
        quiet: do not mention format conversions on stderr.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        loaded = load_ply(path, assume_up=assume_up)
        if loaded.activated and not quiet:
            print(
                f"note: {path.name} uses the GeoLRM repository's activated-value layout; converted",
                file=sys.stderr,
            )
        return loaded.gaussians
    if suffix == ".splat":
        return load_splat(path, up=assume_up)
    raise InputError(
        f"{path}: unknown Gaussian file type {suffix or '(none)'!r}; use .ply or .splat"
    )


def save_gaussians(path: str | Path, g: Gaussians, up: str | None = "-y") -> Path:
    """Write Gaussians by extension; ``up`` is the file's up axis (None keeps coordinates)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        return save_ply(path, g, up=up)
    if suffix == ".splat":
        return save_splat(path, g, up=up or "z")
    raise InputError(
        f"{path}: unknown Gaussian file type {suffix or '(none)'!r}; use .ply or .splat"
    )
