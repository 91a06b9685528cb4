"""Multi-view photometric consistency: the rendered depth of one view must warp its photo onto
its neighbours' photos.

Silhouettes cannot see into a concavity (an ear's cup, an eye socket), and a lid of Gaussians
across it can reproduce every training view when the surface behind is near-uniform. The
photos still disagree about the lid: a pixel's colour comes from the true surface point, so
lifting the pixel to the lid's depth and projecting it into a neighbouring view lands on some
other point of the cup. This term (as in multi-view-stereo regularised splatting) compares the
reference photo with the neighbour's photo sampled at the warped positions; its gradient moves
the rendered depth along each pixel's ray towards where the photos agree.

Pixels are kept where the reference mask and the rendered alpha are solid, the warped point is
in the neighbour's frame and mask, and the neighbour sees it: its depth there is not more than
``occlusion`` (relative) in front of the neighbour's last rendered depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.cameras.geometry import project

__all__ = [
    "PhotometricTerm",
    "backproject",
    "blur",
    "neighbour_views",
    "photometric_consistency",
    "solid_pixels",
]


def backproject(depth: Tensor, c2w: Tensor, K: Tensor) -> Tensor:
    """World points of every pixel centre lifted to its camera z.

    Args:
        depth: ``[H, W]`` camera z (positive, along the optical axis).
        c2w: ``[4, 4]`` OpenGL camera-to-world.
        K: ``[3, 3]`` intrinsics (pixel centres at ``i + 0.5``).

    Returns:
        ``[H, W, 3]`` world points.
    """
    h, w = depth.shape
    v, u = torch.meshgrid(
        torch.arange(h, device=depth.device, dtype=depth.dtype) + 0.5,
        torch.arange(w, device=depth.device, dtype=depth.dtype) + 0.5,
        indexing="ij",
    )
    x = (u - K[0, 2]) / K[0, 0]
    y = -(v - K[1, 2]) / K[1, 1]  # OpenGL: +y up, the camera looks down -z
    cam = torch.stack([x * depth, y * depth, -depth], -1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def neighbour_views(c2w: Tensor, k: int, max_angle_deg: float = 60.0) -> list[list[int]]:
    """For each of V cameras ``c2w [V, 4, 4]``, the (up to) ``k`` others whose viewing
    directions are closest to its own, within ``max_angle_deg``."""
    d = F.normalize(-c2w[:, :3, 2].double(), dim=-1)
    cos = d @ d.T
    cos.fill_diagonal_(-2.0)
    limit = torch.cos(torch.tensor(max_angle_deg, dtype=torch.float64).deg2rad())
    out = []
    for row in cos:
        order = torch.argsort(row, descending=True)[:k]
        out.append([int(j) for j in order if row[j] >= limit])
    return out


def blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` (replicate padding); identity for
    ``sigma <= 0``."""
    if sigma <= 0:
        return images
    r = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-r, r + 1, dtype=images.dtype, device=images.device)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    c = images.shape[1]
    out = F.pad(images, (r, r, 0, 0), mode="replicate")
    out = F.conv2d(out, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, r, r), mode="replicate")
    return F.conv2d(out, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def solid_pixels(masks: Tensor, margin: int = 2) -> Tensor:
    """``[V, H, W]`` float 1 / 0: pixels of ``masks [V, H, W]`` above 0.99 whose neighbours
    within ``margin`` px are too. Pixels next to a silhouette mix object and background (and a
    blur spreads the background further in); warping onto them biases the depth backwards."""
    solid = (masks > 0.99).to(masks.dtype)[:, None]
    k = 2 * margin + 1
    return (-F.max_pool2d(-solid, k, stride=1, padding=margin)[:, 0]).clamp(min=0)


def _sample(images: Tensor, uv: Tensor, mode: str = "bilinear") -> Tensor:
    """``[M, C, H, W]`` sampled at pixel positions ``[M, P, 2]`` -> ``[M, P, C]``."""
    h, w = images.shape[-2:]
    grid = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1)[:, None]
    out = F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)
    return out[:, :, 0].transpose(1, 2)


