"""Cameras: GeoLRM's orbit rigs, nerfstudio ``transforms.json`` I/O, frame normalisation, views.

Conventions (the same as the official GeoLRM code and nerfstudio):

* **World**: right-handed, **+z up**. GeoLRM was trained with the object at the origin inside
  [-0.5, 0.5]^3 and cameras on a sphere of radius ~1.5 looking at the origin.
* **Pose** ``c2w`` ``[V, 4, 4]``: OpenGL camera-to-world. Columns are the camera's +x (right),
  +y (up), +z (backwards; the camera looks along -z) in world coordinates, then the centre.
  For OpenCV (x right, y down, z forward) use ``c2w @ diag(1, -1, -1, 1)``.
* **Intrinsics** ``K`` ``[V, 3, 3]`` in **pixels**, OpenCV layout ``[[fx, s, cx], [0, fy, cy],
  [0, 0, 1]]``. Pixel (column i, row j) covers [i, i+1) x [j, j+1), so its centre is at
  (i + 0.5, j + 0.5) and ``cx = w / 2`` is the exact image centre (nerfstudio's convention).
  A world point X projects to ``u = cx + fx * x_c / (-z_c)``, ``v = cy - fy * y_c / (-z_c)``
  with ``(x_c, y_c, z_c) = inverse(c2w) X``. :meth:`Cameras.normalized_K` divides row 0 by the
  width and row 1 by the height, which is the normalised K GeoLRM consumes
  (``[[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]`` with ``f = 0.5 / tan(fov / 2)``).

Tensors are float32 on the CPU; maths that benefits from it runs in float64. Similarity
matrices (``M``, 4x4, ``x_model = M @ x_user``) are float64.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipelines.errors import InputError, note

__all__ = [
    "IMAGE_EXTENSIONS",
    "SV3D_FOV_DEG",
    "SV3D_NUM_FRAMES",
    "ZERO123PP_FOV_DEG",
    "Cameras",
    "apply_similarity",
    "decompose_similarity",
    "fov_to_focal",
    "focal_to_fov",
    "image_has_alpha",
    "invert_similarity",
    "load_images",
    "load_similarity",
    "load_masks",
    "load_transforms",
    "load_views",
    "look_at",
    "normalize_to_model_frame",
    "orbit_cameras",
    "orbit_poses",
    "project_points",
    "read_image",
    "save_similarity",
    "similarity_from_json",
    "similarity_to_json",
    "sv3d_azimuths_deg",
    "sv3d_cameras",
    "sv3d_view_indices",
    "zero123pp_cameras",
]

PathLike = str | os.PathLike

#: Extensions tried, in order, when a ``file_path`` in a transforms.json has none.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".PNG", ".JPG", ".JPEG", ".WEBP")

ZERO123PP_FOV_DEG = 30.0
ZERO123PP_AZIMUTHS_DEG = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
ZERO123PP_ELEVATIONS_DEG = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)
#: The official 4-view subset of the Zero123++ grid (``run_geolrm_zero123.py``).
ZERO123PP_4_VIEW_INDICES = (0, 2, 4, 5)
SV3D_FOV_DEG = 39.6
SV3D_NUM_FRAMES = 21
#: The official render fov (``configs/geolrm.yaml``) and turntable elevation.
RENDER_FOV_DEG = 39.6
TURNTABLE_ELEVATION_DEG = 20.0
MODEL_RADIUS = 1.5

_RIGID_TOL = 1e-3  # max |R^T R - I| accepted for a camera rotation read from a file


# --------------------------------------------------------------------------------------------
# small helpers


def _as_f64(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _nearest_rotation(a: torch.Tensor) -> torch.Tensor:
    """Nearest proper rotation(s) to ``a`` ``[..., 3, 3]`` (polar decomposition via SVD)."""
    u, _, vh = torch.linalg.svd(a)
    d = torch.sign(torch.linalg.det(u @ vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    fix = torch.ones(a.shape[:-1], dtype=a.dtype)
    fix[..., 2] = d
    return (u * fix.unsqueeze(-2)) @ vh


def _rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimal rotation ``[3, 3]`` taking unit vector ``a`` to unit vector ``b`` (float64)."""
    v = torch.linalg.cross(a, b)
    c = float(torch.dot(a, b))
    s = float(torch.linalg.norm(v))
    eye = torch.eye(3, dtype=torch.float64)
    if s < 1e-12:
        if c > 0:
            return eye
        # 180 degrees about any axis perpendicular to a
        helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        if abs(float(a[0])) > 0.9:
            helper = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        axis = torch.linalg.cross(a, helper)
        axis = axis / torch.linalg.norm(axis)
        return 2.0 * torch.outer(axis, axis) - eye
    vx = torch.tensor(
        [[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]], dtype=torch.float64
    )
    return eye + vx + vx @ vx * ((1.0 - c) / (s * s))


def _rot_z(angle_rad: float) -> torch.Tensor:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Cameras


