"""Where the multi-view models put their views: the Zero123++ v1.2 and SV3D_p camera rigs.

Conventions: GeoLRM's model frame (z-up, OpenGL c2w, see :mod:`pipelines.cameras.orbits`):
azimuth in degrees from +x towards +y with the input photo at azimuth 0, elevation up from the
xy plane, cameras at radius 1.5 looking at the origin, square images with a centred lens.
This module imports torch and :mod:`pipelines.cameras` only (no diffusers), so the rigs are
available without the models.
"""

from __future__ import annotations

import torch

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.orbits import MODEL_RADIUS, orbit_poses, rig_cameras
from pipelines.errors import InputError

__all__ = [
    "SV3D_FOV_DEG",
    "SV3D_NUM_FRAMES",
    "ZERO123PP_4_VIEW_INDICES",
    "ZERO123PP_AZIMUTHS_DEG",
    "ZERO123PP_ELEVATIONS_DEG",
    "ZERO123PP_FOV_DEG",
    "sv3d_azimuths_deg",
    "sv3d_cameras",
    "sv3d_view_indices",
    "zero123pp_cameras",
    "zero123pp_view_indices",
]

ZERO123PP_FOV_DEG = 30.0
#: The 3x2 grid in reading order (view k = row k // 2, column k % 2), relative to the photo.
ZERO123PP_AZIMUTHS_DEG = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
ZERO123PP_ELEVATIONS_DEG = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)
#: The official 4-view subset of the Zero123++ grid (``run_geolrm_zero123.py``).
ZERO123PP_4_VIEW_INDICES = (0, 2, 4, 5)
SV3D_FOV_DEG = 39.6
#: SV3D_p generates 21 orbit frames (``sv3d_p.yaml``).
SV3D_NUM_FRAMES = 21


def zero123pp_view_indices(n_views: int) -> tuple[int, ...]:
    """Grid views used for ``n_views``: all six, or the official four (0, 2, 4, 5)."""
    if n_views == 6:
        return tuple(range(6))
    if n_views == 4:
        return ZERO123PP_4_VIEW_INDICES
    raise InputError(f"Zero123++ gives 6 views (or the official 4-view subset), not {n_views}")


def zero123pp_cameras(n_views: int = 6, size: int = 448, radius: float = MODEL_RADIUS) -> Cameras:
    """The Zero123++ v1.2 rig as GeoLRM uses it (``get_zero123plus_input_cameras``).

    Views are the 3x2 grid in reading order (view k = row k // 2, column k % 2): azimuths
    30, 90, ..., 330 deg relative to the input photo (which sits at azimuth 0), elevations
    20/-10 alternating, fov 30 deg, radius 1.5 (``1.5 * --scale`` officially). ``n_views=4``
    keeps views 0, 2, 4, 5 as ``run_geolrm_zero123.py`` does.
    """
    idx = zero123pp_view_indices(n_views)
    az = [ZERO123PP_AZIMUTHS_DEG[i] for i in idx]
    el = [ZERO123PP_ELEVATIONS_DEG[i] for i in idx]
    return rig_cameras(orbit_poses(az, el, radius), ZERO123PP_FOV_DEG, size)


def sv3d_azimuths_deg(
    official_offset: bool = False, num_frames: int = SV3D_NUM_FRAMES
) -> torch.Tensor:
    """``[num_frames]`` float64 azimuths of the SV3D_p output frames (released: 21).

    SV3D (``simple_video_sample.py``) generates frame i at azimuth ``(i + 1) * 360 / 21``, so the
    last frame (index 20) is the input view at azimuth 0. The official GeoLRM script instead
    assigns ``i * 360 / 21`` (``official_offset=True``), which rotates the whole reconstruction by
    -17.14 deg about z but is otherwise self-consistent.
    """
    i = torch.arange(num_frames, dtype=torch.float64)
    step = 360.0 / num_frames
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
