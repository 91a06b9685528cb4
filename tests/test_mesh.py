"""Mesh export: TSDF fusion (analytic and rendered spheres, fast path vs reference), extraction,
decimation, the three file formats, and `geolrm mesh`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from pipelines.cameras import look_at
from pipelines.errors import InputError
from pipelines.mesh import (
    TSDFVolume,
    decimate,
    export_mesh,
    extract_mesh,
    fibonacci_directions,
    gaussians_to_mesh,
    integrate_numba,
    integrate_torch,
    keep_main_components,
    marching_cubes,
)
from pipelines.splats.gaussians import Gaussians
from pipelines.splats.ply import save_ply

trimesh = pytest.importorskip("trimesh")


# ----------------------------------------------------------------------------- helpers
def ring_cameras(n: int, size: int, dist: float = 1.6, fov_deg: float = 40.0):
    """Fibonacci-sphere cameras looking at the origin, pixel intrinsics."""
    c2w = look_at(fibonacci_directions(n) * dist)
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
    return c2w, K.expand(n, 3, 3).clone()


def sphere_depth(c2w, K, size: int, radius: float, centre=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """Ray-cast camera-z depth of a sphere, ``[V, size, size]``, 0 = background."""
    jj, ii = torch.meshgrid(
        torch.arange(size, dtype=torch.float64) + 0.5,
        torch.arange(size, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    c = torch.tensor(centre, dtype=torch.float64)
    out = torch.zeros(len(c2w), size, size)
    for v in range(len(c2w)):
        k = K[v].double()
        ray = torch.stack(
            [(ii - k[0, 2]) / k[0, 0], (jj - k[1, 2]) / k[1, 1], torch.ones_like(ii)], -1
        )  # OpenCV camera ray with z = 1, so the hit's t is its camera z
        dw = ray @ (c2w[v, :3, :3].double() @ flip).T
        o = c2w[v, :3, 3].double() - c
        a, b, cc = (dw * dw).sum(-1), 2 * (dw @ o), o @ o - radius**2
        disc = b * b - 4 * a * cc
        t = (-b - disc.clamp(min=0).sqrt()) / (2 * a)
        out[v] = torch.where(disc > 0, t, torch.zeros_like(t)).float()
    return out


def sphere_gaussians(n: int = 6000, radius: float = 0.3, centre=(0.0, 0.0, 0.0)) -> Gaussians:
    """Flat Gaussian disks tangent to a sphere (Fibonacci lattice), red top, blue bottom."""
    nrm = fibonacci_directions(n).float()
    # rotation taking local +z onto the normal: q = (1 + n_z, -n_y, n_x, 0), normalised
    q = torch.stack([1 + nrm[:, 2], -nrm[:, 1], nrm[:, 0], torch.zeros(n)], -1)
    q = torch.nn.functional.normalize(q, dim=-1)
    s = radius * math.sqrt(4 * math.pi / n)
    scales = torch.tensor([s, s, 0.05 * s]).expand(n, 3).clone()
    red, blue = torch.tensor([0.9, 0.15, 0.1]), torch.tensor([0.1, 0.2, 0.9])
    colors = torch.where(nrm[:, 2:3] > 0, red, blue)
    means = nrm * radius + torch.tensor(centre)
    return Gaussians(means, scales, q, torch.full((n,), 0.95), colors)


def tall_box(colors: bool = True):
    """A z-up box 0.2 x 0.3 x 1.0, red vertices on top, green below."""
    m = trimesh.creation.box(extents=(0.2, 0.3, 1.0))
    top = m.vertices[:, 2] > 0
    rgba = np.where(top[:, None], [[220, 20, 20, 255]], [[20, 200, 20, 255]]).astype(np.uint8)
    if colors:
        m.visual.vertex_colors = rgba
    return m


# ----------------------------------------------------------------------------- TSDF
def test_tsdf_analytic_sphere_radius_within_1_percent():
    c2w, K = ring_cameras(30, 128)
    depth = sphere_depth(c2w, K, 128, 0.4)
    vol = TSDFVolume.empty([-0.5] * 3, [0.5] * 3, 64, trunc_voxels=4.0, color=False)
    vol.integrate(depth, c2w, K)
    verts, faces = marching_cubes(vol)
    r = np.linalg.norm(verts, axis=1)
    assert abs(r.mean() - 0.4) < 0.01 * 0.4
    assert np.abs(r - 0.4).max() < 1.5 * vol.voxel_size
    m = trimesh.Trimesh(verts, faces, process=False)
    assert m.is_watertight and m.volume > 0  # closed, normals pointing out
    assert abs(m.volume - 4 / 3 * math.pi * 0.4**3) < 0.03 * (4 / 3 * math.pi * 0.4**3)


def test_tsdf_unseen_voxels_count_as_inside_and_background_carves():
    c2w, K = ring_cameras(12, 64)
    depth = sphere_depth(c2w, K, 64, 0.3)
    vol = TSDFVolume.empty([-0.5] * 3, [0.5] * 3, 32, color=False)
    vol.integrate(depth, c2w, K)
    c = 16  # near the centre: deep inside, never observed
    assert vol.weight[c, c, c] == 0 and vol.tsdf[c, c, c] == -1
    assert vol.tsdf[1, 1, 16] == 1  # out at the box edge: carved by background pixels
    # voxels outside every view's frustum (here: behind cameras looking down -z) are untouched
    far = TSDFVolume.empty([5.0] * 3, [6.0] * 3, 8, color=False)
    far.integrate(depth, torch.eye(4).expand(12, 4, 4), K)
    assert far.weight.sum() == 0 and (far.tsdf == -1).all()


def test_views_seeing_through_the_interior_do_not_carve_it():
    """A pinhole in one view's mask would carve a tunnel through the solid interior."""
    c2w, K = ring_cameras(30, 96)
    depth = sphere_depth(c2w, K, 96, 0.35)
    depth[0, 40:56, 40:56] = 0.0  # a 16 px hole in the middle of view 0's silhouette
    depth[7, 44:52, 30:38] = 0.0
    vol = TSDFVolume.empty([-0.5] * 3, [0.5] * 3, 48, color=False)
    vol.integrate(depth, c2w, K)
    exact = 4 / 3 * math.pi * 0.35**3
    raw = trimesh.Trimesh(*marching_cubes(vol, max_free_ratio=None), process=False)
    assert raw.volume < 0.97 * exact  # the tunnels
    solid = trimesh.Trimesh(*marching_cubes(vol), process=False)
    assert abs(solid.volume - exact) < 0.03 * exact
    assert len(solid.split(only_watertight=False)) == 1


