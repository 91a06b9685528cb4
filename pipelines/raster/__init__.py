"""Gaussian-splat rasterization: one entry point, three backends.

``rasterize(gaussians, c2w, K, width, height, ...)`` renders RGB, accumulated opacity and
expected depth for C cameras. Backends:

* ``"cpu"`` -- :mod:`pipelines.raster.cpu`, tiled numba kernels (forward and backward);
  tensors on another device are moved to the CPU and the results moved back.
* ``"gsplat"`` -- :mod:`pipelines.raster.cuda`, gsplat's CUDA kernels (CUDA tensors only).
* ``"reference"`` -- :mod:`pipelines.raster.reference`, readable pure PyTorch (any device, slow).
* ``"auto"`` -- ``"gsplat"`` for CUDA tensors (falling back to ``"reference"`` with a warning if
  gsplat is not installed), ``"cpu"`` otherwise.

All backends are differentiable w.r.t. every Gaussian attribute (and the background) and share
the conventions: OpenGL camera-to-world poses, pixel intrinsics with pixel centres at
``(i + 0.5, j + 0.5)``, EWA projection with a 0.3 px^2 dilation, the 3DGS compositing rules
(alpha = min(0.99, o exp(-sigma)), skip alpha < 1/255, stop before T < 1e-4; gsplat clamps at
0.999), and depth = expected camera z (``sum w_i z_i / alpha``, 0 where ``alpha < 1e-6``).
Gradients w.r.t. the cameras (``c2w``, ``K``) flow through the "reference" backend only.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from pipelines.errors import InputError
from pipelines.raster.project import DEPTH_ALPHA_MIN
from pipelines.splats.gaussians import Gaussians
from pipelines.splats.sh import view_dependent_rgb

BACKENDS = ("auto", "gsplat", "cpu", "reference")

__all__ = ["BACKENDS", "RenderOutput", "rasterize", "render_with", "resolve_backend"]


@dataclass
class RenderOutput:
    """What :func:`rasterize` returns (C cameras, H x W pixels).

    Attributes:
        rgb: ``[C, H, W, 3]`` colour composited over the background.
        alpha: ``[C, H, W, 1]`` accumulated opacity.
        depth: ``[C, H, W, 1]`` expected camera z (positive distance along the optical axis),
            ``sum_i w_i z_i / alpha``; 0 where ``alpha < 1e-6``.
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor


