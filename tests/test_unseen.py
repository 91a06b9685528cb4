"""Membrane fill of the surface no input view saw (pipelines.mesh.unseen)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from pipelines.cameras import orbit_cameras
from pipelines.mesh.unseen import fill_unseen, membrane_fill, seen_vertices, unseen_patches
from pipelines.optimize.visual_hull import quat_z_to
from pipelines.splats.gaussians import Gaussians

RADIUS, HALF_HEIGHT, CONE = 0.25, 0.3, 0.08  # the "bottle", and how far the hull's cone hangs


def _cone_bottomed_cylinder(segments: int = 48, rings: int = 12):
    """A closed cylinder (surface of revolution) whose bottom is a cone hanging CONE below the
    true flat bottom, as the visual hull leaves under an object seen only from above.

    Returns the mesh, with red walls and top and a green cone, and the ``[N]`` bool mask of the
    cone's vertices (strictly below the rim).
    """
    import trimesh

    r_cone = np.linspace(0.0, RADIUS, rings + 1)
    cone = np.stack([r_cone, -HALF_HEIGHT - CONE * (1.0 - r_cone / RADIUS)], -1)
    wall = np.stack(
        [np.full(rings, RADIUS), np.linspace(-HALF_HEIGHT, HALF_HEIGHT, rings + 1)[1:]], -1
    )
    top = np.stack([np.linspace(RADIUS, 0.0, rings + 1)[1:], np.full(rings, HALF_HEIGHT)], -1)
    profile = np.concatenate([cone, wall, top])
    mesh = trimesh.creation.revolve(profile, sections=segments)
    v = np.asarray(mesh.vertices)
    below = v[:, 2] < -HALF_HEIGHT - 1e-9
    colors = np.tile([255, 0, 0, 255], (len(v), 1)).astype(np.uint8)
    colors[below] = [0, 255, 0, 255]
    return trimesh.Trimesh(v, mesh.faces, vertex_colors=colors, process=False), below


def _flat_bottle_gaussians(n: int = 24_000) -> Gaussians:
    """Tangent discs on the true surface: the cylinder with flat caps."""
    g = torch.Generator().manual_seed(0)
    area_side = 2 * math.pi * RADIUS * 2 * HALF_HEIGHT
    area_cap = math.pi * RADIUS**2
    n_side = int(n * area_side / (area_side + 2 * area_cap))
    n_cap = (n - n_side) // 2
    phi = torch.rand(n_side, generator=g) * 2 * math.pi
    z = (torch.rand(n_side, generator=g) * 2 - 1) * HALF_HEIGHT
    side = torch.stack([RADIUS * phi.cos(), RADIUS * phi.sin(), z], -1)
    side_n = torch.stack([phi.cos(), phi.sin(), torch.zeros_like(phi)], -1)
    caps, caps_n = [], []
    for sign in (1.0, -1.0):
        rr = RADIUS * torch.rand(n_cap, generator=g).sqrt()
        ph = torch.rand(n_cap, generator=g) * 2 * math.pi
        caps.append(
            torch.stack([rr * ph.cos(), rr * ph.sin(), torch.full_like(rr, sign * HALF_HEIGHT)], -1)
        )
        caps_n.append(torch.tensor([0.0, 0.0, sign]).expand(n_cap, 3))
    means = torch.cat([side, *caps])
    normals = torch.cat([side_n, *caps_n])
    spacing = math.sqrt((area_side + 2 * area_cap) / len(means))
    scales = torch.tensor([spacing, spacing, 0.05 * spacing]).expand(len(means), 3).clone()
    return Gaussians(
        means=means,
        scales=scales,
        quats=quat_z_to(normals).float(),
        opacities=torch.full((len(means),), 0.95),
        colors=torch.full((len(means), 3), 0.5),
    )


def test_membrane_fill_flattens_a_cone_spanning_a_planar_rim():
    mesh, free = _cone_bottomed_cylinder()
    v = np.asarray(mesh.vertices)
    colors = np.asarray(mesh.visual.vertex_colors, dtype=np.float64)
    filled, filled_colors = membrane_fill(v, mesh.faces, ~free, colors)
    assert free.sum() > 50
    # the rim is the plane z = -HALF_HEIGHT: the harmonic surface spanning it is that plane
    np.testing.assert_allclose(filled[free, 2], -HALF_HEIGHT, atol=1e-9)
    np.testing.assert_array_equal(filled[~free], v[~free])
    # the free vertices stay inside the rim, and their colour is the rim's (red)
    assert np.hypot(filled[free, 0], filled[free, 1]).max() < RADIUS
    np.testing.assert_allclose(filled_colors[free], [[255, 0, 0, 255]] * int(free.sum()), atol=1e-6)


def test_membrane_fill_leaves_components_without_fixed_vertices():
    mesh, _ = _cone_bottomed_cylinder(segments=16)
    v = np.asarray(mesh.vertices)
    f = np.asarray(mesh.faces)
    both_v = np.concatenate([v, v + [2.0, 0.0, 0.0]])
    both_f = np.concatenate([f, f + len(v)])
    fixed = np.zeros(len(both_v), dtype=bool)
    fixed[: len(v) : 7] = True  # anchor only the first copy, sparsely
    out, vals = membrane_fill(both_v, both_f, fixed)
    assert vals is None
    np.testing.assert_array_equal(out[len(v) :], both_v[len(v) :])
    assert not np.allclose(out[: len(v)], v)  # the anchored copy did move


def test_seen_vertices_on_a_sphere_from_a_ring_above():
    """A ring of cameras at +10 deg sees a convex object down to a normal elevation of
    10 - acos(r / D) deg (here -74.3 deg) and nothing below."""
    import trimesh

    r, dist = 0.3, 3.0
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=r)
    normals = torch.tensor(np.array(sphere.vertex_normals), dtype=torch.float32)
    g = Gaussians(
        means=torch.tensor(np.array(sphere.vertices), dtype=torch.float32),
        scales=torch.tensor([0.02, 0.02, 0.001]).expand(len(normals), 3).clone(),
        quats=quat_z_to(normals).float(),
        opacities=torch.full((len(normals),), 0.99),
        colors=torch.full((len(normals), 3), 0.5),
    )
    from pipelines.raster import rasterize
    from pipelines.raster.visibility import view_visibility

    cams = orbit_cameras(24, elevation_deg=10.0, radius=dist, fov_deg=20.0, size=128)
    vis = view_visibility(g, cams.c2w, cams.K, 128, 128)
    depth, alpha = vis.depth, vis.alpha
    with torch.no_grad():
        plain = rasterize(g, cams.c2w[:3], cams.K[:3], 128, 128)
    torch.testing.assert_close(depth[:3], plain.depth[..., 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha[:3], plain.alpha[..., 0], atol=1e-5, rtol=0)
    seen = seen_vertices(
        torch.tensor(np.array(sphere.vertices)), normals, depth, alpha, cams.c2w, cams.K, 0.01
    ).numpy()
    elev = np.degrees(np.arcsin(np.clip(np.asarray(sphere.vertex_normals)[:, 2], -1, 1)))
    assert not seen[elev < -78].any()
    assert seen[elev > -60].mean() > 0.99


def test_fill_unseen_restores_the_flat_bottom_the_views_never_saw():
    """Cameras on a 10 deg ring see the walls and the top but not the bottom; the cone the
    hull left there becomes the flat disc spanning the seen rim (the true bottom)."""
    mesh, cone = _cone_bottomed_cylinder()
    g = _flat_bottle_gaussians()
    cams = orbit_cameras(21, elevation_deg=10.0, radius=2.0, fov_deg=30.0, size=160)
    out = fill_unseen(mesh, g, cams, size=160)
    v = np.asarray(mesh.vertices)
    assert cone.sum() > 50
    deep = cone & (v[:, 2] < -HALF_HEIGHT - 0.2 * CONE)  # clearly below the true bottom
    assert out.unseen[deep].all() and out.filled[deep].all()
    walls = np.abs(v[:, 2]) < HALF_HEIGHT - 0.05
    assert out.unseen[walls].mean() < 0.01
    filled = np.asarray(out.mesh.vertices)
    # the top (seen edge-on from cameras at about its height) stays where it was
    top = v[:, 2] > HALF_HEIGHT - 1e-9
    np.testing.assert_allclose(filled[top, 2], HALF_HEIGHT, atol=1e-3)
    # before: up to CONE (8 cm) below the true bottom; after: within 2 mm of it
    assert np.abs(v[cone, 2] + HALF_HEIGHT).max() > 0.99 * CONE
    assert np.abs(filled[cone, 2] + HALF_HEIGHT).max() < 0.002
    # the filled bottom takes the seen rim's colour, not the cone's
    cols = np.asarray(out.mesh.visual.vertex_colors)[deep]
    assert (cols[:, 0] > 200).all() and (cols[:, 1] < 60).all()


def test_membrane_fill_with_everything_fixed_is_identity():
    mesh, _ = _cone_bottomed_cylinder(segments=8)
    v = np.asarray(mesh.vertices)
    out, _ = membrane_fill(v, mesh.faces, np.ones(len(v), dtype=bool))
    np.testing.assert_array_equal(out, v)


def test_fill_unseen_keeps_patches_whose_gaussians_the_views_saw():
    """Seen from below, the flat bottom's Gaussians are in plain view: the cone (which disagrees
    with their depth, so its vertices fail the depth test) is not the views' blind spot and
    is left alone."""
    mesh, cone = _cone_bottomed_cylinder()
    g = _flat_bottle_gaussians()
    cams = orbit_cameras(21, elevation_deg=-30.0, radius=2.0, fov_deg=30.0, size=160)
    out = fill_unseen(mesh, g, cams, size=160)
    deep = cone & (np.asarray(mesh.vertices)[:, 2] < -HALF_HEIGHT - 0.5 * CONE)
    assert out.unseen[deep].all()
    assert not out.filled[cone].any()
    np.testing.assert_array_equal(
        np.asarray(out.mesh.vertices)[cone], np.asarray(mesh.vertices)[cone]
    )
    # the top, hidden from below together with its Gaussians, is the patch that is filled
    top = np.asarray(mesh.vertices)[:, 2] > HALF_HEIGHT - 1e-9
    assert out.filled[top].mean() > 0.9


def test_unseen_patches_labels_connected_unseen_regions():
    mesh, cone = _cone_bottomed_cylinder(segments=16, rings=4)
    v = np.asarray(mesh.vertices)
    top = v[:, 2] > HALF_HEIGHT - 1e-9
    labels = unseen_patches(mesh.faces, cone | top)
    assert (labels[~(cone | top)] == -1).all()
    assert len(np.unique(labels[cone])) == 1 and len(np.unique(labels[top])) == 1
    assert labels[cone][0] != labels[top][0]


SPOT = Path(__file__).resolve().parents[1] / "examples" / "spot"


def _glb_vertices(path: Path) -> np.ndarray:
    import trimesh

    return np.asarray(trimesh.load(path, force="mesh").vertices)


def test_cli_recon_mesh_equals_geolrm_mesh_with_its_cameras_json(cli, tmp_path):
    """`recon --mesh` writes mesh.glb as `geolrm mesh out/model.ply` does afterwards, which
    picks up the cameras.json beside the model for the unseen-surface fill."""
    out = tmp_path / "out"
    fit = ["--method", "optimize", "--iterations", "30", "--resolution", "64", "--no-video"]
    code, _, err = cli(
        "recon", SPOT / "transforms_train.json", *fit, "--mesh", "--mesh-resolution", "48",
        "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.ply", "cameras.json", "model_frame.json", "mesh.glb"]
    )
    code, _, err = cli("mesh", out / "model.ply", "--resolution", "48", "-o", tmp_path / "m.glb")
    assert code == 0, err
    assert "unseen by cameras.json" in err
    a, b = _glb_vertices(out / "mesh.glb"), _glb_vertices(tmp_path / "m.glb")
    assert a.shape == b.shape and len(a) > 500
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_cli_mesh_fills_only_with_cameras(cli, tmp_path):
    """Spot's bundled splat with its training cameras: the patches under it that those views
    never saw are filled (the message says how much); --keep-unseen leaves the fused shape."""
    model, cams = SPOT / "spot.ply", SPOT / "transforms_train.json"
    common = ["--resolution", "48", "--views", "24"]
    code, _, err = cli("mesh", model, *common, "--cameras", cams, "-o", tmp_path / "f.glb")
    assert code == 0, err
    filled = float(re.search(r"([0-9.]+)% of vertices unseen by transforms_train.json", err)[1])
    assert 1.0 < filled < 40.0
    code, _, err = cli("mesh", model, *common, "--keep-unseen", "-o", tmp_path / "k.glb")
    assert code == 0, err
    assert "unseen" not in err
    f, k = _glb_vertices(tmp_path / "f.glb"), _glb_vertices(tmp_path / "k.glb")
    assert f.shape == k.shape  # same fused mesh, only vertex positions move
    moved = np.linalg.norm(f - k, axis=1) > 1e-4
    assert 0.5 * filled < 100 * moved.mean() <= filled + 1e-9


def test_cli_mesh_camera_errors(cli, tmp_path):
    model = SPOT / "spot.ply"
    code, _, err = cli("mesh", model, "--cameras", tmp_path / "nope.json", "-o", tmp_path / "m.glb")
    assert code == 2
    assert_one_line_error(err, "nope.json")
    code, _, err = cli(
        "mesh", model, "--cameras", SPOT / "transforms_train.json", "--keep-unseen",
        "-o", tmp_path / "m.glb",
    )  # fmt: skip
    assert code == 2
    assert_one_line_error(err, "--keep-unseen")
    assert not (tmp_path / "m.glb").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fill_unseen_on_cuda_matches_cpu():
    """gsplat renders the depth and the visible fractions: same blind spot, same flat bottom."""
    mesh, cone = _cone_bottomed_cylinder()
    g = _flat_bottle_gaussians()
    cams = orbit_cameras(21, elevation_deg=10.0, radius=2.0, fov_deg=30.0, size=160)
    cpu = fill_unseen(mesh, g, cams, size=160)
    gpu = fill_unseen(mesh, g.to("cuda"), cams, size=160, device="cuda")
    deep = cone & (np.asarray(mesh.vertices)[:, 2] < -HALF_HEIGHT - 0.2 * CONE)
    assert gpu.filled[deep].all()
    assert (gpu.filled != cpu.filled).mean() < 0.01
    filled = np.asarray(gpu.mesh.vertices)
    assert np.abs(filled[deep, 2] + HALF_HEIGHT).max() < 0.002


def test_fill_unseen_with_cameras_looking_away_changes_nothing():
    """Cameras that see none of the object (e.g. a cameras.json of another scene) leave every
    vertex unseen; with no seen border there is nothing to span, and nothing is filled."""
    mesh, _ = _cone_bottomed_cylinder(segments=24, rings=6)
    g = _flat_bottle_gaussians(4000)
    cams = orbit_cameras(8, elevation_deg=10.0, radius=2.0, fov_deg=30.0, size=64)
    cams.c2w[:, :3, 0] *= -1.0  # turn each camera around: it now looks away from the object
    cams.c2w[:, :3, 2] *= -1.0
    out = fill_unseen(mesh, g, cams, size=64)
    assert out.unseen.all()
    assert not out.filled.any()
    np.testing.assert_array_equal(np.asarray(out.mesh.vertices), np.asarray(mesh.vertices))
