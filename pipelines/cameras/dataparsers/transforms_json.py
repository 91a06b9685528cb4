"""nerfstudio / NeRF-synthetic / instant-ngp ``transforms.json`` -> :class:`Cameras`.

Conventions: ``transform_matrix`` is an OpenGL camera-to-world (z-up world as written, not
re-oriented or re-centred); intrinsics are pixels (``fl_x, fl_y, cx, cy, w, h``) or
``camera_angle_x`` radians; ``file_path`` is relative to the JSON's folder. The parser applies
one transform, and reports it (a note, and :attr:`ParsedTransforms.rotation_scales`): a
rotation block carrying a uniform scale is divided by it (the camera centre kept). Errors are one line naming the file, the problem and the fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipelines.cameras.cameras import Cameras, PathLike
from pipelines.cameras.geometry import angle_to_focal
from pipelines.errors import note, path_error

__all__ = [
    "IMAGE_EXTENSIONS",
    "ParsedTransforms",
    "load_transforms",
    "parse_transforms",
    "resolve_image",
]

#: Extensions tried, in order, when a ``file_path`` in a transforms.json has none.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".PNG", ".JPG", ".JPEG", ".WEBP")

_RIGID_TOL = 1e-3  # max |R^T R - I| accepted for a camera rotation read from a file


def resolve_image(base: Path, file_path: str) -> Path | None:
    """Find the image a ``file_path`` names, relative to ``base``; ``None`` when absent."""
    candidates = [file_path]
    if "\\" in file_path:
        candidates.append(file_path.replace("\\", "/"))
    for cand in candidates:
        p = Path(cand)
        p = p if p.is_absolute() else base / p
        if p.is_file():
            return p
        for ext in IMAGE_EXTENSIONS:
            q = p.with_name(p.name + ext)
            if q.is_file():
                return q
    return None


def _number(path: Path, where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise path_error(path, f"{where}{key} is {value!r}, not a finite number", "fix the value")
    return float(value)


def _check_pose(path: Path, i: int, raw: Any) -> tuple[np.ndarray, float]:
    """A validated 4x4 pose and the uniform scale found in its rotation (1.0 when rigid).

    A rotation block ``s * R`` (a similarity: some capture tools store their world scale in
    the rotation columns) is accepted and returned as ``R``, the camera centre unchanged;
    shear, mirroring and singular blocks are refused.
    """
    where = f"frame {i} transform_matrix"
    fix = "write a 4x4 OpenGL camera-to-world matrix (rotation columns, then the centre)"
    try:
        m = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise path_error(path, f"{where} is not a matrix of numbers", fix) from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise path_error(path, f"{where} has shape {tuple(m.shape)}, not 4x4", fix)
    if not np.all(np.isfinite(m)):
        raise path_error(path, f"{where} has NaN or infinite entries", fix)
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise path_error(path, f"{where} has bottom row {m[3].tolist()}, not [0, 0, 0, 1]", fix)
    rot = m[:3, :3]
    det = float(np.linalg.det(rot))
    if abs(det) < 1e-6:
        raise path_error(path, f"{where} has a singular rotation (det {det:.3g})", fix)
    if det < 0:
        raise path_error(
            path,
            f"{where} is a reflection (det {det:.3g}), not a rotation",
            "use right-handed OpenGL axes (flip one axis back)",
        )
    dev = float(np.max(np.abs(rot.T @ rot - np.eye(3))))
    if dev <= _RIGID_TOL:
        return m, 1.0  # rigid: kept exactly as written
    scale = det ** (1.0 / 3.0)
    unit = rot / scale
    if float(np.max(np.abs(unit.T @ unit - np.eye(3)))) > _RIGID_TOL:
        raise path_error(
            path,
            f"{where} rotation is not orthonormal (|R^T R - I| = {dev:.3g}; scaled or sheared?)",
            "write rigid poses and keep any world scale out of the rotation",
        )
    m = m.copy()
    m[:3, :3] = unit
    return m, scale


_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2")
_PINHOLE_MODELS = ("PERSPECTIVE", "PINHOLE", "SIMPLE_PINHOLE", "OPENCV", "SIMPLE_RADIAL", "RADIAL")


def _intrinsics(
    path: Path, i: int, top: dict[str, Any], frame: dict[str, Any], size: tuple[int, int] | None
) -> tuple[float, float, float, float, int, int]:
    """``(fx, fy, cx, cy, w, h)`` for one frame; frame keys override top-level ones."""
    where = f"frame {i} "

    def get(key: str) -> Any:
        return frame[key] if key in frame else top.get(key)

    model = get("camera_model")
    if model is not None and str(model).upper() not in _PINHOLE_MODELS:
        raise path_error(
            path,
            f"camera_model {model!r} is not supported (only pinhole: PERSPECTIVE/OPENCV)",
            "undistort/reproject the images to a pinhole model first",
        )
    if get("is_fisheye"):
        raise path_error(path, "fisheye cameras are not supported", "undistort the images first")
    dist = [get(k) for k in _DISTORTION_KEYS]
    params = get("distortion_params")
    if isinstance(params, list):
        dist += params
    if any(isinstance(d, (int, float)) and d != 0 for d in dist):
        raise path_error(
            path,
            f"{where}has nonzero lens distortion; only undistorted pinhole cameras are supported",
            "undistort the images first (e.g. ns-process-data or COLMAP image_undistorter) and "
            "set the distortion coefficients to 0",
        )
    w, h = get("w"), get("h")
    if w is None or h is None:
        if size is None:
            raise path_error(
                path,
                "no image size (w, h) and no image to read it from",
                'add "w" and "h" (pixels) to the file',
            )
        w, h = size
    wh = []
    for key, v in (("w", w), ("h", h)):
        v = _number(path, where, key, v)
        if v <= 0 or v != int(v):
            raise path_error(
                path, f"{where}{key} is {v}, not a positive whole number of pixels", "fix it"
            )
        wh.append(int(v))
    w, h = wh
    fx, fy = get("fl_x"), get("fl_y")
    ax, ay = get("camera_angle_x"), get("camera_angle_y")
    if fx is None and ax is not None:
        ax = _number(path, where, "camera_angle_x", ax)
        if not 0 < ax < math.pi:
            raise path_error(path, f"camera_angle_x {ax} is not in (0, pi) radians", "fix it")
        fx = angle_to_focal(ax, w)
    if fy is None and ay is not None:
        ay = _number(path, where, "camera_angle_y", ay)
        if not 0 < ay < math.pi:
            raise path_error(path, f"camera_angle_y {ay} is not in (0, pi) radians", "fix it")
        fy = angle_to_focal(ay, h)
    if fx is None and fy is None:
        raise path_error(
            path,
            f"{where}has no intrinsics (fl_x/fl_y or camera_angle_x)",
            'add "fl_x", "fl_y", "cx", "cy" in pixels, or "camera_angle_x" in radians',
        )
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    fx, fy = _number(path, where, "fl_x", fx), _number(path, where, "fl_y", fy)
    if fx <= 0 or fy <= 0:
        raise path_error(path, f"{where}focal length must be positive, got {fx}, {fy}", "fix it")
    cx = _number(path, where, "cx", get("cx")) if get("cx") is not None else 0.5 * w
    cy = _number(path, where, "cy", get("cy")) if get("cy") is not None else 0.5 * h
    return fx, fy, cx, cy, w, h


def _image_size(path: Path, image: Path) -> tuple[int, int]:
    try:
        with Image.open(image) as im:
            return im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise path_error(path, f"cannot read image {image} ({e})", "replace the file") from None


@dataclass(frozen=True)
class ParsedTransforms:
    """What :func:`parse_transforms` read.

    Attributes:
        cameras: the frames' cameras, in the file's order and world frame.
        rotation_scales: per frame, the uniform scale divided out of its rotation block (1.0:
            the pose was rigid and is kept exactly as written). This is the only transform the
            parser applies; camera centres are never moved.
    """

    cameras: Cameras
    rotation_scales: tuple[float, ...]


def load_transforms(path: PathLike, require_images: bool = True) -> Cameras:
    """The cameras of a ``transforms.json``: :func:`parse_transforms` (see there) ``.cameras``."""
    return parse_transforms(path, require_images).cameras


def parse_transforms(path: PathLike, require_images: bool = True) -> ParsedTransforms:
    """Read a nerfstudio / NeRF-synthetic / instant-ngp ``transforms.json``.

    * Intrinsics may be top level or per frame (frame keys win): ``fl_x, fl_y, cx, cy, w, h``
      in pixels, or ``camera_angle_x`` (+ optional ``camera_angle_y``) in radians. A missing
      ``fl_y`` equals ``fl_x``; a missing ``cx``/``cy`` is the image centre; a missing ``w``/``h``
      comes from the first image. ``camera_model`` must be pinhole (PERSPECTIVE, OPENCV, ...) and
      every distortion coefficient must be zero.
    * ``transform_matrix`` is an OpenGL camera-to-world (4x4, or 3x4). It is validated (finite,
      bottom row 0 0 0 1, proper rotation within 1e-3) and kept as written (not re-orthonormalised,
      so float32 poses pass through bit-exactly). A rotation block with a uniform scale (``s R``,
      as some nerfstudio-processed captures store) is divided by ``s`` with the camera centre
      kept, one note says so and :attr:`ParsedTransforms.rotation_scales` records it; shear
      and mirroring are refused.
    * ``file_path`` is relative to the JSON's folder (or absolute); without an extension
      (NeRF-synthetic) ``.png``, ``.jpg``, ``.jpeg``, ``.webp`` are tried.
    * Frames keep the file's order. Other keys (``applied_transform``, ``aabb_scale``, ``scale``,
      ``offset``, depth/mask paths) are ignored.

    Args:
        path: the JSON file, or a folder holding ``transforms.json``.
        require_images: every frame must name an existing image. With ``False`` a file of
            cameras only is accepted: ``image_paths`` then holds the paths the frames name
            (which may not exist), or ``None`` when some frame names no file.

    Raises:
        InputError: one line naming the file, the problem and the fix.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "transforms.json").is_file():
            raise path_error(
                path, "folder has no transforms.json", "pass the camera JSON file itself"
            )
        path = path / "transforms.json"
    if not path.is_file():
        raise path_error(path, "camera file not found", "check the path to the transforms.json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise path_error(
            path, "not a text/JSON file", "pass a nerfstudio transforms.json"
        ) from None
    except json.JSONDecodeError as e:
        raise path_error(
            path,
            f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
            "fix the syntax or export the cameras again",
        ) from None
    if not isinstance(meta, dict):
        raise path_error(
            path, "top level is not a JSON object", "use the nerfstudio transforms.json layout"
        )
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise path_error(
            path,
            'no "frames" list (or it is empty)',
            'add a "frames" list with file_path and transform_matrix per view',
        )
    base = path.parent
    images: list[Path | None] = []
    poses = []
    scales: list[float] = []  # every frame's, 1.0 when rigid
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise path_error(path, f"frame {i} is not a JSON object", "fix the frames list")
        if "transform_matrix" not in frame:
            raise path_error(
                path, f"frame {i} has no transform_matrix", "add its 4x4 camera-to-world"
            )
        pose, scale = _check_pose(path, i, frame["transform_matrix"])
        poses.append(pose)
        scales.append(scale)
        fp = frame.get("file_path")
        img = None
        if isinstance(fp, str) and fp:
            img = resolve_image(base, fp)
            if img is None and not require_images:
                img = Path(fp) if Path(fp).is_absolute() else base / fp  # named, not present
            elif img is None:
                raise path_error(
                    path,
                    f"frame {i} image {fp!r} not found (looked in {base})",
                    "file_path is relative to the JSON's folder; fix it or add the image",
                )
        elif require_images:
            raise path_error(
                path, f"frame {i} has no file_path", "add the image path for every frame"
            )
        images.append(img)
    scaled = [s for s in scales if s != 1.0]
    if scaled:
        lo, hi = min(scaled), max(scaled)
        what = f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g} to {hi:.3g}"
        note(
            f"{path}: {len(scaled)} of {len(frames)} transform_matrix rotations carry a uniform "
            f"scale ({what}); removed it from the rotations, camera centres kept"
        )
    first_size = None
    if images[0] is not None and images[0].is_file():
        first_size = _image_size(path, images[0])
    intr = [_intrinsics(path, i, meta, f, first_size) for i, f in enumerate(frames)]
    sizes = {(w, h) for *_, w, h in intr}
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise path_error(
            path,
            f"views have different image sizes ({listed})",
            "all views must share one size; crop/resize the images and their intrinsics",
        )
    w, h = sizes.pop()
    k = torch.zeros(len(frames), 3, 3, dtype=torch.float64)
    for i, (fx, fy, cx, cy, _, _) in enumerate(intr):
        k[i] = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    c2w = torch.from_numpy(np.stack(poses))
    paths = None if any(p is None for p in images) else [p for p in images if p is not None]
    return ParsedTransforms(Cameras(c2w.float(), k.float(), w, h, paths), tuple(scales))