def _messy_views(n: int = 10, size: int = 48):
    """Views of an off-centre sphere, some voxels out of frustum, some NaN (unknown) pixels."""
    c2w, K = ring_cameras(n, size, dist=1.2, fov_deg=50.0)
    depth = sphere_depth(c2w, K, size, 0.3, centre=(0.05, -0.03, 0.02))
    gen = torch.Generator().manual_seed(0)
    depth[torch.rand(depth.shape, generator=gen) < 0.02] = float("nan")
    rgb = torch.rand(n, size, size, 3, generator=gen)
    return depth, rgb, c2w, K


def test_numba_fast_path_matches_torch_reference():
    depth, rgb, c2w, K = _messy_views()
    ref = TSDFVolume.empty([-0.6] * 3, [0.6] * 3, 32, trunc_voxels=3.0)
    fast = TSDFVolume.empty([-0.6] * 3, [0.6] * 3, 32, trunc_voxels=3.0)
    integrate_torch(ref, depth, c2w, K, rgb)
    integrate_numba(fast, depth, c2w, K, rgb, prune=False)
    assert (ref.weight > 0).float().mean() > 0.5 and (ref.tsdf.abs() < 1).sum() > 1000
    torch.testing.assert_close(fast.weight, ref.weight, atol=0, rtol=0)
    torch.testing.assert_close(fast.occluded, ref.occluded, atol=0, rtol=0)
    assert ref.occluded.sum() > 1000
    torch.testing.assert_close(fast.tsdf, ref.tsdf, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.color_weight, ref.color_weight, atol=0, rtol=0)
    torch.testing.assert_close(fast.color, ref.color, atol=1e-5, rtol=0)


