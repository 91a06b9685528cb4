"""The interactive viewer: a viser server showing a :class:`~pipelines.viewer.scene.ViewScene`.

viser (the nerfstudio ecosystem's web viewer library) does the web side: the page, orbit
controls, the splat renderer, frustums, the mesh and the GUI panel. This module puts the scene
into it and adds geolrm's controls:

* *Mesh* / *Cameras* toggles, the *Background* colour, *View-dependent colour* (spherical
  harmonics of degree > 0: the splat colours are re-evaluated for the camera once it stops
  moving; viser's splats carry one RGB each);
* *Render PNG*: renders the current browser view with geolrm's own rasteriser
  (:func:`pipelines.raster.rasterize`) and saves it (atomically) into the output folder.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.geometry import angle_to_focal, focal_to_angle
from pipelines.errors import require_package
from pipelines.export.media import write_png
from pipelines.raster import rasterize
from pipelines.splats.gaussians import quat_to_matrix
from pipelines.viewer.scene import (
    FOV_DEG,
    FRUSTUM_SCALE,
    ViewScene,
    mesh_glb_to_world,
    rotation_wxyz,
    splat_arrays,
    view_colors,
)

LOCALHOST = "127.0.0.1"
RENDER_MAX_SIDE = 1024
"""Longest side of *Render PNG* images (the browser canvas is scaled down to fit)."""

# OpenCV camera axes (viser's) -> OpenGL camera axes (geolrm's Cameras): flip y and z.
_CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def require_viser() -> None:
    """Raise the one-line :class:`InputError` naming the install command when viser is missing."""
    require_package("viser", "the viewer", "viewer", "viser>=1.1")


def camera_from_viser(
    position: np.ndarray, wxyz: np.ndarray, fov_rad: float, width: int, height: int
):
    """A geolrm :class:`~pipelines.cameras.Cameras` for a viser camera.

    viser cameras follow OpenCV (x right, y down, looking along +z; ``wxyz`` is
    ``R_world_camera``, ``fov`` vertical); geolrm's are OpenGL (looking along -z).
    """

    rot = quat_to_matrix(torch.as_tensor(np.asarray(wxyz, dtype=np.float64))).numpy()
    c2w = np.eye(4)
    c2w[:3, :3] = rot @ _CV_TO_GL
    c2w[:3, 3] = position
    fy = angle_to_focal(fov_rad, height)
    k = np.array([[fy, 0.0, width / 2], [0.0, fy, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(torch.as_tensor(c2w[None]), torch.as_tensor(k[None]), width, height)


def render_view(scene: ViewScene, cams, background: tuple[float, float, float]) -> np.ndarray:
    """``[H, W, 3]`` uint8 render of ``scene``'s Gaussians for one camera (CPU rasteriser)."""

    with torch.no_grad():
        out = rasterize(
            scene.gaussians, cams.c2w, cams.K, cams.width, cams.height, background=background
        )
    return (out.rgb[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def render_size(width: int, height: int, max_side: int = RENDER_MAX_SIDE) -> tuple[int, int]:
    """The browser canvas size scaled down so that its longest side is at most ``max_side``."""
    s = min(1.0, max_side / max(width, height, 1))
    return max(16, round(width * s)), max(16, round(height * s))


class Viewer:
    """A running viser server showing one scene.

    Args:
        scene: what to show.
        host: interface to bind (``127.0.0.1``: this machine only).
        port: TCP port; 0 picks a free one.
        renders: folder for *Render PNG* images.
        background: initial background colour, RGB in [0, 255].
        on_render: called with the path of each saved render.
    """

    def __init__(
        self,
        scene: ViewScene,
        host: str = LOCALHOST,
        port: int = 0,
        renders: Path | None = None,
        background: tuple[int, int, int] = (255, 255, 255),
        on_render: Callable[[Path], None] | None = None,
    ) -> None:
        require_viser()
        import viser

        self.scene = scene
        self.renders = Path(renders) if renders is not None else scene.model.parent
        self.on_render = on_render
        self._count = 0
        self._lock = threading.Lock()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # viser's banner and notes: the CLI prints the URL
            self.server = viser.ViserServer(host=host, port=port, label="geolrm", verbose=False)
        self.server.gui.configure_theme(show_share_button=False)  # no third-party relay
        self.server.scene.set_up_direction("+z")
        self._setup_camera()
        self._add_splats()
        self._mesh = self._add_mesh()
        self._frustums = self._add_cameras()
        self._background = tuple(int(c) for c in background)
        self._set_background(self._background)
        self._sh_thread: threading.Thread | None = None
        self._sh_eye: np.ndarray | None = None
        self._add_gui()

    # -- scene ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The page's address."""
        host = self.server.get_host()
        shown = LOCALHOST if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{self.server.get_port()}/"

    def _setup_camera(self) -> None:
        position, look_at, up = self.scene.home_camera(FOV_DEG)
        cam = self.server.initial_camera
        cam.position = tuple(position)
        cam.look_at = tuple(look_at)
        cam.up = tuple(up)
        cam.fov = np.radians(FOV_DEG)
        cam.near = max(1e-3, 0.01 * self.scene.radius)
        cam.far = 1000.0 * self.scene.radius

    def _add_splats(self) -> None:
        a = splat_arrays(self.scene.gaussians)
        self.splats = self.server.scene.add_gaussian_splats(
            "/gaussians",
            centers=a["centers"],
            covariances=a["covariances"],
            rgbs=a["rgbs"],
            opacities=a["opacities"],
        )

    def _add_mesh(self):
        if self.scene.mesh is None:
            return None
        rot = mesh_glb_to_world()[:3, :3]
        return self.server.scene.add_glb(
            "/mesh", self.scene.mesh.read_bytes(), wxyz=rotation_wxyz(rot), visible=False
        )

    def _add_cameras(self) -> list:
        cams = self.scene.cameras
        if cams is None:
            return []

        frustums = []
        size = FRUSTUM_SCALE * self.scene.radius
        for i in range(len(cams)):
            c2w = cams.c2w[i].double().numpy()
            fov = focal_to_angle(float(cams.K[i, 1, 1]), cams.height)
            image = self.scene.thumbnails[i] if i < len(self.scene.thumbnails) else None
            frustums.append(
                self.server.scene.add_camera_frustum(
                    f"/cameras/{i:03d}",
                    fov=fov,
                    aspect=cams.width / cams.height,
                    scale=size,
                    thickness=0.01 * size,
                    color=(40, 90, 200),
                    image=image,
                    wxyz=rotation_wxyz(c2w[:3, :3] @ _CV_TO_GL),
                    position=c2w[:3, 3],
                )
            )
        return frustums

    def _set_background(self, rgb: tuple[int, int, int]) -> None:
        self._background = tuple(int(c) for c in rgb)
        image = np.empty((4, 4, 3), np.uint8)
        image[:] = self._background
        self.server.scene.set_background_image(image, format="png")

    # -- GUI -----------------------------------------------------------------------------------

    def _add_gui(self) -> None:
        gui = self.server.gui
        g = self.scene.gaussians
        gui.add_markdown(
            f"**{self.scene.model.name}**: {len(g):,} Gaussians, SH degree {g.sh_degree}"
        )
        mesh = gui.add_checkbox("Mesh", False, disabled=self._mesh is None)
        cams = gui.add_checkbox("Cameras", bool(self._frustums), disabled=not self._frustums)
        splats = gui.add_checkbox("Gaussians", True)
        bg = gui.add_rgb("Background", self._background)
        sh = gui.add_checkbox("View-dependent colour", g.sh_degree > 0, disabled=g.sh_degree == 0)
        render = gui.add_button("Render PNG", hint=f"Render this view into {self.renders}/")

        @mesh.on_update
        def _(_event) -> None:
            if self._mesh is not None:
                self._mesh.visible = mesh.value

        @cams.on_update
        def _(_event) -> None:
            for f in self._frustums:
                f.visible = cams.value

        @splats.on_update
        def _(_event) -> None:
            self.splats.visible = splats.value

        @bg.on_update
        def _(_event) -> None:
            self._set_background(bg.value)

        self._sh_enabled = sh
        if g.sh_degree > 0:

            @self.server.on_client_connect
            def _(client) -> None:
                client.camera.on_update(lambda camera: self._camera_moved(camera.position))

        @render.on_click
        def _(event) -> None:
            client = event.client
            if client is None:
                return
            try:
                path = self.render_client(client)
            except Exception as e:  # shown on the page; the server keeps running
                client.add_notification("Render failed", str(e), color="red")
                return
            client.add_notification("Saved", str(path), auto_close_seconds=8.0)

    def _camera_moved(self, eye: np.ndarray) -> None:
        """Re-evaluate the SH colours for ``eye`` once the camera has been still for 0.3 s."""
        if not self._sh_enabled.value:
            return
        self._sh_eye = np.asarray(eye, dtype=np.float64).copy()
        if self._sh_thread is not None and self._sh_thread.is_alive():
            return

        def settle() -> None:

            seen = None
            while seen is None or not np.allclose(seen, self._sh_eye):
                seen = self._sh_eye.copy()
                time.sleep(0.3)
            self.splats.rgbs = view_colors(self.scene.gaussians, seen)

        self._sh_thread = threading.Thread(target=settle, daemon=True)
        self._sh_thread.start()

    # -- rendering -----------------------------------------------------------------------------

    def render_client(self, client) -> Path:
        """Render what ``client`` sees with geolrm's rasteriser; save and return the PNG path."""

        cam = client.camera
        width, height = render_size(cam.image_width, cam.image_height)
        cams = camera_from_viser(cam.position, cam.wxyz, cam.fov, width, height)
        bg = tuple(c / 255.0 for c in self._background)
        image = render_view(self.scene, cams, bg)
        with self._lock:
            self._count += 1
            path = self.renders / f"{self.scene.model.stem}_view_{self._count:03d}.png"
            while path.exists():
                self._count += 1
                path = self.renders / f"{self.scene.model.stem}_view_{self._count:03d}.png"
            write_png(path, image)
        if self.on_render is not None:
            self.on_render(path)
        return path

    def stop(self) -> None:
        """Stop the server (closes the browser connections)."""
        with contextlib.redirect_stdout(io.StringIO()):
            self.server.stop()
