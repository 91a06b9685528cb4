"""GeoLRM's training losses (paper §4.3), as the official code computes them.

Two stages, two losses:

* **Proposal** (the occupancy network, official ``src/serializer_wrapper.py``):
  :func:`occupancy_bce` (binary cross-entropy on the logits, mean over every cell) plus
  :func:`scene_class_affinity` (MonoScene's geometric scene-class affinity loss, the official
  ``geo_scal_loss`` in its binary form); :func:`proposal_loss` is their sum.
  :func:`occupancy_metrics` gives IoU, precision and recall of the thresholded logits.
* **Reconstruction** (official ``src/geolrm_wrapper.py`` ``compute_loss``):
  :func:`reconstruction_loss` returns every term on its own and their weighted sum, with the
  official weights (:class:`ReconLossWeights`): MSE on RGB, LPIPS (VGG16) on RGB, MSE on the
  alpha mask, the edge-aware log-L1 depth term (:func:`edge_aware_log_l1`) and the total
  variation of the rendered depth (:func:`depth_tv`).

Shapes follow the official code: images ``[..., C, H, W]`` with any leading dimensions (the
official ``[B, N, C, H, W]``: batch, target views), RGB in ``[0, 1]``, alpha in ``[0, 1]``,
depth ``[..., 1, H, W]`` in world units of the model frame (camera z; 0 = no surface in the
target). Occupancy logits and targets are ``[B, X, Y, Z]`` (or any shape), targets 0/1.

The official formulas are kept with their quirks (marked QUIRK below), because the released
weights were trained with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.lpips import LPIPS
from pipelines.train.config import ReconLossWeights
from pipelines.train.occupancy import occupancy_iou

__all__ = [
    "ReconLoss",
    "ReconLossWeights",
    "depth_tv",
    "edge_aware_log_l1",
    "occupancy_bce",
    "occupancy_metrics",
    "proposal_loss",
    "reconstruction_loss",
    "scene_class_affinity",
]


# -- proposal stage ---------------------------------------------------------------------------


def occupancy_bce(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy with logits, averaged over every cell of the batch (the official
    ``F.binary_cross_entropy_with_logits(pred.flatten(), gt.flatten())``)."""
    return F.binary_cross_entropy_with_logits(logits.flatten(), target.flatten().to(logits))


def scene_class_affinity(logits: Tensor, target: Tensor) -> Tensor:
    """The geometric scene-class affinity loss (MonoScene; official ``geo_scal_loss`` with
    ``semantic=False``).

    With ``p = sigmoid(logits)`` and the 0/1 target ``t``, summed over the whole batch:
    ``precision = Σ t p / Σ p``, ``recall = Σ t p / Σ t``, ``specificity = Σ (1-t)(1-p) /
    Σ (1-t)``, and the loss is ``-log precision - log recall - log specificity`` (each a binary
    cross-entropy against 1).

    QUIRK (official): the sums pool every grid of the batch (one ratio per batch, not per
    object). ``F.binary_cross_entropy`` clamps ``log`` at -100, so a ratio of exactly 0 costs
    100, not infinity (kept: ``-max(log r, -100)``). Deviation: a ratio with a zero
    denominator (recall for an empty target, specificity for a full one, precision when every
    probability underflows to 0) is left out of the sum; the official computes 0/0 = NaN, which
    ``F.binary_cross_entropy`` refuses, so its training stops there.
    """
    t = target.to(logits)
    p = torch.sigmoid(logits)
    inter = (t * p).sum()
    loss = logits.new_zeros(())
    for num, den in (
        (inter, p.sum()),
        (inter, t.sum()),
        (((1 - t) * (1 - p)).sum(), (1 - t).sum()),
    ):
        ratio = num / torch.where(den > 0, den, torch.ones_like(den))
        loss = loss + torch.where(den > 0, -torch.log(ratio).clamp(min=-100.0), 0.0)
    return loss


