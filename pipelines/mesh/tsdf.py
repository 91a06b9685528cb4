"""Truncated signed-distance (TSDF) fusion of depth maps into a dense voxel grid.

Each voxel holds the running mean of its truncated, normalised signed distance to the observed
surface (``+1`` = free space in front of the surface, ``-1`` = behind it), the number of
observations, the number of views that had it in their frustum but hidden (occluded), and
(optionally) the mean colour seen within the truncation band.

One observation of a voxel by one view (the rule both implementations share):

* project the voxel centre with the view's ``P = K [R | t]``
  (:func:`~pipelines.cameras.geometry.projection_matrices`; OpenCV camera: x right, y down,
  z forward, pixel centres at ``i + 0.5``); skip the view when the centre is behind the camera
  or outside the image (outside the frustum = untouched);
* look up the pixel containing the projection. Background pixels (depth ``<= 0``) carve free
  space: the observation is ``+1``. A NaN depth means "unknown" and is skipped;
* otherwise ``sdf = depth - z``; voxels more than ``trunc`` behind the surface are occluded
  (counted, not observed), the rest observe ``min(sdf / trunc, 1)``; when ``|sdf| < trunc``
  the pixel's colour (8-bit) also joins the voxel's colour mean.

Voxels that no view ever observed keep ``tsdf = -1``: unseen space counts as inside, so the
interior of an object (always behind its surface) stays solid. :func:`solid_tsdf` extends that
to interior voxels a few views saw through by mistake (the field meshes are extracted from).

Two implementations of the same rule:

* :func:`integrate_torch` -- readable, vectorised PyTorch (one view at a time, voxels in chunks);
  runs on any device (the path used on CUDA) and serves as the reference;
* :func:`integrate_numba` -- the CPU fast path: a numba ``prange`` kernel over blocks of 8^3
  voxels, views in the middle loop and the block's voxels innermost (one view's pixels under a
  block stay in cache, each voxel is written once per call). Per block and view, tile min/max
  depth maps settle "all occluded" and "all free" blocks without visiting their voxels. With
  ``prune=True`` (default) it first marks the blocks the truncation band can reach (from the
  back-projected depth pixels) and fuses every other block from its centre alone.

The combination of a batch with the volume's previous state is the weighted mean
``(tsdf * w + sum) / (w + n)``, so fusing views one by one, in batches, or all at once gives the
same volume (up to float rounding) -- except that the pruned numba path fills blocks outside a
batch's band from their centres, so their observation counts (never their signs) can differ
from a per-voxel count; a voxel outside the band of one batch and inside the band of a later
one can then get a slightly different mean. Fuse all views in one call where exactness in the
band matters (:func:`pipelines.mesh.fuse_gaussians` does).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipelines.cameras.geometry import projection_matrices
from pipelines.errors import InputError
from pipelines.numba_jit import cached_njit

__all__ = [
    "METHODS",
    "TSDFVolume",
    "band_blocks",
    "integrate_numba",
    "integrate_torch",
    "solid_tsdf",
]

METHODS = ("auto", "numba", "torch")
_Z_MIN = 1e-6  # voxels closer to the camera plane than this are "behind" the camera
_BLOCK = 8  # voxels per block edge (numba path)
_TILE = 8  # pixels per tile edge for the per-block depth bounds (numba path)


# ----------------------------------------------------------------------------- volume
@dataclass
class TSDFVolume:
    """A dense TSDF grid over an axis-aligned box.

    Attributes:
        origin: ``[3]`` float64 world position of the centre of voxel ``(0, 0, 0)``; voxel
            ``(i, j, k)`` is centred at ``origin + voxel_size * (i, j, k)``.
        voxel_size: edge length of a voxel (world units).
        trunc: truncation distance (world units); observations are ``clip(sdf / trunc, -1, 1)``.
        tsdf: ``[X, Y, Z]`` float32 mean normalised signed distance, ``-1`` where unseen.
        weight: ``[X, Y, Z]`` float32 number of observations.
        occluded: ``[X, Y, Z]`` float32 number of views that had the voxel in their frustum but
            more than ``trunc`` behind the surface (no observation; see
            :func:`solid_tsdf`).
        color: ``[X, Y, Z, 3]`` float32 mean colour within the band, or ``None``.
        color_weight: ``[X, Y, Z]`` float32 number of colour observations, or ``None``.
    """

    origin: Tensor
    voxel_size: float
    trunc: float
    tsdf: Tensor
    weight: Tensor
    occluded: Tensor
    color: Tensor | None = None
    color_weight: Tensor | None = None

    @classmethod
    def empty(
        cls,
        lo,
        hi,
        resolution: int = 256,
        trunc_voxels: float = 4.0,
        color: bool = True,
        device: str | torch.device = "cpu",
    ) -> TSDFVolume:
        """An unobserved volume covering the box ``[lo, hi]``.

        Args:
            lo, hi: ``[3]`` box corners (world).
            resolution: voxels along the box's longest side; shorter sides get proportionally
                fewer (same voxel size), so a flat object costs less.
            trunc_voxels: truncation distance in voxels.
            color: also keep a colour volume.
            device: where the tensors live.
        """
        lo = torch.as_tensor(lo, dtype=torch.float64).cpu().reshape(3)
        hi = torch.as_tensor(hi, dtype=torch.float64).cpu().reshape(3)
        if resolution < 8:
            raise InputError(f"TSDF resolution {resolution} is too small; use at least 8")
        if not bool(torch.all(hi > lo)):
            raise InputError("TSDF box is empty; its upper corner must exceed the lower one")
        if not trunc_voxels > 0:
            raise InputError(f"truncation must be positive, got {trunc_voxels} voxels")
        voxel = float((hi - lo).max()) / (resolution - 1)
        dims = [max(2, int(math.ceil(float(e) / voxel - 1e-9)) + 1) for e in (hi - lo)]
        # centre the grid on the box
        origin = (lo + hi) / 2 - voxel * (torch.tensor(dims, dtype=torch.float64) - 1) / 2
        shape = tuple(dims)
        return cls(
            origin=origin,
            voxel_size=voxel,
            trunc=float(trunc_voxels) * voxel,
            tsdf=torch.full(shape, -1.0, dtype=torch.float32, device=device),
            weight=torch.zeros(shape, dtype=torch.float32, device=device),
            occluded=torch.zeros(shape, dtype=torch.float32, device=device),
            color=torch.zeros(shape + (3,), dtype=torch.float32, device=device) if color else None,
            color_weight=torch.zeros(shape, dtype=torch.float32, device=device) if color else None,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.tsdf.shape)  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.tsdf.device

    def to(self, device: str | torch.device) -> TSDFVolume:
        """The same volume with its tensors on ``device``."""

        def mv(t):
            return None if t is None else t.to(device)

        return TSDFVolume(
            self.origin,
            self.voxel_size,
            self.trunc,
            mv(self.tsdf),
            mv(self.weight),
            mv(self.occluded),
            mv(self.color),
            mv(self.color_weight),
        )

    def integrate(
        self,
        depth: Tensor,
        c2w: Tensor,
        K: Tensor,
        rgb: Tensor | None = None,
        method: str = "auto",
    ) -> TSDFVolume:
        """Fuse V depth maps (in place; returns ``self``).

        Args:
            depth: ``[V, H, W]`` (or ``[V, H, W, 1]``) camera z per pixel; ``<= 0`` marks
                background (carves free space), NaN marks unknown (ignored).
            c2w: ``[V, 4, 4]`` OpenGL camera-to-world poses.
            K: ``[V, 3, 3]`` pixel intrinsics.
            rgb: ``[V, H, W, 3]`` straight (not premultiplied) colour, float in [0, 1] or
                uint8, or ``None``; fused as 8-bit values (float input is rounded).
            method: ``"numba"`` (CPU fast path), ``"torch"`` (reference, any device) or
                ``"auto"`` (numba for CPU volumes, torch otherwise).
        """
        if method not in METHODS:
            raise InputError(f"unknown fusion method {method!r}; use one of {', '.join(METHODS)}")
        if method == "auto":
            method = "numba" if self.device.type == "cpu" else "torch"
        if method == "numba" and self.device.type != "cpu":
            raise InputError("the numba fusion path needs a CPU volume; use method='torch'")
        if depth.dim() == 4:
            depth = depth[..., 0]
        n_view = depth.shape[0]
        if depth.dim() != 3 or c2w.shape != (n_view, 4, 4) or K.shape != (n_view, 3, 3):
            raise InputError(
                f"depth [V,H,W], c2w [V,4,4], K [V,3,3] expected; got {tuple(depth.shape)}, "
                f"{tuple(c2w.shape)}, {tuple(K.shape)}"
            )
        if rgb is not None and rgb.shape != depth.shape + (3,):
            raise InputError(f"rgb must be {tuple(depth.shape) + (3,)}, got {tuple(rgb.shape)}")
        if method == "numba":
            integrate_numba(self, depth, c2w, K, rgb)
        else:
            integrate_torch(self, depth, c2w, K, rgb)
        return self


def solid_tsdf(vol: TSDFVolume, max_free_ratio: float = 0.1) -> Tensor:
    """The field to extract the surface from: ``vol.tsdf`` with inside/outside made robust.

    A voxel deep inside an object is hidden (occluded) in every view, so its value rests on
    the few views that wrongly saw through it: a pinhole in the splats' opacity, or an expected
    depth pulled behind a semi-transparent front layer. One such view would carve a tunnel of
    free space into the interior. So a voxel that is hidden in most views and observed in at
    most ``max_free_ratio`` of the views that have it in their frustum counts as inside
    (``-1``), whatever those few observations said. Space outside an object is observed from
    about half the views or more, and stays as fused; so do the interiors of deep, narrow
    cavities only a few views see into (they are filled).

    Returns:
        ``[X, Y, Z]`` float32 on the volume's device (``vol`` is not modified).
    """
    seen = vol.weight
    interior = (seen <= max_free_ratio * (seen + vol.occluded)) & (vol.occluded > 0)
    return torch.where(interior, torch.full_like(vol.tsdf, -1.0), vol.tsdf)


def _rgb_u8(rgb: Tensor) -> Tensor:
    """Colour as uint8 (what both paths fuse: one kernel signature, a quarter of the memory)."""
    if rgb.dtype == torch.uint8:
        return rgb
    return (rgb.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


# ----------------------------------------------------------------------------- reference
def integrate_torch(
    vol: TSDFVolume,
    depth: Tensor,
    c2w: Tensor,
    K: Tensor,
    rgb: Tensor | None = None,
    chunk: int = 1 << 21,
) -> None:
    """Reference fusion in plain PyTorch: view by view, voxels in chunks, on ``vol.device``.

    Float64 projection on the CPU (bit-comparable with the numba path), float32 elsewhere.
    """
    dev = vol.device
    fdt = torch.float64 if dev.type == "cpu" else torch.float32
    P = projection_matrices(c2w, K).to(dev, fdt)
    depth = depth.to(dev, torch.float32)
    use_color = rgb is not None and vol.color is not None
    if use_color:
        rgb = _rgb_u8(rgb.to(dev)).float() / 255.0
    nx, ny, nz = vol.shape
    n_vox = nx * ny * nz
    n_view, h, w = depth.shape
    tsdf, weight, occluded = vol.tsdf.view(-1), vol.weight.view(-1), vol.occluded.view(-1)
    origin = vol.origin.to(dev, fdt)
    for start in range(0, n_vox, chunk):
        idx = torch.arange(start, min(start + chunk, n_vox), device=dev)
        ijk = torch.stack([idx // (ny * nz), (idx // nz) % ny, idx % nz], -1).to(fdt)
        pts = origin + ijk * vol.voxel_size
        pts_h = torch.cat([pts, torch.ones_like(pts[:, :1])], -1)  # [N, 4]
        for v in range(n_view):
            uvz = pts_h @ P[v].T  # [N, 3]
            z = uvz[:, 2]
            front = z > _Z_MIN
            zs = torch.where(front, z, torch.ones_like(z))
            u, vv = uvz[:, 0] / zs, uvz[:, 1] / zs
            inside = front & (u >= 0) & (u < w) & (vv >= 0) & (vv < h)
            sel = inside.nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            col = u[sel].floor().long().clamp_(0, w - 1)
            row = vv[sel].floor().long().clamp_(0, h - 1)
            d = depth[v, row, col].to(fdt)
            sdf = d - z[sel]
            background = d <= 0
            hidden = ~background & (sdf < -vol.trunc)  # NaN compares False: not hidden
            occluded[sel[hidden] + start] += 1
            keep = ~torch.isnan(d) & (background | (sdf >= -vol.trunc))
            obs = torch.where(background, torch.ones_like(sdf), (sdf / vol.trunc).clamp(max=1.0))
            gi = sel[keep] + start  # global voxel index
            obs = obs[keep].to(torch.float32)
            w_old = weight[gi]
            tsdf[gi] = (tsdf[gi] * w_old + obs) / (w_old + 1)
            weight[gi] = w_old + 1
            if use_color:
                band = keep & ~background & (sdf.abs() < vol.trunc)
                ci = sel[band] + start
                c_new = rgb[v, row[band], col[band]]
                cw = vol.color_weight.view(-1)[ci]
                cflat = vol.color.view(-1, 3)
                cflat[ci] = (cflat[ci] * cw[:, None] + c_new) / (cw[:, None] + 1)
                vol.color_weight.view(-1)[ci] = cw + 1


# ----------------------------------------------------------------------------- numba fast path
@functools.cache
def _numba_kernels() -> dict:
    """Compile (or load from numba's on-disk cache) the fusion kernels on first use."""
    from numba import prange

    jit = functools.partial(cached_njit, error_model="numpy")

    @jit(parallel=True)
    def fuse_blocks(
        blocks,
        block,
        origin,
        voxel,
        P,
        depth,
        tmin,
        tmax,
        tile,
        rgb,
        rgb_scale,
        use_color,
        trunc,
        tsdf,
        weight,
        occluded,
        color,
        cweight,
    ):
        """Apply the fusion rule to every voxel of the listed ``[B, 3]`` blocks.

        Voxels are visited block by block (one block per task), views in the middle loop and
        the block's voxels innermost, so one view's pixels under the block stay in cache.
        """
        nx, ny, nz = tsdf.shape
        n_view, height, width = depth.shape
        nb = block * block * block
        for b in prange(blocks.shape[0]):
            i0, j0, k0 = blocks[b, 0] * block, blocks[b, 1] * block, blocks[b, 2] * block
            x0 = origin[0] + i0 * voxel
            y0 = origin[1] + j0 * voxel
            z0 = origin[2] + k0 * voxel
            acc = np.zeros((nb, 7))  # sum_tsdf, n, sum_rgb (3), n_color, n_occluded
            for v in range(n_view):
                # projective coordinates of the block's first voxel, and their steps per voxel
                # along each axis (updated incrementally below)
                bu = P[v, 0, 0] * x0 + P[v, 0, 1] * y0 + P[v, 0, 2] * z0 + P[v, 0, 3]
                bw = P[v, 1, 0] * x0 + P[v, 1, 1] * y0 + P[v, 1, 2] * z0 + P[v, 1, 3]
                bz = P[v, 2, 0] * x0 + P[v, 2, 1] * y0 + P[v, 2, 2] * z0 + P[v, 2, 3]
                ui, uj, uk = voxel * P[v, 0, 0], voxel * P[v, 0, 1], voxel * P[v, 0, 2]
                wi, wj, wk = voxel * P[v, 1, 0], voxel * P[v, 1, 1], voxel * P[v, 1, 2]
                zi, zj, zk = voxel * P[v, 2, 0], voxel * P[v, 2, 1], voxel * P[v, 2, 2]
                # Whole-block shortcuts from the tile min/max depth under the block's footprint:
                # every voxel occluded (skip the view) or every voxel free (+1 each).
                zlo, zhi = np.inf, -np.inf
                ulo, uhi, wlo, whi = np.inf, -np.inf, np.inf, -np.inf
                ext = voxel * (block - 1)
                for corner in range(8):
                    ca = ext if corner & 1 else 0.0
                    cb = ext if corner & 2 else 0.0
                    cc = ext if corner & 4 else 0.0
                    zz = bz + (ca * P[v, 2, 0] + cb * P[v, 2, 1] + cc * P[v, 2, 2])
                    uu = bu + (ca * P[v, 0, 0] + cb * P[v, 0, 1] + cc * P[v, 0, 2])
                    ww = bw + (ca * P[v, 1, 0] + cb * P[v, 1, 1] + cc * P[v, 1, 2])
                    zlo, zhi = min(zlo, zz), max(zhi, zz)
                    if zz > 1e-6:
                        ulo, uhi = min(ulo, uu / zz), max(uhi, uu / zz)
                        wlo, whi = min(wlo, ww / zz), max(whi, ww / zz)
                if zlo > 1e-6 and ulo >= 0.0 and uhi < width and wlo >= 0.0 and whi < height:
                    dmin, dmax = np.inf, -np.inf
                    for tr in range(int(wlo) // tile, int(whi) // tile + 1):
                        for tc in range(int(ulo) // tile, int(uhi) // tile + 1):
                            dmin = min(dmin, tmin[v, tr, tc])
                            dmax = max(dmax, tmax[v, tr, tc])
                    if dmax < zlo - trunc:
                        for qq in range(nb):
                            acc[qq, 6] += 1.0
                        continue
                    if dmin >= zhi + trunc:
                        for qq in range(nb):
                            acc[qq, 0] += 1.0
                            acc[qq, 1] += 1.0
                        continue
                q = 0
                for a in range(block):
                    for c in range(block):
                        nu = bu + a * ui + c * uj
                        nw = bw + a * wi + c * wj
                        nzc = bz + a * zi + c * zj
                        for e in range(block):
                            zc = nzc + e * zk
                            qq = q
                            q += 1
                            if zc <= 1e-6:
                                continue
                            inv = 1.0 / zc
                            u = (nu + e * uk) * inv
                            w = (nw + e * wk) * inv
                            if not (u >= 0.0 and u < width and w >= 0.0 and w < height):
                                continue
                            col = min(int(u), width - 1)
                            row = min(int(w), height - 1)
                            d = depth[v, row, col]
                            if d != d:  # NaN: unknown
                                continue
                            if d <= 0.0:  # background carves free space
                                acc[qq, 0] += 1.0
                                acc[qq, 1] += 1.0
                                continue
                            sdf = d - zc
                            if sdf < -trunc:  # occluded
                                acc[qq, 6] += 1.0
                                continue
                            acc[qq, 0] += min(sdf / trunc, 1.0)
                            acc[qq, 1] += 1.0
                            if use_color and sdf < trunc:
                                acc[qq, 2] += rgb[v, row, col, 0]
                                acc[qq, 3] += rgb[v, row, col, 1]
                                acc[qq, 4] += rgb[v, row, col, 2]
                                acc[qq, 5] += 1.0
            q = 0
            for a in range(block):
                for c in range(block):
                    for e in range(block):
                        i, j, k = i0 + a, j0 + c, k0 + e
                        qq = q
                        q += 1
                        if i >= nx or j >= ny or k >= nz:
                            continue
                        if acc[qq, 1] > 0.0:
                            w0 = weight[i, j, k]
                            tsdf[i, j, k] = (tsdf[i, j, k] * w0 + acc[qq, 0]) / (w0 + acc[qq, 1])
                            weight[i, j, k] = w0 + acc[qq, 1]
                        occluded[i, j, k] += acc[qq, 6]
                        if use_color and acc[qq, 5] > 0.0:
                            c0 = cweight[i, j, k]
                            for ch in range(3):
                                color[i, j, k, ch] = (
                                    color[i, j, k, ch] * c0 + acc[qq, 2 + ch] * rgb_scale
                                ) / (c0 + acc[qq, 5])
                            cweight[i, j, k] = c0 + acc[qq, 5]

    @jit(parallel=True)
    def mark_band(depth, kinv, cam, origin, voxel, block, trunc, mark):
        """Mark (``mark[bi, bj, bk] = 1``) every block with a voxel centre that some foreground
        pixel's back-projected point could see within the truncation band (conservative)."""
        n_view, height, width = depth.shape
        mx, my, mz = mark.shape
        for v in prange(n_view):
            f_min = 1.0 / max(abs(kinv[v, 0, 0]), abs(kinv[v, 1, 1]))
            for row in range(height):
                for col in range(width):
                    d = depth[v, row, col]
                    if not d > 0.0:  # background or NaN
                        continue
                    px, py = col + 0.5, row + 0.5
                    rx = kinv[v, 0, 0] * px + kinv[v, 0, 1] * py + kinv[v, 0, 2]
                    ry = kinv[v, 1, 0] * px + kinv[v, 1, 1] * py + kinv[v, 1, 2]
                    rho = math.sqrt(rx * rx + ry * ry + 1.0)
                    m = trunc * (rho + 1.0 / f_min) + (d + trunc) / f_min
                    lo = np.empty(3, np.int64)
                    hi = np.empty(3, np.int64)
                    for ax in range(3):
                        x = (
                            cam[v, ax, 0] * rx * d
                            + cam[v, ax, 1] * ry * d
                            + cam[v, ax, 2] * d
                            + cam[v, ax, 3]
                        )
                        lo[ax] = int(math.ceil((x - m - origin[ax]) / voxel))
                        hi[ax] = int(math.floor((x + m - origin[ax]) / voxel))
                    lo[0], hi[0] = max(lo[0], 0) // block, min(hi[0], mx * block - 1) // block
                    lo[1], hi[1] = max(lo[1], 0) // block, min(hi[1], my * block - 1) // block
                    lo[2], hi[2] = max(lo[2], 0) // block, min(hi[2], mz * block - 1) // block
                    for bi in range(lo[0], hi[0] + 1):
                        for bj in range(lo[1], hi[1] + 1):
                            for bk in range(lo[2], hi[2] + 1):
                                mark[bi, bj, bk] = 1

    @jit(parallel=True)
    def fill_blocks(blocks, block, origin, voxel, P, depth, trunc, tsdf, weight, occluded):
        """Coarse fusion of blocks outside the band: the rule at each block's centre only
        (there it can only observe free space or nothing), written to every voxel."""
        nx, ny, nz = tsdf.shape
        n_view, height, width = depth.shape
        half = (block - 1) * 0.5
        for b in prange(blocks.shape[0]):
            i0, j0, k0 = blocks[b, 0] * block, blocks[b, 1] * block, blocks[b, 2] * block
            x = origin[0] + (i0 + half) * voxel
            y = origin[1] + (j0 + half) * voxel
            z = origin[2] + (k0 + half) * voxel
            s = 0.0
            n = 0.0
            n_occ = 0.0
            for v in range(n_view):
                zc = P[v, 2, 0] * x + P[v, 2, 1] * y + P[v, 2, 2] * z + P[v, 2, 3]
                if zc <= 1e-6:
                    continue
                u = (P[v, 0, 0] * x + P[v, 0, 1] * y + P[v, 0, 2] * z + P[v, 0, 3]) / zc
                w = (P[v, 1, 0] * x + P[v, 1, 1] * y + P[v, 1, 2] * z + P[v, 1, 3]) / zc
                if not (u >= 0.0 and u < width and w >= 0.0 and w < height):
                    continue
                d = depth[v, min(int(w), height - 1), min(int(u), width - 1)]
                if d != d:
                    continue
                if d <= 0.0:
                    s += 1.0
                    n += 1.0
                elif d - zc >= -trunc:
                    s += min((d - zc) / trunc, 1.0)
                    n += 1.0
                else:
                    n_occ += 1.0
            if n == 0.0 and n_occ == 0.0:
                continue
            for i in range(i0, min(i0 + block, nx)):
                for j in range(j0, min(j0 + block, ny)):
                    for k in range(k0, min(k0 + block, nz)):
                        occluded[i, j, k] += n_occ
                        if n > 0.0:
                            w0 = weight[i, j, k]
                            tsdf[i, j, k] = (tsdf[i, j, k] * w0 + s) / (w0 + n)
                            weight[i, j, k] = w0 + n

    return {"fuse": fuse_blocks, "mark": mark_band, "fill": fill_blocks}


def _block_grid(shape: tuple[int, int, int], block: int) -> tuple[int, int, int]:
    return tuple(-(-n // block) for n in shape)  # type: ignore[return-value]


def _tile_depth_bounds(depth: Tensor, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Per ``tile x tile`` pixel tile: min and max depth, background counted as +inf.

    NaN (unknown) pixels make a tile's min -inf and its max +inf, which disables both
    whole-block shortcuts there.
    """
    d = depth.detach().to("cpu", torch.float32)
    inf = torch.tensor(float("inf"))
    fg = torch.where(d > 0, d, inf)
    nan = torch.isnan(d)
    hi = torch.where(nan, inf, fg)[:, None]
    lo = torch.where(nan, -inf, fg)[:, None]
    pool = torch.nn.functional.max_pool2d
    tmax = pool(hi, tile, ceil_mode=True)[:, 0]
    tmin = -pool(-lo, tile, ceil_mode=True)[:, 0]
    return tmin.contiguous().numpy(), tmax.contiguous().numpy()


def _origin(vol: TSDFVolume) -> np.ndarray:
    return np.ascontiguousarray(vol.origin.detach().cpu().numpy(), dtype=np.float64)


def band_blocks(vol: TSDFVolume, depth: Tensor, c2w: Tensor, K: Tensor, block: int) -> np.ndarray:
    """``[BX, BY, BZ]`` uint8: 1 for blocks of ``block^3`` voxels the truncation band can reach."""
    kern = _numba_kernels()
    d = np.ascontiguousarray(depth.detach().to("cpu", torch.float32).numpy())
    k64 = K.detach().to("cpu", torch.float64)
    kinv = np.ascontiguousarray(torch.linalg.inv(k64).numpy())
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    cam = np.ascontiguousarray((c2w.detach().to("cpu", torch.float64) @ flip)[:, :3, :].numpy())
    mark = np.zeros(_block_grid(vol.shape, block), np.uint8)
    kern["mark"](
        d, kinv, cam, _origin(vol), float(vol.voxel_size), int(block), float(vol.trunc), mark
    )
    return mark


def integrate_numba(
    vol: TSDFVolume,
    depth: Tensor,
    c2w: Tensor,
    K: Tensor,
    rgb: Tensor | None = None,
    prune: bool = True,
    block: int = _BLOCK,
) -> None:
    """CPU fast path (numba, all cores), same rule as :func:`integrate_torch`.

    Args:
        vol, depth, c2w, K, rgb: as :meth:`TSDFVolume.integrate` (``vol`` on the CPU).
        prune: fuse voxel by voxel only in blocks the truncation band can reach
            (:func:`band_blocks`); fuse every other block from its centre alone. Band voxels
            come out exactly as without pruning; away from the band only the observation
            counts may differ (a block is treated as seen when its centre is).
        block: block edge in voxels.
    """
    kern = _numba_kernels()
    P = np.ascontiguousarray(projection_matrices(c2w, K).numpy())
    d = np.ascontiguousarray(depth.detach().to("cpu", torch.float32).numpy())
    use_color = rgb is not None and vol.color is not None
    if use_color:
        c = np.ascontiguousarray(_rgb_u8(rgb).cpu().numpy())
        color, cweight = vol.color.numpy(), vol.color_weight.numpy()
    else:
        c = np.zeros((1, 1, 1, 3), np.uint8)
        color, cweight = np.zeros((1, 1, 1, 3), np.float32), np.zeros((1, 1, 1), np.float32)
    origin = _origin(vol)
    tsdf, weight, occluded = vol.tsdf.numpy(), vol.weight.numpy(), vol.occluded.numpy()
    if prune:
        mark = band_blocks(vol, depth, c2w, K, block)
    else:
        mark = np.ones(_block_grid(vol.shape, block), np.uint8)
    fine = np.ascontiguousarray(np.argwhere(mark > 0), dtype=np.int64)
    tmin, tmax = _tile_depth_bounds(depth, _TILE)
    kern["fuse"](
        fine,
        block,
        origin,
        vol.voxel_size,
        P,
        d,
        tmin,
        tmax,
        _TILE,
        c,
        1.0 / 255.0,
        use_color,
        vol.trunc,
        tsdf,
        weight,
        occluded,
        color,
        cweight,
    )
    coarse = np.ascontiguousarray(np.argwhere(mark == 0), dtype=np.int64)
    if len(coarse):
        kern["fill"](coarse, block, origin, vol.voxel_size, P, d, vol.trunc, tsdf, weight, occluded)