@dataclass
class Cameras:
    """A set of pinhole cameras sharing one image size.

    Attributes:
        c2w: ``[V, 4, 4]`` float32 OpenGL camera-to-world matrices.
        K: ``[V, 3, 3]`` float32 intrinsics in pixels (pixel centres at ``i + 0.5``).
        width: image width in pixels, shared by all views.
        height: image height in pixels, shared by all views.
        image_paths: one image per view, or ``None`` when the cameras have no images.
    """

    c2w: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    image_paths: list[Path] | None = None

    def __post_init__(self) -> None:
        c2w = torch.as_tensor(self.c2w).detach().to(torch.float32)
        k = torch.as_tensor(self.K).detach().to(torch.float32)
        if c2w.ndim == 2:
            c2w = c2w.unsqueeze(0)
        if k.ndim == 2:
            k = k.unsqueeze(0).expand(c2w.shape[0], 3, 3)
        if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
            raise ValueError(f"c2w must be [V,4,4], got {tuple(c2w.shape)}")
        if k.shape != (c2w.shape[0], 3, 3):
            raise ValueError(f"K must be [V,3,3] with V={c2w.shape[0]}, got {tuple(k.shape)}")
        self.c2w = c2w.contiguous()
        self.K = k.contiguous()
        if int(self.width) != self.width or int(self.height) != self.height:
            raise ValueError(f"width/height must be integers, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if self.image_paths is not None:
            self.image_paths = [Path(p) for p in self.image_paths]
            if len(self.image_paths) != len(self):
                raise ValueError(
                    f"{len(self.image_paths)} image paths for {len(self)} cameras; need one each"
                )

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_normalized_K(
        cls,
        c2w: torch.Tensor,
        K_norm: torch.Tensor,
        width: int,
        height: int,
        image_paths: Sequence[PathLike] | None = None,
    ) -> Cameras:
        """Build from GeoLRM-style normalised intrinsics ``[V, 3, 3]`` (or ``[3, 3]``)."""
        k = _as_f64(K_norm)
        if k.ndim == 2:
            k = k.unsqueeze(0).expand(torch.as_tensor(c2w).reshape(-1, 4, 4).shape[0], 3, 3)
        scale = torch.tensor([width, height, 1.0], dtype=torch.float64).view(1, 3, 1)
        paths = None if image_paths is None else [Path(p) for p in image_paths]
        return cls(c2w, (k * scale).float(), width, height, paths)

    # -- basic accessors ---------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def centers(self) -> torch.Tensor:
        """``[V, 3]`` camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    def normalized_K(self) -> torch.Tensor:
        """``[V, 3, 3]`` intrinsics divided by the image size (row 0 by width, row 1 by height).

        This is the K GeoLRM takes: ``[[fx/W, s/W, cx/W], [0, fy/H, cy/H], [0, 0, 1]]``.
        """
        scale = torch.tensor([self.width, self.height, 1.0], dtype=torch.float64)
        return (self.K.double() / scale.to(self.K.device).view(1, 3, 1)).float()

    def fov_deg(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Horizontal and vertical field of view ``([V], [V])`` in degrees (centred model)."""
        fx, fy = self.K[:, 0, 0].double(), self.K[:, 1, 1].double()
        return (
            torch.rad2deg(2 * torch.atan(0.5 * self.width / fx)).float(),
            torch.rad2deg(2 * torch.atan(0.5 * self.height / fy)).float(),
        )

    def to(self, device: torch.device | str) -> Cameras:
        """A copy with ``c2w`` and ``K`` on ``device`` (validation happens on the CPU first)."""
        out = self.clone()
        out.c2w, out.K = out.c2w.to(device), out.K.to(device)
        return out

    def clone(self) -> Cameras:
        paths = None if self.image_paths is None else list(self.image_paths)
        return Cameras(self.c2w.clone(), self.K.clone(), self.width, self.height, paths)

    # -- derived sets --------------------------------------------------------------------------

    def subset(self, indices: Sequence[int] | torch.Tensor) -> Cameras:
        """The cameras at ``indices`` (ints, in the given order, or a boolean mask ``[V]``)."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise InputError(f"view mask has {idx.numel()} entries for {len(self)} views")
            idx = torch.nonzero(idx).flatten()
        idx = idx.long().flatten()
        if idx.numel() == 0:
            raise InputError("no views selected; pick at least one view index")
        bad = [int(i) for i in idx if not -len(self) <= int(i) < len(self)]
        if bad:
            raise InputError(
                f"view index {bad[0]} is out of range for {len(self)} views; use 0..{len(self) - 1}"
            )
        paths = None if self.image_paths is None else [self.image_paths[int(i)] for i in idx]
        return Cameras(self.c2w[idx], self.K[idx], self.width, self.height, paths)

    def transformed(self, matrix: torch.Tensor) -> Cameras:
        """Move the cameras by a world similarity ``matrix`` ``[4, 4]`` (``x' = M x``).

        ``c2w' = M @ c2w`` with the scale divided out of the rotation columns and the rotation
        re-orthonormalised, so the result is again a rigid camera pose. Intrinsics are unchanged
        (a similarity does not change what a camera sees).
        """
        scale, rot, t = decompose_similarity(matrix)
        c2w = self.c2w.double()
        out = torch.zeros_like(c2w)
        out[:, :3, :3] = _nearest_rotation(rot @ c2w[:, :3, :3])
        out[:, :3, 3] = scale * (c2w[:, :3, 3] @ rot.T) + t
        out[:, 3, 3] = 1.0
        paths = None if self.image_paths is None else list(self.image_paths)
        return Cameras(out.float(), self.K.clone(), self.width, self.height, paths)

    def resized(self, new_width: int, new_height: int) -> Cameras:
        """Cameras for the images resized to ``new_width x new_height`` (K rows scaled)."""
        sx, sy = new_width / self.width, new_height / self.height
        scale = torch.tensor([sx, sy, 1.0], dtype=torch.float64).to(self.K.device)
        k = (self.K.double() * scale.view(1, 3, 1)).float()
        paths = None if self.image_paths is None else list(self.image_paths)
        return Cameras(self.c2w.clone(), k, new_width, new_height, paths)

    def padded(self, left: int, top: int, new_width: int, new_height: int) -> Cameras:
        """Cameras for the images pasted at ``(left, top)`` on a ``new_width x new_height`` canvas.

        Negative offsets mean cropping. Only the principal point moves.
        """
        k = self.K.clone()
        k[:, 0, 2] += left
        k[:, 1, 2] += top
        paths = None if self.image_paths is None else list(self.image_paths)
        return Cameras(self.c2w.clone(), k, new_width, new_height, paths)

    # -- export --------------------------------------------------------------------------------

    def to_transforms_json(
        self,
        base_dir: PathLike | None = None,
        file_paths: Sequence[str] | None = None,
        per_frame_intrinsics: bool | None = None,
    ) -> dict[str, Any]:
        """A nerfstudio ``transforms.json`` dictionary (``json.dump`` it to write the file).

        Args:
            base_dir: folder the JSON will live in; image paths are written relative to it.
            file_paths: explicit ``file_path`` per frame (overrides ``image_paths``). Without
                either, frames are named ``images/000.png``, ``images/001.png``, ...
            per_frame_intrinsics: write ``fl_x, fl_y, cx, cy`` in every frame. ``None`` (default)
                writes them once at the top level when all views share them.

        ``w``/``h`` and ``camera_model: PERSPECTIVE`` are always top level. Top-level output also
        carries ``camera_angle_x`` for NeRF-synthetic readers.
        """
        if file_paths is not None:
            if len(file_paths) != len(self):
                raise InputError(f"{len(file_paths)} file paths for {len(self)} cameras")
            names = [str(p) for p in file_paths]
        elif self.image_paths is not None:
            names = []
            for p in self.image_paths:
                if base_dir is not None:
                    p = Path(os.path.relpath(Path(p).absolute(), Path(base_dir).absolute()))
                names.append(Path(p).as_posix())
        else:
            names = [f"images/{i:03d}.png" for i in range(len(self))]
        k = self.K.double()
        intr = torch.stack([k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]], dim=1)
        shared = bool(torch.all(intr == intr[:1])) and bool(torch.all(k[:, 0, 1] == 0))
        per_frame = (not shared) if per_frame_intrinsics is None else per_frame_intrinsics
        if not per_frame and not shared:
            raise InputError("the views have different intrinsics; write them per frame")
        out: dict[str, Any] = {"camera_model": "PERSPECTIVE", "w": self.width, "h": self.height}
        if not per_frame:
            fx, fy, cx, cy = (float(v) for v in intr[0])
            out.update(fl_x=fx, fl_y=fy, cx=cx, cy=cy)
            out["camera_angle_x"] = 2.0 * math.atan(0.5 * self.width / fx)
        frames = []
        c2w = self.c2w.double()
        for i in range(len(self)):
            frame: dict[str, Any] = {"file_path": names[i]}
            if per_frame:
                fx, fy, cx, cy = (float(v) for v in intr[i])
                frame.update(fl_x=fx, fl_y=fy, cx=cx, cy=cy)
            frame["transform_matrix"] = c2w[i].tolist()
            frames.append(frame)
        out["frames"] = frames
        return out


# --------------------------------------------------------------------------------------------
# poses and rigs


def orbit_poses(
    azimuths_deg: float | Sequence[float] | torch.Tensor,
    elevations_deg: float | Sequence[float] | torch.Tensor,
    radius: float | Sequence[float] | torch.Tensor = MODEL_RADIUS,
) -> torch.Tensor:
    """``[V, 4, 4]`` float32 c2w of cameras on a sphere looking at the origin (official convention).

    This is GeoLRM/InstantMesh ``spherical_camera_pose``: z-up, azimuth 0 on +x, towards +y;
    position ``p = r (cos el cos az, cos el sin az, sin el)``; camera z = normalize(p);
    x = normalize((0, 0, 1) x z); y = z x x; ``c2w = [x | y | z | p]``. The inputs broadcast
    against each other. At elevation +-90 deg (where the official code yields NaN) x is taken as
    the limit ``(-sin az, cos az, 0)`` so the pose stays continuous in the azimuth.
    """
    az = torch.deg2rad(_as_f64(azimuths_deg))
    el = torch.deg2rad(_as_f64(elevations_deg))
    r = _as_f64(radius)
    az, el, r = torch.broadcast_tensors(az, el, r)
    az, el, r = az.reshape(-1), el.reshape(-1), r.reshape(-1)
    pos = torch.stack(
        [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], dim=-1
    )
    pos = pos * r.unsqueeze(-1)
    z = pos / torch.linalg.norm(pos, dim=-1, keepdim=True)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(z)
    x = torch.linalg.cross(up, z, dim=-1)
    xn = torch.linalg.norm(x, dim=-1, keepdim=True)
    limit = torch.stack([-torch.sin(az), torch.cos(az), torch.zeros_like(az)], dim=-1)
    x = torch.where(xn > 1e-9, x / xn.clamp_min(1e-300), limit)
    y = torch.linalg.cross(z, x, dim=-1)
    y = y / torch.linalg.norm(y, dim=-1, keepdim=True)
    return _pad_pose(x, y, z, pos)


def look_at(
    eye: Sequence[float] | torch.Tensor,
    target: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
    up: Sequence[float] | torch.Tensor = (0.0, 0.0, 1.0),
) -> torch.Tensor:
    """``[V, 4, 4]`` float32 OpenGL c2w of cameras at ``eye`` ``[V, 3]`` (or ``[3]``) looking at
    ``target`` with ``up`` (``[3]`` or ``[V, 3]``), as ``center_looking_at_camera_pose``.

    When the view direction is parallel to ``up`` the x axis falls back to the world axis most
    perpendicular to the view direction (projected and normalised).
    """
    eye_t, tgt, upv = (_as_f64(v).reshape(-1, 3) for v in (eye, target, up))
    eye_t, tgt, upv = torch.broadcast_tensors(eye_t, tgt, upv)
    z = eye_t - tgt
    zn = torch.linalg.norm(z, dim=-1, keepdim=True)
    if bool(torch.any(zn < 1e-12)):
        raise InputError("look_at: a camera sits on its target; put the eye away from the target")
    z = z / zn
    x = torch.linalg.cross(upv, z, dim=-1)
    xn = torch.linalg.norm(x, dim=-1, keepdim=True)
    for i in torch.nonzero(xn.squeeze(-1) < 1e-9).flatten().tolist():
        axis = torch.eye(3, dtype=torch.float64)[int(torch.argmin(z[i].abs()))]
        xi = axis - torch.dot(axis, z[i]) * z[i]
        x[i], xn[i] = xi, torch.linalg.norm(xi)
    x = x / xn
    y = torch.linalg.cross(z, x, dim=-1)
    y = y / torch.linalg.norm(y, dim=-1, keepdim=True)
    return _pad_pose(x, y, z, eye_t)


def _pad_pose(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape[0], 4, 4, dtype=torch.float64)
    out[:, :3, 0], out[:, :3, 1], out[:, :3, 2], out[:, :3, 3] = x, y, z, p
    out[:, 3, 3] = 1.0
    return out.float()


def fov_to_focal(fov_deg: float, size_px: float) -> float:
    """Pixel focal length ``0.5 * size / tan(fov / 2)`` (size 1 gives the normalised focal)."""
    if not 0.0 < fov_deg < 180.0:
        raise InputError(f"field of view {fov_deg} deg is out of range; use 0 < fov < 180")
    return 0.5 * size_px / math.tan(math.radians(fov_deg) / 2.0)


def focal_to_fov(focal_px: float, size_px: float) -> float:
    """Field of view in degrees for a pixel focal length (inverse of :func:`fov_to_focal`)."""
    return math.degrees(2.0 * math.atan(0.5 * size_px / focal_px))


def _rig(c2w: torch.Tensor, fov_deg: float, size: int) -> Cameras:
    f = fov_to_focal(fov_deg, 1.0)
    k = torch.tensor([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Cameras.from_normalized_K(c2w, k.expand(c2w.shape[0], 3, 3), size, size)


def orbit_cameras(
    n: int,
    elevation_deg: float = TURNTABLE_ELEVATION_DEG,
    radius: float = MODEL_RADIUS,
    fov_deg: float = RENDER_FOV_DEG,
    size: int = 512,
    start_azimuth_deg: float = 0.0,
) -> Cameras:
    """``n`` cameras evenly spaced in azimuth (``start + i * 360 / n``) at one elevation.

    The defaults are the official turntable (``get_circular_camera_poses``: elevation 20 deg,
    radius 1.5, fov 39.6 deg; the official video uses ``n = 120`` at 1024 px).
    """
    if n < 1:
        raise InputError(f"orbit needs at least one view, got {n}")
    az = start_azimuth_deg + torch.arange(n, dtype=torch.float64) * (360.0 / n)
    return _rig(orbit_poses(az, elevation_deg, radius), fov_deg, size)


def zero123pp_cameras(n_views: int = 6, size: int = 448, radius: float = MODEL_RADIUS) -> Cameras:
    """The Zero123++ v1.2 rig as GeoLRM uses it (``get_zero123plus_input_cameras``).

    Views are the 3x2 grid in reading order (view k = row k // 2, column k % 2): azimuths
    30, 90, ..., 330 deg relative to the input photo (which sits at azimuth 0), elevations
    20/-10 alternating, fov 30 deg, radius 1.5 (``1.5 * --scale`` officially). ``n_views=4``
    keeps views 0, 2, 4, 5 as ``run_geolrm_zero123.py`` does.
    """
    if n_views == 6:
        idx: tuple[int, ...] = tuple(range(6))
    elif n_views == 4:
        idx = ZERO123PP_4_VIEW_INDICES
    else:
        raise InputError(f"Zero123++ gives 6 views (or the official 4-view subset), not {n_views}")
    az = [ZERO123PP_AZIMUTHS_DEG[i] for i in idx]
    el = [ZERO123PP_ELEVATIONS_DEG[i] for i in idx]
    return _rig(orbit_poses(az, el, radius), ZERO123PP_FOV_DEG, size)


def sv3d_azimuths_deg(official_offset: bool = False) -> torch.Tensor:
    """``[21]`` float64 azimuths of the SV3D_p output frames.

    SV3D (``simple_video_sample.py``) generates frame i at azimuth ``(i + 1) * 360 / 21``, so the
    last frame (index 20) is the input view at azimuth 0. The official GeoLRM script instead
    assigns ``i * 360 / 21`` (``official_offset=True``), which rotates the whole reconstruction by
    -17.14 deg about z but is otherwise self-consistent.
    """
    i = torch.arange(SV3D_NUM_FRAMES, dtype=torch.float64)
    step = 360.0 / SV3D_NUM_FRAMES
    return i * step if official_offset else torch.remainder((i + 1) * step, 360.0)


def sv3d_view_indices(n_views: int = SV3D_NUM_FRAMES) -> list[int]:
    """Frame indices the official script keeps for ``--view n``: ``range(0, 21, 21 // n)``.

    Note this gives more views than asked when 21 is not a multiple (6 -> 7 views).
    """
    if not 1 <= n_views <= SV3D_NUM_FRAMES:
        raise InputError(f"SV3D gives 1 to {SV3D_NUM_FRAMES} views, not {n_views}")
    return list(range(0, SV3D_NUM_FRAMES, SV3D_NUM_FRAMES // n_views))


def sv3d_cameras(
    elevation_deg: float = 10.0,
    size: int = 560,
    radius: float = MODEL_RADIUS,
    official_offset: bool = False,
) -> Cameras:
    """The 21 SV3D_p frame cameras in SV3D's output order (fov 39.6 deg, radius 1.5).

    Frame i sits at azimuth ``(i + 1) * 360 / 21`` and the given elevation; frame 20 is the input
    view (azimuth 0). See :func:`sv3d_azimuths_deg` for ``official_offset`` and
    :func:`sv3d_view_indices` / :meth:`Cameras.subset` for the official view subsets.
    """
    az = sv3d_azimuths_deg(official_offset)
    return _rig(orbit_poses(az, elevation_deg, radius), SV3D_FOV_DEG, size)


def project_points(cams: Cameras, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points ``[N, 3]`` into every view.

    Returns:
        uv: ``[V, N, 2]`` float32 pixel coordinates (pixel (i, j)'s centre is (i+.5, j+.5)).
        depth: ``[V, N]`` float32 distance along the optical axis (positive in front).
    """
    pts = _as_f64(points).reshape(-1, 3)
    w2c = torch.linalg.inv(cams.c2w.double())
    xc = pts @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # [V, N, 3]
    cv = xc * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    uvw = cv @ cams.K.double().transpose(1, 2)
    depth = cv[..., 2]
    uv = uvw[..., :2] / uvw[..., 2:3]
    return uv.float(), depth.float()


# --------------------------------------------------------------------------------------------
# transforms.json


def _err(path: Path, problem: str, fix: str) -> InputError:
    return InputError(f"{path}: {problem}; {fix}")


def _resolve_image(base: Path, file_path: str) -> Path | None:
    """Find the image a ``file_path`` names, relative to ``base``; ``None`` when absent."""
    candidates = [file_path]
    if "\\" in file_path:
        candidates.append(file_path.replace("\\", "/"))
    for cand in candidates:
        p = Path(cand)
        p = p if p.is_absolute() else base / p
        if p.is_file():
            return p
        for ext in IMAGE_EXTENSIONS:
            q = p.with_name(p.name + ext)
            if q.is_file():
                return q
    return None


def _number(path: Path, where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _err(path, f"{where}{key} is {value!r}, not a finite number", "fix the value")
    return float(value)


def _check_pose(path: Path, i: int, raw: Any) -> tuple[np.ndarray, float]:
    """A validated 4x4 pose and the uniform scale found in its rotation (1.0 when rigid).

    A rotation block ``s * R`` (a similarity: some capture tools store their world scale in
    the rotation columns) is accepted and returned as ``R``, the camera centre unchanged;
    shear, mirroring and singular blocks are refused.
    """
    where = f"frame {i} transform_matrix"
    fix = "write a 4x4 OpenGL camera-to-world matrix (rotation columns, then the centre)"
    try:
        m = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise _err(path, f"{where} is not a matrix of numbers", fix) from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise _err(path, f"{where} has shape {tuple(m.shape)}, not 4x4", fix)
    if not np.all(np.isfinite(m)):
        raise _err(path, f"{where} has NaN or infinite entries", fix)
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise _err(path, f"{where} has bottom row {m[3].tolist()}, not [0, 0, 0, 1]", fix)
    rot = m[:3, :3]
    det = float(np.linalg.det(rot))
    if abs(det) < 1e-6:
        raise _err(path, f"{where} has a singular rotation (det {det:.3g})", fix)
    if det < 0:
        raise _err(
            path,
            f"{where} is a reflection (det {det:.3g}), not a rotation",
            "use right-handed OpenGL axes (flip one axis back)",
        )
    dev = float(np.max(np.abs(rot.T @ rot - np.eye(3))))
    if dev <= _RIGID_TOL:
        return m, 1.0  # rigid: kept exactly as written
    scale = det ** (1.0 / 3.0)
    unit = rot / scale
    if float(np.max(np.abs(unit.T @ unit - np.eye(3)))) > _RIGID_TOL:
        raise _err(
            path,
            f"{where} rotation is not orthonormal (|R^T R - I| = {dev:.3g}; scaled or sheared?)",
            "write rigid poses and keep any world scale out of the rotation",
        )
    m = m.copy()
    m[:3, :3] = unit
    return m, scale


_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2")
_PINHOLE_MODELS = ("PERSPECTIVE", "PINHOLE", "SIMPLE_PINHOLE", "OPENCV", "SIMPLE_RADIAL", "RADIAL")


def _intrinsics(
    path: Path, i: int, top: dict[str, Any], frame: dict[str, Any], size: tuple[int, int] | None
) -> tuple[float, float, float, float, int, int]:
    """``(fx, fy, cx, cy, w, h)`` for one frame; frame keys override top-level ones."""
    where = f"frame {i} "

    def get(key: str) -> Any:
        return frame[key] if key in frame else top.get(key)

    model = get("camera_model")
    if model is not None and str(model).upper() not in _PINHOLE_MODELS:
        raise _err(
            path,
            f"camera_model {model!r} is not supported (only pinhole: PERSPECTIVE/OPENCV)",
            "undistort/reproject the images to a pinhole model first",
        )
    if get("is_fisheye"):
        raise _err(path, "fisheye cameras are not supported", "undistort the images first")
    dist = [get(k) for k in _DISTORTION_KEYS]
    params = get("distortion_params")
    if isinstance(params, list):
        dist += params
    if any(isinstance(d, (int, float)) and d != 0 for d in dist):
        raise _err(
            path,
            f"{where}has nonzero lens distortion; only undistorted pinhole cameras are supported",
            "undistort the images first (e.g. ns-process-data or COLMAP image_undistorter) and "
            "set the distortion coefficients to 0",
        )
    w, h = get("w"), get("h")
    if w is None or h is None:
        if size is None:
            raise _err(
                path,
                "no image size (w, h) and no image to read it from",
                'add "w" and "h" (pixels) to the file',
            )
        w, h = size
    wh = []
    for key, v in (("w", w), ("h", h)):
        v = _number(path, where, key, v)
        if v <= 0 or v != int(v):
            raise _err(
                path, f"{where}{key} is {v}, not a positive whole number of pixels", "fix it"
            )
        wh.append(int(v))
    w, h = wh
    fx, fy = get("fl_x"), get("fl_y")
    ax, ay = get("camera_angle_x"), get("camera_angle_y")
    if fx is None and ax is not None:
        ax = _number(path, where, "camera_angle_x", ax)
        if not 0 < ax < math.pi:
            raise _err(path, f"camera_angle_x {ax} is not in (0, pi) radians", "fix it")
        fx = 0.5 * w / math.tan(0.5 * ax)
    if fy is None and ay is not None:
        ay = _number(path, where, "camera_angle_y", ay)
        if not 0 < ay < math.pi:
            raise _err(path, f"camera_angle_y {ay} is not in (0, pi) radians", "fix it")
        fy = 0.5 * h / math.tan(0.5 * ay)
    if fx is None and fy is None:
        raise _err(
            path,
            f"{where}has no intrinsics (fl_x/fl_y or camera_angle_x)",
            'add "fl_x", "fl_y", "cx", "cy" in pixels, or "camera_angle_x" in radians',
        )
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    fx, fy = _number(path, where, "fl_x", fx), _number(path, where, "fl_y", fy)
    if fx <= 0 or fy <= 0:
        raise _err(path, f"{where}focal length must be positive, got {fx}, {fy}", "fix it")
    cx = _number(path, where, "cx", get("cx")) if get("cx") is not None else 0.5 * w
    cy = _number(path, where, "cy", get("cy")) if get("cy") is not None else 0.5 * h
    return fx, fy, cx, cy, w, h


def _image_size(path: Path, image: Path) -> tuple[int, int]:
    try:
        with Image.open(image) as im:
            return im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise _err(path, f"cannot read image {image} ({e})", "replace the file") from None


def load_transforms(path: PathLike, require_images: bool = True) -> Cameras:
    """Read a nerfstudio / NeRF-synthetic / instant-ngp ``transforms.json``.

    * Intrinsics may be top level or per frame (frame keys win): ``fl_x, fl_y, cx, cy, w, h``
      in pixels, or ``camera_angle_x`` (+ optional ``camera_angle_y``) in radians. A missing
      ``fl_y`` equals ``fl_x``; a missing ``cx``/``cy`` is the image centre; a missing ``w``/``h``
      comes from the first image. ``camera_model`` must be pinhole (PERSPECTIVE, OPENCV, ...) and
      every distortion coefficient must be zero.
    * ``transform_matrix`` is an OpenGL camera-to-world (4x4, or 3x4). It is validated (finite,
      bottom row 0 0 0 1, proper rotation within 1e-3) and kept as written (not re-orthonormalised,
      so float32 poses pass through bit-exactly). A rotation block with a uniform scale (``s R``,
      as some nerfstudio-processed captures store) is divided by ``s`` with the camera centre
      kept, and one note says so; shear and mirroring are refused.
    * ``file_path`` is relative to the JSON's folder (or absolute); without an extension
      (NeRF-synthetic) ``.png``, ``.jpg``, ``.jpeg``, ``.webp`` are tried.
    * Frames keep the file's order. Other keys (``applied_transform``, ``aabb_scale``, ``scale``,
      ``offset``, depth/mask paths) are ignored.

    Args:
        path: the JSON file, or a folder holding ``transforms.json``.
        require_images: every frame must name an existing image. With ``False`` a file of
            cameras only is accepted: ``image_paths`` then holds the paths the frames name
            (which may not exist), or ``None`` when some frame names no file.

    Raises:
        InputError: one line naming the file, the problem and the fix.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "transforms.json").is_file():
            raise _err(path, "folder has no transforms.json", "pass the camera JSON file itself")
        path = path / "transforms.json"
    if not path.is_file():
        raise _err(path, "camera file not found", "check the path to the transforms.json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _err(path, "not a text/JSON file", "pass a nerfstudio transforms.json") from None
    except json.JSONDecodeError as e:
        raise _err(
            path,
            f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
            "fix the syntax or export the cameras again",
        ) from None
    if not isinstance(meta, dict):
        raise _err(
            path, "top level is not a JSON object", "use the nerfstudio transforms.json layout"
        )
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise _err(
            path,
            'no "frames" list (or it is empty)',
            'add a "frames" list with file_path and transform_matrix per view',
        )
    base = path.parent
    images: list[Path | None] = []
    poses = []
    scales: list[float] = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise _err(path, f"frame {i} is not a JSON object", "fix the frames list")
        if "transform_matrix" not in frame:
            raise _err(path, f"frame {i} has no transform_matrix", "add its 4x4 camera-to-world")
        pose, scale = _check_pose(path, i, frame["transform_matrix"])
        poses.append(pose)
        if scale != 1.0:
            scales.append(scale)
        fp = frame.get("file_path")
        img = None
        if isinstance(fp, str) and fp:
            img = _resolve_image(base, fp)
            if img is None and not require_images:
                img = Path(fp) if Path(fp).is_absolute() else base / fp  # named, not present
            elif img is None:
                raise _err(
                    path,
                    f"frame {i} image {fp!r} not found (looked in {base})",
                    "file_path is relative to the JSON's folder; fix it or add the image",
                )
        elif require_images:
            raise _err(path, f"frame {i} has no file_path", "add the image path for every frame")
        images.append(img)
    if scales:
        lo, hi = min(scales), max(scales)
        what = f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g} to {hi:.3g}"
        note(
            f"{path}: {len(scales)} of {len(frames)} transform_matrix rotations carry a uniform "
            f"scale ({what}); removed it from the rotations, camera centres kept"
        )
    first_size = None
    if images[0] is not None and images[0].is_file():
        first_size = _image_size(path, images[0])
    intr = [_intrinsics(path, i, meta, f, first_size) for i, f in enumerate(frames)]
    sizes = {(w, h) for *_, w, h in intr}
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise _err(
            path,
            f"views have different image sizes ({listed})",
            "all views must share one size; crop/resize the images and their intrinsics",
        )
    w, h = sizes.pop()
    k = torch.zeros(len(frames), 3, 3, dtype=torch.float64)
    for i, (fx, fy, cx, cy, _, _) in enumerate(intr):
        k[i] = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    c2w = torch.from_numpy(np.stack(poses))
    paths = None if any(p is None for p in images) else [p for p in images if p is not None]
    return Cameras(c2w.float(), k.float(), w, h, paths)


# --------------------------------------------------------------------------------------------
# similarity transforms and frame normalisation


def decompose_similarity(matrix: Any) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Split a similarity ``[4, 4]`` ``x -> s R x + t`` into ``(s, R [3,3], t [3])`` (float64).

    Raises:
        InputError: when the matrix is not a similarity (non-finite, shear, reflection, ...).
    """
    m = _as_f64(matrix)
    if m.shape != (4, 4) or not bool(torch.all(torch.isfinite(m))):
        raise InputError("similarity transform must be a finite 4x4 matrix")
    if not torch.allclose(m[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)):
        raise InputError("similarity transform must have bottom row [0, 0, 0, 1]")
    a = m[:3, :3]
    det = float(torch.linalg.det(a))
    if det <= 0:
        raise InputError(f"similarity transform has det {det:.3g}; it must be a proper rotation")
    s = det ** (1.0 / 3.0)
    rot = a / s
    if float(torch.max(torch.abs(rot.T @ rot - torch.eye(3, dtype=torch.float64)))) > 1e-4:
        raise InputError("transform is not a similarity (rotation x uniform scale + translation)")
    return s, _nearest_rotation(rot), m[:3, 3].clone()


def invert_similarity(matrix: Any) -> torch.Tensor:
    """Inverse ``[4, 4]`` float64 of a similarity ``x -> s R x + t``: ``x -> R^T (x - t) / s``."""
    s, rot, t = decompose_similarity(matrix)
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3] = rot.T / s
    out[:3, 3] = -(rot.T @ t) / s
    return out


def apply_similarity(matrix: Any, points: torch.Tensor) -> torch.Tensor:
    """Apply ``[4, 4]`` ``matrix`` to points ``[..., 3]`` (computed in float64, input dtype out)."""
    m = _as_f64(matrix)
    p = _as_f64(points)
    out = p @ m[:3, :3].T + m[:3, 3]
    return out.to(points.dtype) if isinstance(points, torch.Tensor) else out


def _axis_point(c2w: torch.Tensor) -> torch.Tensor:
    """Least-squares closest point to all optical axes (``c2w`` float64 ``[V,4,4]``) or NaNs."""
    centers, dirs = c2w[:, :3, 3], -c2w[:, :3, 2]
    dirs = dirs / torch.linalg.norm(dirs, dim=-1, keepdim=True)
    proj = torch.eye(3, dtype=torch.float64) - dirs.unsqueeze(-1) * dirs.unsqueeze(-2)
    a = proj.sum(0)
    b = (proj @ centers.unsqueeze(-1)).sum(0).squeeze(-1)
    evals = torch.linalg.eigvalsh(a)
    if float(evals[0]) / len(c2w) < 1e-6:  # axes (nearly) parallel: no unique closest point
        return torch.full((3,), float("nan"), dtype=torch.float64)
    return torch.linalg.solve(a, b)


def _up_vector(c2w: torch.Tensor) -> torch.Tensor:
    """World up estimated from camera axes (``c2w`` float64 ``[V,4,4]``), unit ``[3]``."""
    xs, ys = c2w[:, :3, 0], c2w[:, :3, 1]
    mean_y = ys.mean(0)
    s = xs.T @ xs / len(c2w)
    evals, evecs = torch.linalg.eigh(s)
    # cameras without roll have horizontal x axes: up is the direction orthogonal to all of them
    if float(evals[1]) > 1e-3 and float(evals[0]) < 0.1:
        up = evecs[:, 0]
        if float(torch.dot(up, mean_y)) < 0:
            up = -up
        return up / torch.linalg.norm(up)
    # one camera, or all x axes parallel: keep the mean up, made orthogonal to the mean x axis
    mean_x = xs.mean(0)
    mean_x = mean_x / torch.linalg.norm(mean_x).clamp_min(1e-12)
    up = mean_y - torch.dot(mean_y, mean_x) * mean_x
    n = float(torch.linalg.norm(up))
    if n < 1e-6:
        up, n = mean_y, float(torch.linalg.norm(mean_y))
    if n < 1e-6:
        raise InputError(
            "cannot tell which way is up: the cameras' up vectors cancel out; "
            "give cameras with a consistent up direction"
        )
    return up / n


def normalize_to_model_frame(
    cams: Cameras,
    target_radius: float = MODEL_RADIUS,
    first_azimuth_deg: float | None = None,
    snap_tol: float = 1e-5,
) -> tuple[Cameras, torch.Tensor]:
    """Map cameras in an arbitrary user frame into the frame GeoLRM was trained in.

    Returns ``(cameras in the model frame, M)`` with ``M`` a ``[4, 4]`` float64 similarity,
    ``x_model = M @ x_user``, built as ``M = [s R | -s R c]``:

    * **centre** ``c``: the least-squares closest point to all optical axes (the common look-at
      point). With one camera, or (nearly) parallel axes, it cannot be triangulated: the centre
      is then put on the mean optical axis at the depth of the world origin when the origin lies
      in front of the cameras, else at ``target_radius`` in front (the user's units are taken as
      model units).
    * **scale** ``s``: ``target_radius`` / mean distance of the camera centres to ``c``.
    * **up**: cameras without roll have horizontal x axes, so up is the direction orthogonal to
      all x axes (smallest eigenvector of ``sum x x^T``), signed along the mean camera y axis.
      When that is ill-posed (one camera, all x axes parallel, strong roll) the mean camera y axis
      (made orthogonal to the mean x axis) is used.
    * **rotation** ``R``: the minimal rotation taking up to +z, so a z-up input keeps its
      azimuths. With ``first_azimuth_deg`` set, it is followed by a rotation about z that puts the
      first camera at that azimuth (a canonical frame: any rotated copy of a rig maps to the same
      cameras; ``0`` matches the SV3D/GeoLRM convention of the input view at azimuth 0).

    Cameras already in the model frame give ``M`` within ``snap_tol`` of the identity; ``M`` is
    then exactly the identity and the cameras are returned unchanged (bit-exact), so inputs such
    as the official rigs reproduce exactly.

    Raises:
        InputError: all cameras at one point, or cameras looking away from their common point.
    """
    if target_radius <= 0:
        raise InputError(f"target radius must be positive, got {target_radius}")
    c2w = cams.c2w.double()
    centers = c2w[:, :3, 3]
    dirs = -c2w[:, :3, 2] / torch.linalg.norm(c2w[:, :3, 2], dim=-1, keepdim=True)
    spread = float(torch.linalg.norm(centers - centers.mean(0), dim=-1).max())
    extent = 1.0 + float(torch.linalg.norm(centers, dim=-1).max())
    if len(cams) > 1 and spread < 1e-9 * extent:
        raise InputError(
            "all cameras sit at the same point (a panorama?); GeoLRM needs views taken from "
            "around the object"
        )
    centre = _axis_point(c2w) if len(cams) > 1 else torch.full((3,), float("nan"))
    if bool(torch.isnan(centre).any()):
        mean_c, mean_d = centers.mean(0), dirs.mean(0)
        mean_d = mean_d / torch.linalg.norm(mean_d)
        depth = float(torch.dot(-mean_c, mean_d))
        if depth <= 1e-6 * extent:
            depth = target_radius
        centre = mean_c + depth * mean_d
    else:
        in_front = ((centre - centers) * dirs).sum(-1) > 0
        if int(in_front.sum()) * 2 < len(cams):
            raise InputError(
                "the cameras look away from their common point (an outward-facing capture?); "
                "GeoLRM needs cameras that look at the object"
            )
    dist = torch.linalg.norm(centers - centre, dim=-1)
    mean_dist = float(dist.mean())
    if mean_dist < 1e-9 * extent:
        raise InputError(
            "the cameras sit at their own look-at point; GeoLRM needs cameras around the object"
        )
    scale = target_radius / mean_dist
    up = _up_vector(c2w)
    rot = _rotation_between(up, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    if first_azimuth_deg is not None:
        p = rot @ (centers[0] - centre)
        if float(torch.linalg.norm(p[:2])) > 1e-9 * (1.0 + float(torch.linalg.norm(p))):
            current = math.atan2(float(p[1]), float(p[0]))
        else:  # first camera straight above/below the centre: use its up axis, like orbit_poses
            y = rot @ c2w[0, :3, 1]
            current = math.atan2(-float(y[1]), -float(y[0]))
            current = current if float(p[2]) >= 0 else current + math.pi
        rot = _rot_z(math.radians(first_azimuth_deg) - current) @ rot
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = scale * rot
    m[:3, 3] = -scale * (rot @ centre)
    if float(torch.max(torch.abs(m - torch.eye(4, dtype=torch.float64)))) <= snap_tol:
        return cams.clone(), torch.eye(4, dtype=torch.float64)
    return cams.transformed(m), m


def similarity_to_json(matrix: Any) -> dict[str, Any]:
    """A JSON-ready description of a similarity (exact float64 round trip)."""
    s, rot, t = decompose_similarity(matrix)
    return {
        "convention": "x_model = matrix @ [x_user, 1] (column vectors); matrix = [s*R | t]",
        "matrix": _as_f64(matrix).tolist(),
        "scale": s,
        "rotation": rot.tolist(),
        "translation": t.tolist(),
    }


def similarity_from_json(data: Any, source: str = "similarity") -> torch.Tensor:
    """Read :func:`similarity_to_json` output (or a bare 4x4 list) back into ``[4, 4]`` float64."""
    raw = data.get("matrix") if isinstance(data, dict) else data
    try:
        m = torch.tensor(raw, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{source}: no 4x4 'matrix' of numbers; write it again") from None
    if m.shape != (4, 4):
        raise InputError(f"{source}: matrix has shape {tuple(m.shape)}, not 4x4; write it again")
    try:
        decompose_similarity(m)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None
    return m


def save_similarity(path: PathLike, matrix: Any) -> None:
    """Write :func:`similarity_to_json` to ``path`` atomically."""
    from pipelines.io_utils import write_text_atomic

    write_text_atomic(path, json.dumps(similarity_to_json(matrix), indent=1) + "\n")


def load_similarity(path: PathLike) -> torch.Tensor:
    """Read a file written by :func:`save_similarity`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _err(path, "file not found", "check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _err(path, "not valid JSON", "write it again with save_similarity") from None
    return similarity_from_json(data, str(path))


# --------------------------------------------------------------------------------------------
# images


def image_has_alpha(im: Image.Image) -> bool:
    """Whether an open PIL image carries transparency (RGBA, LA, PA or palette with it)."""
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def read_image(path: Path) -> tuple[np.ndarray, bool]:
    """``([H, W, 4] uint8 RGBA, has_alpha)`` of one image (opaque ones get alpha 255); a
    missing or unreadable file is a one-line :class:`InputError`."""
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = image_has_alpha(im)
            arr = np.asarray(im.convert("RGBA")).copy()
    except FileNotFoundError:
        raise _err(path, "image not found", "check the image path") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise _err(
            path, f"cannot read image ({e})", "replace it with a valid PNG/JPEG/WebP"
        ) from None
    return arr, has_alpha


def _read_rgb(path: Path, background: tuple[float, float, float]) -> torch.Tensor:
    """One image as ``[3, H, W]`` float32 in [0, 1], alpha composited (straight) on background."""
    arr, has_alpha = read_image(path)
    x = torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0
    rgb, a = x[:3], x[3:4]
    if not has_alpha:
        return rgb.contiguous()
    bg = torch.tensor(background, dtype=torch.float32).view(3, 1, 1)
    return rgb * a + bg * (1.0 - a)


def _pad_square(x: torch.Tensor, fill: tuple[float, ...]) -> tuple[torch.Tensor, int, int]:
    """Centre ``[C, H, W]`` on a square canvas of ``fill`` (one value per channel); returns the
    canvas and the (left, top) offset."""
    c, h, w = x.shape
    side = max(h, w)
    if h == w:
        return x, 0, 0
    left, top = (side - w) // 2, (side - h) // 2
    canvas = torch.tensor(fill, dtype=x.dtype).view(c, 1, 1).repeat(1, side, side)
    canvas[:, top : top + h, left : left + w] = x
    return canvas, left, top


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic antialiased resize of ``[C, S, S]`` to ``size`` (as the official scripts), clamped."""
    if x.shape[-1] == size:
        return x
    y = torch.nn.functional.interpolate(
        x.unsqueeze(0), size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )
    return y.squeeze(0).clamp(0.0, 1.0)


def load_images(
    paths: Sequence[PathLike],
    size: int | None = None,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """Load images as ``[V, 3, S, S]`` float32 in [0, 1].

    RGBA is composited on ``background`` (straight alpha), non-square images are centred on a
    square ``background`` canvas, then everything is resized to ``size`` (bicubic, antialiased;
    ``None`` keeps the padded size, which must then agree across images). Use
    :func:`load_views` when the images have cameras: it adjusts the intrinsics the same way.
    """
    if not paths:
        raise InputError("no images given; pass at least one image")
    out = []
    for p in paths:
        x, _, _ = _pad_square(_read_rgb(Path(p), background), background)
        out.append(x if size is None else _resize(x, size))
    sides = {x.shape[-1] for x in out}
    if len(sides) > 1:
        raise InputError(f"images have different sizes {sorted(sides)}; pass a common size")
    return torch.stack(out)


def load_views(
    cams: Cameras,
    size: int | None = 448,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[torch.Tensor, Cameras]:
    """Load the cameras' images for reconstruction.

    Each image is composited on ``background`` (straight alpha), centred on a square canvas
    (padding with ``background``) and resized to ``size x size`` (bicubic, antialiased, as the
    official scripts; ``None`` keeps the padded side). The intrinsics follow: the principal point
    moves by the padding offset, then K scales by ``size / side``.

    Images must all have the cameras' size; an image with the same aspect ratio at another
    resolution (e.g. a downscaled copy) is accepted and the intrinsics are rescaled. Pixels are
    used as stored (EXIF orientation is not applied), like the poses of COLMAP/nerfstudio.

    Returns:
        images: ``[V, 3, size, size]`` float32 in [0, 1].
        cameras: the same poses with intrinsics for ``size x size``.
    """
    if cams.image_paths is None:
        raise InputError("these cameras have no image files; give a transforms.json with images")
    first = None
    out = []
    work = cams
    for p in cams.image_paths:
        x = _read_rgb(p, background)
        h, w = x.shape[-2:]
        if first is None:
            first = (w, h)
            if (w, h) != (cams.width, cams.height):
                if abs(w / h - cams.width / cams.height) * max(w, h) > 1.0:
                    raise _err(
                        p,
                        f"image is {w}x{h} but its camera says {cams.width}x{cams.height}",
                        "fix w/h in the camera file or use the original images",
                    )
                work = cams.resized(w, h)
        elif (w, h) != first:
            raise _err(
                p,
                f"image is {w}x{h} but {cams.image_paths[0].name} is {first[0]}x{first[1]}",
                "all views must share one image size",
            )
        x, _, _ = _pad_square(x, background)
        out.append(x if size is None else _resize(x, size))
    assert first is not None
    side = max(first)
    work = work.padded((side - first[0]) // 2, (side - first[1]) // 2, side, side)
    if size is not None and size != side:
        work = work.resized(size, size)
    return torch.stack(out), work


def load_masks(cams: Cameras, size: int | None = 448) -> torch.Tensor:
    """The views' alpha channels ``[V, S, S]`` in [0, 1], padded square (with 0) and resized
    exactly as :func:`load_views` treats the colours (bicubic, antialiased).

    Raises:
        InputError: an image without alpha, unreadable, or of another size than the first.
    """
    if cams.image_paths is None:
        raise InputError("these cameras have no image files; give a transforms.json with images")
    out = []
    for p in cams.image_paths:
        arr, has_alpha = read_image(p)
        if not has_alpha:
            fix = "give RGBA views with a transparent background"
            raise _err(p, "the image has no alpha channel", fix)
        a, _, _ = _pad_square(torch.from_numpy(arr[..., 3:]).permute(2, 0, 1) / 255.0, (0.0,))
        out.append((a if size is None else _resize(a, size))[0])
    if len({tuple(a.shape) for a in out}) > 1:
        raise InputError("the views have different sizes; all views must share one image size")
    return torch.stack(out)
