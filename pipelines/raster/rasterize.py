"""Gaussian-splat rasterization: one entry point, three backends.

``rasterize(gaussians, c2w, K, width, height, ...)`` renders RGB, accumulated opacity and
expected depth for C cameras, and with ``with_meta=True`` the Gaussians' screen-space data
(:class:`~pipelines.raster.output.RenderMeta`: projected means with their gradient retained,
radii, depths; gsplat's ``meta``). Backends:

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
from collections.abc import Callable

import torch
from torch import Tensor

from pipelines.errors import InputError
from pipelines.raster.colors import camera_colors
from pipelines.raster.cpu import project_cpu, rasterize_cpu
from pipelines.raster.cuda import gsplat_available, rasterize_gsplat
from pipelines.raster.output import RenderMeta, RenderOutput, finish
from pipelines.raster.project import Projection, project, viewmats_from_c2w
from pipelines.raster.reference import rasterize_reference
from pipelines.splats.gaussians import Gaussians
from pipelines.threads import torch_threads

BACKENDS = ("auto", "gsplat", "cpu", "reference")

__all__ = ["BACKENDS", "rasterize", "render_with", "resolve_backend"]


def resolve_backend(backend: str, device: torch.device) -> str:
    """Concrete backend name for ``backend`` on ``device`` ("auto" resolved; on CUDA without
    gsplat it warns and falls back to "reference")."""
    if backend not in BACKENDS:
        raise InputError(f"unknown raster backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if device.type != "cuda":
        return "cpu"
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
    with_meta: bool = False,
) -> RenderOutput:
    """Render Gaussians from C pinhole cameras.

    Args:
        gaussians: N Gaussians (activated values); higher-order SH colour is evaluated per
            camera with :func:`~pipelines.raster.colors.camera_colors`.
        c2w: ``[C, 4, 4]`` OpenGL camera-to-world (x right, y up, looking down -z).
        K: ``[C, 3, 3]`` intrinsics in pixels (fx, fy, cx, cy).
        width, height: image size in pixels.
        background: ``[3]`` or ``[C, 3]`` colour (tensor or tuple); None = black.
        near, far: camera-z range kept (Gaussian centres outside are culled).
        backend: "auto", "gsplat", "cpu" or "reference" (see the module docstring).
        with_meta: also return the Gaussians' screen-space data in ``meta``
            (:class:`~pipelines.raster.output.RenderMeta`); the images are the same either way.

    Returns:
        :class:`~pipelines.raster.output.RenderOutput`, differentiable w.r.t. means, scales,
        quats, opacities, colors and sh_rest (and the background); ``meta`` is None unless
        ``with_meta``.

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
        meta = None
        if with_meta:
            empty = gaussians.means.new_zeros(n_cam, 0, 2)
            meta = RenderMeta.build(empty, empty.clone(), gaussians.means.new_zeros(n_cam, 0))
        return RenderOutput(rgb=rgb, alpha=zeros, depth=zeros.clone(), meta=meta)

    if name == "gsplat":
        return rasterize_gsplat(gaussians, c2w, K, width, height, bg, near, far, with_meta)

    if name == "cpu" and device.type != "cpu":
        out = rasterize(
            gaussians.to("cpu"),
            c2w.cpu(),
            K.cpu(),
            width,
            height,
            bg.cpu(),
            near,
            far,
            "cpu",
            with_meta,
        )
        return RenderOutput(
            *(t.to(device) for t in (out.rgb, out.alpha, out.depth)),
            meta=None if out.meta is None else out.meta.to(device),
        )

    if name == "cpu":
        with torch_threads(1):  # the torch glue around the numba kernels (pipelines.threads)
            return _render(
                project_cpu,
                _composite_cpu,
                gaussians,
                c2w,
                K,
                width,
                height,
                bg,
                near,
                far,
                with_meta,
            )
    return render_with(
        rasterize_reference, gaussians, c2w, K, width, height, bg, near, far, with_meta
    )


def _composite_cpu(
    proj: Projection, feats: Tensor, opacities: Tensor, width: int, height: int, bg: Tensor
) -> RenderOutput:
    rgb, alpha, depth = rasterize_cpu(proj, feats, opacities, width, height, bg)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)


def _render(
    projector: Callable[..., Projection],
    compositor: Callable[..., RenderOutput],
    g: Gaussians,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    bg: Tensor,
    near: float,
    far: float,
    with_meta: bool,
) -> RenderOutput:
    """Projection + per-camera colour + compositing: the CPU backends' one render path."""
    viewmats = viewmats_from_c2w(c2w.double()).to(g.means.dtype)
    proj = projector(g.means, g.quats, g.scales, g.opacities, viewmats, K, width, height, near, far)
    feats = torch.cat([camera_colors(g, c2w), proj.depths[..., None]], -1)  # [C, N, 4]
    out = compositor(proj, feats, g.opacities, width, height, bg)
    if with_meta:
        out.meta = RenderMeta.from_projection(proj)
    return out


def render_with(
    composite: Callable[..., tuple[Tensor, Tensor]],
    gaussians: Gaussians,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    bg: Tensor,
    near: float = 0.01,
    far: float = 1e4,
    with_meta: bool = False,
) -> RenderOutput:
    """Torch projection + per-camera colour + a given pure-PyTorch compositor.

    Args:
        composite: ``(proj, feats [C,N,4], opacities [N], width, height) -> (acc [C,H,W,4],
            alpha [C,H,W,1])``: :func:`pipelines.raster.reference.rasterize_reference` (the
            "reference" backend) or :func:`pipelines.raster.reference.brute_force` (tests).
        gaussians, c2w ``[C,4,4]``, K ``[C,3,3]``, width, height, near, far, with_meta: as
            :func:`rasterize`; bg: ``[C, 3]``.
    """

    def compositor(proj, feats, opacities, width, height, bg):
        acc, alpha = composite(proj, feats, opacities, width, height)
        return finish(acc, alpha, bg)

    bg = bg.to(gaussians.means.dtype)
    return _render(project, compositor, gaussians, c2w, K, width, height, bg, near, far, with_meta)
