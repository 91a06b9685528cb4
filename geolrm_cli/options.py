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
DEVICE = typer.Option(
    "auto", "--device", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda[:N] or mps."
)

MESH = typer.Option(
    False,
    "--mesh",
    help="Also write mesh.glb (TSDF fusion; surface the input views never saw is "
    "membrane-filled). Same as `geolrm mesh OUT/model.ply` afterwards.",
)
MESH_RESOLUTION = typer.Option(
    256, "--mesh-resolution", min=16, max=1024, help="Mesh TSDF voxels along the object's box."
)
TEXTURE = typer.Option(
    False,
    "--texture",
    help="UV-unwrap mesh.glb and bake a texture map from the renders (implies --mesh).",
)
TEXTURE_SIZE = typer.Option(
    1024, "--texture-size", min=16, max=8192, help="Texture side in pixels (--texture)."
)
