"""Visual hull by space carving, and initial Gaussians sampled on it.

:func:`carve_visual_hull` keeps the voxels whose centres project inside the object mask of
every view that sees them. The grid is found in two passes: a coarse one over a cube around
the cameras' common look-at point (the region they all face), then a fine one over the bounding
box of what the coarse pass kept. Masks are compared through a signed distance field (pixels,
bilinearly interpolated), so the hull boundary is placed to a fraction of a pixel and can be
dilated by ``margin_px`` to keep thin parts.

:func:`hull_gaussians` samples isotropic Gaussians on the hull surface (and a few inside it),
coloured by the views that see them (a per-view depth buffer of the hull decides visibility,
views facing the surface squarely weigh most) and sized by the distance to their neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.geometry import axis_point, project
from pipelines.errors import InputError
from pipelines.optimize.filters import gaussian_taps
from pipelines.splats.gaussians import Gaussians
from pipelines.threads import torch_threads

__all__ = [
    "VisualHull",
    "carve_visual_hull",
    "hull_gaussians",
    "hull_normals",
    "look_at_point",
    "quat_z_to",
]


@dataclass
class VisualHull:
    """An occupancy grid of cubic voxels.

    Attributes:
        occupied: ``[X, Y, Z]`` bool, True inside the hull.
        origin: ``[3]`` float64 world position of the centre of voxel ``(0, 0, 0)``.
        voxel: edge length of a voxel (world units).
    """

    occupied: Tensor
    origin: Tensor
    voxel: float

    @property
    def volume(self) -> float:
        """Volume of the occupied voxels (world units cubed)."""
        return float(self.occupied.sum()) * self.voxel**3

    def centers(self, mask: Tensor | None = None) -> Tensor:
        """``[M, 3]`` float64 centres of the voxels in ``mask`` (default: the occupied ones)."""
        idx = torch.nonzero(self.occupied if mask is None else mask)
        return self.origin + idx.double() * self.voxel

    def surface(self) -> Tensor:
        """``[X, Y, Z]`` bool: occupied voxels with at least one empty 6-neighbour."""
        occ = self.occupied
        p = torch.nn.functional.pad(occ[None].float(), (1, 1, 1, 1, 1, 1))[0] > 0
        inner = occ & p[2:, 1:-1, 1:-1] & p[:-2, 1:-1, 1:-1] & p[1:-1, 2:, 1:-1]
        inner &= p[1:-1, :-2, 1:-1] & p[1:-1, 1:-1, 2:] & p[1:-1, 1:-1, :-2]
        return occ & ~inner

    def dilated(self, voxels: int) -> VisualHull:
        """The hull grown by ``voxels`` voxels (a cube neighbourhood), same grid."""
        if voxels <= 0:
            return self
        k = 2 * int(voxels) + 1
        occ = torch.nn.functional.max_pool3d(self.occupied[None, None].float(), k, 1, int(voxels))
        return VisualHull(occ[0, 0] > 0, self.origin, self.voxel)

    def contains(self, points: Tensor) -> Tensor:
        """``[N]`` bool: which world points fall in an occupied voxel."""
        ijk = torch.round((points.double() - self.origin) / self.voxel).long()
        shape = torch.tensor(self.occupied.shape)
        ok = ((ijk >= 0) & (ijk < shape)).all(-1)
        out = torch.zeros(len(points), dtype=torch.bool)
        i = ijk[ok]
        out[ok] = self.occupied[i[:, 0], i[:, 1], i[:, 2]]
        return out


def look_at_point(cams: Cameras) -> Tensor:
    """``[3]`` float64 least-squares closest point to all optical axes (with nearly parallel
    axes: the mean of the points one unit in front of each camera; see
    :func:`~pipelines.cameras.geometry.axis_point`)."""
    return axis_point(cams.c2w.double(), parallel="ahead")


def _signed_distance(masks: Tensor, threshold: float) -> Tensor:
    """``[V, H, W]`` float32 signed distance in pixels to the mask boundary (negative inside)."""
    from scipy.ndimage import distance_transform_edt

    out = []
    for m in (masks >= threshold).cpu().numpy():
        if not m.any():
            out.append(np.full(m.shape, 1e6, dtype=np.float32))
            continue
        outside = distance_transform_edt(~m)  # distance to the nearest inside pixel
        inside = distance_transform_edt(m) if not m.all() else np.full(m.shape, 1e6)
        out.append(np.where(m, 0.5 - inside, outside - 0.5).astype(np.float32))
    return torch.from_numpy(np.stack(out))


def _project(cams: Cameras, points: Tensor, v: int) -> tuple[Tensor, Tensor]:
    """Pixel coordinates ``[N, 2]`` and depth ``[N]`` of float64 world points in view ``v``."""
    return project(points, cams.c2w[v].double(), cams.K[v].double(), z_min=1e-9)


def _sample_bilinear(image: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup of ``image`` ``[H, W, C]`` at pixel coordinates ``uv`` ``[N, 2]``
    (pixel centres at +0.5; clamped at the borders) -> ``[N, C]``."""
    h, w = image.shape[:2]
    x = (uv[:, 0] - 0.5).clamp(0, w - 1)
    y = (uv[:, 1] - 0.5).clamp(0, h - 1)
    x0 = x.floor().long().clamp(max=max(w - 2, 0))
    y0 = y.floor().long().clamp(max=max(h - 2, 0))
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    fx, fy = (x - x0).to(image.dtype)[:, None], (y - y0).to(image.dtype)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bot = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def _in_image(cams: Cameras, uv: Tensor, depth: Tensor) -> Tensor:
    ok = (depth > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < cams.width)
    return ok & (uv[:, 1] >= 0) & (uv[:, 1] < cams.height)


