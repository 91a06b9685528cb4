"""`geolrm render`: turntables, frames, given cameras, frames of files, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from PIL import Image

from pipelines.cameras import orbit_cameras
from pipelines.raster import rasterize
from pipelines.render import turntable_cameras
from pipelines.splats.gaussians import Gaussians
from pipelines.splats.ply import load_ply, save_ply


def blob_object(n: int = 400, seed: int = 0) -> Gaussians:
    """An upright 'snowman': two stacked balls of Gaussians, red bottom, blue top (z-up)."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    bottom = torch.arange(n) < n // 2
    means = torch.where(
        bottom[:, None],
        d * 0.25 + torch.tensor([0, 0, -0.15]),
        d * 0.15 + torch.tensor([0, 0, 0.25]),
    )
    colors = torch.where(
        bottom[:, None], torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9])
    )
    return Gaussians(
        means=means,
        scales=torch.full((n, 3), 0.04),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
        opacities=torch.full((n,), 0.8),
        colors=colors,
    )


@pytest.fixture
def model_ply(tmp_path):
    return save_ply(tmp_path / "model.ply", blob_object())


def test_turntable_video(cli, model_ply, tmp_path):
    from pipelines.export.media import read_video

    out = tmp_path / "turn.mp4"
    code, _, err = cli(
        "render", model_ply, "--video", "-o", out, "--frames", "6", "--resolution", "64"
    )
    assert code == 0, err
    frames = read_video(out)
    assert frames.shape == (6, 64, 64, 3)
    # white background at the corners, the red/blue object in the middle, upright (blue on top)
    f = frames[0].astype(float)
    assert f[0, 0].min() > 240
    top, bottom = f[8:28, 24:40], f[36:58, 24:40]
    assert top[..., 2].mean() > top[..., 0].mean() + 40
    assert bottom[..., 0].mean() > bottom[..., 2].mean() + 40
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_images_depth_alpha_sheet_transparent(cli, model_ply, tmp_path):
    out = tmp_path / "renders"
    code, _, err = cli(
        "render", model_ply, "--images", "--depth", "--alpha", "--sheet", "-o", out,
        "--frames", "4", "--resolution", "48", "--background", "transparent", "--distance", "2.5",
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:03d}.png" for i in range(4)]
    rgba = np.asarray(Image.open(out / "images" / "000.png"))
    assert rgba.shape == (48, 48, 4) and rgba[0, 0, 3] == 0 and rgba[24, 24, 3] > 200
    alpha = np.asarray(Image.open(out / "alpha" / "000.png"))
    np.testing.assert_array_equal(alpha, rgba[..., 3])
    depth = np.asarray(Image.open(out / "depth" / "000.png")).astype(np.float64) * 1e-4
    assert depth[0, 0] == 0
    # the object's front surface is about distance - radius(0.25+3 sigma) away at the centre
    assert 2.5 - 0.45 < depth[24, 24] < 2.5
    assert (out / "contact_sheet.png").exists()
    assert not (out / "turntable.mp4").exists()


def test_render_given_cameras_matches_direct_rasterisation(cli, model_ply, tmp_path):
    cams = orbit_cameras(3, elevation_deg=15, radius=2.2, fov_deg=40, size=40)
    frames = []
    for i in range(3):
        frames.append({"file_path": f"views/cam_{i}.png", "transform_matrix": cams.c2w[i].tolist()})
    meta = {"fl_x": float(cams.K[0, 0, 0]), "fl_y": float(cams.K[0, 1, 1]), "cx": 20.0, "cy": 20.0}
    (tmp_path / "cams.json").write_text(json.dumps({**meta, "w": 40, "h": 40, "frames": frames}))
    out = tmp_path / "r"
    code, _, err = cli(
        "render", model_ply, "--cameras", tmp_path / "cams.json", "-o", out, "--background", "black"
    )
    assert code == 0, err
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == ["cam_0.png", "cam_1.png", "cam_2.png"]
    direct = rasterize(load_ply(model_ply).gaussians, cams.c2w, cams.K, 40, 40).rgb
    img = np.asarray(Image.open(out / "images" / "cam_1.png")).astype(np.float64) / 255
    assert np.abs(img - direct[1].numpy()).max() <= 0.5 / 255 + 1e-6


