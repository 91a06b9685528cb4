"""Mesh textures: UV rasteriser and view colours (fast paths vs references), baking on an
analytic sphere, .glb / .obj round trips, and `geolrm mesh --texture`."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from test_mesh import ring_cameras, sphere_gaussians

from pipelines.errors import InputError
from pipelines.mesh import FusionViews, TSDFVolume, export_mesh, gaussians_to_mesh
from pipelines.mesh.texture import (
    bake_texture,
    dilate,
    rasterize_uv,
    rasterize_uv_reference,
    texel_points,
    texture_mesh,
    unwrap,
    view_colors,
    view_colors_reference,
)
from pipelines.splats.ply import save_ply

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("xatlas")

R = 0.3  # sphere radius of the analytic scene

SPOT_TRAIN = Path(__file__).resolve().parents[1] / "examples" / "spot" / "transforms_train.json"


# ----------------------------------------------------------------------------- helpers
def sphere_color(points: np.ndarray) -> np.ndarray:
    """The analytic scene's colour, ``[N, 3]`` in [0, 1]: a smooth ramp along each axis."""
    return np.clip(0.5 + 0.4 * np.asarray(points, np.float64) / R, 0.0, 1.0)


def sphere_views(c2w: torch.Tensor, K: torch.Tensor, size: int) -> FusionViews:
    """Ray-cast renders of the sphere of radius ``R`` at the origin coloured by
    :func:`sphere_color`: camera-z depth (0 = background) and uint8 RGB."""
    jj, ii = torch.meshgrid(
        torch.arange(size, dtype=torch.float64) + 0.5,
        torch.arange(size, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    depth = torch.zeros(len(c2w), size, size)
    rgb = torch.zeros(len(c2w), size, size, 3, dtype=torch.uint8)
    for v in range(len(c2w)):
        k = K[v].double()
        ray = torch.stack(
            [(ii - k[0, 2]) / k[0, 0], (jj - k[1, 2]) / k[1, 1], torch.ones_like(ii)], -1
        )  # camera ray with z = 1: the hit's t is its camera z
        dw = ray @ (c2w[v, :3, :3].double() @ flip).T
        o = c2w[v, :3, 3].double()
        a, b, c = (dw * dw).sum(-1), 2 * (dw @ o), o @ o - R**2
        disc = b * b - 4 * a * c
        t = (-b - disc.clamp(min=0).sqrt()) / (2 * a)
        hit = disc > 0
        depth[v] = torch.where(hit, t, torch.zeros_like(t)).float()
        p = (o + t[..., None] * dw).numpy()
        col = np.round(sphere_color(p.reshape(-1, 3)) * 255).reshape(size, size, 3)
        rgb[v] = torch.from_numpy(np.where(hit.numpy()[..., None], col, 0).astype(np.uint8))
    lo, hi = (
        torch.full((3,), -0.35, dtype=torch.float64),
        torch.full((3,), 0.35, dtype=torch.float64),
    )
    return FusionViews(depth, rgb, c2w, K, lo, hi, torch.zeros(3, dtype=torch.float64), 0.35, 0.0)


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """``[N, 3]`` float colours of ``image`` at ``uv`` (texel centres at ``(i + 0.5) / T``,
    ``v`` up), bilinear, clamped at the border."""
    h, w = image.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    ax, ay = (x - x0)[:, None], (y - y0)[:, None]
    img = image.astype(np.float64)

    def at(r, c):
        return img[np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)]

    top = at(y0, x0) * (1 - ax) + at(y0, x0 + 1) * ax
    bottom = at(y0 + 1, x0) * (1 - ax) + at(y0 + 1, x0 + 1) * ax
    return top * (1 - ay) + bottom * ay


@pytest.fixture(scope="module")
def sphere_scene():
    """An icosphere (5120 faces) inside the analytic sphere, 30 views around it at 128 px."""
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=R)
    c2w, K = ring_cameras(30, 128)
    return mesh, sphere_views(c2w, K, 128)


@pytest.fixture(scope="module")
def baked_sphere(sphere_scene):
    """The sphere's textured mesh at 256 px and its bake."""
    mesh, fv = sphere_scene
    return texture_mesh(mesh, fv, None, 256)


