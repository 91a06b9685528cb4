"""GeoLRM's training losses against values worked out by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines.lpips import LPIPS
from pipelines.train import losses as L

E = math.e


# -- proposal stage ---------------------------------------------------------------------------


def test_occupancy_bce_by_hand() -> None:
    """logit 0 on an occupied cell costs -log(1/2); logit ln 3 (p = 3/4) on an empty one costs
    -log(1/4); the mean is 1.5 ln 2."""
    logits = torch.tensor([[0.0, math.log(3.0)]])
    target = torch.tensor([[1.0, 0.0]])
    assert L.occupancy_bce(logits, target).item() == pytest.approx(1.5 * math.log(2.0), rel=1e-6)


def test_scene_class_affinity_by_hand() -> None:
    """p = (3/4, 1/2) for targets (1, 0): precision 0.75 / 1.25 = 0.6, recall 0.75,
    specificity 0.5, loss -ln 0.6 - ln 0.75 - ln 0.5 = ln(40 / 9)."""
    logits = torch.tensor([math.log(3.0), 0.0])
    target = torch.tensor([1.0, 0.0])
    got = L.scene_class_affinity(logits, target).item()
    assert got == pytest.approx(math.log(40.0 / 9.0), rel=1e-6)


def test_scene_class_affinity_perfect_and_all_wrong() -> None:
    target = torch.zeros(1, 4, 4, 4)
    target[0, 1:3, 1:3, 1:3] = 1.0
    perfect = torch.where(target > 0, 200.0, -200.0)
    assert L.scene_class_affinity(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # all wrong: precision, recall and specificity are exactly 0; each BCE term is clamped at
    # 100 (torch clamps log at -100), so the loss is 300, not infinite
    assert L.scene_class_affinity(-perfect, target).item() == pytest.approx(300.0)
    # an empty target: recall is 0/0 and left out (the official stops on its NaN). All
    # logits -200: p = 0 everywhere, so precision is 0/0 too and specificity 1 -> loss 0
    empty = torch.zeros_like(target)
    assert L.scene_class_affinity(torch.full_like(target, -200.0), empty).item() == 0.0
    # p = 1/2 everywhere: precision 0 / 32 -> 100 (the clamp), specificity 1/2 -> ln 2
    zeros = torch.zeros_like(target)
    assert L.scene_class_affinity(zeros, empty).item() == pytest.approx(100 + math.log(2.0))
    # a full target: specificity left out, precision 1, recall 1/2 -> ln 2
    full = torch.ones_like(target)
    assert L.scene_class_affinity(zeros, full).item() == pytest.approx(math.log(2.0))


def test_proposal_loss_is_the_sum_and_has_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 4, 4, generator=g, requires_grad=True)
    target = (torch.rand(2, 4, 4, 4, generator=g) > 0.7).float()
    loss, terms = L.proposal_loss(logits, target)
    assert set(terms) == {"bce", "geo_scal"}
    assert loss.item() == pytest.approx((terms["bce"] + terms["geo_scal"]).item())
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0
    # the loss falls when the logits move towards the target
    better = logits.detach() + 2.0 * (2 * target - 1)
    assert L.proposal_loss(better, target)[0] < loss


def test_occupancy_metrics_by_hand() -> None:
    logits = torch.tensor([2.0, 0.3, -1.0, -2.0, 0.7])
    target = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    # threshold 0: predicted cells 0, 1, 4 -> tp 1 (cell 0), fp 2 (1, 4), fn 1 (cell 2)
    m = L.occupancy_metrics(logits, target)
    assert (m["tp"], m["fp"], m["fn"]) == (1.0, 2.0, 1.0)
    assert m["iou"] == pytest.approx(1 / 4)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    # the official log's threshold (logits > 0.5): predicted 0, 4 -> tp 1, fp 1, fn 1
    m = L.occupancy_metrics(logits, target, threshold=0.5)
    assert (m["iou"], m["precision"], m["recall"]) == pytest.approx((1 / 3, 1 / 2, 1 / 2))
    # nothing predicted, nothing to find
    m = L.occupancy_metrics(-torch.ones(3), torch.zeros(3))
    assert (m["iou"], m["precision"], m["recall"]) == (1.0, 1.0, 1.0)
    m = L.occupancy_metrics(-torch.ones(3), torch.ones(3))
    assert (m["iou"], m["precision"], m["recall"]) == (0.0, 1.0, 0.0)


# -- reconstruction stage ---------------------------------------------------------------------


def _edge_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2x2: the image steps by 1 along row 0 (wx = e^-1), is flat along row 1 (wx = 1) and
    steps by 0.5 down both columns (wy = e^-0.5); the depth errors are chosen so that
    log(1 + |err|) is 1, 0, 2, 3."""
    image = torch.tensor([[0.0, 1.0], [0.5, 0.5]]).expand(3, 2, 2)[None]
    pred = torch.ones(1, 1, 2, 2)
    target = 1.0 + torch.tensor([[E - 1, 0.0], [E**2 - 1, E**3 - 1]])[None, None]
    return pred, target, image


