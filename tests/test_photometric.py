"""Multi-view photometric consistency (``pipelines.optimize.photometric``): the camera maths,
and on Spot's real renders with their ground-truth depth, that the true surface is where the
photos agree and that descending the term moves a wrong depth towards it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.cameras import orbit_cameras
from pipelines.cameras.dataparsers import load_transforms
from pipelines.cameras.geometry import project as project_points
from pipelines.cameras.images import load_masks, load_views
from pipelines.optimize import photometric as pm

ROOT = Path(__file__).resolve().parents[1]
SPOT = ROOT / "examples" / "spot"
DEPTH = ROOT / "tests" / "fixtures" / "spot_depth"
REF, NEIGHBOURS = 0, [1, 20]
SIZE = 256


def test_backproject_then_project_returns_the_pixels() -> None:
    cams = orbit_cameras(3, elevation_deg=25.0, radius=1.7, fov_deg=40.0, size=24)
    gen = torch.Generator().manual_seed(0)
    depth = 1.2 + torch.rand(24, 24, generator=gen, dtype=torch.float64)
    c2w, K = cams.c2w[1].double(), cams.K[1].double()
    pts = pm.backproject(depth, c2w, K)
    uv, z = project_points(pts, c2w, K)
    j, i = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    torch.testing.assert_close(uv, torch.stack([i, j], -1).double() + 0.5, atol=1e-5, rtol=0)
    torch.testing.assert_close(z, depth)
    # the camera centre is at depth 0 along every ray, and points move away along the ray
    far = pm.backproject(depth * 2, c2w, K)
    torch.testing.assert_close(2 * (pts - c2w[:3, 3]), far - c2w[:3, 3])


def test_neighbours_on_a_ring() -> None:
    cams = orbit_cameras(8, elevation_deg=10.0, radius=2.0, fov_deg=30.0, size=16)
    nb = pm.neighbour_views(cams.c2w, 2)
    for v in range(8):
        assert sorted(nb[v]) == sorted([(v - 1) % 8, (v + 1) % 8])
    assert pm.neighbour_views(cams.c2w, 2, max_angle_deg=30.0) == [[] for _ in range(8)]


def test_solid_pixels_erodes_the_silhouette() -> None:
    masks = torch.zeros(1, 12, 12)
    masks[0, 2:10, 3:9] = 1.0
    masks[0, 5, 5] = 0.98  # not solid: its neighbourhood goes too
    out = pm.solid_pixels(masks, margin=1)
    want = torch.zeros(12, 12)
    want[3:9, 4:8] = 1.0
    want[4:7, 4:7] = 0.0
    torch.testing.assert_close(out[0], want)


def test_blur_keeps_constants_and_mass() -> None:
    flat = torch.full((1, 3, 9, 11), 0.3)
    torch.testing.assert_close(pm.blur(flat, 1.5), flat)
    dot = torch.zeros(1, 1, 21, 21)
    dot[0, 0, 10, 10] = 1.0
    out = pm.blur(dot, 1.0)
    assert abs(float(out.sum()) - 1.0) < 1e-5 and float(out.max()) < 0.2


@pytest.fixture(scope="module")
def spot_views():
    cams = load_transforms(SPOT / "transforms_train.json")
    views = [REF, *NEIGHBOURS]
    images, used = load_views(cams, SIZE)
    masks = load_masks(cams, SIZE)
    depth = []
    for v in views:
        raw = np.asarray(Image.open(DEPTH / f"{v:03d}_depth.png"), dtype=np.float32) / 1e4
        t = torch.from_numpy(raw)[None, None]
        # nearest 2x2 minimum down to 256 px: stays on the surface (no edge blending)
        depth.append(-torch.nn.functional.max_pool2d(-torch.where(t > 0, t, 99.0), 2)[0, 0])
    depth = torch.stack(depth)
    depth[depth > 50] = 0
    idx = torch.tensor(views)
    return used.c2w[idx], used.K[idx], pm.blur(images[idx], 1.0), masks[idx], depth


def _loss(spot_views, ref_depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    c2w, K, images, masks, depth = spot_views
    return pm.photometric_consistency(
        ref_depth, valid, images[0], c2w[0], K[0], images[1:], masks[1:], depth[1:], c2w[1:], K[1:]
    )


def _valid(spot_views) -> torch.Tensor:
    _, _, _, masks, depth = spot_views
    return (pm.solid_pixels(masks[:1])[0] > 0.5) & (depth[0] > 0)


def test_true_depth_is_where_spots_photos_agree(spot_views) -> None:
    depth, valid = spot_views[4][0], _valid(spot_views)
    assert int(valid.sum()) > 5000
    truth = float(_loss(spot_views, depth, valid))
    for off in (-0.02, -0.01, 0.01, 0.02):
        moved = float(_loss(spot_views, depth + off, valid))
        assert moved > 1.5 * truth, (off, moved, truth)
    # nothing qualifies -> a zero that still backpropagates
    none = torch.zeros_like(valid)
    d = depth.clone().requires_grad_(True)
    out = _loss(spot_views, d, none)
    out.backward()
    assert float(out.detach()) == 0.0 and d.grad is not None


def test_descending_the_term_moves_a_lid_back_to_the_surface(spot_views) -> None:
    """Depth started 2 cm in front of Spot (a lid over the true surface) and moved by Adam on
    the photometric term alone comes back towards the ground truth."""
    truth, valid = spot_views[4][0], _valid(spot_views)
    d = (truth - 0.02).clone().requires_grad_(True)
    opt = torch.optim.Adam([d], lr=1e-3)
    before = float((d.detach() - truth)[valid].abs().median())
    for _ in range(60):
        opt.zero_grad()
        _loss(spot_views, d, valid).backward()
        opt.step()
    after = float((d.detach() - truth)[valid].abs().median())
    assert before > 0.019
    assert after < 0.25 * before, (before, after)
