"""Differentiable EWA projection of 3D Gaussians into pinhole cameras (pure PyTorch).

The projection of the CPU backends: the "reference" backend calls :func:`project` directly;
the fast "cpu" backend runs :func:`pipelines.raster.cpu.project_cpu`, a fused numba twin that
repeats these float32 operations in the same order (bit-identical outputs, checked by the
tests). The math follows 3DGS / gsplat's ``fully_fused_projection`` (pinhole, ``eps2d = 0.3``,
no antialiasing compensation), written out element-wise (vectorised over Gaussians and
cameras) and differentiable by torch autograd, w.r.t. cameras too.

Conventions:

* Cameras come in as OpenGL camera-to-world matrices (x right, y up, looking down -z); they are
  turned into OpenCV world-to-camera matrices (x right, y down, looking down +z), so ``z`` below
  is the positive distance along the optical axis.
* Intrinsics ``K`` are in pixels; pixel ``(i, j)`` has its centre at ``(i + 0.5, j + 0.5)``.
* Conics are the upper triangle ``(a, b, c)`` of the inverse 2D covariance, so that the
  Gaussian falls off as ``exp(-(0.5 * (a dx^2 + c dy^2) + b dx dy))`` with ``d = mean2d - pixel``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EPS2D = 0.3
"""Low-pass dilation added to the 2D covariance diagonal, in px^2 (3DGS / gsplat default)."""

ALPHA_MIN = 1.0 / 255.0
"""Compositing skips any Gaussian whose alpha at a pixel is below this (the 3DGS rule)."""

DEPTH_ALPHA_MIN = 1e-6
"""Depth is normalised by alpha where alpha >= this, and 0 elsewhere."""

_OPENGL_TO_OPENCV = (1.0, -1.0, -1.0, 1.0)


@dataclass
class Projection:
    """Per-camera screen-space Gaussians (C cameras, N Gaussians).

    Attributes:
        means2d: ``[C, N, 2]`` projected centres in pixels (x right, y down).
        conics: ``[C, N, 3]`` upper triangle ``(a, b, c)`` of the inverse dilated 2D covariance.
        depths: ``[C, N]`` camera-space z (positive in front of the camera).
        radii: ``[C, N, 2]`` opacity-aware half extents in pixels along x and y: outside the box
            ``|d_x| <= r_x, |d_y| <= r_y`` the Gaussian's alpha is below 1/255. 0 where the
            Gaussian is culled (``valid`` false) or its box misses the image.
        valid: ``[C, N]`` bool: in front (near < z < far), finite, non-degenerate 2D covariance,
            opacity >= 1/255. Independent of the image bounds (the brute-force compositor uses it).
        cutoff: ``[C, N]`` conservative bound on ``sigma = 0.5 d^T conic d``: where sigma (in
            exact arithmetic) exceeds it, the float32 alpha is surely below 1/255. It is
            ``ln(255 opacity)`` plus a small margin for float rounding; 0 where not valid.
        rect: optional ``[C, N, 4]`` int32 inclusive pixel boxes ``(x0, x1, y0, y1)`` (as
            :func:`pixel_rects`); filled in by the fused numba projection of the fast path.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor
    valid: Tensor
    cutoff: Tensor
    rect: Tensor | None = None


def viewmats_from_c2w(c2w: Tensor) -> Tensor:
    """OpenGL camera-to-world ``[C, 4, 4]`` -> OpenCV world-to-camera ``[C, 4, 4]``."""
    flip = torch.tensor(_OPENGL_TO_OPENCV, dtype=c2w.dtype, device=c2w.device)
    return torch.linalg.inv(c2w * flip)  # c2w @ diag(flip) scales the columns


# Columns of the per-camera parameter table built by :func:`camera_params`.
CAM_R, CAM_T, CAM_FX, CAM_FY, CAM_CX, CAM_CY, CAM_LIM = 0, 9, 12, 13, 14, 15, 16
N_CAM_PARAMS = 20


