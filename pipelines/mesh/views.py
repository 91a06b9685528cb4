"""The fusion views: Fibonacci-sphere cameras framing the object, and their depth/colour renders.

Conventions: z-up world (the Gaussians' frame); poses ``c2w`` are OpenGL camera-to-world
``[V, 4, 4]`` and ``K`` pixel intrinsics ``[V, 3, 3]`` (:mod:`pipelines.cameras.geometry`);
renders are square, ``image_size`` pixels. Depth is the alpha-normalised expected camera z;
pixels with opacity below :data:`ALPHA_THRESHOLD` are background (depth 0) and carve free space
when fused (:mod:`pipelines.mesh.fusion`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipelines.cameras.geometry import fit_distance, fov_to_focal, look_at, percentile_box
from pipelines.device import stage_device
from pipelines.errors import InputError
from pipelines.raster import rasterize
from pipelines.splats.gaussians import Gaussians

__all__ = [
    "ALPHA_THRESHOLD",
    "FOV_DEG",
    "FusionViews",
    "fibonacci_directions",
    "mesh_cameras",
    "object_box",
    "render_views",
]

FOV_DEG = 40.0
ALPHA_THRESHOLD = 0.5


def fibonacci_directions(n: int) -> torch.Tensor:
    """``[n, 3]`` float64 unit vectors spread evenly over the sphere (Fibonacci lattice).

    The first direction is near the top (+z), the last near the bottom; none is exactly at a
    pole.
    """
    if n < 1:
        raise InputError(f"need at least one view, got {n}")
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (1.0 + math.sqrt(5.0)) * i  # golden angle steps
    r = (1.0 - z * z).clamp_min(0.0).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1)


def object_box(
    g: Gaussians, min_opacity: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Robust bounds of the visible Gaussians: ``(lo [3], hi [3], centre [3], radius)``.

    ``lo``/``hi``: the 0.2-99.8 percentile box of the means of Gaussians at least
    ``min_opacity`` opaque, grown by three times their 90th-percentile largest scale plus 3% of
    the box's longest side (so the surface never touches the box). ``centre``/``radius``: the
    box centre and the 99.8th-percentile distance of those means from it, grown the same way
    (at most the box's half diagonal). All float64.
    """
    if len(g) == 0:
        raise InputError("the model has no Gaussians; nothing to mesh")
    keep = g.opacities >= min_opacity
    if int(keep.sum()) < 4:
        keep = torch.ones_like(keep)
    means = g.means[keep].detach().double().cpu()
    scales = g.scales[keep].detach().double().cpu()
    if not bool(torch.isfinite(means).all()):
        raise InputError("the model has non-finite Gaussian positions; nothing to mesh")
    lo, hi, centre, radius = percentile_box(means, 0.2)
    sigma = (
        float(torch.quantile(scales.max(-1).values, 0.9))
        if len(scales) > 1
        else float(scales.max())
    )
    pad = max(3.0 * sigma + 0.03 * float((hi - lo).max()), 1e-3)
    lo, hi = lo - pad, hi + pad
    radius = min(radius + pad, float((hi - lo).norm()) / 2)
    return lo, hi, centre, radius


def mesh_cameras(
    centre: torch.Tensor,
    radius: float,
    views: int,
    image_size: int,
    fov_deg: float = FOV_DEG,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c2w [V, 4, 4], K [V, 3, 3])``: Fibonacci-sphere cameras looking at ``centre``, each
    framing the sphere of ``radius`` around it."""
    dist = fit_distance(radius, fov_deg)
    eyes = centre.double() + fibonacci_directions(views) * dist
    c2w = look_at(eyes, centre.double())
    f = fov_to_focal(fov_deg, image_size)
    K = torch.tensor([[f, 0.0, image_size / 2], [0.0, f, image_size / 2], [0.0, 0.0, 1.0]])
    return c2w, K.expand(views, 3, 3).clone()


def _median_scale(g: Gaussians) -> float:
    keep = g.opacities >= 0.05
    scales = g.scales[keep] if int(keep.sum()) >= 4 else g.scales
    return float(scales.detach().max(-1).values.median()) if len(scales) else 0.0


@dataclass
class FusionViews:
    """Renders of Gaussians for TSDF fusion (what :func:`render_views` returns).

    Attributes:
        depth: ``[V, S, S]`` float32 expected camera z, 0 where opacity < 0.5 (background).
        rgb: ``[V, S, S, 3]`` uint8 straight colour.
        c2w: ``[V, 4, 4]`` OpenGL poses; K: ``[V, 3, 3]`` pixel intrinsics.
        lo, hi, centre, radius: the object's bounds (:func:`object_box`).
        scale: median largest scale of the visible Gaussians (for :func:`~pipelines.mesh.fusion.auto_trunc_voxels`).
    """

    depth: torch.Tensor
    rgb: torch.Tensor
    c2w: torch.Tensor
    K: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    centre: torch.Tensor
    radius: float
    scale: float


def render_views(
    g: Gaussians,
    views: int = 60,
    image_size: int = 384,
    device: str = "cpu",
    batch: int = 8,
    on_view: Callable[[int], None] | None = None,
) -> FusionViews:
    """Render depth and colour of ``g`` from ``views`` Fibonacci-sphere cameras.

    Args:
        g: Gaussians (z-up world).
        views: number of views.
        image_size: square render size in pixels.
        device: ``cpu``, ``cuda[:N]`` or ``mps`` (renders on the CPU); the renders stay there.
        batch: views per rasteriser call (memory vs. overhead).
        on_view: called with the number of views just rendered (progress).
    """
    device = stage_device(device, "raster")
    if views < 1:
        raise InputError(f"--views must be at least 1, got {views}")
    lo, hi, centre, radius = object_box(g)
    c2w, K = mesh_cameras(centre, radius, views, image_size)
    gd = g.detach().to(device)
    depths, rgbs = [], []
    with torch.no_grad():
        for start in range(0, views, batch):
            idx = slice(start, min(start + batch, views))
            out = rasterize(gd, c2w[idx].to(device), K[idx].to(device), image_size, image_size)
            alpha = out.alpha[..., 0]
            fg = alpha >= ALPHA_THRESHOLD
            depths.append(torch.where(fg, out.depth[..., 0], torch.zeros_like(alpha)))
            straight = out.rgb / alpha.clamp_min(1e-6)[..., None]
            rgbs.append((straight.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8))
            if on_view is not None:
                on_view(idx.stop - idx.start)
    return FusionViews(
        torch.cat(depths), torch.cat(rgbs), c2w, K, lo, hi, centre, radius, _median_scale(g)
    )