def test_edge_aware_log_l1_by_hand() -> None:
    pred, target, image = _edge_case()
    # x pairs use the left pixel's log-L1: (0,0) -> e^-1 * 1, (1,0) -> 1 * 2;
    # y pairs use the top pixel's: (0,0) -> e^-0.5 * 1, (0,1) -> e^-0.5 * 0
    want = (math.exp(-1) + 2) / 2 + math.exp(-0.5) / 2
    assert L.edge_aware_log_l1(pred, target, image).item() == pytest.approx(want, rel=1e-6)
    # QUIRK: the bottom-right pixel (last row and column) never counts
    target[..., 1, 1] = 100.0
    assert L.edge_aware_log_l1(pred, target, image).item() == pytest.approx(want, rel=1e-6)


def test_edge_aware_log_l1_mask() -> None:
    pred, target, image = _edge_case()
    mask = torch.tensor([[False, True], [True, True]])[None, None]
    # x: the left pixels (0,0) masked out, (1,0) kept -> mean 2; y: the top pixels (0,0)
    # out, (0,1) kept -> mean e^-0.5 * 0 = 0; each mean over its own kept pixels
    assert L.edge_aware_log_l1(pred, target, image, mask).item() == pytest.approx(2.0, rel=1e-6)
    # the masked pixel's error is irrelevant
    target[..., 0, 0] = 50.0
    assert L.edge_aware_log_l1(pred, target, image, mask).item() == pytest.approx(2.0, rel=1e-6)
    # QUIRK kept: nothing in the mask is NaN
    assert math.isnan(L.edge_aware_log_l1(pred, target, image, torch.zeros_like(mask)).item())


def test_edge_aware_log_l1_gradient() -> None:
    pred, target, image = _edge_case()
    pred.requires_grad_(True)
    image = image.clone().requires_grad_(True)
    L.edge_aware_log_l1(pred, target, image).backward()
    # d/dpred log(1 + |p - t|) = -1 / (1 + |p - t|) where p < t: pixel (1,0), x term only,
    # weight 1, mean over two pairs -> -1 / (2 e^2)
    assert pred.grad[0, 0, 1, 0].item() == pytest.approx(-1 / (2 * E**2), rel=1e-5)
    assert pred.grad[0, 0, 1, 1].item() == 0.0
    assert image.grad is None  # the image only weights


def test_depth_tv_by_hand() -> None:
    d = torch.tensor([[0.0, 1.0], [3.0, 5.0]])[None, None]
    # along rows |0-1|, |3-5| -> mean 1.5; down columns |0-3|, |1-5| -> mean 3.5
    assert L.depth_tv(d).item() == pytest.approx(5.0)
    d3 = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])[None, None]
    # rows: 1, 0 | 0, 0 | 0, 0 -> 1/6; columns: 0, 1, 1 | 2, 2, 2 -> 8/6
    assert L.depth_tv(d3).item() == pytest.approx(9 / 6)