def _carve(cams: Cameras, sdf: Tensor, points: Tensor, margin_px: float, min_views: int) -> Tensor:
    """``[N]`` bool: inside the (dilated) mask of every view that sees the point, and seen by
    at least ``min_views`` views."""
    keep = torch.ones(len(points), dtype=torch.bool)
    seen = torch.zeros(len(points), dtype=torch.int32)
    for v in range(len(cams)):
        idx = torch.nonzero(keep)[:, 0]
        if len(idx) == 0:
            break
        uv, depth = _project(cams, points[idx], v)
        visible = _in_image(cams, uv, depth)
        d = _sample_bilinear(sdf[v][..., None], uv[visible].float())[:, 0]
        inside = torch.ones(len(idx), dtype=torch.bool)
        inside[visible] = d <= margin_px
        keep[idx] = inside
        seen[idx[visible]] += 1
    return keep & (seen >= min_views)


def _grid(lo: Tensor, hi: Tensor, resolution: int) -> tuple[Tensor, float, tuple[int, int, int]]:
    """Voxel centres covering the box ``[lo, hi]``, ``resolution`` voxels on its longest side."""
    voxel = float((hi - lo).max()) / resolution
    dims = tuple(max(1, math.ceil(float(e) / voxel - 1e-9)) for e in (hi - lo))
    centre = (lo + hi) / 2
    origin = centre - (torch.tensor(dims, dtype=torch.float64) - 1) / 2 * voxel
    axes = [origin[i] + torch.arange(dims[i], dtype=torch.float64) * voxel for i in range(3)]
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return pts, voxel, dims  # type: ignore[return-value]


@torch_threads(1)  # memory-bound element-wise ops: a second thread mostly waits
def carve_visual_hull(
    cams: Cameras,
    masks: Tensor,
    resolution: int = 128,
    threshold: float = 0.5,
    margin_px: float = 0.0,
    min_views: int | None = None,
    coarse_resolution: int = 48,
) -> VisualHull:
    """Space carving: the voxels inside the object mask of every view that sees them.

    Args:
        cams: V cameras whose intrinsics match the masks' size.
        masks: ``[V, H, W]`` object masks / alpha in [0, 1].
        resolution: voxels along the longest side of the fine grid.
        threshold: alpha at or above which a pixel is inside the object.
        margin_px: dilation of the masks in pixels (> 0 keeps thin parts that a voxel centre
            might just miss).
        min_views: a voxel must project inside at least this many images (default: half of the
            views, rounded up); views it falls outside of (or behind) do not carve it.
        coarse_resolution: voxels per side of the first pass over the cube around the cameras'
            look-at point (half-size 0.7 x the nearest camera distance).

    Returns:
        :class:`VisualHull` on the fine grid (bounding box of the coarse hull plus a margin).

    Raises:
        InputError: the masks carve away everything (cameras and images do not agree).
    """
    if masks.dim() != 3 or masks.shape[0] != len(cams):
        raise InputError(f"masks must be [V, H, W] with V={len(cams)}, got {tuple(masks.shape)}")
    if tuple(masks.shape[1:]) != (cams.height, cams.width):
        raise InputError(
            f"masks are {masks.shape[2]}x{masks.shape[1]} but the cameras are "
            f"{cams.width}x{cams.height}; resize the cameras to the masks"
        )
    min_views = math.ceil(len(cams) / 2) if min_views is None else int(min_views)
    sdf = _signed_distance(masks.float(), threshold)
    centre = look_at_point(cams)
    half = 0.7 * float((cams.c2w[:, :3, 3].double() - centre).norm(dim=-1).min())
    lo, hi = centre - half, centre + half
    pts, voxel, _ = _grid(lo, hi, coarse_resolution)
    keep = _carve(cams, sdf, pts, margin_px + 1.0, min_views)  # generous: a coarse voxel is big
    if not keep.any():
        raise InputError(
            "the visual hull is empty: no point lies inside the object masks of all views; "
            "check that the cameras belong to the images and that the images have an alpha "
            "channel (transparent background)"
        )
    kept = pts[keep]
    lo = torch.maximum(kept.min(0).values - 1.5 * voxel, lo)
    hi = torch.minimum(kept.max(0).values + 1.5 * voxel, hi)
    pts, voxel, dims = _grid(lo, hi, resolution)
    keep = _carve(cams, sdf, pts, margin_px, min_views)
    if not keep.any():
        raise InputError(
            "the visual hull is empty at the fine resolution; the object is too thin for the "
            "masks (try a higher resolution)"
        )
    return VisualHull(keep.reshape(dims), pts[0].clone(), voxel)


