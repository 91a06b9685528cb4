"""Model-frame normalisation: map cameras in any user frame into the frame GeoLRM was trained in.

Conventions: the model frame is z-up with the object at the origin and the cameras at radius
:data:`~pipelines.cameras.orbits.MODEL_RADIUS` (1.5) looking at it. The map is a similarity
``M`` (``[4, 4]`` float64, ``x_model = M @ x_user``, see :mod:`pipelines.cameras.similarity`);
cameras already in the model frame get exactly the identity and are returned unchanged.
"""

from __future__ import annotations

import math

import torch

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.geometry import axis_point, rotation_about_z, rotation_between
from pipelines.cameras.orbits import MODEL_RADIUS
from pipelines.errors import InputError

__all__ = ["normalize_to_model_frame"]


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
    centre = axis_point(c2w) if len(cams) > 1 else torch.full((3,), float("nan"))
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
    rot = rotation_between(up, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    if first_azimuth_deg is not None:
        p = rot @ (centers[0] - centre)
        if float(torch.linalg.norm(p[:2])) > 1e-9 * (1.0 + float(torch.linalg.norm(p))):
            current = math.atan2(float(p[1]), float(p[0]))
        else:  # first camera straight above/below the centre: use its up axis, like orbit_poses
            y = rot @ c2w[0, :3, 1]
            current = math.atan2(-float(y[1]), -float(y[0]))
            current = current if float(p[2]) >= 0 else current + math.pi
        rot = rotation_about_z(math.radians(first_azimuth_deg) - current) @ rot
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = scale * rot
    m[:3, 3] = -scale * (rot @ centre)
    if float(torch.max(torch.abs(m - torch.eye(4, dtype=torch.float64)))) <= snap_tol:
        return cams.clone(), torch.eye(4, dtype=torch.float64)
    return cams.transformed(m), m
