"""Fast CPU Gaussian rasterizer: numba kernels for projection, binning and compositing.

Pipeline of one call (C cameras; the C x N (camera, Gaussian) pairs are flattened into
``G = C * N`` slots):

1. :func:`project_cpu` / ``_project_fwd_kernel`` -- fused EWA projection, a numba twin of
   :func:`pipelines.raster.project.project` that repeats its float32 operations in the same
   order (bit-identical means2d / conics / depths, checked by the tests), plus the
   opacity-aware pixel box of every Gaussian. Its backward (``_project_bwd_kernel``) is written
   by hand; gradients go to means, quats and scales.
2. :class:`Bins` -- per camera, the Gaussians whose box is non-empty are depth-sorted (stable
   LSD radix sort) and bucketed into 16x16 tiles by a counting sort, parallel over chunks of the
   sorted list, so every tile list stays depth-sorted. No dense ``N x pixels`` arrays. The
   non-empty (camera, tile) work items are dealt into one balanced list per thread.
3. ``_forward_kernel`` -- ``prange`` over those lists. For each tile the Gaussians are visited
   near to far and splatted onto the pixels of their box only -- per row, only the columns
   inside the ellipse where alpha can reach 1/255 -- with the 3DGS alpha / skip /
   early-termination rules (see :mod:`pipelines.raster.reference`). Background and depth
   normalisation are fused in; it also keeps the final transmittance and the index of the last
   contributor of every pixel for the backward pass.
4. ``_backward_kernel`` -- replays each tile back to front (as 3DGS), recovering the
   transmittance by division, and writes per-intersection gradients w.r.t. the 2D mean, the
   conic, the opacity and the features (RGB, z); ``_scatter_grads`` sums them per slot.

:class:`ProjectFunction` and :class:`RasterizeFunction` are the ``torch.autograd.Function``
wrappers; the colour (SH) stays in torch, so autograd joins everything up to the Gaussian
attributes.

Kernels are generic in the float type (float32 in normal use; float64 works too, e.g. for
``gradcheck``): every float constant comes in through a small ``consts`` array of the input
dtype so that nothing is silently promoted to float64. ``cache=True`` keeps the compiled
kernels across processes (see :func:`_jit`).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange
from torch import Tensor

from pipelines.numba_jit import cached_njit
from pipelines.raster.project import (
    ALPHA_MIN,
    DEPTH_ALPHA_MIN,
    EPS2D,
    Projection,
    camera_params,
    pixel_rects,
)
from pipelines.raster.reference import ALPHA_MAX, T_MIN

TILE = 16
_TILE_PIX = TILE * TILE


_jit = cached_njit  # numba.njit, cached on disk when possible


# ----------------------------------------------------------------------------- projection
# consts of the projection kernels (in the float dtype): eps2d, near, far, alpha_min, 1, 2
_P_EPS, _P_NEAR, _P_FAR, _P_AMIN, _P_ONE, _P_TWO = 0, 1, 2, 3, 4, 5


@_jit()
def _covar3d(quats, scales, i, one, two):
    """Rotation R (of q / |q|), M = R diag(s) and Sigma = M M^T of Gaussian i, in the float
    order of :func:`pipelines.raster.project.quat_scale_to_covar`.

    Returns ``(R (9), M (9), Sigma (6 unique))`` as tuples.
    """
    w, x, y, z = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
    s2 = two / (w * w + x * x + y * y + z * z)
    r00 = one - s2 * (y * y + z * z)
    r01 = s2 * (x * y - w * z)
    r02 = s2 * (x * z + w * y)
    r10 = s2 * (x * y + w * z)
    r11 = one - s2 * (x * x + z * z)
    r12 = s2 * (y * z - w * x)
    r20 = s2 * (x * z - w * y)
    r21 = s2 * (y * z + w * x)
    r22 = one - s2 * (x * x + y * y)
    sx, sy, sz = scales[i, 0], scales[i, 1], scales[i, 2]
    m00, m01, m02 = r00 * sx, r01 * sy, r02 * sz
    m10, m11, m12 = r10 * sx, r11 * sy, r12 * sz
    m20, m21, m22 = r20 * sx, r21 * sy, r22 * sz
    s00 = m00 * m00 + m01 * m01 + m02 * m02
    s01 = m00 * m10 + m01 * m11 + m02 * m12
    s02 = m00 * m20 + m01 * m21 + m02 * m22
    s11 = m10 * m10 + m11 * m11 + m12 * m12
    s12 = m10 * m20 + m11 * m21 + m12 * m22
    s22 = m20 * m20 + m21 * m21 + m22 * m22
    return (
        (r00, r01, r02, r10, r11, r12, r20, r21, r22),
        (m00, m01, m02, m10, m11, m12, m20, m21, m22),
        (s00, s01, s02, s11, s12, s22),
    )


@_jit()
def _camera_space(means, cam, i, c, one, near, far):
    """Camera-space mean, depth-range flag and 1/z (1 for culled depths), as project()."""
    mx, my, mz = means[i, 0], means[i, 1], means[i, 2]
    x = cam[c, 0] * mx + cam[c, 1] * my + cam[c, 2] * mz + cam[c, 9]
    y = cam[c, 3] * mx + cam[c, 4] * my + cam[c, 5] * mz + cam[c, 10]
    z = cam[c, 6] * mx + cam[c, 7] * my + cam[c, 8] * mz + cam[c, 11]
    in_range = z > near and z < far
    inv_z = one / (z if in_range else one)
    return x, y, z, in_range, inv_z


@_jit()
def _jacobian_rows(cam, c, x, y, inv_z):
    """Clamped x/z, y/z and the rows t0, t1 of T = J R (as project())."""
    fx, fy = cam[c, 12], cam[c, 13]
    xr = x * inv_z
    yr = y * inv_z
    xcl = max(min(xr, cam[c, 16]), -cam[c, 17])
    ycl = max(min(yr, cam[c, 18]), -cam[c, 19])
    jx = fx * inv_z
    jxz = -fx * xcl * inv_z
    jy = fy * inv_z
    jyz = -fy * ycl * inv_z
    t00 = jx * cam[c, 0] + jxz * cam[c, 6]
    t01 = jx * cam[c, 1] + jxz * cam[c, 7]
    t02 = jx * cam[c, 2] + jxz * cam[c, 8]
    t10 = jy * cam[c, 3] + jyz * cam[c, 6]
    t11 = jy * cam[c, 4] + jyz * cam[c, 7]
    t12 = jy * cam[c, 5] + jyz * cam[c, 8]
    return xr, yr, xcl, ycl, (t00, t01, t02), (t10, t11, t12)


@_jit()
def _covar2d(sig, t0, t1, eps, one):
    """Dilated 2D covariance ``T Sigma T^T + eps I`` (rows t0, t1 of T = J R) and its inverse
    determinant, in the float order of :func:`pipelines.raster.project.project`.

    Returns ``(Sigma t (6: Sigma t0, Sigma t1), cov_a, cov_b, cov_c, det_ok, inv_det)``
    (``inv_det`` is 1 where the determinant is not positive).
    """
    s00, s01, s02, s11, s12, s22 = sig
    st00 = s00 * t0[0] + s01 * t0[1] + s02 * t0[2]
    st01 = s01 * t0[0] + s11 * t0[1] + s12 * t0[2]
    st02 = s02 * t0[0] + s12 * t0[1] + s22 * t0[2]
    st10 = s00 * t1[0] + s01 * t1[1] + s02 * t1[2]
    st11 = s01 * t1[0] + s11 * t1[1] + s12 * t1[2]
    st12 = s02 * t1[0] + s12 * t1[1] + s22 * t1[2]
    cov_a = t0[0] * st00 + t0[1] * st01 + t0[2] * st02 + eps
    cov_b = t0[0] * st10 + t0[1] * st11 + t0[2] * st12
    cov_c = t1[0] * st10 + t1[1] * st11 + t1[2] * st12 + eps
    det = cov_a * cov_c - cov_b * cov_b
    det_ok = det > one - one
    inv_det = one / (det if det_ok else one)
    return (st00, st01, st02, st10, st11, st12), cov_a, cov_b, cov_c, det_ok, inv_det


@_jit(parallel=True, fastmath=False)
def _project_fwd_kernel(means, quats, scales, opac, cam, consts, width, height):
    """Fused EWA projection (float math identical to pipelines.raster.project.project).

    Returns means2d [C,N,2], conics [C,N,3], depths [C,N], cutoff [C,N], radii [C,N,2],
    valid [C,N] bool and rect [C,N,4] int32 (inclusive pixel boxes, x1 = y1 = -1 if culled).
    """
    n = means.shape[0]
    n_cam = cam.shape[0]
    eps, near, far, amin = consts[_P_EPS], consts[_P_NEAR], consts[_P_FAR], consts[_P_AMIN]
    one, two = consts[_P_ONE], consts[_P_TWO]
    dt = means.dtype
    m2d = np.empty((n_cam, n, 2), dtype=dt)
    con = np.empty((n_cam, n, 3), dtype=dt)
    depth = np.empty((n_cam, n), dtype=dt)
    cutoff = np.empty((n_cam, n), dtype=dt)
    radii = np.empty((n_cam, n, 2), dtype=dt)
    valid = np.empty((n_cam, n), dtype=np.bool_)
    rect = np.empty((n_cam, n, 4), dtype=np.int32)
    lim_hi = max(width, height) + 2.0
    for i in prange(n):
        _, _, sig = _covar3d(quats, scales, i, one, two)
        o = opac[i]
        for c in range(n_cam):
            x, y, z, in_range, inv_z = _camera_space(means, cam, i, c, one, near, far)
            u = cam[c, 12] * x * inv_z + cam[c, 14]
            v = cam[c, 13] * y * inv_z + cam[c, 15]
            _, _, _, _, t0, t1 = _jacobian_rows(cam, c, x, y, inv_z)
            _, cov_a, cov_b, cov_c, det_ok, inv_det = _covar2d(sig, t0, t1, eps, one)
            ca = cov_c * inv_det
            cb = -cov_b * inv_det
            cc = cov_a * inv_det
            m2d[c, i, 0] = u
            m2d[c, i, 1] = v
            con[c, i, 0] = ca
            con[c, i, 1] = cb
            con[c, i, 2] = cc
            depth[c, i] = z
            ok = (
                det_ok
                and in_range
                and o >= amin
                and np.isfinite(u)
                and np.isfinite(v)
                and np.isfinite(ca)
                and np.isfinite(cb)
                and np.isfinite(cc)
            )
            valid[c, i] = ok
            # opacity-aware extent (float64), as project._extent / pixel_rects
            rx = 0.0
            ry = 0.0
            cut = 0.0
            if ok:
                a64, b64, c64 = np.float64(ca), np.float64(cb), np.float64(cc)
                det_q = max(a64 * c64 - b64 * b64, 1e-300)
                half_tr = 0.5 * (a64 + c64)
                root = np.sqrt(max(half_tr * half_tr - det_q, 0.0))
                cond = (half_tr + root) / max(half_tr - root, 1e-300)
                sig_max = np.log(max(255.0 * np.float64(o), 1.0))
                cut = sig_max * (1.0 + 1e-5 * min(cond, 1e6)) + 1e-3
                rx = np.sqrt(2.0 * cut * max(c64, 0.0) / det_q)
                ry = np.sqrt(2.0 * cut * max(a64, 0.0) / det_q)
                if not (np.isfinite(rx) and np.isfinite(ry)):
                    rx = 0.0
                    ry = 0.0
            u64, v64 = np.float64(u), np.float64(v)
            inside = u64 + rx > 0 and u64 - rx < width and v64 + ry > 0 and v64 - ry < height
            if not inside:
                rx = 0.0
                ry = 0.0
            cutoff[c, i] = cut
            radii[c, i, 0] = rx
            radii[c, i, 1] = ry
            if rx > 0 and ry > 0:
                px = rx * 1e-4 + 1e-2
                py = ry * 1e-4 + 1e-2
                lo_x = min(max(u64 - rx - px - 0.5, -2.0), lim_hi)
                hi_x = min(max(u64 + rx + px - 0.5, -2.0), lim_hi)
                lo_y = min(max(v64 - ry - py - 0.5, -2.0), lim_hi)
                hi_y = min(max(v64 + ry + py - 0.5, -2.0), lim_hi)
                rect[c, i, 0] = max(np.int64(np.ceil(lo_x)), 0)
                rect[c, i, 1] = min(np.int64(np.floor(hi_x)), width - 1)
                rect[c, i, 2] = max(np.int64(np.ceil(lo_y)), 0)
                rect[c, i, 3] = min(np.int64(np.floor(hi_y)), height - 1)
            else:
                rect[c, i, 0] = 0
                rect[c, i, 1] = -1
                rect[c, i, 2] = 0
                rect[c, i, 3] = -1
    return m2d, con, depth, cutoff, radii, valid, rect


@_jit(parallel=True, fastmath=False)
def _project_bwd_kernel(means, quats, scales, cam, consts, g_m2d, g_con, g_depth):
    """Gradients of the fused projection w.r.t. means [N,3], quats [N,4], scales [N,3].

    g_m2d [C,N,2], g_con [C,N,3], g_depth [C,N] are the output gradients. Each Gaussian is
    handled by one thread (cameras summed in a loop), so there are no write conflicts.
    """
    n = means.shape[0]
    n_cam = cam.shape[0]
    near, far = consts[_P_NEAR], consts[_P_FAR]
    one, two = consts[_P_ONE], consts[_P_TWO]
    zero = one - one
    eps = consts[_P_EPS]
    dt = means.dtype
    g_means = np.zeros((n, 3), dtype=dt)
    g_quats = np.zeros((n, 4), dtype=dt)
    g_scales = np.zeros((n, 3), dtype=dt)
    for i in prange(n):
        rr, mm, sig = _covar3d(quats, scales, i, one, two)
        gs00 = zero
        gs01 = zero
        gs02 = zero
        gs11 = zero
        gs12 = zero
        gs22 = zero
        gmx = zero
        gmy = zero
        gmz = zero
        for c in range(n_cam):
            gu, gv = g_m2d[c, i, 0], g_m2d[c, i, 1]
            gca, gcb, gcc = g_con[c, i, 0], g_con[c, i, 1], g_con[c, i, 2]
            gz_out = g_depth[c, i]
            if (
                gu == zero
                and gv == zero
                and gca == zero
                and gcb == zero
                and gcc == zero
                and gz_out == zero
            ):
                continue
            x, y, z, in_range, inv_z = _camera_space(means, cam, i, c, one, near, far)
            fx, fy = cam[c, 12], cam[c, 13]
            xr, yr, xcl, ycl, t0, t1 = _jacobian_rows(cam, c, x, y, inv_z)
            st, cov_a, cov_b, cov_c, det_ok, inv_det = _covar2d(sig, t0, t1, eps, one)
            st00, st01, st02, st10, st11, st12 = st
            # conic = (cov_c, -cov_b, cov_a) * inv_det
            g_inv_det = gca * cov_c - gcb * cov_b + gcc * cov_a
            g_cov_a = gcc * inv_det
            g_cov_b = -gcb * inv_det
            g_cov_c = gca * inv_det
            if det_ok:
                g_det = -inv_det * inv_det * g_inv_det
                g_cov_a += g_det * cov_c
                g_cov_c += g_det * cov_a
                g_cov_b -= two * cov_b * g_det
            # cov_a = t0 S t0, cov_b = t0 S t1, cov_c = t1 S t1 (S symmetric, 6 parameters)
            ga2, gc2 = two * g_cov_a, two * g_cov_c
            gt00 = ga2 * st00 + g_cov_b * st10
            gt01 = ga2 * st01 + g_cov_b * st11
            gt02 = ga2 * st02 + g_cov_b * st12
            gt10 = gc2 * st10 + g_cov_b * st00
            gt11 = gc2 * st11 + g_cov_b * st01
            gt12 = gc2 * st12 + g_cov_b * st02
            gs00 += g_cov_a * t0[0] * t0[0] + g_cov_b * t0[0] * t1[0] + g_cov_c * t1[0] * t1[0]
            gs11 += g_cov_a * t0[1] * t0[1] + g_cov_b * t0[1] * t1[1] + g_cov_c * t1[1] * t1[1]
            gs22 += g_cov_a * t0[2] * t0[2] + g_cov_b * t0[2] * t1[2] + g_cov_c * t1[2] * t1[2]
            gs01 += (
                ga2 * t0[0] * t0[1]
                + g_cov_b * (t0[0] * t1[1] + t0[1] * t1[0])
                + gc2 * t1[0] * t1[1]
            )
            gs02 += (
                ga2 * t0[0] * t0[2]
                + g_cov_b * (t0[0] * t1[2] + t0[2] * t1[0])
                + gc2 * t1[0] * t1[2]
            )
            gs12 += (
                ga2 * t0[1] * t0[2]
                + g_cov_b * (t0[1] * t1[2] + t0[2] * t1[1])
                + gc2 * t1[1] * t1[2]
            )
            # rows of T = J R: t0 = jx R0 + jxz R2, t1 = jy R1 + jyz R2
            g_jx = gt00 * cam[c, 0] + gt01 * cam[c, 1] + gt02 * cam[c, 2]
            g_jy = gt10 * cam[c, 3] + gt11 * cam[c, 4] + gt12 * cam[c, 5]
            g_jxz = gt00 * cam[c, 6] + gt01 * cam[c, 7] + gt02 * cam[c, 8]
            g_jyz = gt10 * cam[c, 6] + gt11 * cam[c, 7] + gt12 * cam[c, 8]
            # jx = fx / z, jxz = -fx xcl / z (same for y)
            g_inv_z = fx * g_jx + fy * g_jy - fx * xcl * g_jxz - fy * ycl * g_jyz
            g_xr = -fx * inv_z * g_jxz if -cam[c, 17] < xr < cam[c, 16] else zero
            g_yr = -fy * inv_z * g_jyz if -cam[c, 19] < yr < cam[c, 18] else zero
            # xr = x / z; u = fx x / z + cx; v = fy y / z + cy
            g_x = inv_z * g_xr + fx * inv_z * gu
            g_y = inv_z * g_yr + fy * inv_z * gv
            g_inv_z += x * g_xr + y * g_yr + fx * x * gu + fy * y * gv
            g_z = gz_out
            if in_range:
                g_z -= inv_z * inv_z * g_inv_z
            # camera space (x, y, z) = R m + t
            gmx += cam[c, 0] * g_x + cam[c, 3] * g_y + cam[c, 6] * g_z
            gmy += cam[c, 1] * g_x + cam[c, 4] * g_y + cam[c, 7] * g_z
            gmz += cam[c, 2] * g_x + cam[c, 5] * g_y + cam[c, 8] * g_z
        g_means[i, 0] = gmx
        g_means[i, 1] = gmy
        g_means[i, 2] = gmz
        # Sigma = M M^T with the 6 unique entries as parameters
        m00, m01, m02, m10, m11, m12, m20, m21, m22 = mm
        gm00 = two * m00 * gs00 + m10 * gs01 + m20 * gs02
        gm01 = two * m01 * gs00 + m11 * gs01 + m21 * gs02
        gm02 = two * m02 * gs00 + m12 * gs01 + m22 * gs02
        gm10 = m00 * gs01 + two * m10 * gs11 + m20 * gs12
        gm11 = m01 * gs01 + two * m11 * gs11 + m21 * gs12
        gm12 = m02 * gs01 + two * m12 * gs11 + m22 * gs12
        gm20 = m00 * gs02 + m10 * gs12 + two * m20 * gs22
        gm21 = m01 * gs02 + m11 * gs12 + two * m21 * gs22
        gm22 = m02 * gs02 + m12 * gs12 + two * m22 * gs22
        # M = R diag(s)
        # M = R diag(s)
        R00, R01, R02, R10, R11, R12, R20, R21, R22 = rr
        sx, sy, sz = scales[i, 0], scales[i, 1], scales[i, 2]
        g_scales[i, 0] = gm00 * R00 + gm10 * R10 + gm20 * R20
        g_scales[i, 1] = gm01 * R01 + gm11 * R11 + gm21 * R21
        g_scales[i, 2] = gm02 * R02 + gm12 * R12 + gm22 * R22
        r00, r01, r02 = gm00 * sx, gm01 * sy, gm02 * sz  # gradients w.r.t. R entries
        r10, r11, r12 = gm10 * sx, gm11 * sy, gm12 * sz
        r20, r21, r22 = gm20 * sx, gm21 * sy, gm22 * sz
        # R = I + s2 P(q) with s2 = 2 / |q|^2 and P quadratic in the raw quaternion q:
        # dL/dq = s2 sum(gR dP/dq) - 4 q / |q|^4 sum(gR P)
        w, x, y, z = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
        n2 = w * w + x * x + y * y + z * z
        s2 = two / n2
        dw = -z * r01 + y * r02 + z * r10 - x * r12 - y * r20 + x * r21
        dx = (
            y * r01
            + z * r02
            + y * r10
            - two * x * r11
            - w * r12
            + z * r20
            + w * r21
            - two * x * r22
        )
        dy = (
            -two * y * r00
            + x * r01
            + w * r02
            + x * r10
            + z * r12
            - w * r20
            + z * r21
            - two * y * r22
        )
        dz = (
            -two * z * r00
            - w * r01
            + x * r02
            + w * r10
            - two * z * r11
            + y * r12
            + x * r20
            + y * r21
        )
        gp = (
            -(y * y + z * z) * r00
            + (x * y - w * z) * r01
            + (x * z + w * y) * r02
            + (x * y + w * z) * r10
            - (x * x + z * z) * r11
            + (y * z - w * x) * r12
            + (x * z - w * y) * r20
            + (y * z + w * x) * r21
            - (x * x + y * y) * r22
        )
        k = two * s2 * gp / n2
        g_quats[i, 0] = s2 * dw - k * w
        g_quats[i, 1] = s2 * dx - k * x
        g_quats[i, 2] = s2 * dy - k * y
        g_quats[i, 3] = s2 * dz - k * z
    return g_means, g_quats, g_scales


# ----------------------------------------------------------------------------- binning
@_jit()
def _pack_tiles(rect, c, i):
    """Tile range of Gaussian i in camera c, packed as tx0 | tx1 << 16 | ty0 << 32 | ty1 << 48."""
    return (
        np.int64(rect[c, i, 0] >> 4)
        | (np.int64(rect[c, i, 1] >> 4) << 16)
        | (np.int64(rect[c, i, 2] >> 4) << 32)
        | (np.int64(rect[c, i, 3] >> 4) << 48)
    )


@_jit(parallel=True)
def _bin_kernel(order, tiles, n_live, n_gauss, tiles_x, tiles_y, n_chunks):
    """Counting sort of (camera, tile, depth) intersections, parallel over Gaussian chunks.

    order: [C, N] per-camera depth-sorted Gaussian indices, first n_live[c] of them live;
    tiles: [C, N] their packed tile ranges (see :func:`_pack_tiles`), in the same order. Each
    camera's list is cut into ``n_chunks`` contiguous chunks that are counted and scattered in
    parallel; within a tile the chunks are laid out in order, so every tile list stays
    depth-sorted. Returns offsets [C*T + 1] (int64) and ids [n_isect] (int32 slots c * N + n).
    """
    n_cam = order.shape[0]
    n_tiles = tiles_x * tiles_y
    n_work = n_cam * n_chunks
    counts = np.zeros((n_work, n_tiles), dtype=np.int64)
    for w in prange(n_work):
        cam = w // n_chunks
        chunk = w - cam * n_chunks
        for j in range(n_live[cam] * chunk // n_chunks, n_live[cam] * (chunk + 1) // n_chunks):
            tr = tiles[cam, j]
            tx0, tx1 = tr & 0xFFFF, (tr >> 16) & 0xFFFF
            for ty in range((tr >> 32) & 0xFFFF, ((tr >> 48) & 0xFFFF) + 1):
                for tx in range(tx0, tx1 + 1):
                    counts[w, ty * tiles_x + tx] += 1
    offsets = np.empty(n_cam * n_tiles + 1, dtype=np.int64)
    cursor = np.empty((n_work, n_tiles), dtype=np.int64)
    total = 0
    for cam in range(n_cam):
        for t in range(n_tiles):
            offsets[cam * n_tiles + t] = total
            for chunk in range(n_chunks):
                cursor[cam * n_chunks + chunk, t] = total
                total += counts[cam * n_chunks + chunk, t]
    offsets[n_cam * n_tiles] = total
    ids = np.empty(total, dtype=np.int32)
    for w in prange(n_work):
        cam = w // n_chunks
        chunk = w - cam * n_chunks
        for j in range(n_live[cam] * chunk // n_chunks, n_live[cam] * (chunk + 1) // n_chunks):
            g = cam * n_gauss + order[cam, j]
            tr = tiles[cam, j]
            tx0, tx1 = tr & 0xFFFF, (tr >> 16) & 0xFFFF
            for ty in range((tr >> 32) & 0xFFFF, ((tr >> 48) & 0xFFFF) + 1):
                for tx in range(tx0, tx1 + 1):
                    t = ty * tiles_x + tx
                    ids[cursor[w, t]] = g
                    cursor[w, t] += 1
    return offsets, ids


# ----------------------------------------------------------------------------- kernels
# Packed per-slot record (one row of ``gs``): the kernels read a Gaussian with one cache line.
_MX, _MY, _CA, _CB, _CC, _OP, _F0, _CUT, _RECT = 0, 1, 2, 3, 4, 5, 6, 10, 11
_N_REC = 16  # 15 used + 1 pad: one 64-byte record per Gaussian slot in float32
_N_CH = 4  # features composited: RGB + camera z
_N_GRAD = 10  # per-intersection gradient slots: mx, my, a, b, c, opacity, f0..f3
# consts of the raster kernels (in the float dtype)
_K_HALF, _K_ONE, _K_AMIN, _K_AMAX, _K_TMIN, _K_DEPTH_AMIN = 0, 1, 2, 3, 4, 5


@_jit()
def _span_setup(mx, ca, cb, cc, cut, x0):
    """Per (Gaussian, tile) constants of :func:`_row_span` (float64).

    The pixels with ``0.5 (a dx^2 + c dy^2) + b dx dy <= cut`` (``dx = mx - px``) of a row form
    one interval ``px in centre +- half`` with ``centre = mx + (b / a) dy`` and
    ``half^2 = 2 cut / a - (det / a^2) dy^2``. Returns ``(base, b / a, 2 cut / a, det / a^2)``
    with ``base = mx - x0 - 0.5`` (local column of the centre at dy = 0); ``a <= 0`` (not
    positive definite, should not happen) gives ``2 cut / a = inf``: whole box rows.
    """
    a = np.float64(ca)
    b = np.float64(cb)
    base = np.float64(mx) - x0 - 0.5
    if a <= 0.0:
        return base, 0.0, np.inf, 0.0
    inv_a = 1.0 / a
    return (
        base,
        b * inv_a,
        2.0 * np.float64(cut) * inv_a,
        (a * np.float64(cc) - b * b) * inv_a * inv_a,
    )


@_jit()
def _row_span(base, b_a, cut2_a, det_a2, dy, lx0, lx1):
    """Local pixel columns ``[lo, hi]`` of one tile row that can pass the alpha test.

    See :func:`_span_setup`; the interval is widened by 0.01 px (float32 rounding of ``dx``)
    and clipped to the box columns ``[lx0, lx1]``; empty when ``lo > hi``.
    """
    dyd = np.float64(dy)
    h2 = cut2_a - det_a2 * dyd * dyd
    if h2 < 0.0:
        return 1, 0
    if h2 == np.inf:
        return lx0, lx1
    half = np.sqrt(h2) + 0.01
    centre = base + b_a * dyd
    lo = lx0
    hi = lx1
    lo_f = centre - half
    hi_f = centre + half
    if lo_f > lo:
        lo = np.int64(np.ceil(min(lo_f, 1e9)))
    if hi_f < hi:
        hi = np.int64(np.floor(max(hi_f, -1e9)))
    return lo, hi


@_jit()
def _tile_of(item, n_tiles, tiles_x, width, height):
    """Camera, pixel origin and size ``(cam, x0, y0, tw, th)`` of work item ``item`` (a
    (camera, tile) pair numbered camera-major)."""
    cam = item // n_tiles
    tile = item - cam * n_tiles
    ty = tile // tiles_x
    tx = tile - ty * tiles_x
    x0, y0 = tx * TILE, ty * TILE
    return cam, x0, y0, min(TILE, width - x0), min(TILE, height - y0)


@_jit()
def _splat(gs, g):
    """Centre, conic, opacity and cut-off ``(mx, my, a, b, c, o, cutoff)`` of record ``g``."""
    return gs[g, _MX], gs[g, _MY], gs[g, _CA], gs[g, _CB], gs[g, _CC], gs[g, _OP], gs[g, _CUT]


@_jit()
def _box_in_tile(gs, g, x0, y0, tw, th):
    """The pixel box of record ``g`` in the local coordinates of the tile at ``(x0, y0)`` of
    size ``tw x th``, clipped to it: ``(lx0, lx1, ly0, ly1)`` inclusive."""
    lx0 = max(np.int64(gs[g, _RECT]) - x0, 0)
    lx1 = min(np.int64(gs[g, _RECT + 1]) - x0, tw - 1)
    ly0 = max(np.int64(gs[g, _RECT + 2]) - y0, 0)
    ly1 = min(np.int64(gs[g, _RECT + 3]) - y0, th - 1)
    return lx0, lx1, ly0, ly1


@_jit(parallel=True, fastmath=False)
def _forward_kernel(gs, offsets, ids, part_ptr, part_items, bg, width, height, tiles_x, consts):
    """Front-to-back compositing, one tile at a time; prange over balanced tile partitions.

    gs [G, 16] packed records (mx, my, a, b, c, opacity, f0..f3, cutoff, x0, x1, y0, y1, -),
    offsets / ids from the binning, part_ptr / part_items: the tiles of each partition,
    bg [C, 3] background, consts (see ``_K_*``) in the dtype of ``gs``.
    Returns rgb [C, H, W, 3] (over the background), alpha [C, H, W, 1], depth [C, H, W, 1]
    (expected z, 0 where alpha < 1e-6), trans [C, H, W] (final T) and last [C, H, W] int32
    (position in ``ids`` of the last contributor, -1 if none).
    """
    n_cam = bg.shape[0]
    n_tiles = (offsets.shape[0] - 1) // n_cam
    half, one, amin, amax = consts[_K_HALF], consts[_K_ONE], consts[_K_AMIN], consts[_K_AMAX]
    tmin, depth_amin = consts[_K_TMIN], consts[_K_DEPTH_AMIN]
    zero = one - one
    dt = gs.dtype
    rgb_img = np.empty((n_cam, height, width, 3), dtype=dt)
    for c in range(n_cam):
        rgb_img[c, :, :, 0] = bg[c, 0]
        rgb_img[c, :, :, 1] = bg[c, 1]
        rgb_img[c, :, :, 2] = bg[c, 2]
    alpha_img = np.zeros((n_cam, height, width, 1), dtype=dt)
    depth_img = np.zeros((n_cam, height, width, 1), dtype=dt)
    t_img = np.ones((n_cam, height, width), dtype=dt)
    last_img = np.full((n_cam, height, width), -1, dtype=np.int32)
    for part in prange(part_ptr.shape[0] - 1):
        pxc = np.empty(TILE, dtype=dt)
        pyc = np.empty(TILE, dtype=dt)
        trans = np.empty(_TILE_PIX, dtype=dt)
        acc0 = np.empty(_TILE_PIX, dtype=dt)
        acc1 = np.empty(_TILE_PIX, dtype=dt)
        acc2 = np.empty(_TILE_PIX, dtype=dt)
        acc3 = np.empty(_TILE_PIX, dtype=dt)
        last = np.empty(_TILE_PIX, dtype=np.int32)
        done = np.empty(_TILE_PIX, dtype=np.bool_)
        row_left = np.empty(TILE, dtype=np.int64)
        for it in range(part_ptr[part], part_ptr[part + 1]):
            item = part_items[it]
            start, end = offsets[item], offsets[item + 1]
            cam, x0, y0, tw, th = _tile_of(item, n_tiles, tiles_x, width, height)
            for i in range(TILE):
                pxc[i] = x0 + i + 0.5
                pyc[i] = y0 + i + 0.5
                row_left[i] = tw if i < th else 0
            trans[:] = one
            acc0[:] = zero
            acc1[:] = zero
            acc2[:] = zero
            acc3[:] = zero
            last[:] = -1
            done[:] = False
            n_left = tw * th
            for k in range(start, end):
                if n_left == 0:
                    break
                g = ids[k]
                mx, my, ca, cb, cc, o, cut = _splat(gs, g)
                f0, f1, f2, f3 = gs[g, _F0], gs[g, _F0 + 1], gs[g, _F0 + 2], gs[g, _F0 + 3]
                lx0, lx1, ly0, ly1 = _box_in_tile(gs, g, x0, y0, tw, th)
                base, b_a, cut2_a, det_a2 = _span_setup(mx, ca, cb, cc, cut, x0)
                for ly in range(ly0, ly1 + 1):
                    if row_left[ly] == 0:
                        continue
                    dy = my - pyc[ly]
                    lo, hi = _row_span(base, b_a, cut2_a, det_a2, dy, lx0, lx1)
                    row = ly * TILE
                    for lx in range(lo, hi + 1):
                        p = row + lx
                        if done[p]:
                            continue
                        dx = mx - pxc[lx]
                        sigma = half * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                        if sigma < zero:
                            continue
                        alpha = min(amax, o * np.exp(-sigma))
                        if alpha < amin:
                            continue
                        t = trans[p]
                        test_t = t * (one - alpha)
                        if test_t < tmin:
                            done[p] = True
                            row_left[ly] -= 1
                            n_left -= 1
                            continue
                        w = alpha * t
                        acc0[p] += w * f0
                        acc1[p] += w * f1
                        acc2[p] += w * f2
                        acc3[p] += w * f3
                        trans[p] = test_t
                        last[p] = k
            for ly in range(th):
                for lx in range(tw):
                    p = ly * TILE + lx
                    t = trans[p]
                    a = one - t
                    yy, xx = y0 + ly, x0 + lx
                    rgb_img[cam, yy, xx, 0] = acc0[p] + t * bg[cam, 0]
                    rgb_img[cam, yy, xx, 1] = acc1[p] + t * bg[cam, 1]
                    rgb_img[cam, yy, xx, 2] = acc2[p] + t * bg[cam, 2]
                    alpha_img[cam, yy, xx, 0] = a
                    depth_img[cam, yy, xx, 0] = acc3[p] / a if a >= depth_amin else zero
                    t_img[cam, yy, xx] = t
                    last_img[cam, yy, xx] = last[p]
    return rgb_img, alpha_img, depth_img, t_img, last_img


@_jit(parallel=True, fastmath=False)
def _backward_kernel(
    gs,
    offsets,
    ids,
    part_ptr,
    part_items,
    bg,
    t_img,
    last_img,
    depth_img,
    g_rgb,
    g_alpha,
    g_depth,
    width,
    height,
    tiles_x,
    consts,
):
    """Back-to-front replay per tile -> per-intersection gradients.

    g_rgb [C, H, W, 3], g_alpha [C, H, W, 1], g_depth [C, H, W, 1] are the output gradients;
    t_img, last_img, depth_img come from the forward. Returns gbuf [n_isect, 10]:
    d/d(mean x, mean y, conic a, b, c, opacity, f0..f3) of each (tile, Gaussian) pair (every
    row is written).
    """
    n_cam = bg.shape[0]
    n_tiles = (offsets.shape[0] - 1) // n_cam
    half, one, amin, amax = consts[_K_HALF], consts[_K_ONE], consts[_K_AMIN], consts[_K_AMAX]
    depth_amin = consts[_K_DEPTH_AMIN]
    zero = one - one
    dt = gs.dtype
    gbuf = np.empty((ids.shape[0], _N_GRAD), dtype=dt)
    for part in prange(part_ptr.shape[0] - 1):
        pxc = np.empty(TILE, dtype=dt)
        pyc = np.empty(TILE, dtype=dt)
        trans = np.ones(_TILE_PIX, dtype=dt)
        t_final = np.ones(_TILE_PIX, dtype=dt)
        last = np.full(_TILE_PIX, -1, dtype=np.int32)
        gf0 = np.zeros(_TILE_PIX, dtype=dt)
        gf1 = np.zeros(_TILE_PIX, dtype=dt)
        gf2 = np.zeros(_TILE_PIX, dtype=dt)
        gf3 = np.zeros(_TILE_PIX, dtype=dt)
        ga = np.zeros(_TILE_PIX, dtype=dt)
        # features composited behind the current Gaussian, per pixel
        s0 = np.empty(_TILE_PIX, dtype=dt)
        s1 = np.empty(_TILE_PIX, dtype=dt)
        s2 = np.empty(_TILE_PIX, dtype=dt)
        s3 = np.empty(_TILE_PIX, dtype=dt)
        row_last = np.empty(TILE, dtype=np.int64)
        for it in range(part_ptr[part], part_ptr[part + 1]):
            item = part_items[it]
            start, end = offsets[item], offsets[item + 1]
            cam, x0, y0, tw, th = _tile_of(item, n_tiles, tiles_x, width, height)
            for i in range(TILE):
                pxc[i] = x0 + i + 0.5
                pyc[i] = y0 + i + 0.5
                row_last[i] = -1
            s0[:] = zero
            s1[:] = zero
            s2[:] = zero
            s3[:] = zero
            k_max = start - 1
            for ly in range(th):
                for lx in range(tw):
                    p = ly * TILE + lx
                    yy, xx = y0 + ly, x0 + lx
                    t = t_img[cam, yy, xx]
                    trans[p] = t
                    t_final[p] = t
                    kl = last_img[cam, yy, xx]
                    last[p] = kl
                    row_last[ly] = max(row_last[ly], kl)
                    k_max = max(k_max, kl)
                    # rgb = acc + (1 - A) bg; depth = acc_z / A (A >= 1e-6); A = 1 - T
                    gr, gg, gb = g_rgb[cam, yy, xx, 0], g_rgb[cam, yy, xx, 1], g_rgb[cam, yy, xx, 2]
                    gf0[p] = gr
                    gf1[p] = gg
                    gf2[p] = gb
                    gsum = g_alpha[cam, yy, xx, 0] - (
                        gr * bg[cam, 0] + gg * bg[cam, 1] + gb * bg[cam, 2]
                    )
                    a = one - t
                    if a >= depth_amin:
                        gd = g_depth[cam, yy, xx, 0] / a
                        gf3[p] = gd
                        gsum -= gd * depth_img[cam, yy, xx, 0]
                    else:
                        gf3[p] = zero
                    ga[p] = gsum
            for k in range(k_max + 1, end):  # never reached by any pixel of this tile
                for j in range(_N_GRAD):
                    gbuf[k, j] = zero
            for k in range(k_max, start - 1, -1):
                g = ids[k]
                mx, my, ca, cb, cc, o, cut = _splat(gs, g)
                f0, f1, f2, f3 = gs[g, _F0], gs[g, _F0 + 1], gs[g, _F0 + 2], gs[g, _F0 + 3]
                lx0, lx1, ly0, ly1 = _box_in_tile(gs, g, x0, y0, tw, th)
                g_mx = zero
                g_my = zero
                g_a = zero
                g_b = zero
                g_c = zero
                g_o = zero
                g_f0 = zero
                g_f1 = zero
                g_f2 = zero
                g_f3 = zero
                base, b_a, cut2_a, det_a2 = _span_setup(mx, ca, cb, cc, cut, x0)
                for ly in range(ly0, ly1 + 1):
                    if k > row_last[ly]:
                        continue
                    dy = my - pyc[ly]
                    lo, hi = _row_span(base, b_a, cut2_a, det_a2, dy, lx0, lx1)
                    row = ly * TILE
                    for lx in range(lo, hi + 1):
                        p = row + lx
                        if k > last[p]:
                            continue
                        dx = mx - pxc[lx]
                        sigma = half * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                        if sigma < zero:
                            continue
                        vis = np.exp(-sigma)
                        raw = o * vis
                        alpha = min(amax, raw)
                        if alpha < amin:
                            continue
                        one_m = one - alpha
                        inv_om = one / one_m
                        t_i = trans[p] * inv_om  # transmittance in front of this Gaussian
                        w = alpha * t_i
                        g_f0 += w * gf0[p]
                        g_f1 += w * gf1[p]
                        g_f2 += w * gf2[p]
                        g_f3 += w * gf3[p]
                        dl_dalpha = (
                            (f0 - s0[p]) * gf0[p]
                            + (f1 - s1[p]) * gf1[p]
                            + (f2 - s2[p]) * gf2[p]
                            + (f3 - s3[p]) * gf3[p]
                        ) * t_i + ga[p] * t_final[p] * inv_om
                        s0[p] = alpha * f0 + one_m * s0[p]
                        s1[p] = alpha * f1 + one_m * s1[p]
                        s2[p] = alpha * f2 + one_m * s2[p]
                        s3[p] = alpha * f3 + one_m * s3[p]
                        trans[p] = t_i
                        if raw < amax:  # alpha not clamped: d alpha / d sigma = -alpha
                            g_o += vis * dl_dalpha
                            dl_dsigma = -alpha * dl_dalpha
                            g_a += half * dx * dx * dl_dsigma
                            g_b += dx * dy * dl_dsigma
                            g_c += half * dy * dy * dl_dsigma
                            g_mx += (ca * dx + cb * dy) * dl_dsigma
                            g_my += (cb * dx + cc * dy) * dl_dsigma
                gbuf[k, 0] = g_mx
                gbuf[k, 1] = g_my
                gbuf[k, 2] = g_a
                gbuf[k, 3] = g_b
                gbuf[k, 4] = g_c
                gbuf[k, 5] = g_o
                gbuf[k, 6] = g_f0
                gbuf[k, 7] = g_f1
                gbuf[k, 8] = g_f2
                gbuf[k, 9] = g_f3
    return gbuf


@_jit()
def _scatter_grads(gbuf, ids, n_slots):
    """Sum per-intersection gradients [n_isect, K] into per-slot gradients [n_slots, K]."""
    out = np.zeros((n_slots, gbuf.shape[1]), dtype=gbuf.dtype)
    for k in range(ids.shape[0]):
        g = ids[k]
        for j in range(gbuf.shape[1]):
            out[g, j] += gbuf[k, j]
    return out


# ----------------------------------------------------------------------------- python side
def _partition(cost: np.ndarray, n_parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the non-empty work items into ``n_parts`` lists of similar total cost.

    Items are dealt by decreasing cost in a snake order (0, 1, .., P-1, P-1, .., 0, 0, 1, ..),
    which keeps the partitions within one item's cost of each other. The kernels run one
    ``prange`` iteration per partition, so the partitions are the unit of (static) parallel
    scheduling; each list starts with its heaviest tiles.

    Returns ``(part_ptr [P + 1], part_items [n_nonempty])`` (int64).
    """
    order = np.argsort(-cost, kind="stable")
    order = order[cost[order] > 0]
    n_parts = max(1, min(n_parts, len(order)))
    rank = np.arange(len(order))
    lane = rank % n_parts
    owner = np.where((rank // n_parts) % 2 == 0, lane, n_parts - 1 - lane)
    by_part = np.argsort(owner, kind="stable")
    part_items = order[by_part].astype(np.int64)
    part_ptr = np.zeros(n_parts + 1, dtype=np.int64)
    part_ptr[1:] = np.cumsum(np.bincount(owner, minlength=n_parts))
    return part_ptr, part_items


@_jit()
def _radix_sort_f32(keys, payload):
    """Stable sort of float32 ``keys`` (LSD radix, 4 passes of 8 bits) carrying two int64
    payload rows ``payload [2, n]``; returns the permuted payload (sequential memory access
    only, which matters more than the arithmetic here)."""
    n = keys.shape[0]
    bits = keys.view(np.uint32)
    k = np.empty(n, dtype=np.int64)
    for i in range(n):
        b = np.int64(bits[i])
        # IEEE order -> unsigned order: flip all bits of negatives, the sign bit of positives
        k[i] = (0xFFFFFFFF - b) if b >= 0x80000000 else (b + 0x80000000)
    pay = payload.copy()
    k2 = np.empty(n, dtype=np.int64)
    pay2 = np.empty_like(pay)
    hist = np.empty(256, dtype=np.int64)
    for shift in range(0, 32, 8):
        hist[:] = 0
        for i in range(n):
            hist[(k[i] >> shift) & 0xFF] += 1
        total = 0
        for d in range(256):
            cnt = hist[d]
            hist[d] = total
            total += cnt
        for i in range(n):
            d = (k[i] >> shift) & 0xFF
            pos = hist[d]
            hist[d] = pos + 1
            k2[pos] = k[i]
            pay2[0, pos] = pay[0, i]
            pay2[1, pos] = pay[1, i]
        k, k2 = k2, k
        pay, pay2 = pay2, pay
    return pay


@_jit()
def _live_payload(depths, rect, c):
    """Camera c's live Gaussians (non-empty rect), ascending: their depths and a payload
    ``[2, n_live]`` of (index, packed tile range)."""
    n = depths.shape[1]
    k = 0
    for i in range(n):
        if rect[c, i, 1] >= rect[c, i, 0] and rect[c, i, 3] >= rect[c, i, 2]:
            k += 1
    keys = np.empty(k, dtype=depths.dtype)
    payload = np.empty((2, k), dtype=np.int64)
    k = 0
    for i in range(n):
        if rect[c, i, 1] >= rect[c, i, 0] and rect[c, i, 3] >= rect[c, i, 2]:
            keys[k] = depths[c, i]
            payload[0, k] = i
            payload[1, k] = _pack_tiles(rect, c, i)
            k += 1
    return keys, payload


@_jit(parallel=True)
def _depth_order_f32(depths, rect):
    """Per camera: the live Gaussians sorted by depth (stable radix sort), then zeros.

    depths [C, N] float32, rect [C, N, 4] int32. Returns order [C, N] int64, their packed tile
    ranges [C, N] int64 and n_live [C] int64.
    """
    n_cam, n = depths.shape
    order = np.zeros((n_cam, n), dtype=np.int64)
    tiles = np.zeros((n_cam, n), dtype=np.int64)
    n_live = np.zeros(n_cam, dtype=np.int64)
    for c in prange(n_cam):
        keys, payload = _live_payload(depths, rect, c)
        srt = _radix_sort_f32(keys, payload)
        m = keys.shape[0]
        order[c, :m] = srt[0]
        tiles[c, :m] = srt[1]
        n_live[c] = m
    return order, tiles, n_live


@_jit(parallel=True)
def _depth_order_any(depths, rect):
    """As :func:`_depth_order_f32` for any float dtype (stable merge sort)."""
    n_cam, n = depths.shape
    order = np.zeros((n_cam, n), dtype=np.int64)
    tiles = np.zeros((n_cam, n), dtype=np.int64)
    n_live = np.zeros(n_cam, dtype=np.int64)
    for c in prange(n_cam):
        keys, payload = _live_payload(depths, rect, c)
        srt = np.argsort(keys, kind="mergesort")
        for j in range(keys.shape[0]):
            order[c, j] = payload[0, srt[j]]
            tiles[c, j] = payload[1, srt[j]]
        n_live[c] = keys.shape[0]
    return order, tiles, n_live


class Bins:
    """Tile binning of one rasterization call (what forward and backward share).

    Attributes:
        rect: ``[C*N, 4]`` int32 inclusive pixel boxes ``(x0, x1, y0, y1)``.
        offsets: ``[C*T + 1]`` int64 start of each (camera, tile) list in ``ids``.
        ids: ``[n_isect]`` int32 flattened Gaussian slots ``c * N + n``, depth-sorted per tile.
        part_ptr, part_items: non-empty (camera, tile) work items split into one balanced
            list per thread (see :func:`_partition`).
        n_cam, width, height, tiles_x, tiles_y: geometry.
    """

    def __init__(self, proj: Projection, rect: Tensor, width: int, height: int):
        n_cam, n = proj.depths.shape
        self.n_cam, self.width, self.height = n_cam, width, height
        self.tiles_x, self.tiles_y = -(-width // TILE), -(-height // TILE)
        self.rect = _np(rect.to(torch.int32)).reshape(-1, 4)
        depths = _np(proj.depths)
        sort = _depth_order_f32 if depths.dtype == np.float32 else _depth_order_any
        order, tiles, n_live = sort(depths, self.rect.reshape(n_cam, n, 4))
        self.offsets, self.ids = _bin_kernel(
            order, tiles, n_live, n, self.tiles_x, self.tiles_y, numba.get_num_threads()
        )
        self.part_ptr, self.part_items = _partition(np.diff(self.offsets), numba.get_num_threads())

    @property
    def n_isect(self) -> int:
        return int(self.ids.shape[0])


def _consts(dtype: np.dtype) -> np.ndarray:
    vals = [0.5, 1.0, ALPHA_MIN, ALPHA_MAX, T_MIN, DEPTH_ALPHA_MIN]
    return np.array(vals, dtype=dtype)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class RasterizeFunction(torch.autograd.Function):
    """Autograd wrapper of the numba forward / backward raster kernels.

    ``apply(means2d [C,N,2], conics [C,N,3], opacities [C,N], feats [C,N,4], background [C,3],
    cutoff [C,N], rect [C,N,4], bins)`` -> ``(rgb [C,H,W,3], alpha [C,H,W,1],
    depth [C,H,W,1])``; gradients for the first five inputs.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, background, cutoff, rect, bins: Bins):
        n_cam, n, _ = feats.shape
        with torch.no_grad():
            gs = torch.cat(
                [
                    means2d,
                    conics,
                    opacities[..., None],
                    feats,
                    cutoff[..., None],
                    rect.to(feats.dtype),
                    torch.zeros_like(cutoff[..., None]),
                ],
                -1,
            ).reshape(n_cam * n, _N_REC)
        gs_np = _np(gs)
        bg = _np(background.to(feats.dtype))
        consts = _consts(gs_np.dtype)
        rgb, alpha, depth, trans, last = _forward_kernel(
            gs_np,
            bins.offsets,
            bins.ids,
            bins.part_ptr,
            bins.part_items,
            bg,
            bins.width,
            bins.height,
            bins.tiles_x,
            consts,
        )
        ctx.bins = bins
        ctx.arrays = (gs_np, bg, trans, last, depth, consts)
        ctx.shape = (n_cam, n)
        return torch.from_numpy(rgb), torch.from_numpy(alpha), torch.from_numpy(depth)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_rgb, g_alpha, g_depth):
        bins: Bins = ctx.bins
        gs_np, bg, trans, last, depth, consts = ctx.arrays
        n_cam, n = ctx.shape
        dtype = torch.from_numpy(gs_np[:0]).dtype

        def grad(g, channels):
            if g is None:
                return np.zeros(trans.shape + (channels,), dtype=gs_np.dtype)
            return _np(g.to(dtype))

        g_rgb_np = grad(g_rgb, 3)
        gbuf = _backward_kernel(
            gs_np,
            bins.offsets,
            bins.ids,
            bins.part_ptr,
            bins.part_items,
            bg,
            trans,
            last,
            depth,
            g_rgb_np,
            grad(g_alpha, 1),
            grad(g_depth, 1),
            bins.width,
            bins.height,
            bins.tiles_x,
            consts,
        )
        grads = torch.from_numpy(_scatter_grads(gbuf, bins.ids, n_cam * n))
        g_m2d = grads[:, 0:2].reshape(n_cam, n, 2)
        g_con = grads[:, 2:5].reshape(n_cam, n, 3)
        g_opa = grads[:, 5].reshape(n_cam, n)
        g_fts = grads[:, 6:10].reshape(n_cam, n, _N_CH)
        g_bg = None
        if ctx.needs_input_grad[4]:  # d rgb / d bg = final transmittance
            g_bg = torch.from_numpy(np.einsum("chw,chwk->ck", trans, g_rgb_np))
        return g_m2d, g_con, g_opa, g_fts, g_bg, None, None, None


class ProjectFunction(torch.autograd.Function):
    """Autograd wrapper of the fused numba projection (forward and hand-written backward).

    ``apply(means [N,3], quats [N,4], scales [N,3], opacities [N], cam [C,20], consts, width,
    height)`` -> ``(means2d, conics, depths, cutoff, radii, valid, rect)``; gradients flow
    from the first three outputs to means, quats and scales (not to cameras or opacities).
    """

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, cam, consts, width, height):
        arrays = [_np(t) for t in (means, quats, scales, opacities, cam)]
        outs = _project_fwd_kernel(*arrays, consts, width, height)
        m2d, con, depth, cutoff, radii, valid, rect = (torch.from_numpy(a) for a in outs)
        ctx.mark_non_differentiable(cutoff, radii, valid, rect)
        ctx.arrays = (arrays[0], arrays[1], arrays[2], arrays[4], consts)
        return m2d, con, depth, cutoff, radii, valid, rect

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_m2d, g_con, g_depth, *_):
        means, quats, scales, cam, consts = ctx.arrays
        n_cam, n = cam.shape[0], means.shape[0]
        dtype = torch.from_numpy(means[:0]).dtype

        def grad(g, shape):
            return _np(g.to(dtype)) if g is not None else np.zeros(shape, dtype=means.dtype)

        g_means, g_quats, g_scales = _project_bwd_kernel(
            means,
            quats,
            scales,
            cam,
            consts,
            grad(g_m2d, (n_cam, n, 2)),
            grad(g_con, (n_cam, n, 3)),
            grad(g_depth, (n_cam, n)),
        )
        return (
            torch.from_numpy(g_means),
            torch.from_numpy(g_quats),
            torch.from_numpy(g_scales),
            None,
            None,
            None,
            None,
            None,
        )


def project_cpu(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    K: Tensor,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e4,
    eps2d: float = EPS2D,
) -> Projection:
    """Fused numba version of :func:`pipelines.raster.project.project` (same arguments).

    Produces the same float values (the element-wise operation order is replicated), plus the
    pixel boxes ``rect``; differentiable w.r.t. means, quats and scales by a hand-written
    backward kernel. CPU tensors only.
    """
    dtype = means.dtype
    cam = camera_params(viewmats.to(dtype), K, width, height).contiguous()
    consts = np.array([eps2d, near, far, ALPHA_MIN, 1.0, 2.0], dtype=_np(means[:0]).dtype)
    m2d, con, depth, cutoff, radii, valid, rect = ProjectFunction.apply(
        means, quats, scales, opacities.to(dtype), cam, consts, int(width), int(height)
    )
    return Projection(
        means2d=m2d, conics=con, depths=depth, radii=radii, valid=valid, cutoff=cutoff, rect=rect
    )


def rasterize_cpu(
    proj: Projection,
    feats: Tensor,
    opacities: Tensor,
    width: int,
    height: int,
    background: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fast tiled CPU rasterizer (numba) with the background and depth normalisation fused.

    Args:
        proj: projection of N Gaussians into C cameras (CPU tensors), from
            :func:`project_cpu` or :func:`pipelines.raster.project.project`.
        feats: ``[C, N, 4]`` per-camera features: RGB and the camera z (``proj.depths``).
        opacities: ``[N]``.
        width, height: image size.
        background: ``[C, 3]``.

    Returns:
        ``(rgb [C, H, W, 3], alpha [C, H, W, 1], depth [C, H, W, 1])`` as
        :class:`pipelines.raster.RenderOutput`, differentiable w.r.t. ``proj.means2d``,
        ``proj.conics``, ``feats``, ``opacities`` and ``background``.
    """
    if feats.shape[-1] != _N_CH:
        raise ValueError(f"the CPU rasterizer composites {_N_CH} channels, got {feats.shape[-1]}")
    dtype = feats.dtype
    rect = proj.rect
    if rect is None:
        rect = torch.stack(pixel_rects(proj.means2d, proj.radii, width, height), -1)
    bins = Bins(proj, rect, width, height)
    n_cam = feats.shape[0]
    opa = opacities.to(dtype)[None, :].expand(n_cam, -1)
    return RasterizeFunction.apply(
        proj.means2d.to(dtype),
        proj.conics.to(dtype),
        opa,
        feats,
        background.to(dtype),
        proj.cutoff.to(dtype),
        rect,
        bins,
    )