def _zbuffers(cams: Cameras, points: Tensor, cell: int) -> tuple[Tensor, int]:
    """Per-view minimum depth ``[V, cells]`` of ``points`` on a grid of ``cell x cell`` pixel
    cells, and the grid width."""
    gw, gh = math.ceil(cams.width / cell), math.ceil(cams.height / cell)
    zbuf = torch.full((len(cams), gh * gw), float("inf"), dtype=torch.float64)
    for v in range(len(cams)):
        uv, depth = _project(cams, points, v)
        ok = _in_image(cams, uv, depth)
        flat = (uv[ok, 1] / cell).long() * gw + (uv[ok, 0] / cell).long()
        zbuf[v].scatter_reduce_(0, flat, depth[ok], reduce="amin")
    return zbuf, gw


def hull_normals(hull: VisualHull, points: Tensor) -> Tensor:
    """``[N, 3]`` outward unit normals at world points: minus the gradient of the occupancy
    blurred by a Gaussian of 1.5 voxels, trilinearly interpolated."""
    occ = hull.occupied[None, None].double()
    k = gaussian_taps(max(1, math.ceil(2.5 * 1.5)), 1.5)
    r = len(k) // 2
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(k)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        occ = torch.nn.functional.conv3d(torch.nn.functional.pad(occ, pad), k.view(shape))
    grads = torch.stack(torch.gradient(occ[0, 0]), 0)[None]  # [1, 3, X, Y, Z]
    dims = torch.tensor(hull.occupied.shape, dtype=torch.float64)
    ijk = (points.double() - hull.origin) / hull.voxel  # voxel index space
    grid = (2 * ijk / (dims - 1).clamp_min(1) - 1).flip(-1)  # grid_sample wants (z, y, x) order
    g = torch.nn.functional.grid_sample(
        grads, grid.view(1, -1, 1, 1, 3), mode="bilinear", align_corners=True
    )[0, :, :, 0, 0].T  # [N, 3]
    return -torch.nn.functional.normalize(g, dim=-1)


def _view_colors(
    hull: VisualHull,
    cams: Cameras,
    images: Tensor,
    masks: Tensor | None,
    means: Tensor,
    surf_mask: Tensor,
) -> Tensor:
    """Colour of each point: the views that see it (in front of the hull's depth buffer),
    weighted by how squarely they face the hull surface (normal . view direction, squared) and
    by the mask's alpha (to the 4th power); the white background is divided out where alpha is
    known. Points no view sees take the mean over the views that frame them."""
    n = len(means)
    cell = 4
    zbuf, gw = _zbuffers(cams, hull.centers(surf_mask), cell)
    tol = 2.0 * hull.voxel
    normals = hull_normals(hull, means)
    col = torch.zeros(n, 3, dtype=torch.float64)
    wsum = torch.zeros(n, 1, dtype=torch.float64)
    col_any = torch.zeros(n, 3, dtype=torch.float64)
    cnt_any = torch.zeros(n, 1, dtype=torch.float64)
    img_hwc = images.permute(0, 2, 3, 1).double()
    for v in range(len(cams)):
        uv, depth = _project(cams, means, v)
        ok = _in_image(cams, uv, depth)
        c = _sample_bilinear(img_hwc[v], uv[ok])
        col_any[ok] += c
        cnt_any[ok] += 1
        flat = (uv[ok, 1] / cell).long() * gw + (uv[ok, 0] / cell).long()
        idx = torch.nonzero(ok)[:, 0]
        view_dir = torch.nn.functional.normalize(cams.c2w[v, :3, 3].double() - means[idx], dim=-1)
        facing = (normals[idx] * view_dir).sum(-1).clamp_min(0.0)
        wt = (depth[ok] <= zbuf[v][flat] + tol).double() * (facing**2 + 1e-3)
        if masks is not None:
            a = _sample_bilinear(masks[v][..., None].double(), uv[ok])  # [M, 1]
            # composited on white: rgb = a c + (1 - a)  ->  c = (rgb - 1 + a) / a
            c = torch.where(a > 0.05, (c - 1.0 + a) / a.clamp_min(0.05), c).clamp(0.0, 1.0)
            wt = wt * a[:, 0] ** 4
        col[idx] += c * wt[:, None]
        wsum[idx] += wt[:, None]
    colors = torch.where(wsum > 1e-9, col / wsum.clamp_min(1e-12), col_any / cnt_any.clamp_min(1))
    return torch.where((wsum + cnt_any) > 0, colors, torch.full_like(colors, 0.5))


