"""What the viewer shows: Gaussians, an optional mesh and the input cameras, in one z-up world.

Frames. :func:`pipelines.splats.io.load_gaussians` undoes the world->file transform that
geolrm records in a ``.ply`` header, so Gaussians come back in the frame ``recon``/``gen``
worked in: the input cameras' world (``recon``) or GeoLRM's z-up model frame (``gen``).
``cameras.json`` is written in that same frame, so the frustums need no transform. A
``mesh.glb`` is y-up by the glTF specification (:mod:`pipelines.mesh.export`); the viewer
turns it back into the z-up world with :func:`pipelines.splats.frames.world_to_file`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.dataparsers import load_transforms
from pipelines.cameras.geometry import fit_distance, fov_to_focal, look_at
from pipelines.defaults import TURNTABLE_ELEVATION_DEG
from pipelines.errors import InputError
from pipelines.render import object_bounds
from pipelines.splats.frames import world_to_file
from pipelines.splats.gaussians import Gaussians, matrix_to_quat, quat_to_matrix
from pipelines.splats.io import load_gaussians
from pipelines.splats.sh import view_dependent_rgb

MODEL_NAMES = ("model.ply", "model.splat")
MESH_NAME = "mesh.glb"
CAMERAS_NAME = "cameras.json"
THUMBNAIL = 128
"""Longest side in pixels of the view images shown on the camera frustums."""


#: Vertical field of view of the viewer's camera (the live viewer and the static page).
FOV_DEG = 50.0
#: Camera frustums are drawn this fraction of the object's radius deep.
FRUSTUM_SCALE = 0.15


@dataclass
class ViewScene:
    """Everything the viewer and the static page show, in geolrm's z-up world.

    Attributes:
        model: the Gaussian file.
        gaussians: the Gaussians (float32, CPU).
        mesh: a ``.glb`` to show next to them, or None.
        cameras: the input cameras (OpenGL c2w), or None.
        thumbnails: one small RGB uint8 image per camera (None where the image is missing).
        centre: ``[3]`` centre of the object's robust bounding sphere.
        radius: its radius.
    """

    model: Path
    gaussians: Gaussians
    mesh: Path | None = None
    cameras: Cameras | None = None
    thumbnails: list[np.ndarray | None] = field(default_factory=list)
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    radius: float = 1.0

    def home_camera(self, fov_deg: float = FOV_DEG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(position, look_at, up)`` of the initial view: the object fills the view, seen from
        azimuth 0 (on +x) and the turntable's elevation above, z up (its first frame)."""

        d = fit_distance(self.radius, fov_deg, margin=1.15)
        el = math.radians(TURNTABLE_ELEVATION_DEG)
        offset = np.array([math.cos(el), 0.0, math.sin(el)]) * d
        return self.centre + offset, self.centre.copy(), np.array([0.0, 0.0, 1.0])

    def home_view(self, width: int, height: int, fov_deg: float = FOV_DEG) -> Cameras:
        """The initial view as a geolrm camera (``fov_deg`` vertical), for renders that the
        browser's first frame can be compared with."""

        position, target, up = self.home_camera(fov_deg)
        f = fov_to_focal(fov_deg, height)
        k = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
        return Cameras(look_at(position, target, up), k[None], width, height)


def splat_arrays(g: Gaussians) -> dict[str, np.ndarray]:
    """The Gaussians as viewer arrays: ``centers [N,3]``, ``covariances [N,3,3]``
    (``R diag(s^2) R^T``), ``rgbs [N,3]`` in [0, 1] (the degree-0 colour), ``opacities [N,1]``."""
    g = g.detach().to("cpu", torch.float64)
    rot = quat_to_matrix(torch.nn.functional.normalize(g.quats, dim=-1))
    cov = rot @ torch.diag_embed(g.scales**2) @ rot.transpose(1, 2)
    return {
        "centers": g.means.numpy().astype(np.float32),
        "covariances": cov.numpy().astype(np.float32),
        "rgbs": g.colors.clamp(0, 1).numpy().astype(np.float32),
        "opacities": g.opacities[:, None].clamp(0, 1).numpy().astype(np.float32),
    }


def view_colors(g: Gaussians, eye: np.ndarray) -> np.ndarray:
    """``[N, 3]`` colours in [0, 1] seen from ``eye`` (spherical harmonics of any degree)."""

    g = g.detach().to("cpu", torch.float32)
    if g.sh_rest is None:
        return g.colors.clamp(0, 1).numpy()
    pos = torch.as_tensor(eye, dtype=torch.float32)
    return view_dependent_rgb(g.colors, g.sh_rest, g.means, pos).clamp(0, 1).numpy()


