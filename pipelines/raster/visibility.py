"""How much of each Gaussian a set of views actually sees.

A Gaussian's blending weight in a pixel is ``w_i = alpha_i T_i`` (its alpha times the
transmittance in front of it). Summed over a view's pixels it is the image area the Gaussian
paints; divided by its unoccluded footprint (:func:`footprint`) it is the fraction of it that is
visible. Both are read off one backward pass: the image is linear in the colours, so
``d sum(rgb) / d c_i = sum_pixels w_i`` per channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from pipelines.raster.project import project, viewmats_from_c2w
from pipelines.raster.rasterize import rasterize
from pipelines.splats.gaussians import Gaussians

__all__ = ["Visibility", "footprint", "view_contributions", "view_visibility"]


def footprint(g: Gaussians, c2w: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """``[N]`` integral over the image plane of each Gaussian's alpha in one view, in pixels:
    ``o 2 pi sqrt(det Sigma2d)`` (before the 0.99 cap); 0 where the Gaussian is culled.

    Args:
        g: N Gaussians.
        c2w: ``[1, 4, 4]`` OpenGL camera-to-world.
        K: ``[1, 3, 3]`` intrinsics in pixels.
        width, height: image size in pixels.
    """
    with torch.no_grad():
        viewmats = viewmats_from_c2w(c2w.double()).to(g.means.dtype)
        proj = project(g.means, g.quats, g.scales, g.opacities, viewmats, K, width, height)
        a, b, c = proj.conics[0].unbind(-1)
        det = (a * c - b * b).clamp_min(1e-30)
        area = g.opacities * 2 * math.pi / det.sqrt()
        return torch.where(proj.valid[0], area, torch.zeros_like(area))


@dataclass
class Visibility:
    """What :func:`view_visibility` returns (N Gaussians, V views of H x W pixels).

    Attributes:
        weight: ``[N]`` largest, over the views, of the Gaussian's blending weight summed over
            the view's pixels (in pixels).
        fraction: ``[N]`` largest visible fraction (that weight over the Gaussian's footprint):
            about 1 for a Gaussian nothing covers, 0 for one hidden in every view.
        depth: ``[V, H, W]`` expected depth of each view (0 where alpha < 1e-6).
        alpha: ``[V, H, W]`` accumulated opacity of each view.
    """

    weight: Tensor
    fraction: Tensor
    depth: Tensor
    alpha: Tensor


def view_visibility(
    g: Gaussians, c2w: Tensor, K: Tensor, width: int, height: int, backend: str = "auto"
) -> Visibility:
    """Per-Gaussian visibility over V views, and the views' depth and alpha, from one render
    (and one backward pass) per view.

    Args:
        g: N Gaussians (not modified; no gradient reaches them).
        c2w: ``[V, 4, 4]`` OpenGL camera-to-world.
        K: ``[V, 3, 3]`` intrinsics in pixels.
        width, height: image size in pixels.
        backend: raster backend (see :func:`pipelines.raster.rasterize`).
    """
    colors = torch.full_like(g.colors.detach(), 0.5).requires_grad_(True)
    probe = replace(g.detach(), colors=colors, sh_rest=None)
    best = torch.zeros(len(g), device=g.means.device)
    best_fraction = torch.zeros_like(best)
    c2w, K = c2w.to(g.means.device), K.to(g.means.device)
    depth, alpha = [], []
    for v in range(len(c2w)):
        out = rasterize(
            probe, c2w[v : v + 1], K[v : v + 1], width, height, (1.0, 1.0, 1.0), backend=backend
        )
        (grad,) = torch.autograd.grad(out.rgb.sum(), colors)
        weight = grad.mean(-1)
        best = torch.maximum(best, weight)
        area = footprint(probe, c2w[v : v + 1], K[v : v + 1], width, height)
        best_fraction = torch.maximum(best_fraction, weight / area.clamp_min(1e-12))
        depth.append(out.depth[0, ..., 0].detach())
        alpha.append(out.alpha[0, ..., 0].detach())
    return Visibility(best, best_fraction, torch.stack(depth), torch.stack(alpha))


def view_contributions(
    g: Gaussians, c2w: Tensor, K: Tensor, width: int, height: int, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """``(weight [N], fraction [N])`` of :func:`view_visibility`: each Gaussian's largest
    summed blending weight over the views (pixels) and largest visible fraction."""
    vis = view_visibility(g, c2w, K, width, height, backend)
    return vis.weight, vis.fraction
