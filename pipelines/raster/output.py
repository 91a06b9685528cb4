"""What a render returns: :class:`RenderOutput` (images) and :class:`RenderMeta` (per-Gaussian
screen-space data, gsplat's ``meta``/``info``), the one contract of every raster backend.

Conventions: C cameras, N Gaussians, H x W pixels; depth is the expected camera z
(``sum_i w_i z_i / alpha``), 0 where ``alpha < 1e-6`` (:data:`~pipelines.raster.project.DEPTH_ALPHA_MIN`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipelines.raster.project import DEPTH_ALPHA_MIN, Projection

__all__ = ["RenderMeta", "RenderOutput", "finish"]


@dataclass
class RenderMeta:
    """Screen-space data of the Gaussians of one render (``rasterize(..., with_meta=True)``).

    Attributes:
        means2d: ``[C, N, 2]`` projected centres in pixels. When it requires grad its gradient
            is retained (``retain_grad``), so ``means2d.grad`` holds ``d loss / d means2d``
            after the backward pass (what densification reads).
        radii: ``[C, N, 2]`` half extents in pixels along x and y (the CPU backends'
            opacity-aware box; gsplat's 3.33-sigma box); 0 where the Gaussian is culled or off
            the image.
        depths: ``[C, N]`` camera z of the centres.
        visible: ``[C, N]`` bool, ``radii > 0`` on both axes: the Gaussian reaches the image.
    """

    means2d: Tensor
    radii: Tensor
    depths: Tensor
    visible: Tensor

    @classmethod
    def build(cls, means2d: Tensor, radii: Tensor, depths: Tensor) -> RenderMeta:
        """Meta from the backend's projection (``radii [C, N]`` is widened to ``[C, N, 2]``);
        retains the gradient of ``means2d``."""
        if means2d.requires_grad:
            means2d.retain_grad()
        if radii.dim() == 2:
            radii = radii[..., None].expand(-1, -1, 2)
        radii = radii.to(means2d.dtype)
        return cls(means2d=means2d, radii=radii, depths=depths, visible=(radii > 0).all(-1))

    @classmethod
    def from_projection(cls, proj: Projection) -> RenderMeta:
        """Meta of the CPU backends, from their :class:`~pipelines.raster.project.Projection`."""
        return cls.build(proj.means2d, proj.radii, proj.depths)

    def to(self, device: torch.device | str) -> RenderMeta:
        """The same meta on ``device`` (the moved ``means2d`` retains its gradient)."""
        return RenderMeta.build(
            self.means2d.to(device), self.radii.to(device), self.depths.to(device)
        )


@dataclass
class RenderOutput:
    """What :func:`pipelines.raster.rasterize` returns (C cameras, H x W pixels).

    Attributes:
        rgb: ``[C, H, W, 3]`` colour composited over the background.
        alpha: ``[C, H, W, 1]`` accumulated opacity.
        depth: ``[C, H, W, 1]`` expected camera z (positive distance along the optical axis),
            ``sum_i w_i z_i / alpha``; 0 where ``alpha < 1e-6``.
        meta: :class:`RenderMeta` with ``with_meta=True``, else None.
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    meta: RenderMeta | None = None


def finish(acc: Tensor, alpha: Tensor, bg: Tensor) -> RenderOutput:
    """Accumulated ``[C,H,W,4]`` (RGB + z) and alpha ``[C,H,W,1]`` of a pure-PyTorch compositor,
    and the background ``[C, 3]`` -> :class:`RenderOutput` (the CPU kernel fuses the same two
    steps)."""
    rgb = acc[..., :3] + (1.0 - alpha) * bg[:, None, None, :]
    ok = alpha >= DEPTH_ALPHA_MIN
    depth = torch.where(
        ok, acc[..., 3:4] / alpha.clamp_min(DEPTH_ALPHA_MIN), torch.zeros_like(alpha)
    )
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)
