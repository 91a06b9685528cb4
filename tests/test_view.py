"""``geolrm view``: the scene and its frames, the viser viewer, the static page, the command.

The ``browser`` tests open the pages in a real headless Chromium (tests/browser_support.py)
and read the pixels of its screenshots: the object near the centre, the background at the
corners, a different image after an orbit drag, and the object where geolrm's own rasteriser
puts it for the same camera (so the frames are right: upright, not mirrored).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from browser_support import browser, corners, iou, object_mask, page, screenshot, wait_for  # noqa: F401
from conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
SPOT = ROOT / "examples" / "spot"
BG = (40, 60, 90)

viser = pytest.importorskip("viser", reason="the viewer needs viser: pip install 'geolrm[viewer]'")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    """A recon-style output folder: model.ply (header frame -y) and cameras.json (7 views)."""
    from pipelines.cameras.dataparsers import load_transforms

    out = tmp_path_factory.mktemp("view") / "out"
    out.mkdir()
    shutil.copy(SPOT / "spot.ply", out / "model.ply")
    cams = load_transforms(SPOT / "transforms_train.json").subset(list(range(0, 21, 3)))
    tj = cams.to_transforms_json(base_dir=out)
    (out / "cameras.json").write_text(json.dumps(tj))
    return out


@pytest.fixture(scope="module")
def scene():
    from pipelines.viewer import load_scene

    return load_scene(SPOT / "spot.ply")


# ------------------------------------------------------------------ scene and frames


def test_folder_scene_frames(out_dir):
    """A folder's model.ply comes back in the z-up world its header records (on the z-up
    surface points spot.ply was fitted to; the file's own y-down coordinates are not), with
    the cameras of cameras.json and their images as thumbnails."""
    from pipelines.splats.ply import load_ply
    from pipelines.viewer import load_scene

    s = load_scene(out_dir)
    assert s.model == out_dir / "model.ply" and s.mesh is None
    assert len(s.cameras) == 7 and len(s.thumbnails) == 7
    assert all(t is not None and t.shape[2] == 3 and max(t.shape[:2]) == 128 for t in s.thumbnails)
    raw = load_ply(out_dir / "model.ply")
    assert raw.world_to_file[:3, 2].tolist() == [0.0, -1.0, 0.0]  # file is y-down
    torch.testing.assert_close(s.gaussians.means, raw.gaussians.means)
    # z-up: the cameras (elevation 10 deg) sit above the object's centre plane
    assert float(s.cameras.centers[:, 2].min()) > s.centre[2]
    surface = torch.as_tensor(np.load(SPOT / "points.npy")[::10, :3]).double()

    def off_surface(points: torch.Tensor) -> float:
        return float(torch.cdist(points[::40].double(), surface).min(1).values.median())

    assert off_surface(s.gaussians.means) < 0.02
    file_coords = s.gaussians.means @ raw.world_to_file[:3, :3].T.float()
    assert off_surface(file_coords) > 0.06  # three times the fitted offset


def test_scene_errors(tmp_path, out_dir):
    from pipelines.errors import InputError
    from pipelines.viewer import load_scene

    with pytest.raises(InputError, match="no model.ply"):
        load_scene(tmp_path)
    with pytest.raises(InputError, match="not a .glb"):
        load_scene(out_dir, mesh=out_dir / "cameras.json")
    with pytest.raises(InputError, match="no such file"):
        load_scene(out_dir, cameras=tmp_path / "missing.json")


def test_splat_covariances_and_sh_colours(scene):
    """Covariances have the squared scales as eigenvalues; SH colours depend on the view."""
    from pipelines.splats.gaussians import rgb_to_sh0
    from pipelines.viewer.scene import splat_arrays, view_colors

    g = scene.gaussians[:50]
    a = splat_arrays(g)
    eig = np.sort(np.linalg.eigvalsh(a["covariances"].astype(np.float64)), -1)
    want = np.sort(g.scales.double().numpy() ** 2, -1)
    np.testing.assert_allclose(eig, want, rtol=1e-3, atol=1e-9)
    assert np.allclose(view_colors(g, np.array([3.0, 0, 0])), g.colors.clamp(0, 1).numpy())
    rest = torch.zeros(len(g), 3, 3)
    rest[:, 2] = 0.5  # the (l=1, m=1) coefficient, which is proportional to x
    sh = g.with_(sh_rest=rest)
    a_x, a_mx = view_colors(sh, np.array([3.0, 0, 0])), view_colors(sh, np.array([-3.0, 0, 0]))
    assert np.abs(a_x - a_mx).mean() > 0.1
    assert rgb_to_sh0 is not None


def test_mesh_glb_frame_round_trip():
    """A .glb written y-up (pipelines.mesh.export) is turned back to the z-up world."""
    from pipelines.splats.frames import world_to_file
    from pipelines.viewer.scene import mesh_glb_to_world, rotation_wxyz

    m = mesh_glb_to_world() @ world_to_file("y").double().numpy()
    np.testing.assert_allclose(m, np.eye(4), atol=1e-12)
    q = rotation_wxyz(mesh_glb_to_world()[:3, :3])
    np.testing.assert_allclose(np.abs(q), [2**-0.5, 2**-0.5, 0, 0], atol=1e-6)


def test_camera_from_viser_projects_like_opencv():
    """A viser camera (OpenCV axes) on +x looking at the origin, z up: the origin projects to
    the image centre and a point above it (+z) to a row above the centre."""
    from pipelines.cameras import project_points
    from pipelines.splats.gaussians import matrix_to_quat
    from pipelines.viewer.server import camera_from_viser

    # columns: OpenCV camera axes in world: right = +y, down = -z, forward = -x
    r = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    cams = camera_from_viser(np.array([3.0, 0, 0]), matrix_to_quat(r).numpy(), 0.8, 64, 48)
    uv, z = project_points(cams, torch.tensor([[0.0, 0, 0], [0.0, 0, 0.5], [0.0, 0.5, 0]]))
    uv = uv[0]
    np.testing.assert_allclose(uv[0].numpy(), [32.0, 24.0], atol=1e-4)
    assert uv[1, 1] < 24.0  # above
    assert uv[2, 0] > 32.0  # +y is to the right when looking along -x


def test_viewer_frustums_mesh_and_stop(out_dir, tmp_path):
    """The viewer starts on 127.0.0.1 with a free port, puts one frustum per camera at the
    camera's centre looking at the object, the .glb (y-up) turned back to z-up (hidden until
    toggled), and stops."""
    import trimesh

    from pipelines.splats.frames import world_to_file
    from pipelines.splats.gaussians import quat_to_matrix
    from pipelines.viewer import load_scene
    from pipelines.viewer.server import Viewer

    box = trimesh.creation.box((0.2, 0.2, 0.8))  # tall along the world's z
    box.apply_transform(world_to_file("y").double().numpy())  # written y-up, as glTF is
    box.export(tmp_path / "mesh.glb")
    s = load_scene(out_dir, mesh=tmp_path / "mesh.glb")
    v = Viewer(s)
    try:
        assert v._mesh is not None and not v._mesh.visible
        r = quat_to_matrix(torch.as_tensor(v._mesh.wxyz)).numpy()
        tall = r @ np.array([0.0, 0.8, 0.0])  # the file's y extent, back in the world
        np.testing.assert_allclose(tall, [0, 0, 0.8], atol=1e-6)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", v.url) and not v.url.endswith(":0/")
        assert len(v._frustums) == 7
        for f, c in zip(v._frustums, s.cameras.centers, strict=True):
            np.testing.assert_allclose(f.position, c.numpy(), atol=1e-5)
            forward = quat_to_matrix(torch.as_tensor(f.wxyz))[:, 2].numpy()
            to_obj = s.centre - c.numpy()
            assert forward @ to_obj / np.linalg.norm(to_obj) > 0.99
        with urllib.request.urlopen(v.url, timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        v.stop()


def test_static_page_is_self_contained(tmp_path, scene):
    from pipelines.viewer.static import write_html

    path = write_html(scene, tmp_path / "scene.html", BG)
    text = path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched
    meta = json.loads(re.search(r'id="scene-meta"[^>]*>(.*?)</script>', text, re.S).group(1))
    data = base64.b64decode(re.search(r'id="scene-data"[^>]*>(.*?)</script>', text, re.S).group(1))
    n = len(scene.gaussians)
    assert meta["count"] == n and len(data) == n * (12 + 24 + 4)
    centres = np.frombuffer(data[: 12 * n], "<f4").reshape(n, 3)
    np.testing.assert_allclose(centres, scene.gaussians.means.numpy())
    assert not list(tmp_path.glob(".*"))  # written atomically, no leftovers


# ------------------------------------------------------------------ the command


def test_cli_bad_input(cli, tmp_path, out_dir):
    code, _, err = cli("view", tmp_path / "nope.ply")
    assert code == 2
    assert_one_line_error(err, "no such file")
    code, _, err = cli("view", out_dir, "--background", "pinkish")
    assert code == 2
    assert_one_line_error(err, "--background")
    code, _, err = cli("view", out_dir, "--html", tmp_path / "page.txt")
    assert code == 2
    assert_one_line_error(err, ".html")


def test_cli_html(cli, tmp_path, out_dir):
    code, _, err = cli("view", out_dir, "--html", tmp_path / "s.html")
    assert code == 0, err
    assert "done:" in err and (tmp_path / "s.html").stat().st_size > 40 * 20000


def test_cli_server_prints_url_and_stops_on_ctrl_c(out_dir, tmp_path):
    """The real command in a subprocess: a local URL on stderr, the page served, Ctrl-C
    (SIGINT) stops it with exit code 0; --host 0.0.0.0 prints a warning line first."""
    import signal

    cmd = [sys.executable, "-m", "geolrm_cli.app", "view", str(out_dir), "--host", "0.0.0.0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert first.startswith("warning: --host 0.0.0.0"), first
        line = proc.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with urllib.request.urlopen(url.group(0), timeout=20) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "viewer stopped" in err and "Traceback" not in err


# ------------------------------------------------------------------ in the browser


def _compare_region(h: int, w: int) -> np.ndarray:
    """Where the viser page shows only the 3D canvas at 640x480: not the control panel (top
    right), the software-WebGL notice (top left) or the axes gizmo (bottom left)."""
    keep = np.ones((h, w), bool)
    keep[:260, 295:] = False
    keep[:140, :285] = False
    keep[410:, :70] = False
    return keep


def _loaded(pg, name: str, bg):
    """A screenshot once the scene is drawn (the background colour at all four corners and
    object pixels filling the centre), else None."""

    def shot():
        img = screenshot(pg, name)
        h, w = img.shape[:2]
        if any(np.abs(c - bg).max() > 3 for c in corners(img)):
            return None
        centre = object_mask(img[h // 2 - 40 : h // 2 + 40, w // 2 - 40 : w // 2 + 40], bg)
        return img if centre.mean() > 0.5 else None

    return shot


@pytest.mark.browser
def test_viewer_in_browser(page, scene, tmp_path):  # noqa: F811
    """Open the viser page, wait for the splats: the object near the centre, the background
    colour at the corners, the object where geolrm's rasteriser puts it for the same camera;
    an orbit drag changes the image; Render PNG renders what the browser shows."""
    from pipelines.viewer.server import Viewer, render_view

    v = Viewer(scene, background=BG, renders=tmp_path)
    try:
        page.goto(v.url)
        first = wait_for(_loaded(page, "viewer", BG), timeout=90)
        ref = render_view(scene, scene.home_view(640, 480), tuple(c / 255 for c in BG))
        keep = _compare_region(480, 640)
        overlap = iou(object_mask(first, BG) & keep, object_mask(ref, BG) & keep)
        assert overlap > 0.85, overlap

        page.mouse.move(320, 300)
        page.mouse.down()
        page.mouse.move(420, 280, steps=8)
        page.mouse.up()
        page.wait_for_timeout(1500)
        moved = screenshot(page, "viewer_orbit")
        changed = np.abs(moved.astype(int) - first.astype(int)).sum(-1) > 60
        assert (changed & keep).mean() > 0.03
        assert object_mask(moved[200:280, 280:360], BG).mean() > 0.5

        page.get_by_role("button", name="Render PNG").click()
        # the finished file only (atomic writes stage into a hidden ".NAME.*.part.png" first)
        pngs = wait_for(lambda: sorted(tmp_path.glob("[!.]*.png")) or None, timeout=60)
        from PIL import Image

        rendered = np.asarray(Image.open(pngs[0]).convert("RGB"))
        assert rendered.shape == moved.shape
        overlap = iou(object_mask(moved, BG) & keep, object_mask(rendered, BG) & keep)
        assert overlap > 0.85, overlap
        assert not page.errors
    finally:
        v.stop()


@pytest.mark.browser
def test_static_page_in_browser(page, out_dir, tmp_path):  # noqa: F811
    """The --html page from file:// (no server): the same checks, frustum outlines on."""
    from pipelines.viewer import load_scene
    from pipelines.viewer.server import render_view
    from pipelines.viewer.static import write_html

    s = load_scene(out_dir)
    path = write_html(s, tmp_path / "scene.html", BG)
    page.goto(path.as_uri())
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    first = wait_for(_loaded(page, "static", BG), timeout=30)
    ref = render_view(s, s.home_view(640, 480), tuple(c / 255 for c in BG))
    keep = np.ones((480, 640), bool)
    keep[440:] = False  # the caption line
    overlap = iou(object_mask(first, BG) & keep, object_mask(ref, BG) & keep)
    assert overlap > 0.9, overlap
    page.mouse.move(320, 240)
    page.mouse.down()
    page.mouse.move(400, 220, steps=6)
    page.mouse.up()
    page.wait_for_timeout(500)
    moved = screenshot(page, "static_orbit")
    assert (np.abs(moved.astype(int) - first.astype(int)).sum(-1) > 60).mean() > 0.03
    assert not page.errors


def test_viewer_view_dependent_colour(scene):
    """With SH degree > 0 the splat colours follow the camera once it stops moving."""
    from pipelines.viewer.scene import view_colors
    from pipelines.viewer.server import Viewer

    g = scene.gaussians[:200]
    rest = torch.zeros(len(g), 3, 3)
    rest[:, 2] = 0.5  # colour grows along +x
    s = dataclasses.replace(scene, gaussians=g.with_(sh_rest=rest))
    v = Viewer(s)
    try:
        assert v._sh_enabled.value
        before = np.asarray(v.splats.rgbs, dtype=np.float32) / 255  # uint8 on the wire
        eye = np.array([-3.0, 0.0, 0.5])
        v._camera_moved(eye)
        v._sh_thread.join(timeout=10)
        after = np.asarray(v.splats.rgbs, dtype=np.float32) / 255
        want = view_colors(s.gaussians, eye)
        assert np.abs(after - want).max() < 1 / 255
        assert np.abs(after - before).mean() > 0.05
    finally:
        v.stop()