def quat_z_to(normals: Tensor) -> Tensor:
    """``[N, 4]`` wxyz quaternions of the shortest rotations taking +z to the unit ``normals``
    ``[N, 3]`` (a half turn about x for ``-z``)."""
    n = torch.nn.functional.normalize(normals.double(), dim=-1)
    # q = (1 + z.n, z x n) normalised; z x n = (-n_y, n_x, 0)
    q = torch.stack([1.0 + n[:, 2], -n[:, 1], n[:, 0], torch.zeros_like(n[:, 0])], -1)
    flip = q.norm(dim=-1) < 1e-9
    q[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=q.dtype)
    return torch.nn.functional.normalize(q, dim=-1)


@torch_threads(1)  # memory-bound element-wise ops: a second thread mostly waits
def hull_gaussians(
    hull: VisualHull,
    cams: Cameras,
    images: Tensor,
    n: int,
    surface_fraction: float = 0.85,
    opacity: float = 0.5,
    seed: int = 0,
    masks: Tensor | None = None,
    thickness: float | None = None,
) -> Gaussians:
    """Initial Gaussians on and in the visual hull, coloured from the views.

    Args:
        hull: from :func:`carve_visual_hull`.
        cams: cameras of ``images`` (intrinsics at their size).
        images: ``[V, 3, H, W]`` views in [0, 1] (composited on white).
        n: number of Gaussians.
        surface_fraction: share sampled uniformly in the surface voxels (jittered inside the
            voxel); the rest go uniformly into the interior (where concavities the silhouettes
            cannot see leave the true surface).
        opacity: initial opacity.
        seed: sampling seed.
        masks: ``[V, H, W]`` alpha of the views (optional): colours are then un-composited
            from the white background and weighted by alpha.
        thickness: None: isotropic Gaussians. Else discs tangent to the hull (local z along
            :func:`hull_normals`), this fraction of their radius thick. Thick blobs make a
            shell whose rendered silhouette and depth reach about one radius past the centres,
            so the fit pulls the whole surface that far inward (measured on Spot: centres
            1.4 cm inside the true surface, depth 1.3 cm deep); discs keep a sharp silhouette
            and a surface-hugging depth.

    Returns:
        Gaussians (radius: mean distance to the 3 nearest neighbours, at most 2 voxels),
        identity rotations (or tangent discs), colour a weighted mean over the views that see
        the point
        (a hull depth buffer decides visibility; views facing the hull surface squarely weigh
        most; all views that frame it when none sees it).
    """
    from scipy.spatial import cKDTree

    gen = torch.Generator().manual_seed(int(seed))
    surf_mask = hull.surface()
    surf = torch.nonzero(surf_mask)
    inner = torch.nonzero(hull.occupied & ~surf_mask)
    n_in = 0 if len(inner) == 0 else int(round(n * (1.0 - surface_fraction)))
    ijk = [surf[torch.randint(len(surf), (n - n_in,), generator=gen)]]
    if n_in:
        ijk.append(inner[torch.randint(len(inner), (n_in,), generator=gen)])
    jitter = torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5
    means = hull.origin + (torch.cat(ijk).double() + jitter) * hull.voxel
    colors = _view_colors(hull, cams, images, masks, means, surf_mask)

    k = min(4, n)
    dist, _ = cKDTree(means.numpy()).query(means.numpy(), k=k)
    dist = np.asarray(dist, dtype=np.float64).reshape(n, k)
    d = torch.from_numpy(dist[:, 1:].mean(-1) if k > 1 else np.full(n, hull.voxel))
    scale = d.clamp(min=1e-3 * hull.voxel, max=2.0 * hull.voxel)

    scales = scale[:, None].expand(n, 3).float().clone()
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    if thickness is not None:
        # interior samples too: they turn into the surface of concavities the hull misses
        # (deep inside, where the blurred hull has no gradient, the disc keeps the z axis)
        quats = quat_z_to(hull_normals(hull, means)).float()
        scales[:, 2] *= float(thickness)
    return Gaussians(
        means=means.float(),
        scales=scales,
        quats=quats,
        opacities=torch.full((n,), float(opacity)),
        colors=colors.clamp(0.0, 1.0).float(),
    )
