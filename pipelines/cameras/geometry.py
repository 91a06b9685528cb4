"""Camera geometry primitives: rotations, look-at poses, fov and focal length, projection.

Conventions (the same as the official GeoLRM code and nerfstudio):

* **World**: right-handed, **+z up**.
* **Pose** ``c2w`` ``[..., 4, 4]``: OpenGL camera-to-world. Columns are the camera's +x (right),
  +y (up), +z (backwards; the camera looks along -z) in world coordinates, then the centre.
  For OpenCV (x right, y down, z forward) use ``c2w @ diag(1, -1, -1, 1)``.
* **Intrinsics** ``K`` ``[..., 3, 3]`` in **pixels**, OpenCV layout ``[[fx, s, cx], [0, fy, cy],
  [0, 0, 1]]``; pixel (column i, row j) covers [i, i+1) x [j, j+1), so its centre is at
  (i + 0.5, j + 0.5).
* **Field of view** in degrees across ``size`` pixels: ``focal = 0.5 * size / tan(fov / 2)``
  (``size = 1`` gives GeoLRM's normalised focal).

Poses built here are float32; the maths behind them runs in float64. :func:`project` (world
points -> pixels, differentiable) computes in its inputs' dtype on their device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipelines.errors import InputError

__all__ = [
    "angle_to_focal",
    "as_float64",
    "axis_point",
    "fit_distance",
    "focal_to_angle",
    "focal_to_fov",
    "fov_to_focal",
    "look_at",
    "nearest_rotation",
    "percentile_box",
    "poses_from_axes",
    "project",
    "projection_matrices",
    "rotation_about_z",
    "rotation_between",
]


def as_float64(x: Any) -> torch.Tensor:
    """``x`` (tensor, array, sequence or number) as a float64 CPU tensor (detached)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def nearest_rotation(a: torch.Tensor) -> torch.Tensor:
    """Nearest proper rotation(s) to ``a`` ``[..., 3, 3]`` (polar decomposition via SVD)."""
    u, _, vh = torch.linalg.svd(a)
    d = torch.sign(torch.linalg.det(u @ vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    fix = torch.ones(a.shape[:-1], dtype=a.dtype)
    fix[..., 2] = d
    return (u * fix.unsqueeze(-2)) @ vh


def rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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


def rotation_about_z(angle_rad: float) -> torch.Tensor:
    """``[3, 3]`` float64 rotation by ``angle_rad`` about +z (counter-clockwise from above)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def poses_from_axes(
    x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, p: torch.Tensor
) -> torch.Tensor:
    """``[V, 4, 4]`` float32 c2w with columns ``x, y, z`` (``[V, 3]`` each) and centres ``p``."""
    out = torch.zeros(x.shape[0], 4, 4, dtype=torch.float64)
    out[:, :3, 0], out[:, :3, 1], out[:, :3, 2], out[:, :3, 3] = x, y, z, p
    out[:, 3, 3] = 1.0
    return out.float()


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
    eye_t, tgt, upv = (as_float64(v).reshape(-1, 3) for v in (eye, target, up))
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
    return poses_from_axes(x, y, z, eye_t)


def angle_to_focal(angle_rad: float, size_px: float) -> float:
    """Pixel focal length ``0.5 * size / tan(angle / 2)`` for a field of view in radians (as
    ``camera_angle_x`` in a transforms.json)."""
    return 0.5 * size_px / math.tan(angle_rad / 2.0)


def focal_to_angle(focal_px: float, size_px: float) -> float:
    """Field of view in radians for a pixel focal length (inverse of :func:`angle_to_focal`)."""
    return 2.0 * math.atan(0.5 * size_px / focal_px)


def fov_to_focal(fov_deg: float, size_px: float) -> float:
    """Pixel focal length ``0.5 * size / tan(fov / 2)`` (size 1 gives the normalised focal)."""
    if not 0.0 < fov_deg < 180.0:
        raise InputError(f"field of view {fov_deg} deg is out of range; use 0 < fov < 180")
    return angle_to_focal(math.radians(fov_deg), size_px)


def focal_to_fov(focal_px: float, size_px: float) -> float:
    """Field of view in degrees for a pixel focal length (inverse of :func:`fov_to_focal`)."""
    return math.degrees(focal_to_angle(focal_px, size_px))


def fit_distance(radius: float, fov_deg: float, margin: float = 1.05) -> float:
    """Camera distance at which a sphere of ``radius`` fills the field of view ``fov_deg``
    (degrees), with ``margin`` to spare."""
    return margin * radius / math.sin(math.radians(fov_deg) / 2)


def axis_point(c2w: torch.Tensor, parallel: str = "nan") -> torch.Tensor:
    """``[3]`` float64 least-squares closest point to all optical axes of ``c2w`` ``[V, 4, 4]``
    (float64): the point the cameras look at.

    With (nearly) parallel axes there is no such point; ``parallel`` says what to return then:
    ``"nan"`` NaNs (the caller decides), ``"ahead"`` the mean of the points one unit in front
    of each camera.
    """
    if parallel not in ("nan", "ahead"):
        raise ValueError(f"parallel must be 'nan' or 'ahead', not {parallel!r}")
    centers, dirs = c2w[:, :3, 3], -c2w[:, :3, 2]
    dirs = dirs / torch.linalg.norm(dirs, dim=-1, keepdim=True)
    proj = torch.eye(3, dtype=torch.float64) - dirs.unsqueeze(-1) * dirs.unsqueeze(-2)
    a = proj.sum(0)
    b = (proj @ centers.unsqueeze(-1)).sum(0).squeeze(-1)
    evals = torch.linalg.eigvalsh(a)
    if float(evals[0]) / len(c2w) < 1e-6:  # axes (nearly) parallel: no unique closest point
        if parallel == "ahead":
            return (centers + dirs).mean(0)
        return torch.full((3,), float("nan"), dtype=torch.float64)
    return torch.linalg.solve(a, b)


def percentile_box(
    points: torch.Tensor, percentile: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Robust bounds of points ``[N, 3]``, in their dtype: ``(lo [3], hi [3], centre [3], radius)``.

    ``lo``/``hi``: the ``percentile`` and ``100 - percentile`` percentiles per axis; ``centre``
    their midpoint; ``radius`` the ``100 - percentile`` percentile of the points' distances from
    the centre. One point: ``lo = hi = centre`` = that point, radius 0.
    """
    q = percentile / 100.0
    if len(points) > 1:
        lo = torch.quantile(points, q, dim=0)
        hi = torch.quantile(points, 1.0 - q, dim=0)
    else:
        lo = hi = points[0]
    centre = (lo + hi) / 2
    dist = (points - centre).norm(dim=-1)
    radius = float(torch.quantile(dist, 1.0 - q)) if len(dist) > 1 else 0.0
    return lo, hi, centre, radius


def project(
    points: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, z_min: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points to pixels: positions ``[..., 2]`` and camera z ``[...]`` (positive in front).

    Args:
        points: ``[..., 3]`` world points.
        c2w: ``[..., 4, 4]`` OpenGL camera-to-world (rigid: the rotation is inverted by its
            transpose).
        K: ``[..., 3, 3]`` pixel intrinsics ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``.
        z_min: divide by ``max(z, z_min)`` (points behind the camera then land far outside
            the image instead of mirrored into it); ``None`` divides by ``z`` itself.

    Leading dimensions broadcast (points ``[P, 3]`` with ``c2w [M, 1, 4, 4]`` gives ``[M, P]``).
    Computed in the inputs' dtype on their device, differentiable: ``x_c = R^T (p - t)``,
    ``z = -z_c``, ``u = (fx x_c - s y_c) / z + cx``, ``v = -fy y_c / z + cy`` (pixel centres at
    ``i + 0.5``, v down).
    """
    rot, t = c2w[..., :3, :3], c2w[..., :3, 3]
    cam = ((points - t)[..., None, :] @ rot)[..., 0, :]  # world -> camera: R^T (p - t)
    z = -cam[..., 2]
    zs = z if z_min is None else z.clamp(min=z_min)
    x, y = cam[..., 0], -cam[..., 1]  # OpenCV: y down
    u = K[..., 0, 0] * x / zs + K[..., 0, 1] * y / zs + K[..., 0, 2]
    v = K[..., 1, 1] * y / zs + K[..., 1, 2]
    return torch.stack([u, v], -1), z


def projection_matrices(c2w: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``[V, 3, 4]`` float64 world -> (u*z, v*z, z) matrices, ``P = K [R_cv | t_cv]``, on the CPU
    (for kernels that apply a matrix per view, such as TSDF fusion and texture baking).

    ``c2w`` is OpenGL (camera looks down -z); the OpenCV world-to-camera flips y and z. The
    world-to-camera is the exact inverse of ``c2w`` in float64, so for a float32 pose whose
    rotation is orthonormal only to float32 rounding, ``P`` and :func:`project` agree to that
    rounding, not bit for bit.
    """
    c2w = c2w.detach().to("cpu", torch.float64)
    K = K.detach().to("cpu", torch.float64)
    w2c = torch.linalg.inv(c2w)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    rt = flip @ w2c[:, :3, :]  # [V, 3, 4]
    return K @ rt
