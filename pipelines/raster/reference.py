"""Readable pure-PyTorch Gaussian compositing (the reference the fast paths are checked against).

Both functions here consume a :class:`~pipelines.raster.project.Projection` plus per-camera
features and return the *accumulated* features ``sum_i w_i f_i`` and the accumulated opacity
``sum_i w_i`` (background and depth normalisation are applied by the caller). The compositing
rules are the standard 3DGS ones, in the same float order as the fast CPU kernel:

* ``sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy`` with ``d = mean2d - pixel_centre``; skip if
  ``sigma < 0``;
* ``alpha = min(0.99, opacity * exp(-sigma))``; skip if ``alpha < 1/255``;
* front to back by camera depth, ``w_i = alpha_i T_i``, ``T_{i+1} = T_i (1 - alpha_i)``;
* a pixel stops (and the Gaussian that would cross the line is dropped) as soon as
  ``T_i (1 - alpha_i) < 1e-4``. Since ``T`` only decreases, that is ``cumprod(1 - alpha) >= 1e-4``.

Everything is differentiable by torch autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipelines.raster.project import ALPHA_MIN, Projection, pixel_rects

ALPHA_MAX = 0.99
T_MIN = 1e-4
TILE = 16


def gaussian_alphas(pix: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor) -> Tensor:
    """Alpha of every Gaussian at every pixel, with the 3DGS clamp and skip rules applied.

    Args:
        pix: ``[P, 2]`` pixel centres (x, y).
        means2d: ``[M, 2]``; conics: ``[M, 3]``; opacities: ``[M]``.

    Returns:
        ``[P, M]`` alphas; skipped entries are exactly 0.
    """
    dx = means2d[None, :, 0] - pix[:, None, 0]  # [P, M]
    dy = means2d[None, :, 1] - pix[:, None, 1]
    a, b, c = conics[None, :, 0], conics[None, :, 1], conics[None, :, 2]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacities[None, :] * torch.exp(-sigma), ALPHA_MAX)
    keep = (sigma >= 0) & (alpha >= ALPHA_MIN)
    return torch.where(keep, alpha, torch.zeros_like(alpha))


def composite(alphas: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of depth-sorted Gaussians with early termination.

    Args:
        alphas: ``[P, M]`` per-pixel alphas, Gaussians sorted near to far (0 = skipped).
        feats: ``[M, D]`` per-Gaussian features.

    Returns:
        ``([P, D] accumulated features, [P] accumulated opacity)``.
    """
    if alphas.shape[1] == 0:
        p = alphas.shape[0]
        return feats.new_zeros(p, feats.shape[1]), feats.new_zeros(p)
    t_incl = torch.cumprod(1.0 - alphas, dim=1)  # transmittance after each Gaussian
    alive = t_incl >= T_MIN
    t_excl = torch.cat([torch.ones_like(t_incl[:, :1]), t_incl[:, :-1]], dim=1)
    w = torch.where(alive, alphas * t_excl, torch.zeros_like(alphas))
    return w @ feats, w.sum(1)


def _pixel_centres(x0: int, x1: int, y0: int, y1: int, like: Tensor) -> Tensor:
    """``[(y1-y0)*(x1-x0), 2]`` centres of the pixels in ``[x0,x1) x [y0,y1)``, row-major."""
    ys = torch.arange(y0, y1, dtype=like.dtype, device=like.device) + 0.5
    xs = torch.arange(x0, x1, dtype=like.dtype, device=like.device) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)


def rasterize_reference(
    proj: Projection, feats: Tensor, opacities: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """Tile-based reference rasterizer (16x16 tiles, dense per tile).

    Each tile composites the Gaussians whose opacity-aware pixel box touches it, in depth
    order, densely over its pixels.

    Args:
        proj: projection of N Gaussians into C cameras.
        feats: ``[C, N, D]`` per-camera features (e.g. RGB + depth).
        opacities: ``[N]``.
        width, height: image size.

    Returns:
        ``([C, H, W, D] accumulated features, [C, H, W, 1] accumulated opacity)``.
    """
    n_cam, _, n_ch = feats.shape
    x0, x1, y0, y1 = pixel_rects(proj.means2d, proj.radii, width, height)  # [C, N] each
    tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
    images, alphas = [], []
    for cam in range(n_cam):
        live = torch.nonzero((x0[cam] <= x1[cam]) & (y0[cam] <= y1[cam])).squeeze(1)
        live = live[torch.argsort(proj.depths[cam, live].detach(), stable=True)]
        tx0, tx1 = x0[cam, live] // TILE, x1[cam, live] // TILE
        ty0, ty1 = y0[cam, live] // TILE, y1[cam, live] // TILE
        m2d, con = proj.means2d[cam, live], proj.conics[cam, live]
        opa, fts = opacities[live], feats[cam, live]
        rows_f, rows_a = [], []
        for ty in range(tiles_y):
            row_f, row_a = [], []
            py0, py1 = ty * TILE, min((ty + 1) * TILE, height)
            for tx in range(tiles_x):
                px0, px1 = tx * TILE, min((tx + 1) * TILE, width)
                sel = torch.nonzero((tx0 <= tx) & (tx <= tx1) & (ty0 <= ty) & (ty <= ty1))
                sel = sel.squeeze(1)  # still depth-sorted
                pix = _pixel_centres(px0, px1, py0, py1, m2d)
                alpha = gaussian_alphas(pix, m2d[sel], con[sel], opa[sel])
                f, a = composite(alpha, fts[sel])
                row_f.append(f.reshape(py1 - py0, px1 - px0, n_ch))
                row_a.append(a.reshape(py1 - py0, px1 - px0, 1))
            rows_f.append(torch.cat(row_f, 1))
            rows_a.append(torch.cat(row_a, 1))
        images.append(torch.cat(rows_f, 0))
        alphas.append(torch.cat(rows_a, 0))
    return torch.stack(images), torch.stack(alphas)


def brute_force(
    proj: Projection, feats: Tensor, opacities: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """Every valid Gaussian at every pixel, globally depth-sorted, dense (small scenes only).

    Uses ``proj.valid`` (depth range, opacity, non-degenerate) but neither the radii nor the
    tiles, so it checks that the binning never drops a contribution.

    Args / Returns: as :func:`rasterize_reference`.
    """
    n_cam, _, n_ch = feats.shape
    pix = _pixel_centres(0, width, 0, height, feats)
    images, alphas = [], []
    for cam in range(n_cam):
        idx = torch.nonzero(proj.valid[cam]).squeeze(1)
        idx = idx[torch.argsort(proj.depths[cam, idx].detach(), stable=True)]
        alpha = gaussian_alphas(pix, proj.means2d[cam, idx], proj.conics[cam, idx], opacities[idx])
        f, a = composite(alpha, feats[cam, idx])
        images.append(f.reshape(height, width, n_ch))
        alphas.append(a.reshape(height, width, 1))
    return torch.stack(images), torch.stack(alphas)
