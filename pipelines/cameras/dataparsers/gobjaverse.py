"""G-Objaverse object folders (the official GeoLRM training data) -> :class:`Cameras`.

The layout, as the official loader (``src/datasets/gobjaverse.py``) reads it: one folder per
object, one sub-folder per view ``{i:05d}/`` holding

* ``{i:05d}.png``: the RGBA render (alpha = the mask; the official composites RGB on white
  at load);
* ``{i:05d}.json``: the camera, ``x``, ``y``, ``z`` (the camera's axes in world coordinates)
  and ``origin`` (its centre) of an **OpenCV** camera-to-world (x right, y down, z forward),
  ``x_fov`` and ``y_fov`` in radians;
* ``{i:05d}_nd.exr``: normal and depth; the depth is the channel OpenCV's ``imread`` returns
  last (``A`` of an RGBA file), camera z in world units.

Conventions applied here, as the official code does:

* pose: ``c2w_opengl = c2w_opencv @ diag(1, -1, -1, 1)`` (its "opencv to blender");
* intrinsics: the principal point at the image centre, ``fx`` from ``x_fov`` and the width
  (:func:`~pipelines.cameras.geometry.fov_to_focal`), ``fy`` from ``y_fov`` and the height
  (``x_fov`` when absent). QUIRK: the official builds one normalised focal from ``x_fov`` only
  and ignores ``y_fov``; the two agree for square images with equal fields of view (all of
  G-Objaverse);
* no camera scale or re-centring: G-Objaverse's world already is GeoLRM's model frame (the
  object inside ``[-0.5, 0.5]³``, which the depth test's near bound ``|origin| - sqrt(3)/2``
  assumes), and the official training feeds the cameras as read;
* views: indices ``0 .. ORTH_VIEWS - 1`` (24) are the orbit, from which the official takes
  the four input views ``SELECT_VIEW`` (0, 6, 12, 18: 90° apart) rotated by a random offset;
  its random targets come from ``range(RAND_VIEWS)`` (40) less those four.

Depth (:func:`read_gobjaverse_depth`): values below the near bound (the background) and their
3x3 neighbourhood (``erode_px``; "the edge of the depth map is not reliable") are set to 0, as
the official loader does (which first resizes the EXR to 512 px with area interpolation; the
renders are 512 px already).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipelines.cameras.cameras import Cameras, PathLike
from pipelines.cameras.dataparsers.exr import read_exr
from pipelines.cameras.geometry import angle_to_focal
from pipelines.errors import path_error

__all__ = [
    "NEAR_MARGIN",
    "ORTH_VIEWS",
    "RAND_VIEWS",
    "SELECT_VIEW",
    "GObjaverseObject",
    "is_gobjaverse_object",
    "parse_gobjaverse",
    "read_gobjaverse_depth",
]

#: Views of the orbit the official input views come from (``orth_views``).
ORTH_VIEWS = 24
#: The official input views, 90° apart on the orbit, before the random offset.
SELECT_VIEW = (0, 6, 12, 18)
#: Views the official random targets come from (``rand_views``).
RAND_VIEWS = 40
#: The official near bound is ``|camera centre| - NEAR_MARGIN`` (half the unit cube's diagonal).
NEAR_MARGIN = 0.867
#: OpenCV -> OpenGL camera axes (the official "opencv to blender").
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])

_VIEW = re.compile(r"^\d{5}$")
_RIGID_TOL = 1e-3


@dataclass(frozen=True)
class GObjaverseObject:
    """One G-Objaverse object folder.

    Attributes:
        root: the object's folder.
        cameras: its views in index order (OpenGL c2w, pixel K, the RGBA PNGs as
            ``image_paths``; alpha is the PNG's fourth channel).
        indices: each view's index (its folder name).
        depth_paths: each view's ``_nd.exr``, or None when the object has none.
    """

    root: Path
    cameras: Cameras
    indices: tuple[int, ...]
    depth_paths: tuple[Path, ...] | None

    @property
    def orbit(self) -> tuple[bool, ...]:
        """Per view, whether it is on the orbit the official input views come from
        (index below :data:`ORTH_VIEWS`)."""
        return tuple(i < ORTH_VIEWS for i in self.indices)

    def camera_distances(self) -> torch.Tensor:
        """``[V]`` float64 distance of each camera centre from the origin."""
        return self.cameras.c2w[:, :3, 3].double().norm(dim=-1)


def _view_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and _VIEW.match(p.name))


def is_gobjaverse_object(path: PathLike) -> bool:
    """Whether ``path`` is a folder with at least one ``{i:05d}/{i:05d}.json`` view."""
    root = Path(path)
    return root.is_dir() and any((d / f"{d.name}.json").is_file() for d in _view_dirs(root))


def _vector(path: Path, meta: dict, key: str) -> np.ndarray:
    v = meta.get(key)
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        a = np.zeros(0)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise path_error(path, f'"{key}" is {v!r}, not 3 finite numbers', "fix the camera file")
    return a


def _fov(path: Path, meta: dict, key: str) -> float:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.pi:
        raise path_error(path, f'"{key}" is {v!r}, not an angle in (0, pi) radians', "fix it")
    return float(v)


def _camera(path: Path) -> tuple[np.ndarray, float, float]:
    """OpenGL c2w and the x / y fields of view (radians) of one view's JSON."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise path_error(
            path, f"cannot read the camera ({e})", "write the view's JSON again"
        ) from None
    if not isinstance(meta, dict):
        raise path_error(path, "not a JSON object", "use G-Objaverse's camera layout")
    c2w = np.eye(4)
    for col, key in enumerate(("x", "y", "z", "origin")):
        c2w[:3, col] = _vector(path, meta, key)
    rot = c2w[:3, :3]
    if np.max(np.abs(rot.T @ rot - np.eye(3))) > _RIGID_TOL or np.linalg.det(rot) < 0:
        raise path_error(
            path, "x, y, z are not a right-handed orthonormal frame", "fix the camera file"
        )
    fov_x = _fov(path, meta, "x_fov")
    fov_y = _fov(path, meta, "y_fov") if "y_fov" in meta else fov_x
    return c2w @ CV_TO_GL, fov_x, fov_y


