"""Options shared by several commands (one definition, the same help everywhere).

Defaults come from the library's config dataclasses (:mod:`pipelines.defaults`,
:mod:`pipelines.options`); ``tests/test_cli_defaults.py`` checks that every command's default
equals its dataclass field.
"""

from __future__ import annotations

from enum import Enum

import typer

from pipelines.defaults import (
    DEFAULT_TEXTURE_SIZE,
    MIN_OPACITY,
    SEED,
    MeshConfig,
    TurntableConfig,
)

_TURNTABLE = TurntableConfig()
_MESH = MeshConfig()


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

# -- GeoLRM (recon, gen) -------------------------------------------------------------------

MIN_OPACITY_OPTION = typer.Option(
    MIN_OPACITY,
    "--min-opacity",
    help="Drop GeoLRM's Gaussians below this opacity before saving and rendering, as the "
    "official scripts do; 0 keeps all.",
)
OFFICIAL_CAMERAS = typer.Option(
    False,
    "--official-cameras",
    help="sv3d views: frame i at azimuth i*360/21 as GeoLRM's official script assigns "
    "(reproduces its output, rotated 17.14 deg about z), instead of (i+1)*360/21, the "
    "azimuths SV3D generated the frames at.",
)


def seed_option(help: str) -> typer.models.OptionInfo:
    """``--seed`` (default :data:`pipelines.defaults.SEED`) with a command's own help."""
    return typer.Option(SEED, "--seed", help=help)


# -- the turntable (recon, gen) ------------------------------------------------------------

VIDEO = typer.Option(True, "--video/--no-video", help="Write turntable.mp4.")
VIDEO_FRAMES = typer.Option(_TURNTABLE.frames, "--video-frames", min=1, help="Turntable frames.")
VIDEO_RESOLUTION = typer.Option(
    _TURNTABLE.resolution, "--video-resolution", min=16, max=4096, help="Turntable size in pixels."
)
FPS = typer.Option(_TURNTABLE.fps, "--fps", min=1, help="Turntable frame rate.")

# -- the mesh (recon, gen, mesh) -----------------------------------------------------------

MESH = typer.Option(
    False,
    "--mesh",
    help="Also write mesh.glb (TSDF fusion; surface the input views never saw is "
    "membrane-filled). Same as `geolrm mesh OUT/model.ply` afterwards.",
)
MESH_RESOLUTION = typer.Option(
    _MESH.resolution,
    "--mesh-resolution",
    min=16,
    max=1024,
    help="Mesh TSDF voxels along the object's box.",
)
TEXTURE = typer.Option(
    False,
    "--texture",
    help="UV-unwrap mesh.glb and bake a texture map from the renders (implies --mesh).",
)
TEXTURE_SIZE = typer.Option(
    DEFAULT_TEXTURE_SIZE,
    "--texture-size",
    min=16,
    max=8192,
    help="Texture side in pixels (--texture).",
)

# --------------------------------------------------------------------------- local servers
HOST = typer.Option(
    "127.0.0.1", "--host", help="Interface to bind; anything but 127.0.0.1 exposes it."
)
PORT = typer.Option(0, "--port", min=0, max=65535, help="TCP port (0: a free one).")

# -- many inputs (gen, recon) ----------------------------------------------------------------

OVERWRITE = typer.Option(
    False, "--overwrite", help="Folder input: redo inputs whose outputs already exist."
)
RAY = typer.Option(
    False,
    "--ray",
    help="Folder input: spread the inputs over a Ray cluster (RAY_ADDRESS, else a local Ray), "
    "one worker per GPU; needs pip install 'geolrm[ray]'.",
)
RAY_ADDRESS = typer.Option(
    None, "--ray-address", help="With --ray: the cluster to connect to (default: RAY_ADDRESS)."
)
RAY_CPUS = typer.Option(
    None,
    "--ray-cpus-per-worker",
    min=1,
    help="With --ray: CPU workers with N cores each instead of one worker per GPU.",
)
WORKERS = typer.Option(
    None,
    "--workers",
    min=1,
    help="With --ray: number of workers (default: one per GPU, or CPUs // cores per worker).",
)