def photometric_consistency(
    depth: Tensor,
    valid: Tensor,
    image: Tensor,
    c2w: Tensor,
    K: Tensor,
    others: Tensor,
    other_masks: Tensor,
    other_depths: Tensor,
    other_c2w: Tensor,
    other_K: Tensor,
    occlusion: float = 0.01,
) -> Tensor:
    """Mean L1 colour difference between a reference photo and its neighbours' photos sampled
    where the reference's depth puts each pixel.

    Args:
        depth: ``[H, W]`` rendered camera z of the reference view (differentiable).
        valid: ``[H, W]`` bool, pixels to use (solid mask and alpha).
        image: ``[3, H, W]`` reference photo.
        c2w, K: ``[4, 4]``, ``[3, 3]`` reference camera.
        others: ``[M, 3, H', W']`` neighbour photos; other_masks ``[M, H', W']`` where their
            photos may be sampled (> 0.99).
        other_depths: ``[M, H', W']`` their last rendered depth (0 where unknown: no check).
        other_c2w, other_K: ``[M, 4, 4]``, ``[M, 3, 3]``.
        occlusion: relative depth margin of the visibility test.

    Returns:
        Scalar loss (0 when no pixel qualifies), differentiable w.r.t. ``depth``.
    """
    pts = backproject(depth, c2w, K)[valid][None]  # [1, P, 3]
    ref = image.permute(1, 2, 0)[valid]  # [P, 3]
    h, w = others.shape[-2:]
    uv, z = project(pts, other_c2w[:, None], other_K[:, None], z_min=1e-6)  # [M, P, 2], [M, P]
    with torch.no_grad():
        ok = (uv[..., 0] >= 0.5) & (uv[..., 0] <= w - 0.5) & (uv[..., 1] >= 0.5)
        ok &= (uv[..., 1] <= h - 0.5) & (z > 0)
        ok &= _sample(other_masks[:, None], uv, "nearest")[..., 0] > 0.99
        seen = _sample(other_depths[:, None], uv, "nearest")[..., 0]
        ok &= (seen <= 0) | (z <= seen * (1 + occlusion))
        weight = ok.to(depth.dtype)
    diff = (_sample(others, uv) - ref).abs().sum(-1)  # [M, P]
    return (diff * weight).sum() / (3 * weight.sum()).clamp(min=1.0)


class PhotometricTerm:
    """The multi-view photometric term of the fit over V training views: blurred photos, each
    view's neighbours, and the last rendered depth of every view (for the occlusion test).

    Args:
        rgb: ``[V, H, W, 3]`` photos; alpha: ``[V, H, W, 1]`` masks or None (all solid).
        c2w, K: ``[V, 4, 4]``, ``[V, 3, 3]`` the views' cameras.
        neighbours: how many nearest views each view is compared with (:func:`neighbour_views`).
        blur_px: Gaussian blur of the photos (:func:`blur`).
    """

    def __init__(
        self,
        rgb: Tensor,
        alpha: Tensor | None,
        c2w: Tensor,
        K: Tensor,
        neighbours: int,
        blur_px: float,
    ):
        self.c2w, self.K = c2w, K
        self.images = blur(rgb.permute(0, 3, 1, 2), blur_px)
        masks = torch.ones_like(self.images[:, 0]) if alpha is None else alpha[..., 0]
        # solid interiors only, in the reference and where the warp lands
        self.solid = solid_pixels(masks)
        self.neighbours = neighbour_views(c2w, neighbours)
        self.depths = torch.zeros_like(masks)

    def loss(self, views: list[int], depth: Tensor, alpha: Tensor, active: bool) -> Tensor:
        """Mean over the rendered ``views`` of :func:`photometric_consistency` (0 where
        ``active`` is False or a view has no neighbour); records each view's depth.

        Args:
            views: indices of the B rendered views. depth, alpha: ``[B, H, W, 1]`` renders
                (depth differentiable).
        """
        total = depth.new_zeros(())
        for k, v in enumerate(views):
            d = depth[k, ..., 0]
            if active and self.neighbours[v]:
                nb = self.neighbours[v]
                valid = (self.solid[v] > 0.5) & (alpha[k, ..., 0].detach() > 0.9) & (d.detach() > 0)
                total = total + photometric_consistency(
                    d,
                    valid,
                    self.images[v],
                    self.c2w[v],
                    self.K[v],
                    self.images[nb],
                    self.solid[nb],
                    self.depths[nb],
                    self.c2w[nb],
                    self.K[nb],
                )
            self.depths[v] = d.detach()
        return total / len(views)
