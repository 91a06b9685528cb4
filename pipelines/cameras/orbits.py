"""Orbit paths: cameras on a sphere around the origin, and the official turntable.

Conventions: z-up world, OpenGL c2w (see :mod:`pipelines.cameras.geometry`). Azimuth 0 is on
+x, increasing towards +y; elevation is measured up from the xy plane; angles in degrees.
The official GeoLRM renders use radius :data:`MODEL_RADIUS` = 1.5; the multi-view models'
rigs built from these orbits are in :mod:`pipelines.multiview.rigs`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.geometry import as_float64, fov_to_focal, poses_from_axes
from pipelines.defaults import RENDER_FOV_DEG, TURNTABLE_ELEVATION_DEG
from pipelines.errors import InputError

__all__ = [
    "MODEL_RADIUS",
    "RENDER_FOV_DEG",
    "TURNTABLE_ELEVATION_DEG",
    "orbit_cameras",
    "orbit_poses",
    "rig_cameras",
]

#: The camera distance of GeoLRM's training renders and rigs.
MODEL_RADIUS = 1.5


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
    az = torch.deg2rad(as_float64(azimuths_deg))
    el = torch.deg2rad(as_float64(elevations_deg))
    r = as_float64(radius)
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
    return poses_from_axes(x, y, z, pos)


def rig_cameras(c2w: torch.Tensor, fov_deg: float, size: int) -> Cameras:
    """Square ``size`` px cameras at poses ``c2w`` ``[V, 4, 4]`` with a centred ``fov_deg`` lens."""
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
    return rig_cameras(orbit_poses(az, elevation_deg, radius), fov_deg, size)