# ----------------------------------------------------------------------------- unwrap + raster
def test_unwrap_keeps_the_surface_and_fits_the_unit_square(sphere_scene):
    mesh, _ = sphere_scene
    uw = unwrap(mesh, 256)
    assert uw.faces.shape == mesh.faces.shape
    np.testing.assert_array_equal(uw.verts, np.asarray(mesh.vertices)[uw.source])
    # same triangles in the same order, now on split vertices
    np.testing.assert_array_equal(uw.source[uw.faces], mesh.faces)
    assert len(uw.verts) > len(mesh.vertices)  # seams split vertices
    assert uw.uv.min() >= 0.0 and uw.uv.max() <= 1.0
    # charts do not overlap: UV areas add up to at most the square, and fill a good part of it
    a, b, c = (uw.uv[uw.faces[:, k]].astype(np.float64) for k in range(3))
    area = 0.5 * np.abs((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0])
    assert 0.4 < area.sum() < 1.0
    # pieces charted one by one give the same kind of atlas as the whole mesh
    whole = unwrap(mesh, 256, chunk_faces=None)
    assert len(whole.verts) > len(mesh.vertices) and whole.uv.max() <= 1.0
    with pytest.raises(InputError, match="no faces"):
        unwrap(trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int)))


def _stress_triangles(rng, n: int = 300):
    """Random triangles in and around the unit square: overlapping, slivers, degenerate."""
    uv = rng.uniform(-0.1, 1.1, (3 * n, 2))
    uv[3 * (n - 10) :: 3] = uv[3 * (n - 10) + 1 :: 3]  # the last 10 are degenerate
    return uv, np.arange(3 * n).reshape(n, 3)


def test_uv_raster_fast_path_matches_reference(sphere_scene):
    mesh, _ = sphere_scene
    uw = unwrap(mesh, 128)
    rng = np.random.default_rng(0)
    for uv, faces, size in [(uw.uv, uw.faces, 128), (*_stress_triangles(rng), 64)]:
        fid, bary = rasterize_uv(uv, faces, size)
        fid_ref, bary_ref = rasterize_uv_reference(uv, faces, size)
        np.testing.assert_array_equal(fid, fid_ref)
        np.testing.assert_allclose(bary, bary_ref, atol=1e-6)
        assert (fid >= 0).sum() > 0.3 * size * size


def test_every_covered_texel_lies_on_its_triangle(sphere_scene):
    mesh, _ = sphere_scene
    size = 128
    uw = unwrap(mesh, size)
    fid, bary = rasterize_uv(uw.uv, uw.faces, size)
    covered = fid >= 0
    # coverage matches the UV area of the triangles (texel centres sample the area)
    a, b, c = (uw.uv[uw.faces[:, k]].astype(np.float64) for k in range(3))
    area = 0.5 * np.abs((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0])
    assert abs(covered.sum() / (area.sum() * size * size) - 1.0) < 0.05
    normals = np.asarray(mesh.vertex_normals)[uw.source]
    texels, points, nrm = texel_points(uw.verts, normals, uw.faces, fid, bary)
    assert len(texels) == covered.sum()
    tri = uw.verts[uw.faces[fid.reshape(-1)[texels]]]  # [M, 3, 3] the texel's triangle
    # the point's barycentric coordinates in its 3D triangle (trimesh's own solver)
    w = trimesh.triangles.points_to_barycentric(tri, points)
    assert w.min() > -1e-6 and w.max() < 1 + 1e-6
    np.testing.assert_allclose(np.einsum("mk,mkd->md", w, tri), points, atol=1e-9)
    # ... and the same coordinates put the texel centre back at its UV
    rows, cols = np.divmod(texels, size)
    centre = np.stack([(cols + 0.5) / size, 1.0 - (rows + 0.5) / size], -1)
    uv_tri = uw.uv[uw.faces[fid.reshape(-1)[texels]]].astype(np.float64)
    np.testing.assert_allclose(np.einsum("mk,mkd->md", w, uv_tri), centre, atol=1e-5)
    # on a sphere the smooth normal points (nearly) radially
    radial = points / np.linalg.norm(points, axis=1, keepdims=True)
    assert (np.einsum("md,md->m", nrm, radial) > 0.995).all()
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-9)