def test_render_cameras_with_scaled_rotations(cli, model_ply, tmp_path):
    """A nerfstudio-processed capture that keeps its world scale (0.21) in the rotation columns
    renders exactly the images of its rigid cameras, with one note line."""
    cams = orbit_cameras(3, elevation_deg=15, radius=2.2, fov_deg=40, size=40)
    scaled = cams.c2w.double().clone()
    scaled[:, :3, :3] *= 0.21
    frames = [
        {"file_path": f"views/cam_{i}.png", "transform_matrix": scaled[i].tolist()}
        for i in range(3)
    ]
    meta = {"fl_x": float(cams.K[0, 0, 0]), "cx": 20.0, "cy": 20.0, "w": 40, "h": 40}
    (tmp_path / "cams.json").write_text(json.dumps({**meta, "frames": frames}))
    out = tmp_path / "r"
    code, _, err = cli(
        "render", model_ply, "--cameras", tmp_path / "cams.json", "-o", out, "--background", "black"
    )
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "uniform scale (0.21)" in notes[0], err
    direct = rasterize(load_ply(model_ply).gaussians, cams.c2w, cams.K, 40, 40).rgb
    img = np.asarray(Image.open(out / "images" / "cam_2.png")).astype(np.float64) / 255
    assert np.abs(img - direct[2].numpy()).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("up", ["-y", "y", "z"])
def test_render_after_ply_round_trip_is_identical(tmp_path, up):
    g = blob_object(n=300, seed=3)
    g.sh_rest = 0.2 * torch.randn(300, 3, 3, generator=torch.Generator().manual_seed(1))
    back = load_ply(save_ply(tmp_path / "m.ply", g, up=up)).gaussians
    cams = turntable_cameras(g, frames=3, resolution=64)
    a = rasterize(g, cams.c2w, cams.K, 64, 64, background=(1.0, 1.0, 1.0))
    b = rasterize(back, cams.c2w, cams.K, 64, 64, background=(1.0, 1.0, 1.0))
    # identical up to float32 rounding of the stored encodings (log scale, logit opacity)
    assert (a.rgb - b.rgb).abs().max() < 2e-6
    assert (a.alpha - b.alpha).abs().max() < 2e-6
    assert (a.depth * a.alpha - b.depth * b.alpha).abs().max() < 2e-5


def test_turntable_fits_object():
    from pipelines.render import object_bounds

    g = blob_object()
    centre, _ = object_bounds(g)
    cams = turntable_cameras(g, frames=4, elevation_deg=20, fov_deg=30, resolution=32)
    rel = cams.c2w[:, :3, 3] - centre
    dist = rel.norm(dim=-1)
    assert dist.std() < 1e-5  # an orbit around the object's centre
    elev = torch.rad2deg(torch.asin(rel[:, 2] / dist))
    torch.testing.assert_close(elev, torch.full((4,), 20.0), atol=1e-3, rtol=0)
    a = rasterize(g, cams.c2w, cams.K, 32, 32).alpha[..., 0]
    # fills the frame but does not touch the border
    assert a[:, 0, :].max() < 0.05 and a[:, -1, :].max() < 0.05
    assert (a > 0.5).float().mean() > 0.15


@pytest.mark.parametrize(
    "make, args, fragment",
    [
        (None, [], "does not exist"),
        (b"not a ply at all", [], "not a PLY"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\nend_header\n0 0 0\n", [], "no 3D Gaussian attributes"),
        ("ok", ["--cameras", "MISSING.json"], "MISSING.json"),
        ("ok", ["--cameras", "BAD.json"], "BAD.json"),
        ("ok", ["--images", "-o", "OUT.mp4"], "folder"),
        ("ok", ["--device", "cuda"], "CUDA"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2(cli, tmp_path, make, args, fragment):
    model = tmp_path / "in.ply"
    if make == "ok":
        save_ply(model, blob_object(n=20))
    elif make is not None:
        model.write_bytes(make)
    (tmp_path / "BAD.json").write_text("{ this is not json")
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("machine has a GPU")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [str(tmp_path / a) if a.isupper() or a.endswith((".json", ".mp4")) else a for a in args]
    code, _, err = cli("render", model, *args, "--frames", "2", "--resolution", "16")
    assert code == 2
    assert_one_line_error(err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_interrupted_render_leaves_no_file(cli, model_ply, tmp_path, monkeypatch):
    import pipelines.render as render_mod

    real = render_mod.render_frames

    def interrupted(*a, **k):
        it = real(*a, **k)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(render_mod, "render_frames", interrupted)
    code, _, err = cli(
        "render", model_ply, "-o", tmp_path / "t.mp4", "--frames", "5", "--resolution", "32"
    )
    assert code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ply"]
