"""The fit's loss terms (training-time image comparison and regularisers).

Named apart from the metrics of :mod:`pipelines.evaluate` (``psnr``, ``ssim``), which follow
other conventions (reported numbers, reflect padding, masks): :func:`ssim_3dgs` is the SSIM of
3DGS's training loss (Gaussian window, zero padding) and :func:`psnr_db` the progress figure
printed while fitting.

Images are ``[B, H, W, 3]`` (channels last, as the rasteriser returns them) unless stated.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from pipelines.optimize.config import TrainConfig
from pipelines.optimize.filters import gaussian_taps
from pipelines.splats.gaussians import Gaussians

__all__ = ["d_ssim", "fit_loss", "novel_alpha_loss", "psnr_db", "ssim_3dgs"]


def ssim_3dgs(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of two image batches ``[B, C, H, W]`` in [0, 1] (Gaussian window, separable,
    zero padding as 3DGS; constants ``(0.01)^2`` and ``(0.03)^2``; ``window`` odd);
    differentiable."""
    c = x.shape[1]
    g = gaussian_taps(window // 2, sigma).to(x.dtype).to(x.device)
    pad = window // 2

    def blur(t: Tensor) -> Tensor:
        t = F.conv2d(t, g.view(1, 1, 1, -1).expand(c, 1, 1, window), padding=(0, pad), groups=c)
        return F.conv2d(t, g.view(1, 1, -1, 1).expand(c, 1, window, 1), padding=(pad, 0), groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x * mu_x
    syy = blur(y * y) - mu_y * mu_y
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return (num / den).mean()


def d_ssim(rgb: Tensor, gt: Tensor) -> Tensor:
    """The D-SSIM term ``1 - SSIM`` (:func:`ssim_3dgs`) of ``[B, H, W, 3]`` images."""
    return 1.0 - ssim_3dgs(rgb.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2))


def fit_loss(
    cfg: TrainConfig,
    g: Gaussians,
    rgb: Tensor,
    gt: Tensor,
    alpha: Tensor,
    mask: Tensor | None,
) -> Tensor:
    """The per-step loss of the rendered training views, before the multi-view terms:

        (1 - lambda) L1(rgb) + lambda D-SSIM(rgb) + w_alpha L1(alpha, mask)
            + w_flat mean(s_min / s_max) + w_opacity mean(4 o (1 - o))

    (weights from ``cfg``; a term with weight 0, or the mask term without masks, is left out).

    Args:
        cfg: the weights. g: the current Gaussians (activated, differentiable).
        rgb, gt: ``[B, H, W, 3]`` render and photo; alpha, mask: ``[B, H, W, 1]`` (mask None:
            no mask term).
    """
    loss = (1 - cfg.ssim_weight) * (rgb - gt).abs().mean()
    if cfg.ssim_weight > 0:
        loss = loss + cfg.ssim_weight * d_ssim(rgb, gt)
    if mask is not None and cfg.alpha_weight > 0:
        loss = loss + cfg.alpha_weight * (alpha - mask).abs().mean()
    if cfg.flat_weight > 0:
        s = g.scales
        flat = s.min(-1).values / s.max(-1).values.detach()  # largest scale detached
        loss = loss + cfg.flat_weight * flat.mean()
    if cfg.opacity_weight > 0:
        loss = loss + cfg.opacity_weight * 4.0 * (g.opacities * (1 - g.opacities)).mean()
    return loss


def novel_alpha_loss(alpha: Tensor) -> Tensor:
    """``mean(min(alpha, 0.5))`` of a render from a new viewpoint: faint haze shows there as
    low alpha against the background (see ``TrainConfig.novel_alpha_weight``)."""
    return alpha.clamp(max=0.5).mean()


def psnr_db(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of two images in [0, 1] (the progress figure; not differentiable)."""
    mse = float(((a.detach() - b.detach()) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))
