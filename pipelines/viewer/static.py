"""``geolrm view --html``: one self-contained page that shows the Gaussians from ``file://``.

viser's own static export replays a recorded ``.viser`` file through its web client, which is
a bundle of ES modules fetched from a server: it cannot open from ``file://``. The page
written here is self-contained instead: a small WebGL2 splat renderer (``splat_page.html``:
EWA projection of each Gaussian, back-to-front sorted alpha blending, an orbit camera) with
the scene embedded as base64 arrays. The input cameras are drawn as frustum outlines (key
``c`` toggles them). The colours are the degree-0 (view-independent) colours.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from pipelines.cameras.geometry import focal_to_angle
from pipelines.io_utils import write_text_atomic
from pipelines.viewer.scene import FOV_DEG, FRUSTUM_SCALE, ViewScene, splat_arrays

TEMPLATE = Path(__file__).with_name("splat_page.html")


def page_data(scene: ViewScene) -> tuple[dict, bytes]:
    """``(meta, payload)`` embedded in the page: float32 centres ``[N, 3]``, float32 covariance
    upper triangles ``[N, 6]`` (xx xy xz yy yz zz), uint8 RGBA ``[N, 4]``, back to back."""
    a = splat_arrays(scene.gaussians)
    cov = a["covariances"].reshape(-1, 9)[:, [0, 1, 2, 4, 5, 8]]
    rgba = np.concatenate([a["rgbs"], a["opacities"]], 1)
    rgba8 = (rgba * 255).round().clip(0, 255).astype(np.uint8)
    payload = b"".join(
        [
            np.ascontiguousarray(a["centers"], dtype="<f4").tobytes(),
            np.ascontiguousarray(cov, dtype="<f4").tobytes(),
            np.ascontiguousarray(rgba8).tobytes(),
        ]
    )
    position, target, _ = scene.home_camera(FOV_DEG)
    cameras = []
    if scene.cameras is not None:
        cams = scene.cameras
        for i in range(len(cams)):
            cameras.append(
                {
                    "c2w": [round(float(v), 6) for v in cams.c2w[i].reshape(-1).tolist()],
                    "fov": focal_to_angle(float(cams.K[i, 1, 1]), cams.height),
                    "aspect": cams.width / cams.height,
                }
            )
    meta = {
        "count": len(scene.gaussians),
        "fov": float(np.radians(FOV_DEG)),
        "home": {"position": position.tolist(), "target": target.tolist()},
        "cameras": cameras,
        "showCameras": bool(cameras),
        "frustumSize": FRUSTUM_SCALE * scene.radius,
    }
    return meta, payload


def write_html(
    scene: ViewScene, path: str | Path, background: tuple[int, int, int] = (255, 255, 255)
) -> Path:
    """Write the self-contained page for ``scene`` to ``path`` (atomically) and return it.

    Args:
        scene: what to show.
        path: the ``.html`` file.
        background: RGB in [0, 255].
    """
    meta, payload = page_data(scene)
    meta["background"] = [c / 255.0 for c in background]
    g = scene.gaussians
    info = f"{scene.model.name}: {len(g):,} Gaussians"
    page = TEMPLATE.read_text(encoding="utf-8")
    for key, value in (
        ("__TITLE__", html.escape(f"{scene.model.name} - geolrm")),
        ("__BG_CSS__", "rgb({}, {}, {})".format(*(int(c) for c in background))),
        ("__INFO__", html.escape(info)),
        # "</" never appears in JSON numbers/strings written here except inside names
        ("__META__", json.dumps(meta).replace("</", "<\\/")),
        ("__DATA__", base64.b64encode(payload).decode("ascii")),
    ):
        page = page.replace(key, value, 1)
    path = Path(path)
    write_text_atomic(path, page)
    return path