def _views(b: int = 1, n: int = 2, h: int = 2, w: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(b, n, 3, h, w, generator=g)
    alpha = torch.rand(b, n, 1, h, w, generator=g)
    depth = 1 + torch.rand(b, n, 1, h, w, generator=g)
    return rgb, alpha, depth


def test_reconstruction_mse_and_mask_by_hand() -> None:
    rgb = torch.full((1, 1, 3, 2, 2), 0.5)
    target = rgb.clone()
    target[..., 0, 0] = 1.0  # one pixel, all three channels, off by 0.5
    alpha = torch.tensor([[0.5, 1.0], [0.0, 1.0]])[None, None, None]
    t_alpha = torch.tensor([[1.0, 1.0], [0.0, 0.0]])[None, None, None]
    depth = torch.ones(1, 1, 1, 2, 2)
    out = L.reconstruction_loss(rgb, alpha, depth, target, t_alpha, depth.clone())
    # on [-1, 1] the error is 1.0 in 3 of 12 values -> 0.25 (QUIRK: 4x the [0, 1] MSE 0.0625)
    assert out.terms["mse"].item() == pytest.approx(0.25)
    assert out.terms["mask"].item() == pytest.approx((0.25 + 0 + 0 + 1) / 4)
    assert out.terms["depth"].item() == pytest.approx(0.0)
    assert out.terms["depth_tv"].item() == pytest.approx(0.0)
    assert out.skipped == {"lpips": "no LPIPS network"}
    assert out.total.item() == pytest.approx(0.25 * 1.0 + 0.3125 * 1.0)


def test_reconstruction_weights_and_total() -> None:
    rgb, alpha, depth = _views()
    t_rgb, t_alpha, t_depth = _views(seed=1)
    w = L.ReconLossWeights()
    assert (w.mse, w.lpips, w.mask, w.depth, w.depth_tv) == (1.0, 2.0, 1.0, 0.2, 0.05)
    out = L.reconstruction_loss(rgb, alpha, depth, t_rgb, t_alpha, t_depth)
    assert set(out.terms) == {"mse", "mask", "depth", "depth_tv"}
    weights = {"mse": 1.0, "mask": 1.0, "depth": 0.2, "depth_tv": 0.05}
    for k, v in weights.items():
        assert out.weighted[k].item() == pytest.approx(v * out.terms[k].item())
    assert out.total.item() == pytest.approx(sum(out.weighted[k].item() for k in weights))
    # the depth term sees the [0, 1] target image and the mask target_alpha > 0
    want = L.edge_aware_log_l1(depth, t_depth, t_rgb, t_alpha > 0)
    assert out.terms["depth"].item() == pytest.approx(want.item())
    # a zero weight skips its term
    out0 = L.reconstruction_loss(
        rgb, alpha, depth, t_rgb, t_alpha, t_depth, L.ReconLossWeights(depth_tv=0.0)
    )
    assert "depth_tv" not in out0.terms and out0.skipped["depth_tv"] == "weight 0"


def test_reconstruction_lpips_and_gradients() -> None:
    torch.manual_seed(0)
    net = LPIPS()  # random weights: the term's plumbing, not LPIPS itself (tests/test_lpips.py)
    rgb, alpha, depth = _views(b=1, n=2, h=16, w=16)
    t_rgb, t_alpha, t_depth = _views(b=1, n=2, h=16, w=16, seed=1)
    for x in (rgb, alpha, depth):
        x.requires_grad_(True)
    out = L.reconstruction_loss(rgb, alpha, depth, t_rgb, t_alpha, t_depth, lpips=net)
    assert not out.skipped
    # LPIPS of the [-1, 1] views, one per view, averaged
    x = rgb.detach().reshape(2, 3, 16, 16) * 2 - 1
    y = t_rgb.reshape(2, 3, 16, 16) * 2 - 1
    assert out.terms["lpips"].item() == pytest.approx(net(x, y).mean().item(), rel=1e-5)
    assert out.weighted["lpips"].item() == pytest.approx(2.0 * out.terms["lpips"].item())
    out.total.backward()
    for x in (rgb, alpha, depth):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
