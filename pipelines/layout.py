"""The output layout: the file names ``recon`` and ``gen`` write, and that ``eval``, ``mesh``
and ``render`` look for, defined once (no imports beyond the standard library, so the CLI's
option defaults can read it without slowing ``geolrm --help``).

A ``recon`` output folder::

    model.ply          the Gaussians (standard 3DGS layout, the input cameras' frame)
    cameras.json       the cameras used (nerfstudio transforms, same frame)
    model_frame.json   the similarity from that frame to GeoLRM's model frame
    raw.safetensors    with --save-raw: anchors, occupancy logits, raw Gaussians (model frame)
    turntable.mp4      unless --no-video (model frame, z-up)
    mesh.glb           with --mesh

A ``gen`` output folder holds the same files and, before them, the images it generated::

    input.png          the framed photo
    views.png          every generated view in one sheet
    views/             the views GeoLRM used, with their cameras in views/transforms.json
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CAMERAS",
    "GEN_NAMES",
    "MESH",
    "MODEL",
    "PHOTO",
    "RAW",
    "RECON_NAMES",
    "SHEET",
    "TRANSFORM",
    "VIDEO",
    "VIEWS",
    "VIEWS_CAMERAS",
    "gen_finished",
    "recon_finished",
    "recon_names",
]

MODEL = "model.ply"
CAMERAS = "cameras.json"
TRANSFORM = "model_frame.json"
RAW = "raw.safetensors"
VIDEO = "turntable.mp4"
MESH = "mesh.glb"
PHOTO = "input.png"
SHEET = "views.png"
VIEWS = "views"
#: The generated views' cameras (``geolrm recon OUT/views`` reads it).
VIEWS_CAMERAS = f"{VIEWS}/transforms.json"

#: Everything ``recon`` may write, in the order it writes them.
RECON_NAMES = (MODEL, CAMERAS, TRANSFORM, RAW, VIDEO, MESH)
#: Everything ``gen`` may write into an output folder.
GEN_NAMES = (PHOTO, SHEET, VIEWS, MODEL, CAMERAS, TRANSFORM, VIDEO, MESH)


def recon_names(save_raw: bool = False, video: bool = True, mesh: bool = False) -> list[str]:
    """The files ``recon`` writes with these switches, in :data:`RECON_NAMES` order."""
    skip = {RAW: not save_raw, VIDEO: not video, MESH: not mesh}
    return [n for n in RECON_NAMES if not skip.get(n, False)]


def _complete(out_dir: str | os.PathLike, names: list[str]) -> bool:
    return all((Path(out_dir) / n).exists() for n in names)


def gen_finished(out_dir: str | os.PathLike, mesh: bool = False, video: bool = True) -> bool:
    """True when ``out_dir`` holds a complete ``gen`` output."""
    need = [MODEL, PHOTO, SHEET, VIEWS_CAMERAS]
    need += [VIDEO] if video else []
    need += [MESH] if mesh else []
    return _complete(out_dir, need)


def recon_finished(
    out_dir: str | os.PathLike, save_raw: bool = False, video: bool = True, mesh: bool = False
) -> bool:
    """True when ``out_dir`` holds every file ``recon`` writes with these switches."""
    return _complete(out_dir, recon_names(save_raw, video, mesh))