def test_pruned_fast_path_is_exact_in_the_band():
    depth, rgb, c2w, K = _messy_views()
    dense = TSDFVolume.empty([-0.6] * 3, [0.6] * 3, 48, trunc_voxels=2.5)
    pruned = TSDFVolume.empty([-0.6] * 3, [0.6] * 3, 48, trunc_voxels=2.5)
    integrate_numba(dense, depth, c2w, K, rgb, prune=False)
    integrate_numba(pruned, depth, c2w, K, rgb, prune=True, block=4)
    band = dense.tsdf.abs() < 1
    assert band.sum() > 1000
    torch.testing.assert_close(pruned.tsdf[band], dense.tsdf[band], atol=0, rtol=0)
    torch.testing.assert_close(pruned.weight[band], dense.weight[band], atol=0, rtol=0)
    torch.testing.assert_close(pruned.occluded[band], dense.occluded[band], atol=0, rtol=0)
    torch.testing.assert_close(pruned.color, dense.color, atol=0, rtol=0)
    # away from the band a block counts as seen when its centre is: only seen / unseen may
    # differ (at frustum edges); wherever both saw a voxel they agree
    seen = (dense.weight > 0) & (pruned.weight > 0)
    assert ((pruned.tsdf > 0) == (dense.tsdf > 0))[seen].all()
    assert ((pruned.tsdf > 0) == (dense.tsdf > 0)).float().mean() > 0.995


def test_fusing_in_batches_equals_fusing_at_once():
    depth, rgb, c2w, K = _messy_views()
    vols = [TSDFVolume.empty([-0.6] * 3, [0.6] * 3, 32) for _ in range(4)]
    integrate_numba(vols[0], depth, c2w, K, rgb, prune=False)
    integrate_numba(vols[1], depth, c2w, K, rgb, prune=True)
    for s in (slice(0, 3), slice(3, 10)):
        integrate_numba(vols[2], depth[s], c2w[s], K[s], rgb[s], prune=False)
        integrate_torch(vols[3], depth[s], c2w[s], K[s], rgb[s])
    band = vols[0].tsdf.abs() < 1
    for v in vols[1:]:
        torch.testing.assert_close(v.tsdf[band], vols[0].tsdf[band], atol=1e-5, rtol=0)
        torch.testing.assert_close(v.color, vols[0].color, atol=1e-5, rtol=0)


def test_tsdf_bad_input():
    vol = TSDFVolume.empty([0] * 3, [1] * 3, 16)
    with pytest.raises(InputError):
        vol.integrate(torch.zeros(2, 8, 8), torch.eye(4).expand(3, 4, 4), torch.eye(3)[None])
    with pytest.raises(InputError):
        vol.integrate(torch.zeros(1, 8, 8), torch.eye(4)[None], torch.eye(3)[None], method="x")
    with pytest.raises(InputError):
        TSDFVolume.empty([0] * 3, [0, 1, 1], 16)


# ----------------------------------------------------------------------------- full pipeline
def test_sphere_rendered_from_gaussians_radius_within_2_percent():
    g = sphere_gaussians(6000, radius=0.3, centre=(0.1, -0.05, 0.2))
    mesh = gaussians_to_mesh(g, views=40, resolution=64, image_size=256, faces=4000).mesh
    assert len(mesh.faces) <= 4000 and mesh.volume > 0
    r = np.linalg.norm(mesh.vertices - np.array([0.1, -0.05, 0.2]), axis=1)
    assert abs(r.mean() - 0.3) < 0.02 * 0.3
    assert np.percentile(np.abs(r - 0.3), 99) < 0.05 * 0.3
    # colours from the fused renders: red top, blue bottom
    c = mesh.visual.vertex_colors.astype(float)
    rel_z = mesh.vertices[:, 2] - 0.2
    top, bottom = c[rel_z > 0.15].mean(0), c[rel_z < -0.15].mean(0)
    assert top[0] > 180 and top[2] < 60
    assert bottom[2] > 180 and bottom[0] < 60