def resolve_backend(backend: str, device: torch.device) -> str:
    """Concrete backend name for ``backend`` on ``device`` ("auto" resolved)."""
    if backend not in BACKENDS:
        raise InputError(f"unknown raster backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if device.type != "cuda":
        return "cpu"
    from pipelines.raster.cuda import gsplat_available

    if gsplat_available():
        return "gsplat"
    warnings.warn(
        "gsplat is not installed: rendering CUDA tensors with the slow pure-PyTorch reference "
        "rasterizer (pip install gsplat for the fast path)",
        stacklevel=3,
    )
    return "reference"


def _background(background, n_cam: int, like: Tensor) -> Tensor:
    """``[C, 3]`` background from None / tuple / ``[3]`` / ``[C, 3]``."""
    if background is None:
        return like.new_zeros(n_cam, 3)
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.shape == (3,):
        return bg[None, :].expand(n_cam, 3)
    if bg.shape == (n_cam, 3):
        return bg
    raise InputError(f"background must have shape [3] or [{n_cam}, 3], got {tuple(bg.shape)}")


def _check_cameras(c2w: Tensor, K: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    if c2w.dim() == 2:
        c2w = c2w[None]
    if K.dim() == 2:
        K = K[None]
    if c2w.dim() != 3 or c2w.shape[1:] != (4, 4):
        raise InputError(f"c2w must have shape [C, 4, 4], got {tuple(c2w.shape)}")
    if K.shape != (c2w.shape[0], 3, 3):
        raise InputError(f"K must have shape [{c2w.shape[0]}, 3, 3], got {tuple(K.shape)}")
    if int(width) <= 0 or int(height) <= 0:
        raise InputError(f"image size must be positive, got {width}x{height}")
    return c2w, K


def rasterize(
    gaussians: Gaussians,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    background: Tensor | tuple | None = None,
    near: float = 0.01,
    far: float = 1e4,
    backend: str = "auto",
) -> RenderOutput:
    """Render Gaussians from C pinhole cameras.

    Args:
        gaussians: N Gaussians (activated values); higher-order SH colour is evaluated per
            camera with :func:`~pipelines.splats.sh.view_dependent_rgb`.
        c2w: ``[C, 4, 4]`` OpenGL camera-to-world (x right, y up, looking down -z).
        K: ``[C, 3, 3]`` intrinsics in pixels (fx, fy, cx, cy).
        width, height: image size in pixels.
        background: ``[3]`` or ``[C, 3]`` colour (tensor or tuple); None = black.
        near, far: camera-z range kept (Gaussian centres outside are culled).
        backend: "auto", "gsplat", "cpu" or "reference" (see the module docstring).

    Returns:
        :class:`RenderOutput`, differentiable w.r.t. means, scales, quats, opacities, colors
        and sh_rest (and the background).

    Raises:
        InputError: bad shapes, unknown backend, or gsplat asked for but unusable.
    """
    width, height = int(width), int(height)
    c2w, K = _check_cameras(c2w, K, width, height)
    device = gaussians.device
    name = resolve_backend(backend, device)
    if name == "gsplat" and device.type != "cuda":
        raise InputError("the gsplat raster backend needs CUDA tensors; use backend='cpu'")
    n_cam = c2w.shape[0]
    dtype = gaussians.means.dtype
    c2w = c2w.to(device=device, dtype=dtype)
    K = K.to(device=device, dtype=dtype)
    bg = _background(background, n_cam, gaussians.means)

    if len(gaussians) == 0:
        rgb = bg[:, None, None, :].expand(n_cam, height, width, 3).clone()
        zeros = gaussians.means.new_zeros(n_cam, height, width, 1)
        return RenderOutput(rgb=rgb, alpha=zeros, depth=zeros.clone())

    if name == "gsplat":
        from pipelines.raster.cuda import rasterize_gsplat

        return rasterize_gsplat(gaussians, c2w, K, width, height, bg, near, far)

    if name == "cpu" and device.type != "cpu":
        out = rasterize(
            gaussians.to("cpu"), c2w.cpu(), K.cpu(), width, height, bg.cpu(), near, far, "cpu"
        )
        return RenderOutput(*(t.to(device) for t in (out.rgb, out.alpha, out.depth)))

    if name == "cpu":
        return _render_cpu(gaussians, c2w, K, width, height, bg, near, far)
    from pipelines.raster.reference import rasterize_reference

    return render_with(rasterize_reference, gaussians, c2w, K, width, height, bg, near, far)


def _per_camera_rgb(g: Gaussians, c2w: Tensor) -> Tensor:
    """``[C, N, 3]`` view-dependent colour of each Gaussian seen from each camera centre."""
    cam_pos = c2w[:, :3, 3].to(g.means.dtype)
    return torch.stack(
        [view_dependent_rgb(g.colors, g.sh_rest, g.means, cam_pos[c]) for c in range(len(c2w))]
    )


@contextmanager
def _torch_single_threaded():
    """Run the (small) torch glue of the CPU path on one intra-op thread.

    The heavy lifting is in numba kernels with their own threads; the few torch ops around
    them (SH colour, concatenations) gain little from a second thread, and on a busy machine
    every multi-threaded torch op can stall for a scheduler time slice waiting for it.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _render_cpu(g: Gaussians, c2w, K, width, height, bg, near, far) -> RenderOutput:
    """Fast CPU path: fused numba projection + tiled numba compositing."""
    from pipelines.raster.cpu import project_cpu, rasterize_cpu
    from pipelines.raster.project import viewmats_from_c2w

    with _torch_single_threaded():
        viewmats = viewmats_from_c2w(c2w.double()).to(g.means.dtype)
        proj = project_cpu(
            g.means, g.quats, g.scales, g.opacities, viewmats, K, width, height, near, far
        )
        feats = torch.cat([_per_camera_rgb(g, c2w), proj.depths[..., None]], -1)  # [C, N, 4]
        rgb, alpha, depth = rasterize_cpu(proj, feats, g.opacities, width, height, bg)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)


def render_with(
    composite,
    gaussians: Gaussians,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    bg: Tensor,
    near: float = 0.01,
    far: float = 1e4,
) -> RenderOutput:
    """Torch projection + per-camera colour + a given pure-PyTorch compositor.

    Args:
        composite: ``(proj, feats [C,N,4], opacities [N], width, height) -> (acc [C,H,W,4],
            alpha [C,H,W,1])``: :func:`pipelines.raster.reference.rasterize_reference` (the
            "reference" backend) or :func:`pipelines.raster.reference.brute_force` (tests).
        gaussians, c2w ``[C,4,4]``, K ``[C,3,3]``, width, height, near, far: as
            :func:`rasterize`; bg: ``[C, 3]``.
    """
    from pipelines.raster.project import project, viewmats_from_c2w

    g = gaussians
    viewmats = viewmats_from_c2w(c2w.double()).to(g.means.dtype)
    proj = project(g.means, g.quats, g.scales, g.opacities, viewmats, K, width, height, near, far)
    feats = torch.cat([_per_camera_rgb(g, c2w), proj.depths[..., None]], -1)  # [C, N, 4]
    acc, alpha = composite(proj, feats, g.opacities, width, height)
    return _finish(acc, alpha, bg.to(g.means.dtype))


def _finish(acc: Tensor, alpha: Tensor, bg: Tensor) -> RenderOutput:
    """Accumulated ``[C,H,W,4]`` (RGB + z) and alpha ``[C,H,W,1]`` -> :class:`RenderOutput`."""
    rgb = acc[..., :3] + (1.0 - alpha) * bg[:, None, None, :]
    ok = alpha >= DEPTH_ALPHA_MIN
    depth = torch.where(
        ok, acc[..., 3:4] / alpha.clamp_min(DEPTH_ALPHA_MIN), torch.zeros_like(alpha)
    )
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)
