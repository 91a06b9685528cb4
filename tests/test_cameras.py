"""Tests for pipelines.cameras and the rigs (pipelines.multiview.rigs): transforms.json I/O,
frame normalisation, view loading."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.cameras import (
    Cameras,
    apply_similarity,
    decompose_similarity,
    focal_to_fov,
    fov_to_focal,
    invert_similarity,
    load_similarity,
    look_at,
    normalize_to_model_frame,
    orbit_cameras,
    orbit_poses,
    project_points,
    save_similarity,
    similarity_from_json,
    similarity_to_json,
)
from pipelines.cameras.dataparsers import load_transforms
from pipelines.cameras.images import load_images, load_views
from pipelines.errors import InputError
from pipelines.multiview.rigs import (
    sv3d_azimuths_deg,
    sv3d_cameras,
    sv3d_view_indices,
    zero123pp_cameras,
)

SPOT = Path(__file__).parents[1] / "examples" / "spot"
EYE4 = torch.eye(4, dtype=torch.float64)


def _angles(c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(azimuth deg in [0, 360), elevation deg, radius) of camera centres."""
    p = c2w[:, :3, 3].double()
    r = p.norm(dim=-1)
    az = torch.remainder(torch.rad2deg(torch.atan2(p[:, 1], p[:, 0])), 360.0)
    el = torch.rad2deg(torch.asin(p[:, 2] / r))
    return az, el, r


