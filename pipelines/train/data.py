"""Training data: object folders -> samples of input and target views, occupancy, sampling order.

An *object* is a folder in one of two layouts (:func:`find_objects`):

* **transforms**: nerfstudio ``transforms_train.json`` / ``transforms_test.json`` (or one
  ``transforms.json``), RGBA images, optional 16-bit depth PNGs (the frames' ``depth_file_path``,
  metres = value x ``depth_unit_scale_factor``, nerfstudio's default 1e-3), optional
  ``points.npy`` or ``mesh.glb|obj|ply`` beside them (the layout of the shared objects);
* **gobjaverse**: the official training data's folders
  (:mod:`pipelines.cameras.dataparsers.gobjaverse`), depth in ``_nd.exr``.

A sample (:class:`TrainDataset`, keyed by :data:`SampleKey`) draws ``n_inputs`` input views and
``counts.targets`` other views of the training split. Validation samples (``targets="held_out"``)
draw their targets from the object's held-out split instead (:attr:`TrainObject.held_out`: the
views of ``transforms_test.json`` beside the training file, which training never reads), their
inputs still from the training split; objects without one (G-Objaverse, whose views all train:
hold out whole objects there; a transforms object without ``transforms_test.json``) keep the
training split's other views as targets. Frames: the input cameras go through
:func:`pipelines.scene.to_model_frame` exactly as ``geolrm recon`` does, so the network sees the
frames it sees at inference; the target cameras, the depth (times the similarity's scale) and
the occupancy points follow the same ``M`` (the held-out split shares the files' world frame).
Images: inputs are composited on white, padded square and resized bicubic
(:func:`pipelines.cameras.images.load_views`, bit for bit recon's input); targets keep straight
colour and alpha (from the same read: the white composite less ``1 - alpha`` is the resized
premultiplied colour, resizing being linear, divided by alpha; so that compositing them on any
background is resizing the composite, up to the clamps of bicubic ringing at the silhouette);
depth is padded with 0 and resized by nearest neighbour ("do not resize depth with bilinear",
the official loader), sampled at the pixel centres (``nearest-exact``; OpenCV's
``INTER_NEAREST``, which the official uses, samples half a pixel off).

Randomness: a sample is a pure function of ``(seed, sample_id)`` and the object (its own
``torch.Generator``), so it does not depend on the worker or the order; :class:`StepSampler`
makes batch ``i`` a pure function of ``(seed, i)``, which makes a resumed or a DDP run draw the
samples of a single uninterrupted one.

Occupancy (the proposal stage's target): from the object's surface (``points.npy``, or points
sampled on its mesh; filled where closed, :class:`~pipelines.train.occupancy.SolidGrid`), else
from the depth maps of all its views, fused (the official ``create_occ_gts.py``: a shell). The
frame-independent part (world points, the solid) is computed once and cached beside the object
in ``.geolrm/occupancy-<key>.npz``, the key hashing the input files' path, size and mtime and
the parameters; each sample bins it in its own model frame.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipelines.cameras.cameras import Cameras, PathLike
from pipelines.cameras.dataparsers import (
    is_gobjaverse_object,
    parse_gobjaverse,
    parse_transforms,
    read_gobjaverse_depth,
)
from pipelines.cameras.images import WHITE, image_has_alpha, load_views_and_masks
from pipelines.cameras.similarity import decompose_similarity
from pipelines.defaults import MAX_VIEWS
from pipelines.errors import InputError, note, path_error
from pipelines.io_utils import atomic_path
from pipelines.reconstruct import check_size
from pipelines.scene import is_identity, to_model_frame
from pipelines.train.occupancy import EDGE_ERODE_PX, SolidGrid, depth_points, occupancy_grid

__all__ = [
    "CACHE_DIR",
    "DEPTH_UNIT_DEFAULT",
    "SURFACE_POINTS",
    "TARGET_SPLITS",
    "VIEW_CACHE_BYTES",
    "OccupancySource",
    "SampleKey",
    "StepSampler",
    "TrainDataset",
    "TrainObject",
    "ViewCounts",
    "ViewSplit",
    "find_objects",
    "object_occupancy",
]

#: A sample: ``(object_index, n_inputs, sample_id)``.
SampleKey = tuple[int, int, int]

#: Folder beside an object's files holding geolrm's caches.
CACHE_DIR = ".geolrm"
#: nerfstudio's default ``depth_unit_scale_factor`` (millimetres), used when a file names none.
DEPTH_UNIT_DEFAULT = 1e-3
#: Surface samples an object may carry beside its views; else the first ``mesh.*``.
SURFACE_POINTS = "points.npy"
SURFACE_MESHES = ("mesh.glb", "mesh.obj", "mesh.ply")
#: Points sampled on a mesh for the occupancy (``points.npy`` of the shared objects has 100k).
MESH_SAMPLES = 100_000
#: Decoded, resized views kept in memory per process (least recently used dropped first).
VIEW_CACHE_BYTES = 1 << 30
#: Fused depth points are merged per cell of ``extent / (DEPTH_MERGE * grid)`` (keeps the cache
#: small; a quarter of an occupancy cell for an object filling the model cube).
DEPTH_MERGE = 4
#: Grids of other frames than the object's own kept per process (bit-packed, 256 KiB each at
#: 128³; the own frame's grid is part of the cache).
GRID_MEMO = 256
#: Bump to invalidate every cache file written by an older layout.
_CACHE_VERSION = 2
# independent random streams (a tag each) under one user seed
_SAMPLE, _N_INPUTS, _EPOCH = 0, 1, 2
#: Where a sample's targets come from (:class:`TrainDataset`'s ``targets``).
TARGET_SPLITS = ("train", "held_out")


@dataclass(frozen=True)
class ViewCounts:
    """Views per sample.

    Attributes:
        inputs: ``(min, max)`` input views per sample, inclusive (the paper's dynamic-view
            training: 1-7).
        targets: target (rendered, supervised) views per sample.
    """

    inputs: tuple[int, int] = (1, 7)
    targets: int = 4

    def __post_init__(self) -> None:
        lo, hi = self.inputs
        if not 1 <= lo <= hi <= MAX_VIEWS:
            raise InputError(
                f"input views {lo}-{hi}: need 1 <= min <= max <= {MAX_VIEWS}; e.g. --views-in 1-7"
            )
        if self.targets < 1:
            raise InputError(f"target views {self.targets}: need at least 1; e.g. --views-out 4")


@dataclass(frozen=True)
class ViewSplit:
    """One split of an object's views (what loading a view needs).

    Attributes:
        cameras: the views, in the world frame of the files, ``image_paths`` set.
        depth_paths: per view, a 16-bit depth PNG (``depth_scale``) or a G-Objaverse
            ``_nd.exr``; None without depth.
        depth_scale: metres per PNG unit (the transforms' ``depth_unit_scale_factor``); None for
            EXR depth (already metres) or without depth.
    """

    cameras: Cameras
    depth_paths: list[Path] | None
    depth_scale: float | None


@dataclass
class TrainObject:
    """One usable object (found by :func:`find_objects`).

    Attributes:
        name: the folder's name (made unique with ``-2``, ``-3``, ... among the objects found).
        root: the object's folder.
        cameras: all views of the split read (the training split unless ``find_objects`` was
            asked for ``"test"``), in the world frame of the files, ``image_paths`` set.
        depth_paths: per view, a 16-bit depth PNG (``depth_scale``) or a G-Objaverse
            ``_nd.exr``; None without depth.
        depth_scale: metres per PNG unit (the transforms' ``depth_unit_scale_factor``); None for
            EXR depth (already metres) or without depth.
        surface: ``points.npy`` or a mesh file for the solid occupancy; None without.
        layout: ``"transforms"`` or ``"gobjaverse"``.
        held_out: the views held out of training (``transforms_test.json`` beside the training
            file; its depth when every frame names an existing file, else None), the targets of
            validation samples; None without (G-Objaverse, no ``transforms_test.json``, or the
            object was read as its test split).
    """

    name: str
    root: Path
    cameras: Cameras
    depth_paths: list[Path] | None
    depth_scale: float | None
    surface: Path | None
    layout: str
    held_out: ViewSplit | None = None

    def split(self, which: str) -> ViewSplit:
        """The views of ``"train"`` (the split read: :attr:`cameras` and its depth) or
        ``"held_out"`` (:attr:`held_out`, which must exist)."""
        if which == "train":
            return ViewSplit(self.cameras, self.depth_paths, self.depth_scale)
        if which == "held_out" and self.held_out is not None:
            return self.held_out
        raise ValueError(f"{self.name} has no {which!r} split")


# -- finding objects ---------------------------------------------------------------------------


def _transforms_file(root: Path, split: str) -> Path | None:
    names = ("transforms_train.json", "transforms.json") if split == "train" else ()
    names = ("transforms_test.json",) if split == "test" else names
    return next((root / n for n in names if (root / n).is_file()), None)


def _is_object(root: Path) -> bool:
    return any(
        (root / n).is_file()
        for n in ("transforms_train.json", "transforms.json", "transforms_test.json")
    ) or is_gobjaverse_object(root)


def _surface(root: Path) -> Path | None:
    return next((root / n for n in (SURFACE_POINTS, *SURFACE_MESHES) if (root / n).is_file()), None)


def _check_images(cams: Cameras) -> None:
    """Every image readable, with alpha, of one size matching the cameras' aspect (as
    :func:`~pipelines.cameras.images.load_views` accepts); a one-line InputError otherwise."""
    assert cams.image_paths is not None
    first = None
    for p in cams.image_paths:
        try:
            with Image.open(p) as im:
                size, alpha = im.size, image_has_alpha(im)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise path_error(p, f"cannot read image ({e})", "replace the file") from None
        if first is None:
            first = size
            w, h = size
            if abs(w / h - cams.width / cams.height) * max(w, h) > 1.0:
                raise path_error(
                    p,
                    f"image is {w}x{h} but its camera says {cams.width}x{cams.height}",
                    "fix w/h in the camera file or use the original images",
                )
        elif size != first:
            raise path_error(
                p,
                f"image is {size[0]}x{size[1]} but {cams.image_paths[0].name} is "
                f"{first[0]}x{first[1]}",
                "all views must share one image size",
            )
        if not alpha:
            raise path_error(
                p, "the image has no alpha channel", "give RGBA views with a transparent background"
            )


def _transforms_depth(path: Path) -> tuple[list[Path] | None, float | None]:
    """The frames' ``depth_file_path`` (all or none, existing) and the depth unit."""
    meta = json.loads(path.read_text(encoding="utf-8"))
    named = [f.get("depth_file_path") for f in meta["frames"]]
    if not any(named):
        return None, None
    if not all(isinstance(n, str) and n for n in named):
        raise path_error(path, "only some frames have a depth_file_path", "give all or none")
    paths = [Path(n) if Path(n).is_absolute() else path.parent / n for n in named]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise path_error(missing, "depth image not found", "fix depth_file_path or add the file")
    scale = meta.get("depth_unit_scale_factor", DEPTH_UNIT_DEFAULT)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise path_error(path, f"depth_unit_scale_factor is {scale!r}", "give a positive number")
    return paths, float(scale)


def _read_held_out(root: Path, skip: Callable[[Path, str], None]) -> ViewSplit | None:
    """The views of ``root/transforms_test.json`` (None without the file). A held-out split
    that cannot be used is reported (``skip``) and dropped: the object still trains and is
    validated on its training split; depth that cannot be used is reported and dropped: its
    views are validated without the depth term."""
    path = _transforms_file(root, "test")
    if path is None:
        return None
    try:
        cams = parse_transforms(path).cameras
        _check_images(cams)
    except InputError as e:
        skip(path, f"held-out views unused, validation targets are training views ({e})")
        return None
    try:
        depth, scale = _transforms_depth(path)
    except InputError as e:
        skip(path, f"held-out depth unused, those views are validated without it ({e})")
        depth, scale = None, None
    return ViewSplit(cams, depth, scale)


def _read_object(root: Path, split: str, skip: Callable[[Path, str], None]) -> TrainObject:
    """One object folder -> :class:`TrainObject` (InputError: why it is unusable); with
    ``split="train"`` its held-out split too (:func:`_read_held_out`)."""
    if is_gobjaverse_object(root):
        g = parse_gobjaverse(root)
        depth = None if g.depth_paths is None else list(g.depth_paths)
        return TrainObject(root.name, root, g.cameras, depth, None, _surface(root), "gobjaverse")
    path = _transforms_file(root, split)
    if path is None:
        want = (
            "transforms_train.json or transforms.json"
            if split == "train"
            else ("transforms_test.json")
        )
        raise path_error(root, f"no {want} (no cameras)", "add the cameras of its views")
    cams = parse_transforms(path).cameras
    _check_images(cams)
    depth, scale = _transforms_depth(path)
    held_out = _read_held_out(root, skip) if split == "train" else None
    return TrainObject(root.name, root, cams, depth, scale, _surface(root), "transforms", held_out)


def _default_skip(path: Path, reason: str) -> None:
    note(f"skipped {path}: {reason}")


def find_objects(
    paths: Sequence[PathLike],
    split: str = "train",
    on_skip: Callable[[Path, str], None] | None = None,
) -> list[TrainObject]:
    """The usable objects under ``paths``.

    Args:
        paths: object folders, folders of object folders (hidden ones ignored), or an object's
            transforms JSON.
        split: ``"train"`` reads ``transforms_train.json`` (else ``transforms.json``) and, as
            :attr:`TrainObject.held_out`, ``transforms_test.json`` when present; ``"test"``
            reads ``transforms_test.json`` (no held-out split); a G-Objaverse object gives all
            its views to both (hold out whole objects there).
        on_skip: called ``(path, one-line reason)`` for each unusable object or empty folder
            (no cameras, images not matching them, views without alpha, unreadable files), and
            for a held-out split or its depth that cannot be used (dropped, the object kept);
            default: a :class:`~pipelines.errors.Note`.

    Raises:
        InputError: nothing usable (the message names the paths and the fix).
    """
    if split not in ("train", "test"):
        raise InputError(f'split {split!r}: use "train" or "test"')
    skip = on_skip or _default_skip
    objects: list[TrainObject] = []
    for given in paths:
        p = Path(given)
        if p.is_file() and p.suffix == ".json":
            p = p.parent
        if not p.is_dir():
            skip(p, "not found (give an object folder or a folder of objects)")
            continue
        roots = (
            [p]
            if _is_object(p)
            else sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
        )
        if not roots:
            skip(p, "empty folder, no objects in it")
        for root in roots:
            try:
                objects.append(_read_object(root, split, skip))
            except InputError as e:
                skip(root, str(e))
    if not objects:
        listed = ", ".join(str(p) for p in paths) or "(no paths)"
        raise InputError(
            f"no usable training objects in {listed}; give folders holding RGBA views with "
            f"cameras (transforms_{split}.json or transforms.json, or G-Objaverse view folders)"
        )
    seen: dict[str, int] = {}
    for obj in objects:
        n = seen.get(obj.name, 0) + 1
        seen[obj.name] = n
        if n > 1:
            obj.name = f"{obj.name}-{n}"
    return objects


# -- depth -------------------------------------------------------------------------------------


def _read_depth(views: ViewSplit, view: int, erode_px: int) -> np.ndarray:
    """``[H, W]`` float32 camera z in the object's world units (0 = none) of one view."""
    assert views.depth_paths is not None
    path = views.depth_paths[view]
    if views.depth_scale is None:  # G-Objaverse: the official near test and edge erosion
        dist = float(views.cameras.c2w[view, :3, 3].double().norm())
        return read_gobjaverse_depth(path, dist, erode_px=erode_px)
    try:
        with Image.open(path) as im:
            raw = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise path_error(path, f"cannot read depth ({e})", "replace the file") from None
    if raw.ndim != 2:
        raise path_error(path, f"depth has {raw.shape[-1]} channels, not 1", "write 16-bit gray")
    return (raw.astype(np.float64) * views.depth_scale).astype(np.float32)


def _resize_depth(depth: np.ndarray, size: int) -> torch.Tensor:
    """``[H, W]`` -> ``[1, S, S]``: padded square with 0 (as the images are centred), nearest
    neighbour at the pixel centres."""
    h, w = depth.shape
    side = max(h, w)
    canvas = np.zeros((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = depth
    x = torch.from_numpy(canvas)[None, None]
    if side != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="nearest-exact")
    return x[0]


# -- occupancy ---------------------------------------------------------------------------------


@dataclass
class OccupancySource:
    """The frame-independent occupancy of one object.

    Attributes:
        points: ``[M, 3]`` float32 world points on the surface (the fused depth, or the surface
            samples).
        solid: what the surface encloses, or None (the depth shell, or an open surface).
        source: ``"surface"`` or ``"depth"``.
        grid: the ``[G, G, G]`` grid binned in the object's own frame (the model frame when
            ``M`` is the identity: the official rigs, G-Objaverse), bit-packed
            (``np.packbits``).
    """

    points: np.ndarray
    solid: SolidGrid | None
    source: str
    grid: np.ndarray

    def occupancy(self, size: int, to_model: torch.Tensor | None = None) -> torch.Tensor:
        """``[size, size, size]`` bool grid in the frame ``to_model`` maps to (the stored one
        when it is None or the identity)."""
        if to_model is None or is_identity(to_model):
            bits = np.unpackbits(self.grid, count=size**3).reshape(size, size, size)
            return torch.from_numpy(bits.astype(bool))
        pts = torch.from_numpy(self.points).double()
        return occupancy_grid(pts, size, to_model=to_model, solid=self.solid)


def _cache_inputs(obj: TrainObject) -> tuple[str, list[Path]]:
    if obj.surface is not None:
        return "surface", [obj.surface]
    if obj.depth_paths is not None:
        return "depth", [*obj.depth_paths, *_camera_files(obj)]
    raise path_error(
        obj.root,
        "no depth maps and no points.npy / mesh for the occupancy",
        "add one, or train without the proposal stage",
    )


def _camera_files(obj: TrainObject) -> list[Path]:
    if obj.layout == "gobjaverse":
        return [p.with_suffix(".json") for p in obj.cameras.image_paths or []]
    return sorted(obj.root.glob("transforms*.json"))


def _cache_key(obj: TrainObject, source: str, files: list[Path], grid: int) -> str:
    stats = []
    for f in files:
        st = f.stat()
        stats.append([os.path.relpath(f, obj.root), st.st_size, st.st_mtime_ns])
    params = {
        "version": _CACHE_VERSION,
        "source": source,
        "grid": grid,
        "erode": EDGE_ERODE_PX,
        "merge": DEPTH_MERGE,
        "mesh_samples": MESH_SAMPLES,
    }
    blob = json.dumps([params, stats], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _merge_points(points: np.ndarray, grid: int) -> np.ndarray:
    """One point (the mean) per cell of ``extent / (DEPTH_MERGE * grid)``."""
    if len(points) == 0:
        return points.astype(np.float32)
    lo = points.min(0)
    cell = max(float(np.ptp(points, axis=0).max()), 1e-12) / (DEPTH_MERGE * grid)
    idx = np.floor((points - lo) / cell).astype(np.int64)
    dims = idx.max(0) + 1
    flat = (idx[:, 0] * dims[1] + idx[:, 1]) * dims[2] + idx[:, 2]
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, points)
    return (sums / counts[:, None]).astype(np.float32)


def _surface_points(path: Path) -> np.ndarray:
    if path.name == SURFACE_POINTS:
        try:
            pts = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise path_error(path, f"cannot read ({e})", "write an [N, 3] float array") from None
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 2 or not np.isfinite(pts).all():
            raise path_error(path, f"shape {pts.shape}, not finite [N, 3]", "fix the points")
        return pts.astype(np.float64)
    from pipelines.evaluate import load_mesh, sample_mesh_points  # trimesh, only for meshes

    return sample_mesh_points(load_mesh(path), MESH_SAMPLES, seed=0)


def _compute_occupancy(obj: TrainObject, source: str, grid: int) -> OccupancySource:
    if source == "surface":
        assert obj.surface is not None
        pts = _surface_points(obj.surface).astype(np.float32)
        solid = SolidGrid.from_surface(torch.from_numpy(pts).double())
        return _with_grid(pts, solid, source, grid)
    views = obj.split("train")
    cams = views.cameras
    parts = []
    for v in range(len(cams)):
        # PNG depth: the official 3x3 edge erosion in depth_points; EXR: in its reader
        exr = views.depth_scale is None
        d = torch.from_numpy(_read_depth(views, v, erode_px=EDGE_ERODE_PX if exr else 0))
        h, w = d.shape
        K = cams.resized(w, h).K[v : v + 1]  # depth maps may be stored at another size
        erode = 0 if exr else EDGE_ERODE_PX
        parts.append(depth_points(d[None], cams.c2w[v : v + 1], K, erode_px=erode).numpy())
    return _with_grid(_merge_points(np.concatenate(parts), grid), None, source, grid)


def _with_grid(
    points: np.ndarray, solid: SolidGrid | None, source: str, grid: int
) -> OccupancySource:
    occ = occupancy_grid(torch.from_numpy(points).double(), grid, solid=solid)
    return OccupancySource(points, solid, source, np.packbits(occ.numpy()))


def _save_occupancy(path: Path, occ: OccupancySource) -> None:
    arrays = {"points": occ.points, "source": np.array(occ.source), "grid": occ.grid}
    if occ.solid is not None:
        arrays.update(
            inside=occ.solid.inside, origin=occ.solid.origin, cell=np.array(occ.solid.cell)
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    for old in path.parent.glob("occupancy-*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def _load_occupancy(path: Path) -> OccupancySource | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            solid = None
            if "inside" in z:
                solid = SolidGrid(z["inside"], z["origin"], float(z["cell"]))
            return OccupancySource(z["points"], solid, str(z["source"]), z["grid"])
    except (OSError, ValueError, KeyError):
        return None  # unreadable or half-copied: computed again


_warned_unwritable: set[Path] = set()


def object_occupancy(obj: TrainObject, grid: int = 128, cache: bool = True) -> OccupancySource:
    """The object's frame-independent occupancy, from ``<root>/.geolrm/occupancy-<key>.npz``
    when its key matches (the input files' path, size and mtime; the parameters), else computed
    and written there atomically (stale files replaced; an unwritable folder is noted once).

    Raises:
        InputError: the object has neither depth nor surface.
    """
    source, files = _cache_inputs(obj)
    if not cache:
        return _compute_occupancy(obj, source, grid)
    path = obj.root / CACHE_DIR / f"occupancy-{_cache_key(obj, source, files, grid)}.npz"
    if path.is_file():
        occ = _load_occupancy(path)
        if occ is not None:
            return occ
    occ = _compute_occupancy(obj, source, grid)
    try:
        if not _writable(obj.root):
            raise PermissionError(errno.EACCES, "the folder is read-only")
        _save_occupancy(path, occ)
    except OSError as e:
        if obj.root not in _warned_unwritable:
            _warned_unwritable.add(obj.root)
            note(f"{obj.root}: cannot cache the occupancy ({e.strerror}); kept in memory only")
    return occ


def _writable(root: Path) -> bool:
    """Whether geolrm may write beside an object: permitted, and the folder's mode has a write
    bit (so that a folder made read-only is left alone even by root)."""
    return os.access(root, os.W_OK) and bool(root.stat().st_mode & 0o222)


# -- samples -----------------------------------------------------------------------------------


def _generator(*ints: int) -> torch.Generator:
    """A generator seeded by a hash of ``ints`` (independent streams for distinct tuples)."""
    state = np.random.SeedSequence([int(i) for i in ints]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


@dataclass
class _View:
    """One view at the training size: white composite, straight colour, alpha, depth, K."""

    white: torch.Tensor  # [3, S, S]
    rgb: torch.Tensor  # [3, S, S]
    alpha: torch.Tensor  # [1, S, S]
    depth: torch.Tensor | None  # [1, S, S] world units
    K: torch.Tensor  # [3, 3] pixels at S

    @property
    def nbytes(self) -> int:
        ts = [self.white, self.rgb, self.alpha, self.K] + (
            [self.depth] if self.depth is not None else []
        )
        return sum(t.numel() * t.element_size() for t in ts)


class _Memo:
    """A dataset's per-process memos (shared with its :meth:`TrainDataset.with_targets`
    copies): decoded views keyed ``(object_index, split, view)``, occupancy sources, grids."""

    def __init__(self) -> None:
        self.views: OrderedDict[tuple[int, str, int], _View] = OrderedDict()
        self.view_bytes = 0
        self.occ: dict[int, OccupancySource] = {}
        self.grids: OrderedDict[tuple[int, bytes], np.ndarray] = OrderedDict()


def _take(perm: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` of ``perm``, cycled when it is shorter."""
    return perm.repeat(math.ceil(n / len(perm)))[:n]


class TrainDataset(torch.utils.data.Dataset):
    """Training samples of objects, keyed ``(object_index, n_inputs, sample_id)``.

    Args:
        objects: from :func:`find_objects`.
        size: image side ``S`` (a multiple of 14).
        counts: views per sample.
        seed: the run's seed; a sample is a pure function of ``(seed, sample_id)`` and its
            object.
        grid_size: occupancy cells per axis ``G``.
        occupancy: add the ``occupancy`` grid (objects without depth and surface then refused).
        cache: cache each object's occupancy beside it (:func:`object_occupancy`).
        view_cache_bytes: decoded views kept in memory per process (LRU; 0 = none).
        targets: ``"train"``: targets are other views of the training split (training);
            ``"held_out"``: targets are views of the object's held-out split
            (:attr:`TrainObject.held_out`) where it has one, else as ``"train"``
            (validation).

    A sample (no batch dimension; ``Vi = n_inputs``, ``Vt = counts.targets``)::

        input_images  [Vi, 3, S, S] float32 in [0, 1], composited on white (recon's input)
        input_c2ws    [Vi, 4, 4]    model frame, OpenGL camera-to-world
        input_Ks      [Vi, 3, 3]    normalised by the image size
        target_rgb    [Vt, 3, S, S] straight colour in [0, 1] (0 where alpha is 0)
        target_alpha  [Vt, 1, S, S] in [0, 1]
        target_depth  [Vt, 1, S, S] camera z in model units, 0 off the object / without depth
        target_c2ws   [Vt, 4, 4], target_Ks [Vt, 3, 3]
        has_depth     [] bool (the targets' split has depth)
        occupancy     [G, G, G] bool in the model frame (only with ``occupancy``)
        background    [3] float32 random colour (the module composites targets on it)
        object_index, sample_id  [] int64
        input_views, target_views  [Vi], [Vt] int64 view indices into the object's cameras
            (``target_views``: into its held-out cameras when :meth:`target_split` says so)

    Views: ``Vi`` distinct inputs, then ``Vt`` targets from the other views; an object with
    fewer than ``Vi + Vt`` views repeats views (targets then may be inputs). With held-out
    targets: ``Vi`` distinct training views and ``Vt`` distinct held-out views (each split
    repeated when it has fewer).
    """

    def __init__(
        self,
        objects: list[TrainObject],
        size: int,
        counts: ViewCounts = ViewCounts(),
        seed: int = 0,
        grid_size: int = 128,
        occupancy: bool = True,
        cache: bool = True,
        view_cache_bytes: int = VIEW_CACHE_BYTES,
        targets: str = "train",
    ) -> None:
        check_size(size)
        if not objects:
            raise InputError("no training objects; give at least one object folder")
        if targets not in TARGET_SPLITS:
            raise ValueError(f"targets {targets!r}: use one of {TARGET_SPLITS}")
        self.objects = list(objects)
        self.size = int(size)
        self.counts = counts
        self.seed = int(seed)
        self.grid_size = int(grid_size)
        self.occupancy = occupancy
        self.cache = cache
        self.view_cache_bytes = int(view_cache_bytes)
        self.targets = targets
        self._memo = _Memo()
        if occupancy:
            for obj in self.objects:
                _cache_inputs(obj)  # refuse an object without any occupancy source up front

    def __len__(self) -> int:
        return len(self.objects)

    def with_targets(self, targets: str) -> TrainDataset:
        """The same objects, settings and memos (views, occupancy) with targets from
        ``targets`` (see the class): e.g. the validation set of the training objects."""
        if targets not in TARGET_SPLITS:
            raise ValueError(f"targets {targets!r}: use one of {TARGET_SPLITS}")
        other = copy.copy(self)
        other.targets = targets
        return other

    def target_split(self, index: int) -> str:
        """The split object ``index``'s targets come from: ``"held_out"`` or ``"train"``."""
        held = self.targets == "held_out" and self.objects[index].held_out is not None
        return "held_out" if held else "train"

    def prepare(self) -> None:
        """Compute (or load) every object's occupancy now, e.g. in the main process before the
        DataLoader's workers start (they then share it)."""
        if self.occupancy:
            for i in range(len(self.objects)):
                self._occupancy_source(i)

    # -- caches ---------------------------------------------------------------------------------

    def _occupancy_source(self, index: int) -> OccupancySource:
        occ = self._memo.occ
        if index not in occ:
            occ[index] = object_occupancy(self.objects[index], self.grid_size, self.cache)
        return occ[index]

    def _grid(self, index: int, m: torch.Tensor) -> torch.Tensor:
        src = self._occupancy_source(index)
        G = self.grid_size
        if is_identity(m):
            return src.occupancy(G).bool()
        grids = self._memo.grids
        key = (index, m.numpy().tobytes())
        packed = grids.get(key)
        if packed is None:
            packed = np.packbits(src.occupancy(G, m).numpy())
            grids[key] = packed
            if len(grids) > GRID_MEMO:
                grids.popitem(last=False)
        else:
            grids.move_to_end(key)
        bits = np.unpackbits(packed, count=G**3).reshape(G, G, G)
        return torch.from_numpy(bits.astype(bool))

    def _view(self, index: int, split: str, v: int) -> _View:
        memo = self._memo
        key = (index, split, v)
        hit = memo.views.get(key)
        if hit is not None:
            memo.views.move_to_end(key)
            return hit
        view = self._load_view(self.objects[index].split(split), v)
        if self.view_cache_bytes > 0:
            memo.views[key] = view
            memo.view_bytes += view.nbytes
            while memo.view_bytes > self.view_cache_bytes and memo.views:
                _, old = memo.views.popitem(last=False)
                memo.view_bytes -= old.nbytes
        return view

    def _load_view(self, views: ViewSplit, v: int) -> _View:
        one = views.cameras.subset([v])
        S = self.size
        white, alpha, used = load_views_and_masks(one, S, WHITE)
        assert alpha is not None  # find_objects checked every view's alpha
        a = alpha[0][None]
        # resizing is linear: white = premultiplied + (1 - alpha) up to the clamps at edges
        premult = white[0] - (1.0 - a)
        rgb = torch.where(a > 0, premult / a.clamp_min(1e-12), 0.0).clamp(0.0, 1.0)
        depth = None
        if views.depth_paths is not None:
            depth = _resize_depth(_read_depth(views, v, erode_px=EDGE_ERODE_PX), S)
        return _View(white[0], rgb, a, depth, used.K[0])

    # -- a sample ------------------------------------------------------------------------------

    def views(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs [n_inputs], targets [counts.targets])``: the view indices of sample
        ``key`` (inputs into the object's cameras, targets into those of
        :meth:`target_split`), without loading anything."""
        index, n_inputs, sample_id = (int(k) for k in key)
        return self._choose(index, n_inputs, _generator(self.seed, _SAMPLE, sample_id))

    def _choose(
        self, index: int, n_inputs: int, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        obj = self.objects[index]
        V = len(obj.cameras)
        Vt = self.counts.targets
        perm = torch.randperm(V, generator=g)
        if self.target_split(index) == "held_out":
            assert obj.held_out is not None
            held = torch.randperm(len(obj.held_out.cameras), generator=g)
            return _take(perm, n_inputs), _take(held, Vt)
        if V >= n_inputs + Vt:
            return perm[:n_inputs], perm[n_inputs : n_inputs + Vt]
        cycled = _take(perm, n_inputs + Vt)
        return cycled[:n_inputs], torch.cat([perm[n_inputs:], cycled])[:Vt]

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        index, n_inputs, sample_id = (int(k) for k in key)
        lo, hi = self.counts.inputs
        if not lo <= n_inputs <= hi:
            raise ValueError(f"n_inputs {n_inputs} outside counts.inputs {self.counts.inputs}")
        obj = self.objects[index]
        g = _generator(self.seed, _SAMPLE, sample_id)
        inputs, targets = self._choose(index, n_inputs, g)
        background = torch.rand(3, generator=g)
        S = self.size
        split = self.target_split(index)
        out_views = obj.split(split)
        vin = [self._view(index, "train", int(v)) for v in inputs]
        vout = [self._view(index, split, int(v)) for v in targets]
        cams_in = Cameras(obj.cameras.c2w[inputs], torch.stack([x.K for x in vin]), S, S)
        model_in, m = to_model_frame(cams_in)
        cams_out = Cameras(out_views.cameras.c2w[targets], torch.stack([x.K for x in vout]), S, S)
        model_out = cams_out.clone() if is_identity(m) else cams_out.transformed(m)
        scale = 1.0 if is_identity(m) else decompose_similarity(m)[0]
        has_depth = out_views.depth_paths is not None
        zeros = torch.zeros(1, S, S)
        depth = torch.stack([x.depth if x.depth is not None else zeros for x in vout])
        if has_depth and scale != 1.0:
            depth = depth * scale
        sample = {
            "input_images": torch.stack([x.white for x in vin]),
            "input_c2ws": model_in.c2w,
            "input_Ks": model_in.normalized_K(),
            "target_rgb": torch.stack([x.rgb for x in vout]),
            "target_alpha": torch.stack([x.alpha for x in vout]),
            "target_depth": depth,
            "target_c2ws": model_out.c2w,
            "target_Ks": model_out.normalized_K(),
            "has_depth": torch.tensor(has_depth),
            "background": background,
            "object_index": torch.tensor(index, dtype=torch.int64),
            "sample_id": torch.tensor(sample_id, dtype=torch.int64),
            "input_views": inputs.long(),
            "target_views": targets.long(),
        }
        if self.occupancy:
            sample["occupancy"] = self._grid(index, m)
        return sample


# -- sampling order ----------------------------------------------------------------------------


class StepSampler(torch.utils.data.Sampler[list[SampleKey]]):
    """Batches of :data:`SampleKey`, batch ``i`` a pure function of ``(seed, i)``.

    Global batch ``i`` holds ``batch_size * world`` keys: key ``j`` is sample
    ``k = i * batch_size * world + j`` (its ``sample_id``), object ``perm_e[k % n_objects]``
    with ``perm_e`` the seeded permutation of epoch ``e = k // n_objects``, and one ``n_inputs``
    drawn for the whole global batch in ``counts.inputs``. Rank ``r`` yields keys
    ``[r * batch_size, (r + 1) * batch_size)`` of it, so ``world`` processes with
    ``batch_size`` each see exactly the samples of one process with ``batch_size * world``.

    Args:
        n_objects: objects in the dataset.
        batch_size: keys per batch per process.
        counts: views per sample (``counts.inputs`` bounds ``n_inputs``).
        seed: the run's seed.
        start: first batch yielded (resume: the number of micro-batches already consumed).
        length: batches yielded from ``start`` (None: without end).
        rank, world: this process's rank and the number of processes.

    Note: Lightning must not wrap it in its DistributedSampler (``use_distributed_sampler=
    False``); the sampler slices the ranks itself.
    """

    def __init__(
        self,
        n_objects: int,
        batch_size: int,
        counts: ViewCounts = ViewCounts(),
        seed: int = 0,
        start: int = 0,
        length: int | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if n_objects < 1 or batch_size < 1 or world < 1 or not 0 <= rank < world or start < 0:
            raise ValueError(
                f"StepSampler: n_objects {n_objects}, batch_size {batch_size}, rank {rank}, "
                f"world {world}, start {start}"
            )
        if length is not None and length < 0:
            raise ValueError(f"StepSampler: length {length} < 0")
        self.n_objects, self.batch_size = int(n_objects), int(batch_size)
        self.counts, self.seed = counts, int(seed)
        self.start, self.length = int(start), length
        self.rank, self.world = int(rank), int(world)
        self._perms: OrderedDict[int, torch.Tensor] = OrderedDict()

    def _perm(self, epoch: int) -> torch.Tensor:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = torch.randperm(self.n_objects, generator=_generator(self.seed, _EPOCH, epoch))
            self._perms[epoch] = perm
            if len(self._perms) > 2:
                self._perms.popitem(last=False)
        return perm

    def n_inputs(self, i: int) -> int:
        """The number of input views of global batch ``i``."""
        lo, hi = self.counts.inputs
        g = _generator(self.seed, _N_INPUTS, i)
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    def global_batch(self, i: int) -> list[SampleKey]:
        """All ``batch_size * world`` keys of global batch ``i``."""
        n = self.n_inputs(i)
        size = self.batch_size * self.world
        out = []
        for j in range(size):
            k = i * size + j
            obj = int(self._perm(k // self.n_objects)[k % self.n_objects])
            out.append((obj, n, k))
        return out

    def batch(self, i: int) -> list[SampleKey]:
        """This rank's keys of global batch ``i``."""
        r, b = self.rank, self.batch_size
        return self.global_batch(i)[r * b : (r + 1) * b]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        i = self.start
        while self.length is None or i < self.start + self.length:
            yield self.batch(i)
            i += 1

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless StepSampler has no length")
        return self.length
