"""Occupancy ground truth for the proposal stage: depth lifting, the official binning, solids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from pipelines.cameras.dataparsers import load_transforms
from pipelines.train import occupancy as occ

ROOT = Path(__file__).resolve().parents[1]
SPOT = ROOT / "examples" / "spot"
DEPTH = ROOT / "tests" / "fixtures" / "spot_depth"
DEPTH_VIEWS = (0, 1, 20)
#: Volume of Spot's normalised mesh (shared data objects/spot/mesh.glb, trimesh ``volume``).
SPOT_VOLUME = 0.10328
G = 128


def _sphere(n: int = 40000, r: float = 0.3, seed: int = 0) -> torch.Tensor:
    v = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return r * v / v.norm(dim=1, keepdim=True)


def test_depth_points_pinhole_and_edges() -> None:
    """Camera at the origin looking down -z, f = 100 px: pixel (i, j) at depth 2 lifts to
    ((i + 0.5 - cx) / f * 2, -(j + 0.5 - cy) / f * 2, -2); the pixels next to a hole go."""
    K = torch.tensor([[100.0, 0, 8], [0, 100.0, 8], [0, 0, 1]])[None]
    c2w = torch.eye(4)[None]
    depth = torch.full((1, 16, 16), 2.0)
    p = occ.depth_points(depth, c2w, K, erode_px=0)
    assert p.shape == (256, 3)
    j, i = 3, 11  # row 3, column 11
    assert torch.allclose(
        p[j * 16 + i], torch.tensor([(11.5 - 8) / 50, -(3.5 - 8) / 50, -2.0]).double()
    )
    # the image border counts as valid (as cv2.dilate's default), a background pixel does not
    assert len(occ.depth_points(depth, c2w, K)) == 256
    depth[0, 8, 8] = 0
    assert len(occ.depth_points(depth, c2w, K, erode_px=0)) == 255
    assert len(occ.depth_points(depth, c2w, K)) == 256 - 9


def test_depth_points_match_spot_surface() -> None:
    """Spot's ground-truth depth of three training views lifts onto its surface samples, and its
    cells are the surface samples' cells."""
    cams = load_transforms(SPOT / "transforms_train.json")
    v = list(DEPTH_VIEWS)
    raw = [np.asarray(Image.open(DEPTH / f"{i:03d}_depth.png"), dtype=np.float64) for i in v]
    depth = torch.from_numpy(np.stack(raw) / 1e4)  # depth_unit_scale_factor 1e-4
    pts = occ.depth_points(depth, cams.c2w[v], cams.K[v])
    surface = np.load(SPOT / "points.npy")
    dist, _ = cKDTree(surface).query(pts.numpy())
    # the samples are ~4 mm apart, so ~2 mm to the nearest is what a point on the surface gets
    assert np.median(dist) < 0.003 and np.percentile(dist, 99) < 0.006
    seen = occ.occupancy_grid(pts, G)
    truth = occ.occupancy_grid(torch.from_numpy(surface), G).numpy()
    near = torch.from_numpy(ndimage.binary_dilation(truth, iterations=1))
    assert int((seen & ~near).sum()) <= 0.001 * int(seen.sum())
    assert 0.3 < int((seen & torch.from_numpy(truth)).sum()) / int(truth.sum()) < 0.95


def test_official_binning() -> None:
    """``round((p + 0.5) * G)`` clamped: the far faces land in the last cell, the cell spacing is
    1 / G (the model's cells are 1 / (G - 1) apart: the QUIRK in the module docstring)."""
    p = torch.tensor([[-0.5, 0.0, 0.5], [-0.5 + 0.49 / G, 0.51 / G, 0.7]], dtype=torch.float64)
    idx = occ.voxel_indices(p, G)
    assert idx.tolist() == [[0, 64, 127], [0, 65, 127]]
    assert len(occ.voxel_indices(torch.zeros(5, 3), G)) == 1


def test_solid_sphere_and_open_hemisphere() -> None:
    v = _sphere()
    solid = occ.occupancy_grid(v, G, solid=occ.SolidGrid.from_surface(v))
    shell = occ.occupancy_grid(v, G)
    want = 4 / 3 * math.pi * 0.3**3
    assert int(solid.sum()) / G**3 == pytest.approx(want, rel=0.05)
    assert int(shell.sum()) < 0.2 * int(solid.sum())
    assert bool(solid[64, 64, 64]) and not bool(shell[64, 64, 64])
    # an open surface encloses nothing: it stays (about) its shell
    h = v[v[:, 2] > 0]
    open_solid = occ.occupancy_grid(h, G, solid=occ.SolidGrid.from_surface(h))
    assert int(open_solid.sum()) < 1.1 * int(occ.occupancy_grid(h, G).sum())


def test_solid_spot_volume() -> None:
    surface = torch.from_numpy(np.load(SPOT / "points.npy")).double()
    solid = occ.occupancy_grid(surface, G, solid=occ.SolidGrid.from_surface(surface))
    # binned surface cells reach half a cell outside: a few per cent more than the mesh
    assert int(solid.sum()) / G**3 == pytest.approx(SPOT_VOLUME, rel=0.10)


def test_model_frame_transform_consistent() -> None:
    """Binning world points through ``to_model`` equals binning the moved points."""
    from pipelines.cameras.geometry import rotation_about_z

    v = _sphere(r=0.25) * torch.tensor([1.0, 0.6, 0.8], dtype=torch.float64)  # an ellipsoid
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = 1.3 * rotation_about_z(math.radians(30)).double()[:3, :3]
    m[:3, 3] = torch.tensor([0.05, -0.02, 0.0])
    moved = v @ m[:3, :3].T + m[:3, 3]
    a = occ.occupancy_grid(v, G, to_model=m, solid=occ.SolidGrid.from_surface(v))
    b = occ.occupancy_grid(moved, G, solid=occ.SolidGrid.from_surface(moved))
    assert occ.occupancy_iou(a, b) > 0.95
    assert occ.occupancy_iou(a, torch.zeros_like(a)) == 0.0
    assert occ.occupancy_iou(torch.zeros_like(a), torch.zeros_like(a)) == 1.0