def proposal_loss(logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The proposal stage's loss, ``bce + scene_class_affinity`` (official weights 1 and 1),
    and its terms ``{"bce": ..., "geo_scal": ...}``."""
    bce = occupancy_bce(logits, target)
    geo = scene_class_affinity(logits, target)
    return bce + geo, {"bce": bce, "geo_scal": geo}


def occupancy_metrics(logits: Tensor, target: Tensor, threshold: float = 0.0) -> dict[str, float]:
    """IoU, precision and recall of ``logits > threshold`` against ``target > 0.5``, pooled
    over the batch (as the official).

    The default threshold 0 is the one the model selects anchors with (``occs > 0``, i.e.
    probability 0.5). QUIRK: the official training log thresholds the *logits* at 0.5
    (probability 0.62); pass ``threshold=0.5`` to reproduce its numbers. An empty denominator
    (nothing predicted, nothing to find) gives 1.0, as :func:`occupancy_iou` does for IoU; the
    official gives NaN.

    Returns:
        ``{"iou", "precision", "recall", "tp", "fp", "fn"}`` (counts as floats).
    """
    pred = logits.detach() > threshold
    gt = target.detach() > 0.5
    tp = int((pred & gt).sum())
    fp = int((pred & ~gt).sum())
    fn = int((~pred & gt).sum())
    return {
        "iou": occupancy_iou(pred, gt),
        "precision": 1.0 if tp + fp == 0 else tp / (tp + fp),
        "recall": 1.0 if tp + fn == 0 else tp / (tp + fn),
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
    }


# -- reconstruction stage ---------------------------------------------------------------------


def edge_aware_log_l1(
    pred: Tensor, target: Tensor, image: Tensor, mask: Tensor | None = None
) -> Tensor:
    """The official depth term (``EdgeAwareLogL1``, ``implementation="scalar"``).

    Per pixel ``l = log(1 + |pred - target|)``; weights from the target image's gradients,
    ``wx = exp(-mean_c |I[.., x] - I[.., x+1]|)`` and ``wy`` likewise down the rows. The loss is
    ``mean(wx * l[:, :-1] over the masked pixels) + mean(wy * l[:-1, :] over the masked pixels)``.

    Note: the issue and the paper call it a "scale-invariant depth loss weighted by
    exp(-|∇I|)"; the official code has no scale invariance (depth is compared in world units,
    unnormalised) and no depth gradient: it is this edge-aware log-L1, implemented here.

    QUIRKs (official, kept):

    * the x term uses the log-L1 of the *left* pixel of each horizontal pair (``l[..., :, :-1]``)
      and the mask of that pixel only (``mask[..., :, :-1]``), so the last column never counts
      in the x term and the last row never in the y term; a pixel whose right neighbour is
      background still counts;
    * the two means are taken separately (over their own masked pixels) and added, so a
      perfect weight-1 image gives twice the plain mean log-L1;
    * the image is the target in ``[0, 1]`` (with its background colour), the channel mean of
      the absolute difference;
    * an empty mask gives NaN (mean of nothing).

    Args:
        pred, target: ``[..., 1, H, W]`` depths.
        image: ``[..., C, H, W]`` target image (only its gradients are used; no gradient flows
            to it).
        mask: ``[..., 1, H, W]`` bool, the pixels that count (official: ``target_alpha > 0``);
            None = all.
    """
    logl1 = torch.log1p((pred - target).abs())
    img = image.detach()
    wx = torch.exp(-(img[..., :, :-1] - img[..., :, 1:]).abs().mean(-3, keepdim=True))
    wy = torch.exp(-(img[..., :-1, :] - img[..., 1:, :]).abs().mean(-3, keepdim=True))
    lx = wx * logl1[..., :, :-1]
    ly = wy * logl1[..., :-1, :]
    if mask is not None:
        mask = mask.bool()
        lx = lx[mask[..., :, :-1].expand_as(lx)]
        ly = ly[mask[..., :-1, :].expand_as(ly)]
    return lx.mean() + ly.mean()


def depth_tv(depth: Tensor) -> Tensor:
    """Total variation of a depth map (official ``TVLoss``): ``mean |d[.., x] - d[.., x+1]| +
    mean |d[.., y] - d[.., y+1]|`` over everything (the background too: no mask)."""
    dx = depth[..., :, :-1] - depth[..., :, 1:]
    dy = depth[..., :-1, :] - depth[..., 1:, :]
    return dx.abs().mean() + dy.abs().mean()


@dataclass
class ReconLoss:
    """What :func:`reconstruction_loss` returns.

    Attributes:
        total: the weighted sum (what is back-propagated).
        terms: each computed term, unweighted (``mse``, ``lpips``, ``mask``, ``depth``,
            ``depth_tv``).
        weighted: each computed term times its weight.
        skipped: the terms not computed, with why (``{"lpips": "no LPIPS network"}``, ``"weight
            0"``).
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    weighted: dict[str, Tensor] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def reconstruction_loss(
    rgb: Tensor,
    alpha: Tensor,
    depth: Tensor,
    target_rgb: Tensor,
    target_alpha: Tensor,
    target_depth: Tensor,
    weights: ReconLossWeights | None = None,
    lpips: LPIPS | None = None,
) -> ReconLoss:
    """The reconstruction stage's loss, as the official ``compute_loss``.

    Args:
        rgb, alpha, depth: the renders ``[..., 3|1|1, H, W]`` at the target cameras (RGB in
            [0, 1], composited on the sample's background colour).
        target_rgb, target_alpha, target_depth: the ground truth, same shapes (RGB in [0, 1]
            composited on the same background colour; depth 0 off the object).
        weights: :class:`ReconLossWeights` (default: the official ones).
        lpips: the LPIPS network; None skips the term (reported in :attr:`ReconLoss.skipped`).

    Terms:

    * ``mse``: mean squared error of the images mapped to [-1, 1]. QUIRK: that is 4x the MSE
      of the [0, 1] images (the official maps before ``F.mse_loss``);
    * ``lpips``: LPIPS of the [-1, 1] images, mean over the views (torchmetrics' VGG LPIPS with
      ``normalize=False``, reduction mean);
    * ``mask``: mean squared error of the alpha maps;
    * ``depth``: :func:`edge_aware_log_l1` with the target image in [0, 1] and the mask
      ``target_alpha > 0``;
    * ``depth_tv``: :func:`depth_tv` of the rendered depth. QUIRK: the official logs
      ``loss`` before adding this term and logs the term already weighted; the back-propagated
      loss includes it, as :attr:`ReconLoss.total` does.
    """
    w = weights or ReconLossWeights()
    out = ReconLoss(total=rgb.new_zeros(()))
    target_rgb = target_rgb.to(rgb)

    def add(name: str, weight: float, term: Callable[[], Tensor]) -> None:
        if not weight:
            out.skipped[name] = "weight 0"
            return
        value = term()
        out.terms[name] = value
        out.weighted[name] = value * weight
        out.total = out.total + out.weighted[name]

    def lpips_term() -> Tensor:
        assert lpips is not None
        x = (rgb * 2.0 - 1.0).reshape(-1, *rgb.shape[-3:])
        y = (target_rgb * 2.0 - 1.0).reshape(-1, *rgb.shape[-3:])
        return lpips(x, y).mean()

    add("mse", w.mse, lambda: F.mse_loss(rgb * 2.0 - 1.0, target_rgb * 2.0 - 1.0))
    if lpips is None and w.lpips:
        out.skipped["lpips"] = "no LPIPS network"
    else:
        add("lpips", w.lpips, lpips_term)
    add("mask", w.mask, lambda: F.mse_loss(alpha, target_alpha.to(alpha)))
    add(
        "depth",
        w.depth,
        lambda: edge_aware_log_l1(depth, target_depth.to(depth), target_rgb, target_alpha > 0),
    )
    add("depth_tv", w.depth_tv, lambda: depth_tv(depth))
    return out