def _assert_rigid_looking_at_origin(c2w: torch.Tensor) -> None:
    r = c2w[:, :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    assert torch.allclose(r.transpose(1, 2) @ r, eye, atol=1e-6)
    assert torch.allclose(torch.linalg.det(r), torch.ones(len(r), dtype=torch.float64), atol=1e-6)
    p = c2w[:, :3, 3].double()
    z = c2w[:, :3, 2].double()
    assert torch.allclose(z, p / p.norm(dim=-1, keepdim=True), atol=1e-6)


@pytest.fixture(scope="module")
def spot() -> Cameras:
    return load_transforms(SPOT / "transforms_train.json")


@pytest.fixture(scope="module")
def spot_points() -> torch.Tensor:
    return torch.from_numpy(np.load(SPOT / "points.npy"))


# ------------------------------------------------------------------------------------ poses


def test_orbit_poses_readme_example() -> None:
    m = orbit_poses([0.0], [10.0], 1.5)
    assert m.shape == (1, 4, 4) and m.dtype == torch.float32
    m = m[0]
    assert torch.allclose(m[:3, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(m[:3, 1], torch.tensor([-0.173648, 0.0, 0.984808]), atol=1e-5)
    assert torch.allclose(m[:3, 2], torch.tensor([0.984808, 0.0, 0.173648]), atol=1e-5)
    assert torch.allclose(m[:3, 3], torch.tensor([1.477212, 0.0, 0.260472]), atol=1e-5)
    assert torch.equal(m[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_orbit_poses_broadcast_and_look_at_agree() -> None:
    az = torch.tensor([0.0, 45.0, 170.0, 300.0])
    m = orbit_poses(az, 25.0, 2.0)
    assert m.shape == (4, 4, 4)
    _assert_rigid_looking_at_origin(m)
    got_az, got_el, got_r = _angles(m)
    assert torch.allclose(got_az, az.double(), atol=1e-4)
    assert torch.allclose(got_el, torch.full((4,), 25.0, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(got_r, torch.full((4,), 2.0, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(look_at(m[:, :3, 3]), m, atol=1e-6)
    # the camera x axis is horizontal (no roll)
    assert torch.all(m[:, 2, 0].abs() < 1e-7)


def test_orbit_poses_at_the_pole_is_finite_and_continuous() -> None:
    top = orbit_poses([30.0], [90.0], 1.5)
    near = orbit_poses([30.0], [89.999], 1.5)
    assert torch.isfinite(top).all()
    assert torch.allclose(top, near, atol=1e-4)
    side = look_at([0.0, 0.0, 2.0])  # looking straight down with up = z
    assert torch.isfinite(side).all()
    _assert_rigid_looking_at_origin(side)
    with pytest.raises(InputError, match="sits on its target"):
        look_at([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])


def test_fov_focal() -> None:
    assert fov_to_focal(90.0, 2.0) == pytest.approx(1.0)
    assert fov_to_focal(39.6, 512) == pytest.approx(711.0673546022335, rel=1e-12)
    assert focal_to_fov(fov_to_focal(30.0, 448), 448) == pytest.approx(30.0)
    with pytest.raises(InputError, match="field of view"):
        fov_to_focal(180.0, 10)


# ------------------------------------------------------------------------------------- rigs


def test_zero123pp_rig() -> None:
    cams = zero123pp_cameras()
    assert len(cams) == 6 and cams.width == cams.height == 448
    az, el, r = _angles(cams.c2w)
    assert torch.allclose(az, torch.tensor([30.0, 90, 150, 210, 270, 330]).double(), atol=1e-4)
    assert torch.allclose(el, torch.tensor([20.0, -10, 20, -10, 20, -10]).double(), atol=1e-4)
    assert torch.allclose(r, torch.full((6,), 1.5, dtype=torch.float64), atol=1e-6)
    _assert_rigid_looking_at_origin(cams.c2w)
    f = 0.5 / math.tan(math.radians(15.0))  # 1.8660
    k = torch.tensor([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]], dtype=torch.float32)
    assert torch.allclose(cams.normalized_K(), k.expand(6, 3, 3), atol=1e-6)
    assert torch.allclose(cams.K[0, 0, 0], torch.tensor(f * 448), rtol=1e-6)
    four = zero123pp_cameras(n_views=4, size=320)
    assert torch.equal(four.c2w, cams.c2w[[0, 2, 4, 5]])
    assert four.width == 320
    with pytest.raises(InputError, match="Zero123"):
        zero123pp_cameras(n_views=5)


def test_sv3d_rig() -> None:
    cams = sv3d_cameras()
    assert len(cams) == 21 and cams.width == cams.height == 560
    az, el, r = _angles(cams.c2w)
    expected = torch.remainder(torch.arange(1, 22, dtype=torch.float64) * 360 / 21, 360)
    assert torch.allclose(az, expected, atol=1e-4)
    assert az[20] == pytest.approx(0.0, abs=1e-4)  # the input view is the last frame
    assert torch.allclose(el, torch.full((21,), 10.0, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(r, torch.full((21,), 1.5, dtype=torch.float64), atol=1e-6)
    f = 0.5 / math.tan(math.radians(19.8))  # 1.3888
    assert torch.allclose(cams.normalized_K()[:, 0, 0], torch.full((21,), f), atol=1e-6)
    assert torch.allclose(cams.normalized_K()[:, 1, 1], torch.full((21,), f), atol=1e-6)
    official = sv3d_azimuths_deg(official_offset=True)
    assert torch.allclose(official, torch.arange(21, dtype=torch.float64) * 360 / 21)
    assert sv3d_view_indices(21) == list(range(21))
    assert sv3d_view_indices(6) == [0, 3, 6, 9, 12, 15, 18]
    assert sv3d_view_indices(4) == [0, 5, 10, 15, 20]
    low = sv3d_cameras(elevation_deg=5.0, size=576)
    assert torch.allclose(_angles(low.c2w)[1], torch.full((21,), 5.0, dtype=torch.float64))


def test_official_sv3d_offset_matches_spot_train_cameras(spot: Cameras) -> None:
    # Spot's renders (examples/spot) use azimuth k*360/21, the official GeoLRM SV3D assignment.
    rig = sv3d_cameras(size=512, official_offset=True)
    assert torch.allclose(rig.c2w, spot.c2w, atol=1e-6)
    assert torch.allclose(rig.K, spot.K, rtol=1e-6)


def test_orbit_cameras() -> None:
    cams = orbit_cameras(8, elevation_deg=30.0, radius=2.0, fov_deg=50.0, size=64)
    az, el, r = _angles(cams.c2w)
    assert torch.allclose(az, torch.arange(8, dtype=torch.float64) * 45, atol=1e-4)
    assert torch.allclose(el, torch.full((8,), 30.0, dtype=torch.float64), atol=1e-4)
    assert cams.K[0, 0, 0].item() == pytest.approx(fov_to_focal(50.0, 64), rel=1e-6)
    turn = orbit_cameras(3, start_azimuth_deg=90.0)
    assert torch.allclose(_angles(turn.c2w)[0], torch.tensor([90.0, 210, 330]).double())
    hfov, vfov = turn.fov_deg()
    assert torch.allclose(hfov, torch.full((3,), 39.6)) and torch.allclose(vfov, hfov)


# --------------------------------------------------------------------------- Cameras methods


def test_cameras_methods(spot: Cameras) -> None:
    assert len(spot) == 21
    sub = spot.subset([3, 1])
    assert len(sub) == 2 and torch.equal(sub.c2w[0], spot.c2w[3])
    assert sub.image_paths == [spot.image_paths[3], spot.image_paths[1]]
    mask = torch.zeros(21, dtype=torch.bool)
    mask[5] = True
    assert torch.equal(spot.subset(mask).c2w[0], spot.c2w[5])
    with pytest.raises(InputError, match="out of range"):
        spot.subset([21])
    half = spot.resized(256, 128)
    assert (half.width, half.height) == (256, 128)
    assert half.K[0, 0, 0].item() == pytest.approx(spot.K[0, 0, 0].item() / 2, rel=1e-6)
    assert half.K[0, 1, 1].item() == pytest.approx(spot.K[0, 1, 1].item() / 4, rel=1e-6)
    assert torch.allclose(half.normalized_K()[:, 0], spot.normalized_K()[:, 0])
    moved = spot.padded(10, -3, 600, 500)
    assert moved.K[0, 0, 2].item() == 266.0 and moved.K[0, 1, 2].item() == 253.0
    with pytest.raises(ValueError, match="image paths"):
        Cameras(spot.c2w, spot.K, 512, 512, spot.image_paths[:3])


def test_transformed_is_rigid_and_consistent(spot: Cameras, spot_points: torch.Tensor) -> None:
    g = _random_similarity(seed=1)
    moved = spot.transformed(g)
    r = moved.c2w[:, :3, :3].double()
    assert torch.allclose(r.transpose(1, 2) @ r, torch.eye(3, dtype=torch.float64), atol=1e-6)
    pts = spot_points[::500]
    uv0, d0 = project_points(spot, pts)
    uv1, d1 = project_points(moved, apply_similarity(g, pts))
    assert torch.allclose(uv0, uv1, atol=2e-3)
    assert torch.allclose(d0 * 3.7, d1, rtol=1e-5)


def test_to_transforms_json_round_trip(spot: Cameras, tmp_path: Path) -> None:
    shutil.copytree(SPOT / "train", tmp_path / "train")
    cams = load_transforms(SPOT / "transforms_train.json")
    cams.image_paths = [tmp_path / "train" / p.name for p in cams.image_paths]
    data = cams.to_transforms_json(base_dir=tmp_path)
    assert "fl_x" in data and "fl_x" not in data["frames"][0]
    assert data["frames"][0]["file_path"] == "train/000.png"
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    back = load_transforms(tmp_path)  # a folder holding transforms.json works too
    assert torch.equal(back.c2w, cams.c2w) and torch.allclose(back.K, cams.K)
    assert back.image_paths == cams.image_paths
    # different intrinsics per view -> written per frame
    k = cams.K.clone()
    k[1, 0, 0] *= 1.1
    per = Cameras(cams.c2w, k, 512, 512, cams.image_paths).to_transforms_json(base_dir=tmp_path)
    assert "fl_x" not in per and "fl_x" in per["frames"][0]
    (tmp_path / "per.json").write_text(json.dumps(per))
    assert torch.allclose(load_transforms(tmp_path / "per.json").K, k)
    bare = orbit_cameras(2).to_transforms_json()
    assert [f["file_path"] for f in bare["frames"]] == ["images/000.png", "images/001.png"]


# -------------------------------------------------------------------- load_transforms: real


def test_load_transforms_spot(spot: Cameras) -> None:
    assert (spot.width, spot.height) == (512, 512)
    assert spot.image_paths[0] == SPOT / "train" / "000.png"
    assert spot.K[0, 0, 0].item() == pytest.approx(711.0673546022335, rel=1e-6)
    assert spot.K[0, 0, 2].item() == 256.0
    nk = spot.normalized_K()
    assert nk[0, 0, 0].item() == pytest.approx(0.5 / math.tan(math.radians(19.8)), rel=1e-6)
    assert nk[0, 0, 2].item() == 0.5 and nk[0, 1, 2].item() == 0.5
    _assert_rigid_looking_at_origin(spot.c2w)


@pytest.mark.parametrize("view", range(21))
def test_surface_points_project_onto_the_silhouette(
    spot: Cameras, spot_points: torch.Tensor, view: int
) -> None:
    alpha = np.asarray(Image.open(spot.image_paths[view]))[..., 3]
    uv, depth = project_points(spot.subset([view]), spot_points)
    uv, depth = uv[0].numpy(), depth[0].numpy()
    assert np.all(depth > 0)
    col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (col >= 0) & (col < 512) & (row >= 0) & (row < 512)
    assert inside.mean() > 0.97  # Spot's hooves touch the bottom edge in some views
    hit = alpha[row[inside], col[inside]] > 0
    assert hit.mean() >= 0.99


# ----------------------------------------------------------------------------- normalisation


def _random_similarity(seed: int, scale: float = 3.7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    g = torch.eye(4, dtype=torch.float64)
    g[:3, :3] = scale * q
    g[:3, 3] = torch.tensor([2.5, -7.0, 1.25], dtype=torch.float64)
    return g


@pytest.mark.parametrize("split", ["transforms_train.json", "transforms_test.json"])
def test_normalisation_is_identity_on_model_frame_data(split: str) -> None:
    cams = load_transforms(SPOT / split, require_images=False)
    _, m = normalize_to_model_frame(cams, snap_tol=0.0)
    assert torch.allclose(m, EYE4, atol=1e-6)
    out, m = normalize_to_model_frame(cams)
    assert torch.equal(m, EYE4) and torch.equal(out.c2w, cams.c2w)


@pytest.mark.parametrize("rig", [zero123pp_cameras(), zero123pp_cameras(4), sv3d_cameras()])
def test_normalisation_is_identity_on_official_rigs(rig: Cameras) -> None:
    _, m = normalize_to_model_frame(rig, snap_tol=0.0)
    assert torch.allclose(m, EYE4, atol=1e-6)
    out, m = normalize_to_model_frame(rig)
    assert torch.equal(m, EYE4) and torch.equal(out.c2w, rig.c2w)


@pytest.mark.parametrize("seed", [0, 7])
def test_normalisation_recovers_model_frame(
    spot: Cameras, spot_points: torch.Tensor, seed: int
) -> None:
    g = _random_similarity(seed)
    user = spot.transformed(g)
    # canonical azimuth: the first camera (azimuth 0 in the original) goes back to azimuth 0
    back, m = normalize_to_model_frame(user, first_azimuth_deg=0.0)
    assert torch.allclose(back.c2w, spot.c2w, atol=1e-5)
    assert torch.allclose(m @ g, EYE4, atol=1e-5)
    pts = spot_points[::997]
    uv_ref, _ = project_points(spot, pts)
    uv_back, _ = project_points(back, apply_similarity(m, apply_similarity(g, pts)))
    assert torch.allclose(uv_ref, uv_back, atol=1e-2)
    # default: minimal rotation -> the model frame up to a rotation about z
    kept, m2 = normalize_to_model_frame(user)
    s, rot, t = decompose_similarity(m2 @ g)
    assert s == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(t, torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(rot[:, 2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-6)
    az, el, r = _angles(kept.c2w)
    assert torch.allclose(el, torch.full((21,), 10.0, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(r, torch.full((21,), 1.5, dtype=torch.float64), atol=1e-5)


def test_normalisation_recovers_random_views_and_target_radius() -> None:
    cams = load_transforms(SPOT / "transforms_test.json", require_images=False)
    user = cams.transformed(_random_similarity(3, scale=0.05))
    back, _ = normalize_to_model_frame(user, first_azimuth_deg=float(_angles(cams.c2w)[0][0]))
    assert torch.allclose(back.c2w, cams.c2w, atol=1e-5)
    far, m = normalize_to_model_frame(cams, target_radius=2.0)
    assert decompose_similarity(m)[0] == pytest.approx(2.0 / 1.5, rel=1e-6)
    assert torch.allclose(far.centers.norm(dim=-1), torch.full((12,), 2.0), atol=1e-5)


def test_normalisation_degenerate_inputs() -> None:
    # one camera: centre at the depth of the world origin along its axis
    one = orbit_cameras(1, elevation_deg=0.0, radius=4.0)
    out, m = normalize_to_model_frame(one)
    assert torch.allclose(out.centers, torch.tensor([[1.5, 0.0, 0.0]]), atol=1e-6)
    # one camera looking away from the origin: centre target_radius in front of it
    away = Cameras(look_at([3.0, 0.0, 0.0], [6.0, 0.0, 0.0]), torch.eye(3), 10, 10)
    out, m = normalize_to_model_frame(away)
    assert torch.allclose(
        apply_similarity(m, torch.tensor([4.5, 0.0, 0.0])), torch.zeros(3), atol=1e-6
    )
    # parallel optical axes (a strafing camera): same fallback on the mean axis
    eyes = torch.tensor([[-1.0, -3.0, 0.0], [0.0, -3.0, 0.0], [1.0, -3.0, 0.0]])
    par = Cameras(look_at(eyes, eyes + torch.tensor([0.0, 1.0, 0.0])), torch.eye(3), 10, 10)
    out, m = normalize_to_model_frame(par)
    assert torch.isfinite(m).all()
    assert torch.allclose(apply_similarity(m, torch.zeros(3)), torch.zeros(3), atol=1e-6)
    # all cameras at one point
    same = Cameras(
        look_at(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])), torch.eye(3), 8, 8
    )
    with pytest.raises(InputError, match="same point"):
        normalize_to_model_frame(same)
    # outward-facing cameras
    ring = orbit_poses([0.0, 120.0, 240.0], 0.0, 1.0)
    outward = ring.clone()
    outward[:, :3, 0] *= -1
    outward[:, :3, 2] *= -1
    with pytest.raises(InputError, match="look away"):
        normalize_to_model_frame(Cameras(outward, torch.eye(3), 8, 8))


def test_similarity_helpers(tmp_path: Path) -> None:
    g = _random_similarity(5)
    assert torch.allclose(invert_similarity(g) @ g, EYE4, atol=1e-12)
    s, rot, t = decompose_similarity(g)
    assert s == pytest.approx(3.7) and torch.allclose(t, g[:3, 3])
    data = json.loads(json.dumps(similarity_to_json(g)))
    assert torch.equal(similarity_from_json(data), g)
    save_similarity(tmp_path / "m.json", g)
    assert torch.equal(load_similarity(tmp_path / "m.json"), g)
    shear = EYE4.clone()
    shear[0, 1] = 0.5
    with pytest.raises(InputError, match="not a similarity"):
        similarity_from_json({"matrix": shear.tolist()})
    with pytest.raises(InputError, match="4x4"):
        similarity_from_json({"matrix": [[1, 2], [3, 4]]})
    with pytest.raises(InputError, match="proper rotation"):
        invert_similarity(torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0])))
    with pytest.raises(InputError, match="not found"):
        load_similarity(tmp_path / "nope.json")


# -------------------------------------------------------------- load_transforms: synthetic


def _write_png(path: Path, w: int, h: int, mode: str = "RGBA") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), (10, 20, 30, 255)[: len(mode)]).save(path)


def _pose(az: float = 0.0) -> list[list[float]]:
    return orbit_poses([az], [15.0], 2.0)[0].double().tolist()


def _write_json(path: Path, meta: object) -> Path:
    path.write_text(json.dumps(meta))
    return path


def test_nerf_synthetic_style(tmp_path: Path) -> None:
    for i in range(2):
        _write_png(tmp_path / "train" / f"r_{i}.png", 40, 40)
    meta = {
        "camera_angle_x": 0.6911112070083618,
        "frames": [
            {"file_path": f"./train/r_{i}", "rotation": 0.0, "transform_matrix": _pose(90 * i)}
            for i in range(2)
        ],
    }
    cams = load_transforms(_write_json(tmp_path / "transforms_train.json", meta))
    assert (cams.width, cams.height) == (40, 40)  # taken from the first image
    assert cams.image_paths == [tmp_path / "train" / "r_0.png", tmp_path / "train" / "r_1.png"]
    f = 0.5 * 40 / math.tan(0.5 * 0.6911112070083618)
    assert torch.allclose(cams.K[:, 0, 0], torch.full((2,), f)) and torch.equal(
        cams.K[:, 0, 0], cams.K[:, 1, 1]
    )
    assert torch.equal(cams.K[:, :2, 2], torch.full((2, 2), 20.0))


def test_jpg_and_webp_extensions_are_tried(tmp_path: Path) -> None:
    _write_png(tmp_path / "a.jpg", 8, 6, "RGB")
    _write_png(tmp_path / "b.webp", 8, 6, "RGB")
    meta = {
        "camera_angle_x": 1.0,
        "camera_angle_y": 0.8,
        "frames": [
            {"file_path": "a", "transform_matrix": _pose()},
            {"file_path": "b", "transform_matrix": _pose(10)},
        ],
    }
    cams = load_transforms(_write_json(tmp_path / "t.json", meta))
    assert [p.name for p in cams.image_paths] == ["a.jpg", "b.webp"]
    assert cams.K[0, 1, 1].item() == pytest.approx(0.5 * 6 / math.tan(0.4), rel=1e-6)


def test_per_frame_intrinsics(tmp_path: Path) -> None:
    _write_png(tmp_path / "images" / "0.png", 64, 48)
    _write_png(tmp_path / "images" / "1.png", 64, 48)
    meta = {
        "camera_model": "OPENCV",
        "frames": [
            {
                "file_path": f"images/{i}.png",
                "fl_x": 50.0 + i,
                "fl_y": 51.0 + i,
                "cx": 31.0,
                "cy": 25.0,
                "w": 64,
                "h": 48,
                "k1": 0.0,
                "transform_matrix": _pose(30 * i),
            }
            for i in range(2)
        ],
    }
    cams = load_transforms(_write_json(tmp_path / "transforms.json", meta))
    assert torch.allclose(cams.K[:, 0, 0], torch.tensor([50.0, 51.0]))
    assert torch.allclose(cams.K[:, 1, 1], torch.tensor([51.0, 52.0]))
    assert (cams.width, cams.height) == (64, 48)
    assert torch.allclose(cams.normalized_K()[0, 0, 2], torch.tensor(31.0 / 64))
    assert torch.allclose(cams.normalized_K()[0, 1, 2], torch.tensor(25.0 / 48))


def test_instant_ngp_style(tmp_path: Path) -> None:
    _write_png(tmp_path / "images" / "0001.jpg", 32, 24, "RGB")
    meta = {
        "camera_angle_x": 1.2,
        "camera_angle_y": 0.95,
        "fl_x": 27.0,
        "fl_y": 27.5,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "cx": 16.5,
        "cy": 11.5,
        "w": 32.0,
        "h": 24.0,
        "aabb_scale": 16,
        "scale": 0.33,
        "offset": [0.5, 0.5, 0.5],
        "frames": [
            {"file_path": "./images/0001.jpg", "sharpness": 30.2, "transform_matrix": _pose()}
        ],
    }
    cams = load_transforms(_write_json(tmp_path / "transforms.json", meta))
    assert torch.allclose(cams.K[0], torch.tensor([[27.0, 0, 16.5], [0, 27.5, 11.5], [0, 0, 1]]))
    assert (cams.width, cams.height) == (32, 24)
    assert torch.allclose(
        cams.c2w[0].double(), torch.tensor(_pose(), dtype=torch.float64), atol=1e-7
    )


def test_cameras_only_file(tmp_path: Path) -> None:
    import shutil

    shutil.copy(SPOT / "transforms_test.json", tmp_path / "cams.json")  # without its images
    cams = load_transforms(tmp_path / "cams.json", require_images=False)
    assert len(cams) == 12 and cams.image_paths[3] == tmp_path / "test" / "003.png"
    with pytest.raises(InputError, match="image"):
        load_transforms(tmp_path / "cams.json")
    with pytest.raises(InputError, match="003.png|000.png"):
        load_views(cams)
    meta = json.loads((tmp_path / "cams.json").read_text())
    del meta["frames"][0]["file_path"]
    (tmp_path / "cams.json").write_text(json.dumps(meta))
    cams = load_transforms(tmp_path / "cams.json", require_images=False)
    assert cams.image_paths is None
    with pytest.raises(InputError, match="no image files"):
        load_views(cams)


def _meta_ok(tmp_path: Path) -> dict:
    _write_png(tmp_path / "0.png", 16, 16)
    return {
        "fl_x": 20.0,
        "w": 16,
        "h": 16,
        "frames": [{"file_path": "0.png", "transform_matrix": _pose()}],
    }


def _frame_with(key: str, value: object):
    def edit(meta: dict) -> dict:
        meta["frames"][0][key] = value
        return meta

    return edit


def _top_with(**kw: object):
    def edit(meta: dict) -> dict:
        meta.update(kw)
        return meta

    return edit


def _drop(*keys: str):
    def edit(meta: dict) -> dict:
        for k in keys:
            meta.pop(k, None)
        return meta

    return edit


# a uniform scale in the rotation is accepted (test_scaled_rotation_is_a_similarity); one
# axis scaled alone, or a shear, is not a similarity and stays refused
_SCALED = (np.array(_pose()) @ np.diag([2.0, 1.0, 1.0, 1.0])).tolist()
_SHEARED = (
    np.array(_pose()) @ np.array([[1, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
).tolist()
_FLIPPED = (np.array(_pose()) @ np.diag([1.0, 1.0, -1.0, 1.0])).tolist()
_SINGULAR = np.array(_pose())
_SINGULAR[:3, 2] = 0.0
_NAN = np.array(_pose())
_NAN[0, 3] = np.nan


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: {"frames": []}, 'no "frames"'),
        (_drop("frames"), 'no "frames"'),
        (lambda m: [1, 2, 3], "not a JSON object"),
        (lambda m: {"frames": [5]}, "frame 0 is not a JSON object"),
        (_frame_with("transform_matrix", [[1, 0, 0], [0, 1, 0]]), "shape \\(2, 3\\), not 4x4"),
        (_frame_with("transform_matrix", [["a"] * 4] * 4), "not a matrix of numbers"),
        (_frame_with("transform_matrix", _NAN.tolist()), "NaN or infinite"),
        (_frame_with("transform_matrix", _SINGULAR.tolist()), "singular"),
        (_frame_with("transform_matrix", _SCALED), "not orthonormal"),
        (_frame_with("transform_matrix", _SHEARED), "not orthonormal"),
        (_frame_with("transform_matrix", _FLIPPED), "reflection"),
        (_frame_with("transform_matrix", _pose()[:3] + [[0, 0, 1, 1]]), "bottom row"),
        (_drop("fl_x"), "no intrinsics"),
        (lambda m: _drop("fl_x")(_top_with(camera_angle_x=4.0)(m)), "camera_angle_x"),
        (_top_with(fl_x=-3.0), "focal length must be positive"),
        (_top_with(fl_x="wide"), "not a finite number"),
        (_top_with(w=16.5), "whole number"),
        (_top_with(k1=0.05), "undistort the images first"),
        (_top_with(distortion_params=[0.0, 0.1, 0, 0, 0, 0]), "undistort"),
        (_top_with(camera_model="OPENCV_FISHEYE"), "not supported"),
        (_frame_with("file_path", "missing.png"), "image 'missing.png' not found"),
        (_frame_with("file_path", None), "frame 0 has no file_path"),
    ],
)
def test_load_transforms_errors(tmp_path: Path, edit, match: str) -> None:
    meta = edit(_meta_ok(tmp_path))
    path = _write_json(tmp_path / "cams.json", meta)
    with pytest.raises(InputError, match=match) as info:
        load_transforms(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg


def test_scaled_rotation_is_a_similarity(tmp_path: Path) -> None:
    """Rotation columns scaled uniformly (a similarity, as a nerfstudio-processed capture with
    world scale 0.21 stores them): the scale is removed, the camera centres kept, one note."""
    import warnings

    from pipelines.errors import Note

    meta = _meta_ok(tmp_path)
    rigid = [_pose(az) for az in (0.0, 40.0, 80.0)]
    meta["frames"] = []
    for pose in rigid:
        m = np.array(pose)
        m[:3, :3] *= 0.21
        meta["frames"].append({"file_path": "0.png", "transform_matrix": m.tolist()})
    path = _write_json(tmp_path / "cams.json", meta)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cams = load_transforms(path)
    notes = [w for w in seen if issubclass(w.category, Note)]
    assert len(notes) == 1, [str(w.message) for w in seen]
    assert "3 of 3" in str(notes[0].message) and "(0.21)" in str(notes[0].message)
    want = torch.tensor(rigid, dtype=torch.float32)
    assert torch.allclose(cams.c2w, want, atol=1e-6)
    rot = cams.c2w[:, :3, :3].double()
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64), atol=1e-6)
    # rigid poses are kept bit for bit and say nothing
    meta["frames"] = [{"file_path": "0.png", "transform_matrix": p} for p in rigid]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        exact = load_transforms(_write_json(tmp_path / "rigid.json", meta))
    assert not [w for w in seen if issubclass(w.category, Note)]
    assert torch.equal(exact.c2w, want)


def test_load_transforms_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="camera file not found"):
        load_transforms(tmp_path / "nope.json")
    with pytest.raises(InputError, match="folder has no transforms.json"):
        load_transforms(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"frames": [')
    with pytest.raises(InputError, match=r"bad.json: not valid JSON \(.*line 1"):
        load_transforms(bad)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(InputError, match="bin.json: not"):
        load_transforms(binary)
    no_wh = {"fl_x": 20.0, "frames": [{"transform_matrix": _pose()}]}
    with pytest.raises(InputError, match="no image size"):
        load_transforms(_write_json(tmp_path / "nowh.json", no_wh), require_images=False)
    _write_png(tmp_path / "broken.png", 4, 4)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    broken = {"fl_x": 20.0, "frames": [{"file_path": "broken.png", "transform_matrix": _pose()}]}
    with pytest.raises(InputError, match="cannot read image .*broken.png"):
        load_transforms(_write_json(tmp_path / "broken.json", broken))


def test_differing_sizes_are_rejected(tmp_path: Path) -> None:
    _write_png(tmp_path / "0.png", 16, 16)
    _write_png(tmp_path / "1.png", 20, 16)
    meta = {
        "fl_x": 20.0,
        "frames": [
            {"file_path": "0.png", "w": 16, "h": 16, "transform_matrix": _pose()},
            {"file_path": "1.png", "w": 20, "h": 16, "transform_matrix": _pose(40)},
        ],
    }
    with pytest.raises(InputError, match=r"different image sizes \(16x16, 20x16\).*share one size"):
        load_transforms(_write_json(tmp_path / "t.json", meta))


# ------------------------------------------------------------------------------ load_views


def test_load_views_spot_rgba_on_white(spot: Cameras) -> None:
    cams = spot.subset([0, 7])
    imgs, out = load_views(cams, size=448)
    assert imgs.shape == (2, 3, 448, 448) and imgs.dtype == torch.float32
    assert imgs.min() >= 0 and imgs.max() <= 1
    assert torch.allclose(imgs[:, :, 0, 0], torch.ones(2, 3), atol=1e-5)  # transparent -> white
    assert (out.width, out.height) == (448, 448)
    assert torch.allclose(out.normalized_K(), cams.normalized_K(), atol=1e-6)
    native, same = load_views(cams, size=None)
    rgba = torch.from_numpy(np.asarray(Image.open(cams.image_paths[0])).copy()).float() / 255
    ref = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    assert torch.allclose(native[0], ref.permute(2, 0, 1), atol=1e-6)
    assert torch.equal(same.K, cams.K)
    black, _ = load_views(cams, size=None, background=(0.0, 0.0, 0.0))
    assert torch.all(black[:, :, 0, 0] == 0.0)


def test_load_views_rgb_kept_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "v.png")
    cams = Cameras(
        orbit_poses([0.0], [0.0]),
        torch.tensor([[30.0, 0, 12], [0, 30, 12], [0, 0, 1]]),
        24,
        24,
        [tmp_path / "v.png"],
    )
    imgs, out = load_views(cams, size=None)
    assert torch.equal(imgs[0], torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0)
    assert torch.equal(load_images([tmp_path / "v.png"]), imgs)
    assert load_images([tmp_path / "v.png"], size=12).shape == (1, 3, 12, 12)


@pytest.mark.parametrize("landscape", [True, False])
def test_load_views_pads_non_square_and_adjusts_intrinsics(tmp_path: Path, landscape: bool) -> None:
    w, h = (60, 40) if landscape else (40, 60)
    arr = np.full((h, w, 3), 255, dtype=np.uint8)
    # a dark 2x2 block whose centre is at continuous pixel coordinates (11, 5)
    arr[4:6, 10:12] = 0
    Image.fromarray(arr).save(tmp_path / "v.png")
    k = torch.tensor([[50.0, 0.0, w / 2 - 1.5], [0.0, 52.0, h / 2 + 0.5], [0.0, 0.0, 1.0]])
    cams = Cameras(orbit_poses([20.0], [5.0]), k, w, h, [tmp_path / "v.png"])
    # a world point that projects to the block centre: back-project (11, 5) at depth 1.2
    u, v, depth = 11.0, 5.0, 1.2
    xc = torch.tensor([(u - k[0, 2]) / k[0, 0] * depth, -(v - k[1, 2]) / k[1, 1] * depth, -depth])
    point = (cams.c2w[0, :3, :3].double() @ xc.double() + cams.c2w[0, :3, 3].double()).float()
    uv, _ = project_points(cams, point[None])
    assert torch.allclose(uv[0, 0], torch.tensor([u, v]), atol=1e-4)
    imgs, out = load_views(cams, size=30)
    assert imgs.shape == (1, 3, 30, 30) and (out.width, out.height) == (30, 30)
    left, top = (60 - w) // 2, (60 - h) // 2
    uv2, _ = project_points(out, point[None])
    expected = torch.tensor([(u + left) / 2, (v + top) / 2])
    assert torch.allclose(uv2[0, 0], expected, atol=1e-4)
    # the darkest output pixel contains the projected point; padding is white
    flat = int(torch.argmin(imgs[0].sum(0)))
    row, col = divmod(flat, 30)
    assert (col, row) == (int(expected[0]), int(expected[1]))
    assert torch.all(imgs[0, :, 0, 0] == 1.0) and torch.all(imgs[0, :, -1, -1] == 1.0)


def test_load_views_size_checks(tmp_path: Path) -> None:
    _write_png(tmp_path / "a.png", 32, 32)
    _write_png(tmp_path / "b.png", 16, 16)
    k = torch.tensor([[40.0, 0, 32], [0, 40, 32], [0, 0, 1]])
    # images at half the cameras' resolution are accepted, K follows
    cams = Cameras(orbit_poses([0.0], [0.0]), k, 64, 64, [tmp_path / "a.png"])
    imgs, out = load_views(cams, size=None)
    assert imgs.shape[-1] == 32 and out.K[0, 0, 0].item() == 20.0
    odd = Cameras(orbit_poses([0.0], [0.0]), k, 64, 48, [tmp_path / "a.png"])
    with pytest.raises(InputError, match="a.png: image is 32x32 but its camera says 64x48"):
        load_views(odd)
    two = Cameras(
        orbit_poses([0.0, 90.0], [0.0]), k, 32, 32, [tmp_path / "a.png", tmp_path / "b.png"]
    )
    with pytest.raises(InputError, match="b.png: image is 16x16"):
        load_views(two)


def test_load_views_corrupt_and_missing(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    k = torch.tensor([[40.0, 0, 8], [0, 40, 8], [0, 0, 1]])
    cams = Cameras(orbit_poses([0.0], [0.0]), k, 16, 16, [tmp_path / "bad.png"])
    with pytest.raises(InputError, match="bad.png: cannot read image"):
        load_views(cams)
    gone = Cameras(orbit_poses([0.0], [0.0]), k, 16, 16, [tmp_path / "gone.png"])
    with pytest.raises(InputError, match="gone.png: image not found"):
        load_views(gone)
    _write_png(tmp_path / "trunc.png", 64, 64, "RGB")
    data = (tmp_path / "trunc.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trunc.png"):
        load_images([tmp_path / "trunc.png"])


def test_load_images_palette_and_grey(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 128).save(tmp_path / "g.png")
    p = Image.new("P", (8, 8), 0)
    p.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    imgs = load_images([tmp_path / "g.png", tmp_path / "p.png"])
    assert torch.allclose(imgs[0], torch.full((3, 8, 8), 128 / 255))
    assert torch.all(imgs[1] == 1.0)  # fully transparent palette image -> white
