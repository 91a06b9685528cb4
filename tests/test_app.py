"""``geolrm app``: the Gradio demo's inputs, session folders and jobs, and both tabs driven in a
real headless Chromium (tests/browser_support.py) with the tests' tiny models."""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from browser_support import browser, object_mask, page, screenshot, wait_for  # noqa: F401
from conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
SPOT = ROOT / "examples" / "spot"
PHOTO = ROOT / "tests" / "fixtures" / "photos" / "Input_2.png"
TINY = ROOT / "tests" / "fixtures" / "geolrm_tiny"

pytest.importorskip("gradio", reason="the app needs gradio: pip install 'geolrm[app]'")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _spot_zip(path: Path, views: list[int]) -> Path:
    """A zip like a user's: transforms.json (frames under train/) and the RGBA views."""
    data = json.loads((SPOT / "transforms_train.json").read_text())
    data["frames"] = [data["frames"][i] for i in views]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("spot/transforms.json", json.dumps(data))
        for f in data["frames"]:
            z.write(SPOT / f["file_path"], "spot/" + f["file_path"])
    return path


# ------------------------------------------------------------------ inputs and folders


def test_unpack_zip_and_loose_files(tmp_path):
    from pipelines.reconstruct import resolve_inputs
    from pipelines.webapp import unpack_views

    tj = unpack_views([_spot_zip(tmp_path / "v.zip", [0, 5, 10])], tmp_path / "a", 2**30)
    cams = resolve_inputs(tj)
    assert len(cams) == 3 and all(p.is_file() for p in cams.image_paths)
    # loose files: frames name train/000.png, the upload is just 000.png
    files = [SPOT / "transforms_train.json", SPOT / "train" / "000.png", SPOT / "train" / "001.png"]
    data = json.loads(files[0].read_text())
    data["frames"] = data["frames"][:2]
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    tj = unpack_views([tmp_path / "transforms.json", *files[1:]], tmp_path / "b", 2**30)
    assert [p.name for p in resolve_inputs(tj).image_paths] == ["000.png", "001.png"]


def test_unpack_refuses_bad_uploads(tmp_path):
    from pipelines.errors import InputError
    from pipelines.webapp import unpack_views

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../outside.txt", "x")
        z.writestr("transforms.json", "{}")
    with pytest.raises(InputError, match="unsafe path"):
        unpack_views([evil], tmp_path / "a", 2**30)
    assert not (tmp_path / "outside.txt").exists()
    with pytest.raises(InputError, match="more than"):
        unpack_views([_spot_zip(tmp_path / "big.zip", [0, 1])], tmp_path / "b", 1000)
    with pytest.raises(InputError, match="no files"):
        unpack_views([], tmp_path / "c", 2**30)
    none = tmp_path / "none.zip"
    with zipfile.ZipFile(none, "w") as z:
        z.writestr("a.png", "x")
    with pytest.raises(InputError, match="no transforms.json"):
        unpack_views([none], tmp_path / "d", 2**30)


def test_sessions_are_swept_and_removed(tmp_path):
    from pipelines.webapp import Sessions

    s = Sessions(None, keep_minutes=1)
    a = s.job_dir("session-a")
    b = s.job_dir("../../session-b")  # a hostile session id stays inside the root
    assert a.parent.parent == s.root and b.parent.parent == s.root
    old = time.time() - 120
    os.utime(a.parent, (old, old))
    assert s.sweep() == [a.parent]
    assert not a.exists() and b.exists()
    s.close()
    assert not s.root.exists()


def test_error_text_is_one_line():
    from pipelines.errors import MissingWeightsError
    from pipelines.webapp import error_text

    assert error_text(MissingWeightsError("no\nweights")) == "error: no weights"
    assert error_text(RuntimeError("boom")).startswith("error: RuntimeError: boom")


def test_cli_bad_options(cli, tmp_path):
    code, _, err = cli("app", "--checkpoint", tmp_path / "none.safetensors")
    assert code == 2
    assert_one_line_error(err, "--checkpoint")


# ------------------------------------------------------------------ in the browser


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    import tiny_multiview as tm

    root = tmp_path_factory.mktemp("tiny")
    return {
        "mv_weights": tm.build_zero123pp(root / "z123"),
        "unet": str(tm.white_unet_file(root / "unet.bin")),
        "checkpoint": TINY / "geolrm_tiny_weights.safetensors",
        "config": ROOT / "examples" / "tiny" / "geolrm_tiny_config.json",
        "size": 112,
        "tile": tm.TILE,
    }


def _serve(cfg):
    """Launch the app in this process on a free local port; returns (url, close)."""
    from geolrm_cli.commands.app import free_port
    from pipelines.webapp import Sessions, build_app

    sessions = Sessions(None, cfg.keep_minutes)
    demo = build_app(cfg, sessions)
    port = free_port("127.0.0.1")
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        allowed_paths=[str(sessions.root)],
    )

    def close():
        demo.close()
        sessions.close()

    return f"http://127.0.0.1:{port}/", close, sessions


@pytest.fixture(scope="module")
def app_url(tiny_models):
    from pipelines.webapp import AppConfig

    cfg = AppConfig(steps=2, video_frames=4, video_resolution=64, **tiny_models)
    url, close, _ = _serve(cfg)
    yield url
    close()


def _status(pg, elem: str, timeout_s: float) -> str:
    """The status line once it reads ``done:`` or ``error:``."""
    loc = pg.locator(f"#{elem}")
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        text = loc.inner_text().strip()
        if text.startswith(("done:", "error:")):
            return text
        time.sleep(0.5)
    pytest.fail(f"no result in #{elem} after {timeout_s:.0f} s: {loc.inner_text()!r}")