# ----------------------------------------------------------------------------- view colours
def test_view_colors_fast_path_matches_reference(sphere_scene):
    _, fv = sphere_scene
    rng = np.random.default_rng(1)
    n = rng.normal(size=(3000, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    points = n * R * rng.uniform(0.97, 1.03, (3000, 1))  # on and off the surface
    normals = n.copy()
    normals[:300] *= -1  # facing inwards: seen by no view
    rgb, w = view_colors(points, normals, fv, 0.01)
    rgb_ref, w_ref = view_colors_reference(points, normals, fv, 0.01)
    np.testing.assert_allclose(w, w_ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(rgb, rgb_ref, rtol=1e-12, atol=1e-12)
    assert (w[:300] == 0).all() and (rgb[:300] == 0).all()
    on_surface = np.abs(np.linalg.norm(points, axis=1) - R) < 0.005
    assert (w[300:][on_surface[300:]] > 0).mean() > 0.99
    err = np.abs(rgb - sphere_color(points))[w > 0]
    assert err.max() < 0.05


# ----------------------------------------------------------------------------- bake
def test_bake_matches_the_analytic_colours(sphere_scene, baked_sphere):
    mesh, fv = sphere_scene
    textured, baked = baked_sphere
    assert baked.image.shape == (256, 256, 3) and baked.image.dtype == np.uint8
    assert baked.seen_fraction > 0.995  # views all around: every used texel is seen
    assert 0.3 < baked.covered.mean() < 0.9
    # the texture sampled at each vertex's UV gives the scene's colour there
    got = sample_bilinear(baked.image, textured.visual.uv) / 255.0
    want = sphere_color(textured.vertices)
    err = np.abs(got - want)
    assert np.median(err) < 0.004 and np.percentile(err, 99) < 0.02, (np.median(err), err.max())
    # and in the middle of every texel: the texel's own point
    fid, bary = rasterize_uv(textured.visual.uv, textured.faces, 256)
    texels, points, _ = texel_points(
        textured.vertices, textured.vertex_normals, textured.faces, fid, bary
    )
    err = np.abs(baked.image.reshape(-1, 3)[texels] / 255.0 - sphere_color(points))
    assert np.percentile(err, 99) < 0.01 and err.mean() < 0.003
    # empty texels were padded from their neighbours: no black left
    assert (baked.image.sum(-1) > 0).all()


def test_unseen_texels_fall_back_to_the_fused_colour():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=R)
    c2w, K = ring_cameras(60, 96)
    upper = c2w[:, 2, 3] > 0.5 * 1.6  # cameras above 30 degrees elevation only
    fv = sphere_views(c2w[upper], K[upper], 96)
    vol = TSDFVolume.empty(fv.lo, fv.hi, 16)
    vol.color[:] = torch.tensor([0.0, 1.0, 0.0])  # the fused colour: green everywhere
    vol.color_weight.fill_(1.0)
    uw = unwrap(mesh, 128)
    normals = np.asarray(mesh.vertex_normals)[uw.source]
    baked = bake_texture(uw.verts, normals, uw.faces, uw.uv, fv, vol, 128, depth_tol=0.01)
    fid, bary = rasterize_uv(uw.uv, uw.faces, 128)
    texels, points, _ = texel_points(uw.verts, normals, uw.faces, fid, bary)
    seen = baked.seen.reshape(-1)[texels]
    colours = baked.image.reshape(-1, 3)[texels].astype(int)
    z = points[:, 2] / R
    assert not seen[z < -0.85].any() and seen[z > 0.5].all()
    assert (colours[z < -0.85] == [0, 255, 0]).all()
    top = z > 0.5
    assert np.abs(colours[top] / 255.0 - sphere_color(points[top])).max() < 0.05
    assert 0.5 < baked.seen_fraction < 0.95


def test_dilate_fills_from_the_nearest_texel():
    image = np.zeros((8, 8, 3), np.uint8)
    filled = np.zeros((8, 8), bool)
    image[1, 1], filled[1, 1] = (255, 0, 0), True
    image[6, 6], filled[6, 6] = (0, 0, 255), True
    out = dilate(image, filled)
    assert (out[0, 0] == [255, 0, 0]).all() and (out[7, 7] == [0, 0, 255]).all()
    assert (out[2, 3] == [255, 0, 0]).all() and (out[5, 4] == [0, 0, 255]).all()
    near = dilate(image, filled, pixels=1)
    assert (near[1, 2] == [255, 0, 0]).all() and (near[4, 4] == 0).all()
    assert (image[0, 0] == 0).all()  # input untouched


def test_bad_texture_size(sphere_scene):
    mesh, fv = sphere_scene
    with pytest.raises(InputError, match="--texture-size"):
        texture_mesh(mesh, fv, None, 8)


# ----------------------------------------------------------------------------- export
def _glb_json(path) -> dict:
    raw = path.read_bytes()
    n = struct.unpack("<I", raw[12:16])[0]
    return json.loads(raw[20 : 20 + n])


def _assert_upright_texture(loaded, up_axis: int = 1):
    """The loaded mesh's texture follows :func:`sphere_color` with world +z as file +y."""
    img = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    got = sample_bilinear(img, np.asarray(loaded.visual.uv)) / 255.0
    # file frame -> world (y-up: world z = file y, world y = -file z)
    v = np.asarray(loaded.vertices)
    world = np.stack([v[:, 0], -v[:, 2], v[:, 1]], -1)
    err = np.abs(got - sphere_color(world))
    assert np.percentile(err, 99) < 0.02, err.max()
    # trimesh's own texel lookup (v = 1 is the image's top row, as glTF and OBJ viewers read
    # it) agrees: nearest texel, so a little looser
    image = loaded.visual.material.baseColorTexture
    viewer = trimesh.visual.color.uv_to_color(np.asarray(loaded.visual.uv), image)[:, :3] / 255
    assert np.percentile(np.abs(viewer - sphere_color(world)), 99) < 0.03
    # blue grows with the height along the file's up axis
    assert np.corrcoef(got[:, 2], v[:, up_axis])[0, 1] > 0.99


def test_export_textured_glb_round_trip(tmp_path, baked_sphere):
    textured, baked = baked_sphere
    (path,) = export_mesh(textured, tmp_path / "sphere.glb")
    assert [p.name for p in tmp_path.iterdir()] == ["sphere.glb"]
    gltf = _glb_json(path)
    (material,) = gltf["materials"]
    pbr = material["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0 and pbr["roughnessFactor"] == 1.0
    assert "baseColorTexture" in pbr and gltf["images"][0]["mimeType"] == "image/png"
    (prim,) = gltf["meshes"][0]["primitives"]
    assert "TEXCOORD_0" in prim["attributes"] and "COLOR_0" not in prim["attributes"]
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.faces) == len(textured.faces)
    img = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(img, baked.image)  # lossless PNG
    # UVs survive (glTF flips v on the way out and trimesh flips it back)
    np.testing.assert_allclose(loaded.visual.uv, textured.visual.uv, atol=1e-6)
    ext = loaded.bounds[1] - loaded.bounds[0]
    assert np.allclose(ext, 2 * R, atol=0.01)
    _assert_upright_texture(loaded)


def test_export_textured_obj_round_trip(tmp_path, baked_sphere):
    textured, baked = baked_sphere
    written = export_mesh(textured, tmp_path / "sphere.obj")
    assert [p.name for p in written] == ["sphere.obj", "sphere.mtl", "sphere.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sphere.mtl", "sphere.obj", "sphere.png"]
    assert "map_Kd sphere.png" in (tmp_path / "sphere.mtl").read_text()
    text = (tmp_path / "sphere.obj").read_text()
    assert "mtllib sphere.mtl" in text and "usemtl geolrm" in text
    loaded = trimesh.load(tmp_path / "sphere.obj", force="mesh", process=False)
    assert len(loaded.faces) == len(textured.faces)
    material = loaded.visual.material.to_pbr()
    img = np.asarray(material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(img, baked.image)
    loaded.visual.material = material
    _assert_upright_texture(loaded)


def test_export_textured_ply_is_refused(tmp_path, baked_sphere):
    textured, _ = baked_sphere
    with pytest.raises(InputError, match="vertex colours only"):
        export_mesh(textured, tmp_path / "sphere.ply")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- end to end
def test_gaussians_to_textured_mesh():
    g = sphere_gaussians(3000, radius=R)
    calls = []
    result = gaussians_to_mesh(
        g,
        views=24,
        resolution=32,
        image_size=96,
        faces=1500,
        texture_size=128,
        on_stage=lambda name, total: calls.append((name, total)),
    )
    assert calls == [("render", 24), ("fuse", None), ("extract", None), ("texture", None)]
    assert result.filled is None and 0.5 < result.texture_seen <= 1.0
    mesh = result.mesh
    assert mesh.visual.kind == "texture" and len(mesh.faces) <= 1500
    img = np.asarray(mesh.visual.material.baseColorTexture)
    rgb = sample_bilinear(img, mesh.visual.uv)
    top, bottom = mesh.vertices[:, 2] > 0.15, mesh.vertices[:, 2] < -0.15
    # red top (0.9, 0.15, 0.1), blue bottom (0.1, 0.2, 0.9) from the Gaussians' colours
    np.testing.assert_allclose(rgb[top].mean(0) / 255, [0.9, 0.15, 0.1], atol=0.06)
    np.testing.assert_allclose(rgb[bottom].mean(0) / 255, [0.1, 0.2, 0.9], atol=0.06)
    with pytest.raises(InputError, match="--texture-size"):
        gaussians_to_mesh(g, texture_size=100_000)


def test_sphere_views_helper_is_consistent():
    """The analytic renders put the sphere's colour where its depth says it is."""
    c2w, K = ring_cameras(4, 64)
    fv = sphere_views(c2w, K, 64)
    fg = fv.depth > 0
    assert 0.05 < fg.float().mean() < 0.5
    # the centre pixel sees the point of the sphere nearest to the camera
    eye = c2w[0, :3, 3].double().numpy()
    p = eye / np.linalg.norm(eye) * R
    want = np.round(sphere_color(p[None]) * 255)[0]
    np.testing.assert_allclose(fv.rgb[0, 32, 32].numpy(), want, atol=3)
    assert math.isclose(float(fv.depth[0, 32, 32]), np.linalg.norm(eye) - R, rel_tol=1e-3)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def sphere_ply(tmp_path):
    return save_ply(tmp_path / "model.ply", sphere_gaussians(3000, radius=R))


FAST = ["--resolution", "32", "--views", "16", "--image-size", "96", "--faces", "800"]


@pytest.mark.parametrize("name", ["mesh.glb", "mesh.obj"])
def test_cli_mesh_texture(cli, sphere_ply, tmp_path, name):
    out = tmp_path / "out" / name
    code, _, err = cli("mesh", sphere_ply, "-o", out, "--texture", "--texture-size", "256", *FAST)
    assert code == 0, err
    loaded = trimesh.load(out, force="mesh", process=False)
    material = loaded.visual.material
    material = material.to_pbr() if hasattr(material, "to_pbr") else material
    img = np.asarray(material.baseColorTexture.convert("RGB"))
    assert img.shape == (256, 256, 3)
    rgb = sample_bilinear(img, np.asarray(loaded.visual.uv))
    top = loaded.vertices[:, 1] > 0.15  # red top of the z-up world is up in the y-up file
    assert rgb[top, 0].mean() > 180 and rgb[top, 2].mean() < 60
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == (
        ["mesh.glb"] if name.endswith(".glb") else ["mesh.mtl", "mesh.obj", "mesh.png"]
    )


def test_cli_mesh_texture_refuses_ply(cli, sphere_ply, tmp_path):
    out = tmp_path / "mesh.ply"
    code, _, err = cli("mesh", sphere_ply, "-o", out, "--texture")
    assert code == 2
    assert_one_line_error(err, "vertex colours only", ".glb or .obj")
    assert not out.exists()
    code, _, err = cli("mesh", sphere_ply, "-o", tmp_path / "m.glb", "--texture-size", "8")
    assert code == 2  # click's usage error
    assert "--texture-size" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ply"]


def test_cli_recon_texture_implies_mesh(cli, tmp_path):
    import trimesh

    out = tmp_path / "out"
    fit = ["--method", "optimize", "--iterations", "10", "--resolution", "48", "--no-video"]
    code, _, err = cli(
        "recon", SPOT_TRAIN, *fit, "--texture", "--texture-size", "64",
        "--mesh-resolution", "32", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    mesh = trimesh.load(out / "mesh.glb", force="mesh")
    assert mesh.visual.kind == "texture"
    assert mesh.visual.material.baseColorTexture.size == (64, 64)
