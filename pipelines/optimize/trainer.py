"""Fit 3D Gaussians to posed views: the loop (Adam on the pre-activation parameters, with a
densification strategy).

One step renders one (or a few) training views with :func:`pipelines.raster.rasterize`
(``with_meta=True``: the screen-space means keep their gradient for densification), takes the
loss

    (1 - lambda) L1(rgb) + lambda (1 - SSIM(rgb)) + w_alpha L1(alpha, mask)
        + w_opacity mean(4 o (1 - o)) + w_flat mean(s_min / s_max)
        + w_novel mean(min(alpha_novel, 0.5))   (every few steps, a view off the training ring)
        + w_mvs L1(photo, neighbours' photos warped by the rendered depth)

(:mod:`~pipelines.optimize.losses`, :mod:`~pipelines.optimize.photometric`,
:mod:`~pipelines.optimize.views`), steps a per-parameter Adam
(:mod:`~pipelines.optimize.ops`) and hands the step to the densification strategy
(:mod:`~pipelines.optimize.strategy`). Settings: :class:`~pipelines.optimize.config.TrainConfig`.

On CPU the loop is deterministic for a fixed seed: the numba kernels sum in a fixed order and
the torch glue runs on one intra-op thread (:mod:`pipelines.threads`: a fixed reduction order;
its ops here are small, and on a loaded machine a second thread mostly waits for the
scheduler). The numba kernels give the same bits for any thread count, so their thread count
is picked for speed: 1 or all cores, whichever is measured faster while the loop runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.cameras.cameras import Cameras
from pipelines.device import stage_device
from pipelines.errors import InputError
from pipelines.optimize.config import TrainConfig
from pipelines.optimize.losses import fit_loss, novel_alpha_loss, psnr_db
from pipelines.optimize.ops import gaussians_from_params, new_optimizers, params_from_gaussians
from pipelines.optimize.photometric import PhotometricTerm
from pipelines.optimize.strategy import DensifyStrategy
from pipelines.optimize.views import NovelViews, scene_scale
from pipelines.raster.rasterize import rasterize, resolve_backend
from pipelines.splats.gaussians import Gaussians
from pipelines.threads import NumbaThreadPicker, torch_threads

__all__ = ["StepInfo", "TrainConfig", "optimize_gaussians"]


@dataclass
class StepInfo:
    """What the per-step callback receives.

    Attributes:
        step: 1-based step just taken; iterations: total steps.
        loss: total loss of the step; psnr: PSNR (dB) of the rendered training view(s).
        gaussians: current number of Gaussians; seconds: wall time since the start.
    """

    step: int
    iterations: int
    loss: float
    psnr: float
    gaussians: int
    seconds: float


class _Targets:
    """Training images ``rgb [V,H,W,3]``, masks ``alpha [V,H,W,1]`` (or None) and cameras on
    the device."""

    def __init__(self, images: Tensor, masks: Tensor | None, cams: Cameras, dev):
        self.rgb = images.to(dev, torch.float32).permute(0, 2, 3, 1).contiguous()
        self.alpha = None if masks is None else masks.to(dev, torch.float32)[..., None]
        self.c2w, self.K = cams.c2w.to(dev), cams.K.to(dev)
        self.width, self.height = cams.width, cams.height


def optimize_gaussians(
    init: Gaussians,
    cams: Cameras,
    images: Tensor,
    masks: Tensor | None = None,
    config: TrainConfig | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    device: str | torch.device = "cpu",
    hull=None,
) -> Gaussians:
    """Optimise Gaussians against posed views.

    Args:
        init: starting Gaussians (activated), in the cameras' frame.
        cams: V cameras with intrinsics at the images' size.
        images: ``[V, 3, H, W]`` in [0, 1], composited on white (the renders use white too).
        masks: ``[V, H, W]`` alpha in [0, 1] for the mask loss, or None (no mask loss).
        config: :class:`TrainConfig` (defaults if None).
        on_step: called after every step with a :class:`StepInfo`.
        device: torch device; CPU uses the numba rasteriser, CUDA gsplat (the pure-torch
            reference rasteriser, with a warning, when gsplat is missing); MPS runs on the CPU.
        hull: optional :class:`~pipelines.optimize.visual_hull.VisualHull` (cameras' frame):
            Gaussians leaving it (grown by ``config.hull_margin`` voxels) are pruned.

    Returns:
        The optimised Gaussians (activated, detached, on the CPU), without those below
        ``config.final_prune_opacity``.
    """
    cfg = config or TrainConfig()
    if images.dim() != 4 or images.shape[0] != len(cams) or images.shape[1] != 3:
        raise InputError(f"images must be [V, 3, H, W] with V={len(cams)}")
    h, w = int(images.shape[2]), int(images.shape[3])
    if (w, h) != (cams.width, cams.height):
        raise InputError(f"images are {w}x{h} but the cameras are {cams.width}x{cams.height}")
    if len(init) == 0:
        raise InputError("no Gaussians to optimise; the initialisation is empty")

    dev = torch.device(stage_device(device, "optimize"))  # MPS: the CPU (numba rasteriser)
    backend = resolve_backend("auto", dev)
    cpu = dev.type == "cpu"
    extent = scene_scale(cams)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    inside = None
    if hull is not None:
        grown = hull.dilated(cfg.hull_margin)

        def inside(points: Tensor) -> Tensor:
            return grown.contains(points.cpu())

    t0 = time.perf_counter()

    with (
        torch_threads(1 if cpu else None),
        NumbaThreadPicker(cfg.threads, backend == "cpu") as raster_threads,
    ):
        params = params_from_gaussians(init.to(dev), cfg.sh_degree)
        lrs = {
            "means": cfg.lr_means * extent,
            "scales": cfg.lr_scales,
            "quats": cfg.lr_quats,
            "opacities": cfg.lr_opacities,
            "colors": cfg.lr_colors,
            "sh_rest": cfg.lr_sh_rest,
        }
        optimizers = new_optimizers(params, lrs)
        tg = _Targets(images, masks, cams, dev)
        strategy = DensifyStrategy(
            cfg, len(init), extent, gen, tg.c2w, tg.K, tg.width, tg.height, backend, inside
        )
        n_views = len(cams)
        per_step = max(1, min(int(cfg.views_per_step), n_views))
        bg = torch.ones(per_step, 3, device=dev)
        order: list[int] = []
        decay = cfg.lr_means_final ** (1.0 / max(1, cfg.iterations))
        mvs = None
        if cfg.mvs_weight > 0:
            mvs = PhotometricTerm(tg.rgb, tg.alpha, tg.c2w, tg.K, cfg.mvs_neighbours, cfg.mvs_blur)
        mvs_start = round(0.06 * cfg.iterations) if cfg.mvs_start is None else cfg.mvs_start
        mvs_stop = int(cfg.iterations) if cfg.mvs_stop is None else cfg.mvs_stop
        novel = None
        if cfg.novel_alpha_weight > 0:
            novel = NovelViews(cams, tg.c2w, tg.K, cfg.novel_scale)

        for step in range(1, int(cfg.iterations) + 1):
            t_step = time.perf_counter()
            raster_threads.before(step)
            while len(order) < per_step:
                order += torch.randperm(n_views, generator=gen).tolist()
            views, order = order[:per_step], order[per_step:]
            idx = torch.tensor(views, device=dev)
            g = gaussians_from_params(params)
            out = rasterize(
                g, tg.c2w[idx], tg.K[idx], tg.width, tg.height, bg, backend=backend, with_meta=True
            )
            gt = tg.rgb[idx]
            mask = None if tg.alpha is None else tg.alpha[idx]
            loss = fit_loss(cfg, g, out.rgb, gt, out.alpha, mask)
            if mvs is not None:
                loss = loss + cfg.mvs_weight * mvs.loss(
                    views, out.depth, out.alpha, mvs_start < step <= mvs_stop
                )
            if novel is not None and cfg.novel_every > 0 and step % cfg.novel_every == 0:
                v = views[0]
                c2w_new, K_new = novel.camera(tg.c2w[v], v, cfg.novel_tilt_deg, gen)
                a_new = rasterize(
                    g, c2w_new, K_new, novel.width, novel.height, bg[:1], backend=backend
                ).alpha
                loss = loss + cfg.novel_alpha_weight * novel_alpha_loss(a_new)
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers.values():
                opt.step()
            optimizers["means"].param_groups[0]["lr"] *= decay
            busy = strategy.step_post_backward(params, optimizers, step, out.meta)

            raster_threads.after(time.perf_counter() - t_step, not busy)
            if on_step is not None:
                on_step(
                    StepInfo(
                        step=step,
                        iterations=int(cfg.iterations),
                        loss=float(loss.detach()),
                        psnr=psnr_db(out.rgb, gt),
                        gaussians=len(params["means"]),
                        seconds=time.perf_counter() - t0,
                    )
                )

        result = gaussians_from_params(params).detach().to("cpu")
    result = result[result.opacities >= cfg.final_prune_opacity]
    return result.with_(quats=F.normalize(result.quats, dim=-1))
