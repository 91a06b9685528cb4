"""A real headless Chromium for the ``browser`` tests, driven by Playwright's Python API.

Playwright's own browser download cannot work here: the tests use the system's Chromium
(Debian's ``chromium``; ``.ci/run`` installs it) as the executable. WebGL runs on SwiftShader,
Chromium's CPU implementation. Without Playwright or Chromium the tests skip with the reason.

Also: screenshot helpers that read pixels (numpy arrays) and the object masks the tests compare.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = [
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--no-sandbox",  # CI runs as root
    "--disable-dev-shm-usage",
]
SHOTS = (
    Path(os.environ.get("GEOLRM_SCREENSHOTS", "")) if os.environ.get("GEOLRM_SCREENSHOTS") else None
)
"""Set GEOLRM_SCREENSHOTS=folder to keep the tests' screenshots (the README's come from here)."""


def chromium_path() -> str | None:
    """The system Chromium: ``$GEOLRM_CHROMIUM``, else the first of :data:`CHROMIUM_NAMES`."""
    env = os.environ.get("GEOLRM_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


_SHARED: dict = {}
"""The one Playwright + Chromium of the session: test modules import the fixture, so pytest
sees one session fixture per module; all of them share this (a second sync Playwright cannot
start inside the first one's event loop)."""


def _shared_browser():
    if "skip" in _SHARED:
        pytest.skip(_SHARED["skip"])
    if "browser" not in _SHARED:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            _SHARED["skip"] = (
                "browser tests need Playwright: pip install playwright (no browser download)"
            )
            pytest.skip(_SHARED["skip"])
        exe = chromium_path()
        if exe is None:
            _SHARED["skip"] = (
                "browser tests need Chromium: apt-get install chromium (or GEOLRM_CHROMIUM=)"
            )
            pytest.skip(_SHARED["skip"])
        pw = sync_playwright().start()
        _SHARED["playwright"] = pw
        _SHARED["browser"] = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
    return _SHARED["browser"]


def _close_shared() -> None:
    b, pw = _SHARED.pop("browser", None), _SHARED.pop("playwright", None)
    if b is not None:
        b.close()
    if pw is not None:
        pw.stop()


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole session (skips, with the reason, when Playwright
    or Chromium is missing)."""
    yield _shared_browser()
    _close_shared()


@pytest.fixture
def page(browser):
    """A fresh 640x480 page (closed after the test)."""
    context = browser.new_context(viewport={"width": 640, "height": 480})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors  # type: ignore[attr-defined]
    yield pg
    context.close()


def screenshot(page, name: str | None = None) -> np.ndarray:
    """``[H, W, 3]`` uint8 pixels of the page as the browser composited it; with
    GEOLRM_SCREENSHOTS set, also saved there as ``name.png``."""
    from PIL import Image

    png = page.screenshot()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if SHOTS is not None and name:
        SHOTS.mkdir(parents=True, exist_ok=True)
        small = image.copy()
        small.thumbnail((800, 800))  # documentation-sized: at most 800 px, 256 colours
        small.quantize(256).save(SHOTS / f"{name}.png", optimize=True)
    return np.asarray(image)


def wait_for(
    fn: Callable[[], np.ndarray | None], timeout: float = 90.0, every: float = 1.0
) -> np.ndarray:
    """Call ``fn`` until it returns an array (not None); fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        out = fn()
        if out is not None:
            return out
        if time.monotonic() > end:
            pytest.fail(f"the page did not show the expected image within {timeout:.0f} s")
        time.sleep(every)


def object_mask(image: np.ndarray, background: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    """Pixels that differ from the background colour by more than ``tol`` (sum over RGB)."""
    return np.abs(image.astype(int) - np.asarray(background)).sum(-1) > tol


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def corners(image: np.ndarray, size: int = 3) -> list[np.ndarray]:
    """Mean colour of the ``size`` x ``size`` patch at each of the four corners."""
    h, w = image.shape[:2]
    return [
        image[y : y + size, x : x + size].reshape(-1, 3).mean(0)
        for y in (0, h - size)
        for x in (0, w - size)
    ]