def camera_params(viewmats: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """Per-camera constants of the projection, one row per camera.

    Args:
        viewmats: ``[C, 4, 4]`` OpenCV world-to-camera; K: ``[C, 3, 3]`` pixel intrinsics.
        width, height: image size.

    Returns:
        ``[C, 20]`` (dtype of ``viewmats``): rotation R row-major (9), translation t (3),
        fx, fy, cx, cy, and the frustum limits ``(lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg)``
        on x/z and y/z used to clamp the Jacobian (as 3DGS / gsplat: the image edges plus 30%
        of the half field of view).
    """
    R = viewmats[:, :3, :3].reshape(-1, 9)
    t = viewmats[:, :3, 3]
    K = K.to(viewmats.dtype)
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lims = [
        (width - cx) / fx + 0.3 * tan_fovx,
        cx / fx + 0.3 * tan_fovx,
        (height - cy) / fy + 0.3 * tan_fovy,
        cy / fy + 0.3 * tan_fovy,
    ]
    return torch.cat([R, t, torch.stack([fx, fy, cx, cy, *lims], -1)], -1)


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> tuple[Tensor, ...]:
    """3D covariance ``R S S^T R^T`` from quaternions and scales, as its 6 unique entries.

    Args:
        quats: ``[N, 4]`` (w, x, y, z); normalised here.
        scales: ``[N, 3]`` standard deviations.

    Returns:
        ``(s00, s01, s02, s11, s12, s22)``, each ``[N]``.
    """
    # Element-wise, in a fixed operation order that the numba port in cpu.py repeats exactly.
    # The rotation of q / |q| is written with 2 / |q|^2 (no square root: torch's vectorised
    # sqrt is not always correctly rounded, which would break bit-for-bit parity).
    w, x, y, z = quats.unbind(-1)
    s2 = 2.0 / (w * w + x * x + y * y + z * z)
    sx, sy, sz = scales.unbind(-1)
    # Columns of R scaled by the per-axis standard deviation: M = R diag(s).
    m00 = (1 - s2 * (y * y + z * z)) * sx
    m01 = s2 * (x * y - w * z) * sy
    m02 = s2 * (x * z + w * y) * sz
    m10 = s2 * (x * y + w * z) * sx
    m11 = (1 - s2 * (x * x + z * z)) * sy
    m12 = s2 * (y * z - w * x) * sz
    m20 = s2 * (x * z - w * y) * sx
    m21 = s2 * (y * z + w * x) * sy
    m22 = (1 - s2 * (x * x + y * y)) * sz
    s00 = m00 * m00 + m01 * m01 + m02 * m02
    s01 = m00 * m10 + m01 * m11 + m02 * m12
    s02 = m00 * m20 + m01 * m21 + m02 * m22
    s11 = m10 * m10 + m11 * m11 + m12 * m12
    s12 = m10 * m20 + m11 * m21 + m12 * m22
    s22 = m20 * m20 + m21 * m21 + m22 * m22
    return s00, s01, s02, s11, s12, s22


def project(
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
    """Project N Gaussians into C pinhole cameras (EWA splatting, differentiable).

    Args:
        means: ``[N, 3]`` world-space centres.
        quats: ``[N, 4]`` rotations (w, x, y, z), need not be normalised.
        scales: ``[N, 3]`` activated standard deviations.
        opacities: ``[N]`` activated opacities (only used for the radius and the cull).
        viewmats: ``[C, 4, 4]`` OpenCV world-to-camera matrices (see :func:`viewmats_from_c2w`).
        K: ``[C, 3, 3]`` intrinsics in pixels.
        width, height: image size in pixels.
        near, far: depth range kept (exclusive).
        eps2d: dilation added to the 2D covariance diagonal (px^2).

    Returns:
        A :class:`Projection`; gradients flow from ``means2d``, ``conics`` and ``depths`` to
        ``means``, ``quats`` and ``scales``. ``radii``, ``valid`` and ``cutoff`` carry none.
    """
    # Every step is element-wise in a fixed order, so that the fused numba projection of the
    # fast CPU path (pipelines.raster.cpu) reproduces these float32 values bit for bit.
    dtype = means.dtype
    cam = camera_params(viewmats.to(dtype), K, width, height)
    col = [cam[:, i, None] for i in range(N_CAM_PARAMS)]  # each [C, 1]
    r = col[CAM_R : CAM_R + 9]
    mx, my, mz = means.unbind(-1)  # [N]
    x = r[0] * mx + r[1] * my + r[2] * mz + col[CAM_T]  # [C, N] camera space
    y = r[3] * mx + r[4] * my + r[5] * mz + col[CAM_T + 1]
    z = r[6] * mx + r[7] * my + r[8] * mz + col[CAM_T + 2]
    fx, fy, cx, cy = col[CAM_FX], col[CAM_FY], col[CAM_CX], col[CAM_CY]

    # Culled depths are replaced by 1 so that nothing downstream turns into inf / NaN (which
    # would poison the backward pass even where the gradient is zero).
    in_range = (z > near) & (z < far)
    inv_z = 1.0 / torch.where(in_range, z, torch.ones_like(z))
    u = fx * x * inv_z + cx
    v = fy * y * inv_z + cy
    means2d = torch.stack([u, v], -1)  # [C, N, 2], unclamped

    # Jacobian of the perspective map at the point clamped to a slightly enlarged frustum (as
    # 3DGS / gsplat) so far off-screen Gaussians do not explode.
    xcl = torch.maximum(torch.minimum(x * inv_z, col[CAM_LIM]), -col[CAM_LIM + 1])
    ycl = torch.maximum(torch.minimum(y * inv_z, col[CAM_LIM + 2]), -col[CAM_LIM + 3])
    # J = [[fx/z, 0, -fx xcl/z], [0, fy/z, -fy ycl/z]];  rows of T = J R
    jx, jxz = fx * inv_z, -fx * xcl * inv_z
    jy, jyz = fy * inv_z, -fy * ycl * inv_z
    t0 = [jx * r[j] + jxz * r[6 + j] for j in range(3)]  # 3 x [C, N]
    t1 = [jy * r[3 + j] + jyz * r[6 + j] for j in range(3)]

    s00, s01, s02, s11, s12, s22 = quat_scale_to_covar(quats, scales)  # [N] each
    sig = [[s00, s01, s02], [s01, s11, s12], [s02, s12, s22]]
    st0 = [sig[i][0] * t0[0] + sig[i][1] * t0[1] + sig[i][2] * t0[2] for i in range(3)]
    st1 = [sig[i][0] * t1[0] + sig[i][1] * t1[1] + sig[i][2] * t1[2] for i in range(3)]
    cov_a = t0[0] * st0[0] + t0[1] * st0[1] + t0[2] * st0[2] + eps2d  # [C, N]
    cov_b = t0[0] * st1[0] + t0[1] * st1[1] + t0[2] * st1[2]
    cov_c = t1[0] * st1[0] + t1[1] * st1[1] + t1[2] * st1[2] + eps2d

    det = cov_a * cov_c - cov_b * cov_b
    det_ok = det > 0
    inv_det = 1.0 / torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([cov_c * inv_det, -cov_b * inv_det, cov_a * inv_det], -1)  # [C, N, 3]

    with torch.no_grad():
        opac = opacities.detach()[None, :].expand_as(z)
        valid = (
            det_ok
            & in_range
            & (opac >= ALPHA_MIN)
            & torch.isfinite(means2d.detach()).all(-1)
            & torch.isfinite(conics.detach()).all(-1)
        )
        cutoff, radii = _extent(conics.detach(), opac, valid)
        md = means2d.detach()
        inside = (
            (md[..., 0] + radii[..., 0] > 0)
            & (md[..., 0] - radii[..., 0] < width)
            & (md[..., 1] + radii[..., 1] > 0)
            & (md[..., 1] - radii[..., 1] < height)
        )
        radii = radii * (valid & inside)[..., None]

    return Projection(
        means2d=means2d, conics=conics, depths=z, radii=radii, valid=valid, cutoff=cutoff
    )


def _extent(conics: Tensor, opac: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Conservative opacity-aware cut-off and pixel half extents (see :class:`Projection`).

    ``o exp(-sigma) >= 1/255  <=>  sigma <= ln(255 o)``. The bound is then widened to cover the
    float rounding of evaluating ``sigma`` from the float32 conic (which grows with the
    ellipse's condition number), and the box is taken from the inverse of the conic that the
    compositor actually uses (in float64), so tiles never miss a pixel the exact test keeps.
    """
    a, b, c = conics.double().unbind(-1)
    det = (a * c - b * b).clamp_min(1e-300)
    half_tr = 0.5 * (a + c)
    root = torch.sqrt((half_tr * half_tr - det).clamp_min(0.0))
    cond = (half_tr + root) / (half_tr - root).clamp_min(1e-300)
    sig_max = torch.log((255.0 * opac.double()).clamp_min(1.0))
    cutoff = sig_max * (1.0 + 1e-5 * cond.clamp_max(1e6)) + 1e-3
    cutoff = torch.where(valid, cutoff, torch.zeros_like(cutoff))
    # x extent of {d : d^T Q d <= 2 cutoff} is sqrt(2 cutoff (Q^-1)_xx) = sqrt(2 cutoff c / det).
    rx = torch.sqrt(2.0 * cutoff * c.clamp_min(0.0) / det)
    ry = torch.sqrt(2.0 * cutoff * a.clamp_min(0.0) / det)
    radii = torch.nan_to_num(torch.stack([rx, ry], -1), nan=0.0, posinf=0.0) * valid[..., None]
    return cutoff.to(conics.dtype), radii.to(conics.dtype)


def pixel_rects(
    means2d: Tensor, radii: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inclusive pixel-index boxes that hold every pixel centre a Gaussian can reach.

    The box is padded by a hair (``1e-4`` relative, ``1e-2`` px) so that float rounding in the
    radius never drops a pixel the exact test would keep.

    Args:
        means2d: ``[..., 2]`` centres in pixels.
        radii: ``[..., 2]`` half extents in pixels (0 = culled).
        width, height: image size.

    Returns:
        ``(x0, x1, y0, y1)`` int64 tensors of shape ``[...]``, clamped to the image; empty
        (``x0 > x1`` or ``y0 > y1``) where the Gaussian is culled or off-image.
    """
    md = means2d.detach().double()
    rd = radii.detach().double()
    alive = (rd[..., 0] > 0) & (rd[..., 1] > 0)
    pad = rd * 1e-4 + 1e-2
    lo = (md - rd - pad - 0.5).clamp(-2.0, max(width, height) + 2.0)
    hi = (md + rd + pad - 0.5).clamp(-2.0, max(width, height) + 2.0)
    x0 = torch.ceil(lo[..., 0]).clamp_min(0).long()
    y0 = torch.ceil(lo[..., 1]).clamp_min(0).long()
    x1 = torch.floor(hi[..., 0]).clamp_max(width - 1).long()
    y1 = torch.floor(hi[..., 1]).clamp_max(height - 1).long()
    x1 = torch.where(alive, x1, torch.full_like(x1, -1))
    y1 = torch.where(alive, y1, torch.full_like(y1, -1))
    return x0, x1, y0, y1
