"""Cameras of the fit: the scene scale its thresholds are relative to, and the new viewpoints
of the novel-view alpha term.

Cameras are OpenGL camera-to-world (x right, y up, looking down -z), in the cameras' frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.cameras.cameras import Cameras
from pipelines.optimize.visual_hull import look_at_point

__all__ = ["NovelViews", "novel_camera", "scene_scale"]


def scene_scale(cams: Cameras) -> float:
    """1.1 x the largest distance from a camera to the cameras' common look-at point (the
    extent the 3DGS thresholds are relative to)."""
    centre = look_at_point(cams)
    d = float((cams.c2w[:, :3, 3].double() - centre).norm(dim=-1).max())
    return 1.1 * d if d > 0 else 1.0


def novel_camera(c2w: Tensor, centre: Tensor, max_tilt_deg: float, gen: torch.Generator) -> Tensor:
    """A new viewpoint: the camera ``c2w [4, 4]`` rotated about ``centre [3]`` by a random
    angle in ``[-max_tilt_deg, max_tilt_deg]`` about a random axis perpendicular to its line of
    sight to the centre. Same distance, still looking at the centre; from a ring of training
    cameras this reaches other elevations. Returns ``[4, 4]``."""
    pos = c2w[:3, 3] - centre
    sight = F.normalize(pos, dim=0)
    helper = torch.zeros_like(sight)
    helper[int(sight.abs().argmin())] = 1.0
    a = F.normalize(torch.linalg.cross(sight, helper), dim=0)
    b = torch.linalg.cross(sight, a)
    phi = float(torch.rand((), generator=gen)) * 2 * math.pi
    axis = a * math.cos(phi) + b * math.sin(phi)
    theta = math.radians(max_tilt_deg) * (2 * float(torch.rand((), generator=gen)) - 1)
    k = torch.zeros(3, 3, dtype=c2w.dtype, device=c2w.device)
    k[0, 1], k[0, 2], k[1, 2] = -axis[2], axis[1], -axis[0]
    k = k - k.T  # cross-product matrix of the axis
    eye = torch.eye(3, dtype=c2w.dtype, device=c2w.device)
    rot = eye + math.sin(theta) * k + (1 - math.cos(theta)) * (k @ k)  # Rodrigues
    out = c2w.clone()
    out[:3, :3] = rot @ c2w[:3, :3]
    out[:3, 3] = centre + rot @ pos
    return out


class NovelViews:
    """Where the novel-view alpha term renders from: each training camera swung about the
    cameras' look-at point (:func:`novel_camera`), at ``scale`` of the training resolution.

    Args:
        cams: the V training cameras. c2w, K: ``[V, 4, 4]``, ``[V, 3, 3]`` of them on the
            fit's device. scale: resolution factor (at least 8 px a side).
    """

    def __init__(self, cams: Cameras, c2w: Tensor, K: Tensor, scale: float):
        self.centre = look_at_point(cams).to(c2w.device, c2w.dtype)
        self.width = max(8, round(cams.width * scale))
        self.height = max(8, round(cams.height * scale))
        self.K = K.clone()
        self.K[:, 0] *= self.width / cams.width
        self.K[:, 1] *= self.height / cams.height

    def camera(
        self, c2w: Tensor, view: int, max_tilt_deg: float, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``(c2w [1, 4, 4], K [1, 3, 3])``: a new viewpoint from training camera ``view``
        (``c2w [4, 4]``), two draws from ``gen``."""
        new = novel_camera(c2w, self.centre, max_tilt_deg, gen)
        return new[None], self.K[view : view + 1]