def test_gaussians_to_mesh_bad_options():
    g = sphere_gaussians(200)
    with pytest.raises(InputError):
        gaussians_to_mesh(g, views=0)
    with pytest.raises(InputError):
        gaussians_to_mesh(g, resolution=4)
    with pytest.raises(InputError):
        gaussians_to_mesh(g[torch.zeros(len(g), dtype=torch.bool)])


# ----------------------------------------------------------------------------- extraction
def test_decimation_reaches_budget_and_keeps_shape():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)  # 20480 faces
    v, f = decimate(np.asarray(sphere.vertices), np.asarray(sphere.faces), 2000)
    assert 1500 <= len(f) <= 2000
    m = trimesh.Trimesh(v, f, process=False)
    r = np.linalg.norm(v, axis=1)
    assert np.abs(r - 0.5).max() < 0.01
    assert abs(m.volume - sphere.volume) < 0.02 * sphere.volume
    # under budget: unchanged
    v2, f2 = decimate(v, f, 5000)
    assert len(f2) == len(f)


def test_keep_main_components_drops_floaters():
    big = trimesh.creation.icosphere(3, radius=0.5)
    small = trimesh.creation.icosphere(0, radius=0.05)  # 20 faces, 1.6% of the big one
    small.apply_translation([2.0, 0, 0])
    both = trimesh.util.concatenate([big, small])
    v, f = keep_main_components(np.asarray(both.vertices), np.asarray(both.faces), 0.05)
    assert len(f) == len(big.faces) and len(v) == len(big.vertices)
    assert np.linalg.norm(v, axis=1).max() < 0.51
    v, f = keep_main_components(np.asarray(both.vertices), np.asarray(both.faces), 0.0)
    assert len(f) == len(both.faces)


def test_extract_mesh_colours_and_empty_volume():
    c2w, K = ring_cameras(16, 64)
    depth = sphere_depth(c2w, K, 64, 0.35)
    rgb = torch.zeros(16, 64, 64, 3)
    rgb[..., 1] = 1.0  # green everywhere
    vol = TSDFVolume.empty([-0.5] * 3, [0.5] * 3, 32)
    vol.integrate(depth, c2w, K, rgb)
    mesh = extract_mesh(vol, faces=1000)
    assert len(mesh.faces) <= 1000
    c = mesh.visual.vertex_colors
    assert (c[:, 1] > 250).all() and (c[:, 0] < 5).all() and (c[:, 3] == 255).all()
    empty = TSDFVolume.empty([-0.5] * 3, [0.5] * 3, 16)
    empty.tsdf.fill_(1.0)
    with pytest.raises(InputError, match="no surface"):
        extract_mesh(empty)


# ----------------------------------------------------------------------------- export
def _load(path):
    """One mesh from any of the three formats (scene transforms applied)."""
    kw = {"skip_materials": True} if str(path).endswith(".obj") else {}
    return trimesh.load(path, force="mesh", process=False, **kw)


def _colors(path) -> np.ndarray:
    """``[N, 4]`` uint8 vertex colours as trimesh reads them back (glTF: ``COLOR_0``)."""
    if str(path).endswith(".glb"):
        scene = trimesh.load(path, process=False)
        (geom,) = scene.geometry.values()
        return np.asarray(geom.visual.vertex_attributes["color"])
    return np.asarray(_load(path).visual.vertex_colors)


def test_export_glb_is_y_up_with_colours(tmp_path):
    box = tall_box()
    (path,) = export_mesh(box, tmp_path / "box.glb")
    m = _load(path)
    ext = m.bounds[1] - m.bounds[0]
    np.testing.assert_allclose(ext, [0.2, 1.0, 0.3], atol=1e-5)  # tall along y
    c = _colors(path)
    assert len(m.faces) == len(box.faces)
    top = m.vertices[:, 1] > 0  # world +z became +y
    assert (c[top, 0] > 200).all() and (c[~top, 1] > 180).all()
    import json
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<I", raw[12:16])[0]
    gltf = json.loads(raw[20 : 20 + n])
    assert gltf["materials"][0]["pbrMetallicRoughness"]["metallicFactor"] == 0.0
    assert [p.name for p in tmp_path.iterdir()] == ["box.glb"]