def _png(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            if im.format != "PNG" or im.mode not in ("RGBA", "LA"):
                raise path_error(
                    path, f"the render is {im.format} {im.mode}, not an RGBA PNG", "add alpha"
                )
            return im.size
    except (OSError, UnidentifiedImageError) as e:
        raise path_error(path, f"cannot read the render ({e})", "replace the file") from None


def parse_gobjaverse(path: PathLike, require_depth: bool = False) -> GObjaverseObject:
    """Read one G-Objaverse object folder (see the module's conventions).

    Args:
        path: the object's folder (holding ``00000/``, ``00001/``, ...).
        require_depth: refuse an object without ``_nd.exr`` files.

    Raises:
        InputError: one line naming the folder or file, the problem and the fix (no view
            folders, a view without its PNG or JSON, a bad camera, renders of different
            sizes or without alpha, depth files for only some views).
    """
    root = Path(path)
    if not root.is_dir():
        raise path_error(root, "not a folder", "pass a G-Objaverse object folder")
    dirs = _view_dirs(root)
    if not dirs:
        raise path_error(
            root, "no view folders (00000/, 00001/, ...)", "pass a G-Objaverse object folder"
        )
    poses, fovs, images, depths, sizes = [], [], [], [], []
    for d in dirs:
        png, cam, nd = (d / f"{d.name}{s}" for s in (".png", ".json", "_nd.exr"))
        for f in (png, cam):
            if not f.is_file():
                raise path_error(d, f"view has no {f.name}", "add it or remove the view folder")
        c2w, fx, fy = _camera(cam)
        poses.append(c2w)
        fovs.append((fx, fy))
        images.append(png)
        sizes.append(_png(png))
        depths.append(nd if nd.is_file() else None)
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(set(sizes)))
        raise path_error(root, f"renders have different sizes ({listed})", "render at one size")
    w, h = sizes[0]
    have = [p is not None for p in depths]
    if any(have) and not all(have):
        missing = dirs[have.index(False)].name
        raise path_error(root, f"view {missing} has no {missing}_nd.exr", "add the depth")
    if require_depth and not any(have):
        raise path_error(root, "no _nd.exr depth files", "render the depth too")
    K = torch.zeros(len(dirs), 3, 3, dtype=torch.float64)
    for i, (fx, fy) in enumerate(fovs):
        K[i, 0, 0] = angle_to_focal(fx, w)
        K[i, 1, 1] = angle_to_focal(fy, h)
        K[i, 0, 2], K[i, 1, 2], K[i, 2, 2] = 0.5 * w, 0.5 * h, 1.0
    c2w = torch.from_numpy(np.stack(poses))
    cams = Cameras(c2w.float(), K.float(), w, h, images)
    paths = tuple(p for p in depths if p is not None) if all(have) else None
    return GObjaverseObject(root, cams, tuple(int(d.name) for d in dirs), paths)


def read_gobjaverse_depth(
    path: PathLike, camera_distance: float | None = None, erode_px: int = 1
) -> np.ndarray:
    """The depth of one ``_nd.exr``: ``[H, W]`` float32 camera z, 0 where invalid.

    Args:
        path: the view's ``_nd.exr``.
        camera_distance: the camera centre's distance from the origin; values below
            ``camera_distance - NEAR_MARGIN`` are invalid (the official near test; None: only
            non-positive and non-finite values are).
        erode_px: the invalid pixels' neighbourhood also set to 0 (official: 1, a 3x3
            dilation; 0 = none). Note :func:`pipelines.train.occupancy.depth_points` erodes by
            the same pixel by default; pass 0 to one of them.

    Raises:
        InputError: unreadable, or no depth channel (one line).
    """
    ch = read_exr(path)
    # OpenCV returns an EXR's channels as B, G, R, A: its last is A, else R (else Y / the one)
    name = next((n for n in ("A", "R", "Y") if n in ch), None)
    if name is None:
        if len(ch) != 1:
            raise path_error(path, f"no depth channel among {sorted(ch)}", "store it in A")
        name = next(iter(ch))
    depth = ch[name].astype(np.float32)
    invalid = ~np.isfinite(depth) | (depth <= 0)
    if camera_distance is not None:
        with np.errstate(invalid="ignore"):
            invalid |= depth < camera_distance - NEAR_MARGIN
    if erode_px > 0 and invalid.any():
        from scipy import ndimage  # lazy: reconstruct imports this package

        box = np.ones((2 * erode_px + 1, 2 * erode_px + 1), dtype=bool)
        invalid = ndimage.binary_dilation(invalid, box)  # as cv2.dilate: nothing beyond the border
    depth[invalid] = 0.0
    return depth