def _find_model(folder: Path) -> Path:
    for name in MODEL_NAMES:
        if (folder / name).is_file():
            return folder / name
    plys = sorted(folder.glob("*.ply")) + sorted(folder.glob("*.splat"))
    if len(plys) == 1:
        return plys[0]
    raise InputError(
        f"{folder} holds no model.ply (a geolrm recon/gen output folder); pass the folder or "
        "a Gaussian .ply/.splat file"
    )


def _thumbnail(path: Path | None) -> np.ndarray | None:
    """A small RGB copy of a view image (RGBA composited on white), or None if unreadable."""
    if path is None or not Path(path).is_file():
        return None

    try:
        with Image.open(path) as im:
            im = im.convert("RGBA")
            im.thumbnail((THUMBNAIL, THUMBNAIL))
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, im).convert("RGB"))
    except OSError:
        return None


def load_scene(
    path: str | Path,
    mesh: str | Path | None = None,
    cameras: str | Path | None = None,
    assume_up: str = "-y",
) -> ViewScene:
    """Read a recon/gen output folder, or a Gaussian file with an optional mesh and cameras.

    Args:
        path: an output folder (``model.ply``, and ``mesh.glb`` / ``cameras.json`` when there)
            or a ``.ply`` / ``.splat`` file.
        mesh: a ``.glb`` (overrides the folder's).
        cameras: a nerfstudio/NeRF ``transforms.json`` such as ``cameras.json`` (overrides
            the folder's); its images, where they exist, are shown on the frustums.
        assume_up: up axis of ``.ply`` files whose header does not record it.

    Raises:
        InputError: a missing or unreadable input (one line).
    """

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; pass a model.ply or an output folder")
    if path.is_dir():
        model = _find_model(path)
        if mesh is None and (path / MESH_NAME).is_file():
            mesh = path / MESH_NAME
        if cameras is None and (path / CAMERAS_NAME).is_file():
            cameras = path / CAMERAS_NAME
    else:
        model = path
    if mesh is not None:
        mesh = Path(mesh)
        if not mesh.is_file():
            raise InputError(f"--mesh {mesh}: no such file; pass a .glb (geolrm mesh writes one)")
        if mesh.suffix.lower() != ".glb":
            raise InputError(f"--mesh {mesh}: not a .glb; the viewer shows glTF binary meshes")
    g = load_gaussians(model, assume_up=assume_up, quiet=True).detach().to("cpu", torch.float32)
    if len(g) == 0:
        raise InputError(f"{model} holds no Gaussians; nothing to show")
    cams = None
    thumbs: list[np.ndarray | None] = []
    if cameras is not None:
        cameras = Path(cameras)
        if not cameras.is_file():
            raise InputError(f"--cameras {cameras}: no such file; pass a transforms.json")
        cams = load_transforms(cameras, require_images=False)
        paths = cams.image_paths or [None] * len(cams)
        thumbs = [_thumbnail(p) for p in paths]
    centre, radius = object_bounds(g)
    return ViewScene(
        model=model,
        gaussians=g,
        mesh=mesh,
        cameras=cams,
        thumbnails=thumbs,
        centre=centre.double().numpy(),
        radius=float(radius),
    )


def mesh_glb_to_world() -> np.ndarray:
    """``[4, 4]`` rotation from a geolrm ``.glb``'s y-up frame back to the z-up world."""

    return world_to_file("y").double().numpy().T


def rotation_wxyz(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a ``[3, 3]`` rotation matrix."""

    return matrix_to_quat(torch.as_tensor(np.asarray(rot, dtype=np.float64))).double().numpy()


_NAMED = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}


def parse_colour(text: str) -> tuple[int, int, int]:
    """``white`` / ``black`` / ``grey``, ``#rrggbb`` or ``r,g,b`` (0-255) -> an RGB tuple."""
    t = text.strip().lower()
    if t in _NAMED:
        return _NAMED[t]
    try:
        if t.startswith("#") and len(t) == 7:
            return tuple(int(t[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        parts = [int(v) for v in t.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 3 and all(0 <= v <= 255 for v in parts):
        return tuple(parts)  # type: ignore[return-value]
    raise InputError(
        f"--background {text!r} is not a colour; use white, black, grey, #rrggbb or r,g,b (0-255)"
    )