def test_export_obj_with_mtl_is_y_up(tmp_path):
    box = tall_box()
    written = export_mesh(box, tmp_path / "box.obj")
    assert [p.name for p in written] == ["box.obj", "box.mtl"]
    text = (tmp_path / "box.obj").read_text()
    assert "mtllib box.mtl" in text and "usemtl geolrm" in text
    assert "newmtl geolrm" in (tmp_path / "box.mtl").read_text()
    m = _load(tmp_path / "box.obj")
    np.testing.assert_allclose(m.bounds[1] - m.bounds[0], [0.2, 1.0, 0.3], atol=1e-5)
    assert len(m.faces) == len(box.faces)
    top = m.vertices[:, 1] > 0
    c = _colors(tmp_path / "box.obj")
    assert (c[top, 0] > 200).all() and (c[~top, 1] > 180).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.mtl", "box.obj"]


def test_export_ply_keeps_z_up_and_colours(tmp_path):
    box = tall_box()
    (path,) = export_mesh(box, tmp_path / "box.ply")
    m = _load(path)
    np.testing.assert_allclose(m.bounds[1] - m.bounds[0], [0.2, 0.3, 1.0], atol=1e-6)
    assert len(m.faces) == len(box.faces)
    top = m.vertices[:, 2] > 0
    assert (_colors(path)[top, 0] > 200).all()
    (path,) = export_mesh(box, tmp_path / "box_y.ply", up="y")
    m = _load(path)
    np.testing.assert_allclose(m.bounds[1] - m.bounds[0], [0.2, 1.0, 0.3], atol=1e-6)


def test_export_unknown_format(tmp_path):
    with pytest.raises(InputError, match="unknown mesh format"):
        export_mesh(tall_box(), tmp_path / "box.stl")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def sphere_ply(tmp_path):
    return save_ply(tmp_path / "model.ply", sphere_gaussians(3000, radius=0.3))


FAST = ["--resolution", "32", "--views", "16", "--image-size", "96"]


@pytest.mark.parametrize("name", ["mesh.glb", "mesh.obj", "mesh.ply"])
def test_cli_mesh_happy_path(cli, sphere_ply, tmp_path, name):
    out = tmp_path / "out" / name
    code, _, err = cli("mesh", sphere_ply, "-o", out, "--faces", "600", *FAST)
    assert code == 0, err
    m = _load(out)
    assert 0 < len(m.faces) <= 600
    up_axis = 2 if name.endswith(".ply") else 1
    ext = m.bounds[1] - m.bounds[0]
    assert 0.55 < ext[up_axis] < 0.7  # the sphere's diameter
    # red top (+z in the world) is at the top of the file's up axis
    c = _colors(out).astype(float)
    top = m.vertices[:, up_axis] > 0.15
    assert c[top, 0].mean() > 150
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_cli_mesh_default_output(cli, sphere_ply):
    code, _, err = cli("mesh", sphere_ply, "--faces", "300", *FAST)
    assert code == 0, err
    assert (sphere_ply.parent / "model_mesh.glb").exists()


def test_cli_mesh_missing_file(cli, tmp_path):
    out = tmp_path / "mesh.glb"
    code, _, err = cli("mesh", tmp_path / "nope.ply", "-o", out)
    assert code == 2
    assert_one_line_error(err, "does not exist")
    assert not out.exists()


def test_cli_mesh_not_a_gaussian_ply(cli, tmp_path):
    plain = tmp_path / "plain.ply"
    trimesh.creation.icosphere(1).export(plain)
    out = tmp_path / "mesh.glb"
    code, _, err = cli("mesh", plain, "-o", out)
    assert code == 2
    assert_one_line_error(err, "plain.ply")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.ply"]


def test_cli_mesh_bad_output(cli, sphere_ply, tmp_path):
    code, _, err = cli("mesh", sphere_ply, "-o", tmp_path / "mesh.fbx")
    assert code == 2
    assert_one_line_error(err, "unknown mesh format")
    code, _, err = cli("mesh", sphere_ply, "-o", sphere_ply)
    assert code == 2
    assert_one_line_error(err, "overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ply"]
