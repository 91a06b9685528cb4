"""gsplat backend for CUDA tensors (gsplat is imported lazily; it is an optional dependency).

The project's one call of ``gsplat.rasterization``: the renders and the optimiser's renders
(``with_meta=True``, where gsplat's ``info`` fills :class:`~pipelines.raster.output.RenderMeta`)
both come through :func:`rasterize_gsplat`.

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
from pipelines.raster.colors import camera_colors
from pipelines.raster.output import RenderMeta, RenderOutput
from pipelines.raster.project import DEPTH_ALPHA_MIN, EPS2D, viewmats_from_c2w
from pipelines.splats.gaussians import Gaussians

__all__ = ["gsplat_available", "rasterize_gsplat"]


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
    with_meta: bool = False,
) -> RenderOutput:
    """Render with ``gsplat.rasterization`` (RGB + expected depth).

    Args:
        gaussians: N Gaussians on a CUDA device.
        c2w: ``[C, 4, 4]`` OpenGL camera-to-world; K: ``[C, 3, 3]`` pixel intrinsics.
        width, height: image size; bg: ``[C, 3]`` background; near, far: depth range.
        with_meta: also return gsplat's screen-space means (gradient retained), radii and
            depths as :class:`~pipelines.raster.output.RenderMeta`; gsplat then runs unpacked
            (``packed=False``, so ``means2d`` is ``[C, N, 2]``), else in its default packed mode.

    Returns:
        :class:`~pipelines.raster.output.RenderOutput`.

    Raises:
        InputError: gsplat not installed (the caller checks that the tensors are on CUDA).
    """
    try:
        import gsplat
    except ImportError as exc:
        raise InputError(
            "the gsplat raster backend needs gsplat: pip install gsplat (or use backend='reference')"
        ) from exc

    dtype = gaussians.means.dtype
    g = gaussians.to(torch.float32)  # gsplat's kernels are float32
    c2w, K, bg = c2w.float(), K.float(), bg.float()
    render, alpha, info = gsplat.rasterization(
        g.means,
        g.quats,
        g.scales,
        g.opacities,
        camera_colors(g, c2w),  # [C, N, 3] post-activation colours (sh_degree=None)
        viewmats=viewmats_from_c2w(c2w),
        Ks=K,
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        radius_clip=0.0,
        eps2d=EPS2D,
        sh_degree=None,
        packed=not with_meta,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )  # no `backgrounds=`: gsplat 1.5's packed mode rejects [C, D] backgrounds; composite here
    rgb = render[..., :3] + (1.0 - alpha) * bg[:, None, None, :]
    depth = render[..., 3:4]  # gsplat: accumulated z / max(alpha, 1e-10)
    depth = torch.where(alpha >= DEPTH_ALPHA_MIN, depth, torch.zeros_like(depth))
    meta = None
    if with_meta:
        meta = RenderMeta.build(info["means2d"], info["radii"], info["depths"])
    return RenderOutput(rgb=rgb.to(dtype), alpha=alpha.to(dtype), depth=depth.to(dtype), meta=meta)
