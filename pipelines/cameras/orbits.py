"""Orbit paths: cameras on a sphere around the origin, the official turntable and model rigs.

Conventions: z-up world, OpenGL c2w (see :mod:`pipelines.cameras.geometry`). Azimuth 0 is on
+x, increasing towards +y; elevation is measured up from the xy plane; angles in degrees.
The official GeoLRM renders (and its rigs) use radius :data:`MODEL_RADIUS` = 1.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.geometry import as_float64, fov_to_focal, poses_from_axes
from pipelines.errors import InputError

__all__ = [
    "MODEL_RADIUS",
    "RENDER_FOV_DEG",
    "SV3D_FOV_DEG",
    "SV3D_NUM_FRAMES",
    "TURNTABLE_ELEVATION_DEG",
    "ZERO123PP_FOV_DEG",
    "orbit_cameras",
    "orbit_poses",
    "rig_cameras",
    "sv3d_azimuths_deg",
    "sv3d_cameras",
    "sv3d_view_indices",
    "zero123pp_cameras",
]

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
    return rig_cameras(orbit_poses(az, el, radius), ZERO123PP_FOV_DEG, size)


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
    return rig_cameras(orbit_poses(az, elevation_deg, radius), SV3D_FOV_DEG, size)
