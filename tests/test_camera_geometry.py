"""Tests for pipelines.cameras.geometry: the one world -> pixel projection (and its matrix form),
as the visual hull, the photometric term, the unseen-surface test and TSDF fusion use it; the one
fov <-> focal, look-at point and percentile box their callers share."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.cameras import orbit_cameras, project_points
from pipelines.cameras.dataparsers import load_transforms
from pipelines.cameras.geometry import (
    angle_to_focal,
    axis_point,
    focal_to_angle,
    focal_to_fov,
    fov_to_focal,
    look_at,
    percentile_box,
    project,
    projection_matrices,
)
from pipelines.optimize.visual_hull import look_at_point

SPOT = Path(__file__).parents[1] / "examples" / "spot"


@pytest.fixture(scope="module")
def spot():
    return load_transforms(SPOT / "transforms_train.json")


@pytest.fixture(scope="module")
def spot_points() -> torch.Tensor:
    return torch.from_numpy(np.load(SPOT / "points.npy")).float()[::200]


def _project_with_matrices(c2w: torch.Tensor, K: torch.Tensor, points: torch.Tensor):
    """The former ``project_points`` maths: exact inverse of c2w, then K (float64)."""
    P = projection_matrices(c2w, K)  # [V, 3, 4]
    pts = torch.cat([points.double(), torch.ones(len(points), 1, dtype=torch.float64)], -1)
    uvz = pts @ P.transpose(1, 2)  # [V, N, 3]
    return uvz[..., :2] / uvz[..., 2:], uvz[..., 2]


def test_project_matches_the_matrix_form_on_spot(spot, spot_points) -> None:
    """The pointwise projection (rotation inverted by its transpose) and the matrix form (exact
    inverse) agree to the float32 rounding of the stored poses: well under 1e-3 px."""
    uv_ref, z_ref = _project_with_matrices(spot.c2w, spot.K, spot_points)
    uv, z = project(spot_points.double(), spot.c2w.double()[:, None], spot.K.double()[:, None])
    assert uv.shape == (len(spot), len(spot_points), 2) and z.shape == uv.shape[:2]
    torch.testing.assert_close(uv, uv_ref, atol=2e-4, rtol=0)
    torch.testing.assert_close(z, z_ref, atol=1e-6, rtol=0)
    # the Cameras-level helper is the same projection, returned as float32
    uv32, z32 = project_points(spot, spot_points)
    assert uv32.dtype == torch.float32
    torch.testing.assert_close(uv32, uv.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(z32, z.float())


def test_project_one_view_equals_the_batched_row(spot, spot_points) -> None:
    pts = spot_points.double()
    batched, zb = project(pts, spot.c2w.double()[:, None], spot.K.double()[:, None])
    for v in (0, 7, 20):
        uv, z = project(pts, spot.c2w[v].double(), spot.K[v].double())
        torch.testing.assert_close(uv, batched[v], atol=1e-12, rtol=0)
        torch.testing.assert_close(z, zb[v], atol=1e-12, rtol=0)


def test_project_keeps_dtype_and_skew_and_is_differentiable() -> None:
    cams = orbit_cameras(2, elevation_deg=15.0, radius=2.0, fov_deg=40.0, size=32)
    pts = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.3, -0.1]])
    uv, z = project(pts, cams.c2w[0], cams.K[0])
    assert uv.dtype == torch.float32 and z.dtype == torch.float32
    # a skewed K moves u by s * (-y_c) / z, as the Cameras convention says
    k = cams.K[0].double().clone()
    k[0, 1] = 3.0
    uv0, z0 = project(pts.double(), cams.c2w[0].double(), cams.K[0].double())
    uvs, _ = project(pts.double(), cams.c2w[0].double(), k)
    cam = (pts.double() - cams.c2w[0, :3, 3].double()) @ cams.c2w[0, :3, :3].double()
    torch.testing.assert_close(uvs[:, 0] - uv0[:, 0], 3.0 * (-cam[:, 1]) / z0)
    torch.testing.assert_close(uvs[:, 1], uv0[:, 1])
    p = pts.double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: project(x, cams.c2w[:, None].double(), cams.K[:, None].double())[0], (p,)
    )


def test_project_behind_the_camera() -> None:
    """``z_min=None`` divides by the true depth (a point behind mirrors into the image);
    ``z_min`` clamps the divisor, so the point lands far outside instead."""
    cams = orbit_cameras(1, elevation_deg=0.0, radius=2.0, fov_deg=40.0, size=32)
    c2w, K = cams.c2w[0].double(), cams.K[0].double()
    behind = (c2w[:3, 3] + 0.5 * c2w[:3, 2] + 0.1 * c2w[:3, 0])[None]  # 0.5 behind, right
    uv, z = project(behind, c2w, K)
    assert float(z[0]) == pytest.approx(-0.5)
    assert float(uv[0, 0]) < 16.0  # mirrored to the left half
    uv_c, z_c = project(behind, c2w, K, z_min=1e-6)
    assert float(z_c[0]) == pytest.approx(-0.5) and float(uv_c[0, 0]) > 1e4


def test_fov_and_focal_in_degrees_and_radians() -> None:
    """fov_to_focal is angle_to_focal of the radians (bit for bit), as the transforms.json
    reader uses for camera_angle_x; focal_to_angle inverts it."""
    for fov, size in ((39.6, 512), (30.0, 448), (90.0, 2.0), (5.0, 1.0)):
        f = fov_to_focal(fov, size)
        assert f == angle_to_focal(math.radians(fov), size)
        assert focal_to_fov(f, size) == math.degrees(focal_to_angle(f, size))
        assert focal_to_angle(f, size) == pytest.approx(math.radians(fov), rel=1e-12)


def test_axis_point_and_its_two_fallbacks() -> None:
    ring = orbit_cameras(8, elevation_deg=25.0, radius=2.0, fov_deg=40.0, size=16)
    c2w = ring.c2w.double()
    centre = axis_point(c2w)
    torch.testing.assert_close(centre, torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.equal(axis_point(c2w, parallel="ahead"), centre)
    assert torch.equal(look_at_point(ring), centre)  # the visual hull's (and trainer's) call
    # parallel axes: no closest point; NaNs (frame normalisation decides) or the mean of the
    # points one unit ahead (visual hull)
    eyes = torch.tensor([[0.0, -2, 0], [1, -2, 0], [2, -2, 0]])
    par = look_at(eyes, eyes + torch.tensor([0.0, 2.0, 0.0]))
    assert bool(torch.isnan(axis_point(par.double())).all())
    ahead = axis_point(par.double(), parallel="ahead")
    torch.testing.assert_close(ahead, torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        axis_point(par.double(), parallel="mean")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("percentile", [0.5, 0.2])
def test_percentile_box(dtype: torch.dtype, percentile: float) -> None:
    """The robust box of render.object_bounds (0.5) and mesh.object_box (0.2): per-axis
    percentiles, their midpoint and the matching percentile distance, in the points' dtype."""
    gen = torch.Generator().manual_seed(1)
    pts = (torch.randn(5000, 3, generator=gen) * torch.tensor([1.0, 2.0, 0.5])).to(dtype)
    lo, hi, centre, radius = percentile_box(pts, percentile)
    q = percentile / 100
    assert lo.dtype == dtype and torch.equal(lo, torch.quantile(pts, q, dim=0))
    assert torch.equal(hi, torch.quantile(pts, 1 - q, dim=0))
    assert torch.equal(centre, (lo + hi) / 2)
    assert radius == float(torch.quantile((pts - centre).norm(dim=-1), 1 - q))
    one = pts[:1]
    lo1, hi1, c1, r1 = percentile_box(one, percentile)
    assert torch.equal(lo1, one[0]) and torch.equal(hi1, one[0]) and torch.equal(c1, one[0])
    assert r1 == 0.0
