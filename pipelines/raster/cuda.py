"""gsplat backend for CUDA tensors (gsplat is imported lazily; it is an optional dependency).

Policy when gsplat is missing: ``backend="gsplat"`` raises :class:`~pipelines.errors.InputError`
naming the fix; ``backend="auto"`` on CUDA warns and falls back to the pure-PyTorch reference
(see :func:`pipelines.raster.resolve_backend`).

Known differences from the CPU backends (gsplat's kernels, not ours): alpha is clamped at
0.999 instead of 0.99, and the tile radius is gsplat's 3.33 sigma box instead of the
opacity-aware one (both keep every contribution above 1/255). Depth follows the same
"expected z" convention, with 0 where alpha < 1e-6.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from pipelines.errors import InputError
from pipelines.raster.project import DEPTH_ALPHA_MIN
from pipelines.splats.gaussians import Gaussians


def gsplat_available() -> bool:
    """True when the ``gsplat`` package can be imported."""
    return importlib.util.find_spec("gsplat") is not None


def rasterize_gsplat(
    gaussians: Gaussians,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    bg: Tensor,
    near: float,
    far: float,
):
    """Render with ``gsplat.rasterization`` (RGB + expected depth).

    Args:
        gaussians: N Gaussians on a CUDA device.
        c2w: ``[C, 4, 4]`` OpenGL camera-to-world; K: ``[C, 3, 3]`` pixel intrinsics.
        width, height: image size; bg: ``[C, 3]`` background; near, far: depth range.

    Returns:
        :class:`pipelines.raster.RenderOutput`.

    Raises:
        InputError: gsplat not installed (the caller checks that the tensors are on CUDA).
    """
    from pipelines.raster import RenderOutput, _per_camera_rgb

    try:
        import gsplat
    except ImportError as exc:
        raise InputError(
            "the gsplat raster backend needs gsplat: pip install gsplat (or use backend='reference')"
        ) from exc

    dtype = gaussians.means.dtype
    g = gaussians.to(torch.float32)  # gsplat's kernels are float32
    c2w, K, bg = c2w.float(), K.float(), bg.float()
    flip = torch.tensor([1.0, -1.0, -1.0, 1.0], device=c2w.device)
    viewmats = torch.linalg.inv(c2w * flip)  # c2w @ diag(1,-1,-1,1): OpenGL -> OpenCV axes
    render, alpha, _ = gsplat.rasterization(
        g.means,
        g.quats,
        g.scales,
        g.opacities,
        _per_camera_rgb(g, c2w),  # [C, N, 3] post-activation colours (sh_degree=None)
        viewmats=viewmats,
        Ks=K,
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        radius_clip=0.0,
        eps2d=0.3,
        sh_degree=None,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )  # no `backgrounds=`: gsplat 1.5's packed mode rejects [C, D] backgrounds; composite here
    rgb = render[..., :3] + (1.0 - alpha) * bg[:, None, None, :]
    depth = render[..., 3:4]  # gsplat: accumulated z / max(alpha, 1e-10)
    depth = torch.where(alpha >= DEPTH_ALPHA_MIN, depth, torch.zeros_like(depth))
    return RenderOutput(rgb=rgb.to(dtype), alpha=alpha.to(dtype), depth=depth.to(dtype))
