"""Rendering Gaussians along camera paths: turntables fitted to an object, or given cameras.

The pixels come from :func:`pipelines.raster.rasterize`; this module chooses cameras and turns
the renders into 8-bit images (RGB, RGBA, alpha, 16-bit depth) one frame at a time, so long
videos never hold every frame in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.geometry import fit_distance, percentile_box
from pipelines.cameras.orbits import orbit_cameras
from pipelines.defaults import TurntableConfig
from pipelines.device import stage_device
from pipelines.errors import InputError
from pipelines.raster import rasterize
from pipelines.splats.gaussians import Gaussians

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "transparent": (0.0, 0.0, 0.0)}
DEPTH_UNIT = 1e-4
"""16-bit depth PNGs store ``round(z / DEPTH_UNIT)`` (0 = background), as the bundled data."""


def object_bounds(g: Gaussians, min_opacity: float = 0.05) -> tuple[torch.Tensor, float]:
    """Robust bounding sphere of the visible Gaussians.

    Args:
        g: Gaussians.
        min_opacity: ignore fainter Gaussians (floaters hardly show in renders).

    Returns:
        ``(centre [3], radius)``: centre of the 0.5-99.5 percentile box of the means; radius
        = 99.5th percentile distance to it plus three times the median scale.
    """
    if len(g) == 0:
        return torch.zeros(3), 0.5
    keep = g.opacities >= min_opacity
    means = g.means[keep] if keep.sum() >= 8 else g.means
    scales = g.scales[keep] if keep.sum() >= 8 else g.scales
    means, scales = means.detach().float().cpu(), scales.detach().float().cpu()
    _, _, centre, radius = percentile_box(means, 0.5)
    radius += 3 * float(scales.max(-1).values.median())
    return centre, max(radius, 1e-3)


_TURNTABLE = TurntableConfig()


def turntable_cameras(
    g: Gaussians,
    frames: int = _TURNTABLE.frames,
    elevation_deg: float = _TURNTABLE.elevation_deg,
    fov_deg: float = _TURNTABLE.fov_deg,
    resolution: int = _TURNTABLE.resolution,
    distance: float | None = None,
    start_azimuth_deg: float = 0.0,
) -> Cameras:
    """An orbit of ``frames`` cameras around the object (z-up world), looking at its centre.

    ``distance`` None fits the object's bounding sphere into the frame.
    """
    if frames < 1:
        raise InputError("--frames must be at least 1")
    if not 1.0 <= fov_deg <= 170.0:
        raise InputError(f"--fov {fov_deg} is out of range; use 1-170 degrees")
    centre, radius = object_bounds(g)
    if distance is None:
        distance = fit_distance(radius, fov_deg)
    if distance <= 0:
        raise InputError("--distance must be positive")
    cams = orbit_cameras(frames, elevation_deg, distance, fov_deg, resolution, start_azimuth_deg)
    shift = torch.eye(4)
    shift[:3, 3] = centre
    return cams.transformed(shift)


@dataclass
class Frame:
    """One rendered view as numpy arrays.

    Attributes:
        index: position in the camera list.
        rgb: ``[H, W, 3]`` uint8, composited over the background (white when transparent).
        rgba: ``[H, W, 4]`` uint8 straight alpha (only when the background is transparent).
        alpha: ``[H, W]`` uint8.
        depth: ``[H, W]`` uint16, ``round(z / DEPTH_UNIT)``, 0 where alpha < 0.5.
    """

    index: int
    rgb: np.ndarray
    rgba: np.ndarray | None
    alpha: np.ndarray
    depth: np.ndarray


def _to_u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def render_frames(
    g: Gaussians,
    cams: Cameras,
    background: str = "white",
    device: str = "cpu",
    batch: int = 1,
    on_frame: Callable[[], None] | None = None,
) -> Iterator[Frame]:
    """Render ``cams`` one batch at a time and yield 8-bit frames.

    Args:
        g: Gaussians in the cameras' world frame.
        cams: cameras (OpenGL c2w, pixel intrinsics).
        background: ``white``, ``black`` or ``transparent``.
        device: torch device for rasterisation (MPS renders on the CPU, see
            :func:`pipelines.device.stage_device`).
        batch: cameras per rasteriser call.
        on_frame: called after each frame (progress bars).
    """

    device = stage_device(device, "raster")
    if background not in BACKGROUNDS:
        raise InputError(f"unknown background {background!r}; use white, black or transparent")
    bg = torch.tensor(BACKGROUNDS[background], device=device)
    g = g.detach().to(device)
    with torch.no_grad():
        for start in range(0, len(cams), batch):
            idx = list(range(start, min(start + batch, len(cams))))
            out = rasterize(
                g,
                cams.c2w[idx].to(device),
                cams.K[idx].to(device),
                cams.width,
                cams.height,
                background=bg,
            )
            for j, i in enumerate(idx):
                alpha = out.alpha[j, ..., 0]
                rgb = out.rgb[j]
                rgba = None
                if background == "transparent":
                    straight = rgb / alpha.clamp_min(1e-6)[..., None]
                    rgba = _to_u8(torch.cat([straight, alpha[..., None]], -1))
                    rgb = rgb + (1 - alpha[..., None])  # composite on white for RGB outputs
                z = torch.where(alpha > 0.5, out.depth[j, ..., 0], torch.zeros_like(alpha))
                depth = (z / DEPTH_UNIT).round().clamp(0, 65535).to(torch.int32).cpu().numpy()
                yield Frame(i, _to_u8(rgb), rgba, _to_u8(alpha), depth.astype(np.uint16))
                if on_frame is not None:
                    on_frame()


def contact_sheet(images: list[np.ndarray], columns: int = 4, pad: int = 4) -> np.ndarray:
    """Tile equally sized ``[H, W, C]`` uint8 images into one grid image (white padding)."""
    if not images:
        raise ValueError("no images for a contact sheet")
    h, w, c = images[0].shape
    rows = math.ceil(len(images) / columns)
    cols = min(columns, len(images))
    sheet = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, c), 255, np.uint8)
    for k, im in enumerate(images):
        r, q = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        sheet[y : y + h, x : x + w] = im
    return sheet