def _download_names(pg, elem: str) -> list[str]:
    """The file names the download links point to."""
    links = pg.locator(f"#{elem} a")
    return sorted(Path(links.nth(i).get_attribute("href") or "").name for i in range(links.count()))


@pytest.mark.browser
def test_photo_tab_in_browser(page, app_url):  # noqa: F811
    """Upload a photo, Generate (tiny models): the framed input, the grid, the 3D preview
    (pixels drawn in its canvas) and the download links appear."""
    page.set_viewport_size({"width": 1100, "height": 1400})
    page.goto(app_url)
    page.locator("#photo-input input[type=file]").set_input_files(str(PHOTO))
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Generate").click()
    status = _status(page, "photo-status", 180)
    assert status.startswith("done:"), status
    page.wait_for_function(
        "document.querySelectorAll('#photo-files a').length >= 2", timeout=30_000
    )
    names = _download_names(page, "photo-files")
    assert names == ["model.ply", "model.splat"], names
    assert page.locator("#photo-framed img").count() == 1
    assert page.locator("#photo-grid img").count() == 1

    _wait_preview(page, "photo-model")
    screenshot(page, "app_photo")


def _wait_preview(pg, elem: str) -> np.ndarray:
    """Wait until the Model3D canvas shows splats: besides its background (its most common
    colour) at least 0.5% of its central pixels are something else."""
    canvas = pg.locator(f"#{elem} canvas")
    canvas.wait_for(timeout=30_000)

    def drawn():
        img = screenshot_element(canvas)
        h, w = img.shape[:2]
        mid = img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, 3)
        colours, counts = np.unique(mid, axis=0, return_counts=True)
        bg = tuple(int(c) for c in colours[counts.argmax()])
        return img if object_mask(mid[None], bg, tol=40).mean() > 0.005 else None

    return wait_for(drawn, timeout=60)


def screenshot_element(loc) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(loc.screenshot())).convert("RGB"))


@pytest.mark.browser
def test_posed_tab_optimize_in_browser(page, app_url, tmp_path):  # noqa: F811
    """The posed-views tab: a zip of 4 spot views, --method optimize at 20 iterations and 64 px:
    the downloads and the turntable appear."""
    page.set_viewport_size({"width": 1100, "height": 1200})
    page.goto(app_url)
    page.get_by_role("tab", name="Posed views").click()
    zipped = _spot_zip(tmp_path / "spot.zip", [0, 5, 10, 15])
    page.locator("#posed-input input[type=file]").set_input_files(str(zipped))
    page.locator("#posed-method").get_by_label("optimize").check()
    for elem, value in (("posed-iterations", "20"), ("posed-resolution", "64")):
        box = page.locator(f"#{elem} input[type=number]")
        box.fill(value)
        box.press("Enter")
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Reconstruct").click()
    status = _status(page, "posed-status", 180)
    assert status.startswith("done:") and "optimize" in status, status
    page.wait_for_function(
        "document.querySelectorAll('#posed-files a').length >= 2", timeout=30_000
    )
    names = _download_names(page, "posed-files")
    assert names == ["model.ply", "model.splat"], names
    assert page.locator("#posed-video video").count() == 1
    _wait_preview(page, "posed-model")
    screenshot(page, "app_posed")


@pytest.mark.browser
def test_missing_weights_message_in_browser(page, tmp_path, monkeypatch):  # noqa: F811
    """With no weights anywhere, Generate shows the one-line message with the download
    command, and the page keeps working."""
    from pipelines.webapp import AppConfig

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    url, close, sessions = _serve(AppConfig(steps=2))
    try:
        page.goto(url)
        page.locator("#photo-input input[type=file]").set_input_files(str(PHOTO))
        page.wait_for_timeout(1000)
        page.get_by_role("button", name="Generate").click()
        status = _status(page, "photo-status", 60)
        assert status.startswith("error: model weights"), status
        assert "geolrm weights download zero123pp" in status
        assert "\n" not in status
        assert not any(sessions.root.rglob("model.ply"))
    finally:
        close()
    shutil.rmtree(tmp_path / "empty-cache", ignore_errors=True)


def test_recon_adapter_geolrm_tiny(tmp_path):
    """The posed-views job with GeoLRM (the tiny model) writes what `geolrm recon` writes."""
    from pipelines.splats.ply import load_ply
    from pipelines.webapp import recon_views, write_splat_file

    n, views = recon_views(
        TINY / "tiny_views" / "transforms.json",
        tmp_path / "out",
        method="geolrm",
        checkpoint=TINY / "geolrm_tiny_weights.safetensors",
        config=ROOT / "examples" / "tiny" / "geolrm_tiny_config.json",
        size=112,
        video_frames=2,
        video_resolution=32,
    )
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["cameras.json", "model.ply", "model_frame.json", "turntable.mp4"]
    assert len(load_ply(tmp_path / "out" / "model.ply").gaussians) == n > 0
    assert write_splat_file(tmp_path / "out").stat().st_size == 32 * n


def test_cli_serves_and_stops_on_ctrl_c(tmp_path):
    """The real command in a subprocess: the local URL on stderr, the page served (with the
    two tabs), Ctrl-C stops it with exit code 0 and the session folders go with it."""
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "geolrm_cli.app", "app", "--work-dir", str(work)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with urllib.request.urlopen(url.group(0) + "config", timeout=30) as r:
            config = json.loads(r.read())
        labels = {c.get("props", {}).get("label") for c in config["components"]}
        assert {"Photo", "Posed views"} <= labels
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "app stopped" in err and "Traceback" not in err
    assert work.is_dir() and not any(work.iterdir())
