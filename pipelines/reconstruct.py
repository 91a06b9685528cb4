"""Posed views -> 3D Gaussians with GeoLRM, in the user's own camera frame.

The three steps ``geolrm recon`` runs, usable on their own::

    from pipelines.geolrm import GeoLRM
    from pipelines.reconstruct import load_model, reconstruct, resolve_inputs, write_outputs

    cams = resolve_inputs("views/", "cams.json")          # or "views/transforms.json", "zero123pp"
    model = load_model()                                  # registry weights (or checkpoint=, config=)
    result = reconstruct(cams, model, size=448)
    write_outputs(result, "out/", video=False)            # model.ply, cameras.json, ...

Frames. GeoLRM was trained in a z-up world with the object inside [-0.5, 0.5]^3 and cameras at
radius ~1.5 looking at the origin. :func:`to_model_frame` maps the user's cameras there with a
similarity ``M`` (``x_model = M x_user``): cameras already in that frame are kept exactly (the
official rigs reproduce bit for bit); any other set is centred on the point the cameras look at,
scaled to radius 1.5, turned z-up and rotated about z so that the first camera sits at azimuth 0
(a canonical frame: a rotated, moved or rescaled copy of the same capture gives the same model
input, hence the same reconstruction, mapped back by ``M^-1``). Results are returned, and written,
in the user's frame; the model-frame Gaussians are kept for the turntable video.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.dataparsers import IMAGE_EXTENSIONS, load_transforms, resolve_image
from pipelines.cameras.images import load_views
from pipelines.cameras.normalize import normalize_to_model_frame
from pipelines.cameras.orbits import RENDER_FOV_DEG, TURNTABLE_ELEVATION_DEG
from pipelines.cameras.similarity import invert_similarity, similarity_to_json
from pipelines.defaults import DEFAULT_SIZE, MIN_OPACITY, RIG_INPUT_SIZE
from pipelines.device import run_stage
from pipelines.errors import InputError
from pipelines.multiview.rigs import sv3d_cameras, zero123pp_cameras
from pipelines.splats.gaussians import Gaussians

__all__ = [
    "DEFAULT_SIZE",
    "MAX_VIEWS",
    "MIN_OPACITY",
    "RIG_INPUT_SIZE",
    "MeshSpec",
    "OUTPUT_NAMES",
    "PRECISIONS",
    "RIGS",
    "PreparedViews",
    "ReconResult",
    "check_min_opacity",
    "check_size",
    "check_view_count",
    "default_size",
    "input_rig",
    "list_images",
    "load_config",
    "load_model",
    "output_paths",
    "prepare_views",
    "reconstruct",
    "resolve_checkpoint",
    "resolve_inputs",
    "resolve_precision",
    "to_model_frame",
    "write_mesh",
    "write_outputs",
]

PathLike = str | os.PathLike

MAX_VIEWS = 32
PATCH = 14
#: Named rigs and the view counts they accept.
RIGS: dict[str, tuple[int, ...]] = {"zero123pp": (6, 4), "sv3d": (21,)}
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: File names written into the output folder.
OUTPUT_NAMES = {
    "ply": "model.ply",
    "cameras": "cameras.json",
    "transform": "model_frame.json",
    "raw": "raw.safetensors",
    "video": "turntable.mp4",
    "mesh": "mesh.glb",
}
_IMAGE_SUFFIXES = {e.lower() for e in IMAGE_EXTENSIONS}
_IDENTITY = torch.eye(4, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# checks


def check_view_count(n: int) -> None:
    """1 to :data:`MAX_VIEWS` views, else :class:`InputError`."""
    if not 1 <= n <= MAX_VIEWS:
        raise InputError(
            f"GeoLRM takes 1 to {MAX_VIEWS} views, got {n}; "
            + ("give at least one view" if n < 1 else f"keep at most {MAX_VIEWS} of them")
        )


def check_size(size: int) -> None:
    """The model input size must be a positive multiple of the ViT patch (14)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < PATCH or size % PATCH:
        lo, hi = max(PATCH, (int(size) // PATCH) * PATCH), (int(size) // PATCH + 1) * PATCH
        raise InputError(
            f"--size {size} is not a multiple of {PATCH} (the ViT patch); use e.g. {lo} or {hi} "
            f"(default {DEFAULT_SIZE})"
        )


def default_size(rig: str | None = None) -> int:
    """GeoLRM input size for views of ``rig`` (:data:`RIG_INPUT_SIZE`); :data:`DEFAULT_SIZE`
    for the user's own cameras (``rig`` None or not a named rig)."""
    return RIG_INPUT_SIZE.get(str(rig).lower(), DEFAULT_SIZE) if rig else DEFAULT_SIZE


def check_min_opacity(min_opacity: float) -> None:
    """``--min-opacity`` must lie in [0, 1)."""
    if not 0.0 <= float(min_opacity) < 1.0:
        raise InputError(
            f"--min-opacity must be in [0, 1), got {min_opacity}; "
            f"use {MIN_OPACITY} (the official pruning) or 0 to keep every Gaussian"
        )


def resolve_precision(precision: str, device: str) -> torch.dtype:
    """``fp32`` anywhere; ``bf16`` / ``fp16`` (autocast) on CUDA only (GeoLRM stays fp32 on
    the CPU and on MPS)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    if precision != "fp32" and not str(device).startswith("cuda"):
        raise InputError(
            f"--precision {precision} needs a CUDA device (running on {device}); "
            "use --precision fp32 (GeoLRM runs in fp32 on the CPU and on MPS)"
        )
    return PRECISIONS[precision]


# --------------------------------------------------------------------------------------------
# inputs


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def list_images(folder: PathLike) -> list[Path]:
    """The images (PNG/JPEG/WebP) directly in ``folder``, in natural sorted order
    (``2.png`` before ``10.png``; zero-padded names sort as plain text). Hidden files are skipped.
    """
    folder = Path(folder)
    items = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES
    ]
    return sorted(items, key=_natural_key)


def _rig_cameras(folder: Path, rig: str, elevation_deg: float, official: bool) -> Cameras:
    if not folder.is_dir():
        raise InputError(
            f"{folder}: --cameras {rig} takes a folder of the {rig} views; pass that folder"
        )
    images = list_images(folder)
    counts = RIGS[rig]
    if len(images) not in counts:
        want = " or ".join(str(c) for c in counts)
        raise InputError(
            f"{folder} holds {len(images)} images but the {rig} rig has {want} views; "
            f"put exactly {want} images in the folder (taken in sorted order)"
        )
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(images[0]) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise InputError(
            f"{images[0]}: cannot read image ({e}); replace it with a valid PNG/JPEG/WebP"
        ) from None
    if w != h:
        raise InputError(
            f"{images[0]} is {w}x{h}; {rig} views are square, split the {rig} output into "
            "single square views"
        )
    if rig == "zero123pp":
        cams = zero123pp_cameras(len(images), size=w)
    else:
        cams = sv3d_cameras(elevation_deg=elevation_deg, size=w, official_offset=official)
    return Cameras(cams.c2w, cams.K, cams.width, cams.height, images)


def _frame_paths(cam_file: Path) -> list[str | None]:
    """The raw ``file_path`` of every frame (the file was validated by load_transforms)."""
    frames = json.loads(cam_file.read_text(encoding="utf-8"))["frames"]
    return [f.get("file_path") if isinstance(f.get("file_path"), str) else None for f in frames]


def _match_images(cams: Cameras, cam_file: Path, views: Path | None) -> Cameras:
    raw = _frame_paths(cam_file)
    named = [fp for fp in raw if fp]
    if not named:  # cameras only: the folder's images in sorted order
        folder = views if views is not None else cam_file.parent
        images = list_images(folder)
        if len(images) != len(cams):
            raise InputError(
                f"{cam_file} has {len(cams)} cameras (without file_path) but {folder} holds "
                f"{len(images)} images; give one image per camera (matched in sorted order)"
            )
        return Cameras(cams.c2w, cams.K, cams.width, cams.height, images)
    if len(named) != len(raw):
        i = raw.index(None) if None in raw else raw.index("")
        raise InputError(
            f"{cam_file}: frame {i} has no file_path while others do; "
            "give every frame its image path"
        )
    bases = [cam_file.parent] + ([views] if views is not None else [])
    images: list[Path] = []
    for i, fp in enumerate(raw):
        assert fp is not None
        hit = None
        for base in bases:
            hit = resolve_image(base, fp)
            if hit is not None:
                break
        if hit is None and views is not None:
            hit = resolve_image(views, Path(fp.replace("\\", "/")).name)
        if hit is None:
            where = " and ".join(str(b) for b in dict.fromkeys(bases))
            raise InputError(
                f"{cam_file}: frame {i} image {fp!r} not found (looked in {where}); "
                f"{len(cams)} cameras need {len(cams)} images, file_path is relative to the "
                "camera file"
            )
        images.append(hit)
    if len({p.resolve() for p in images}) != len(images):
        raise InputError(f"{cam_file}: two frames name the same image; give each frame its own")
    if views is not None:
        # the user named a folder of views: every image in it must have a camera
        in_folder = list_images(views)
        used = {p.resolve() for p in images}
        unused = [p for p in in_folder if p.resolve() not in used]
        if unused and used <= {p.resolve() for p in in_folder}:
            raise InputError(
                f"{views} holds {len(in_folder)} images but {cam_file} has {len(cams)} cameras "
                f"({unused[0].name} has none); give one camera per image or move the extra "
                "images out"
            )
    return Cameras(cams.c2w, cams.K, cams.width, cams.height, images)


def input_rig(path: PathLike, cameras: str | PathLike | None = None) -> str | None:
    """The named rig ``resolve_inputs(path, cameras)`` reads: ``cameras`` itself when it names
    one, else the generator recorded in a ``transforms.json`` that ``geolrm gen`` wrote
    (``views/transforms.json``, key ``geolrm.generator``), else None (the user's own cameras)."""
    if cameras is not None:
        name = str(cameras).lower()
        if name in RIGS:
            return name
        cam_file = Path(cameras)
    else:
        path = Path(path)
        cam_file = path / "transforms.json" if path.is_dir() else path
    if cam_file.is_dir():
        cam_file = cam_file / "transforms.json"
    try:
        meta = json.loads(cam_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # resolve_inputs reports a bad camera file
    info = meta.get("geolrm") if isinstance(meta, dict) else None
    rig = info.get("generator") if isinstance(info, dict) else None
    return rig if rig in RIGS else None


def resolve_inputs(
    path: PathLike,
    cameras: str | PathLike | None = None,
    rig_elevation_deg: float = 10.0,
    official_cameras: bool = False,
) -> Cameras:
    """Find the views and their cameras (images are only opened for a named rig's size).

    Args:
        path: a folder of views (holding a ``transforms.json`` unless ``cameras`` is given), or
            a ``transforms.json`` itself.
        cameras: ``None``; a nerfstudio / NeRF ``transforms.json`` (its frames' ``file_path``
            resolve relative to that file, then to ``path``; a file without ``file_path``
            takes ``path``'s images in sorted order); or a rig name, ``"zero123pp"`` (6 views,
            or the official 4-view subset 0, 2, 4, 5) or ``"sv3d"`` (21 SV3D_p frames in output
            order, at ``rig_elevation_deg``), whose views are ``path``'s images in sorted order.
        official_cameras: with ``cameras="sv3d"``, frame i at azimuth ``i * 360 / 21`` as
            GeoLRM's ``run_geolrm_sv3d.py`` assigns, instead of ``(i + 1) * 360 / 21`` (the
            azimuths SV3D generated them at); see
            :func:`~pipelines.multiview.rigs.sv3d_azimuths_deg`.

    Returns:
        Cameras with ``image_paths``, in the user's frame (a rig's are in the model frame).

    Raises:
        InputError: missing files, camera file errors, image/camera count mismatches.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; pass a folder of views or a transforms.json")
    name = None if cameras is None else str(cameras)
    if official_cameras and (name is None or name.lower() != "sv3d"):
        raise InputError(
            "--official-cameras applies to SV3D views (--cameras sv3d); leave it out otherwise"
        )
    if name is not None and name.lower() in RIGS:
        cams = _rig_cameras(path, name.lower(), rig_elevation_deg, official_cameras)
    elif name is not None:
        cam_file = Path(name)
        if not path.is_dir():
            raise InputError(
                f"{path} is not a folder; with --cameras pass the folder of views "
                "(or pass the transforms.json alone)"
            )
        if cam_file.is_dir():
            cam_file = cam_file / "transforms.json"
        if not cam_file.is_file():
            rigs = " / ".join(RIGS)
            raise InputError(
                f"--cameras {name}: no such camera file; pass a transforms.json or a rig name "
                f"({rigs})"
            )
        cams = load_transforms(cam_file, require_images=False)
        cams = _match_images(cams, cam_file, path)
    else:
        if path.is_dir():
            cam_file = path / "transforms.json"
            if not cam_file.is_file():
                raise InputError(
                    f"{path} has no transforms.json; pass --cameras cams.json, or "
                    "--cameras zero123pp / sv3d for views from those models"
                )
        elif path.suffix.lower() == ".json":
            cam_file = path
        else:
            raise InputError(
                f"{path} is neither a folder of views nor a transforms.json; pass one of those"
            )
        cams = load_transforms(cam_file, require_images=False)
        cams = _match_images(cams, cam_file, None)
    check_view_count(len(cams))
    return cams


# --------------------------------------------------------------------------------------------
# model


def load_config(path: PathLike) -> dict:
    """A GeoLRM architecture from a JSON file: a bare config dict (``dino``, ``serializer``,
    ``lrm_generator`` and optional top-level options), or a file holding it under
    ``tiny_config`` (the test fixture's layout)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"config {path} not found; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read config {path} ({e}); pass a JSON file") from None
    except json.JSONDecodeError as e:
        raise InputError(
            f"config {path} is not valid JSON ({e.msg} at line {e.lineno}); fix the syntax"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("tiny_config"), dict):
        data = data["tiny_config"]
    if not isinstance(data, dict):
        raise InputError(
            f"config {path} is not a JSON object; give dino/serializer/lrm_generator sections"
        )
    return data


def resolve_checkpoint(checkpoint: PathLike | None = None) -> Path:
    """The weights file: ``checkpoint``, or the registry's ``geolrm`` artifact when None
    (:class:`~pipelines.errors.MissingWeightsError` naming the download command when it is not
    cached)."""
    if checkpoint is None:
        from pipelines.weights import ensure

        return ensure("geolrm")
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(
            f"--checkpoint {path} not found; pass the GeoLRM weights file (.ckpt/.pt/"
            ".safetensors) or leave it out to use `geolrm weights download geolrm`"
        )
    return path


def load_model(
    checkpoint: PathLike | None = None,
    config: dict | PathLike | None = None,
    max_seq_len: int | None = None,
    seed: int | None = None,
    compat_padding: bool | None = None,
):
    """Load GeoLRM: ``checkpoint`` None means the registry's ``geolrm`` artifact
    (:class:`~pipelines.errors.MissingWeightsError` naming the download command when it is not
    cached); ``config`` None is the released architecture, else a dict or a JSON file
    (:func:`load_config`). Options left None keep the config's values.
    """
    from pipelines.geolrm import GeoLRM

    if config is not None and not isinstance(config, dict):
        config = load_config(config)
    checkpoint = resolve_checkpoint(checkpoint)
    options = {
        k: v
        for k, v in (
            ("max_seq_len", max_seq_len),
            ("seed", seed),
            ("compat_padding", compat_padding),
        )
        if v is not None
    }
    try:
        return GeoLRM.from_pretrained(Path(checkpoint), config=config, **options)
    except InputError:
        raise
    except (TypeError, ValueError, KeyError) as e:  # malformed config values
        raise InputError(f"invalid GeoLRM config: {e}") from None


# --------------------------------------------------------------------------------------------
# frames


def to_model_frame(cams: Cameras) -> tuple[Cameras, torch.Tensor]:
    """Cameras in GeoLRM's frame and ``M`` (``[4, 4]`` float64, ``x_model = M x_user``).

    Cameras already in the model frame are returned unchanged with ``M = I``; others go to the
    canonical frame of :func:`~pipelines.cameras.normalize_to_model_frame` with the first
    camera at azimuth 0. Degenerate sets (all cameras at one point, looking away from each
    other) raise :class:`InputError`.
    """
    out, m = normalize_to_model_frame(cams)
    if torch.equal(m, _IDENTITY):
        return out, m
    return normalize_to_model_frame(cams, first_azimuth_deg=0.0)


def _to_user(g: Gaussians, m: torch.Tensor) -> Gaussians:
    if torch.equal(m, _IDENTITY):
        return g
    inv = invert_similarity(m)
    g64 = g.to(torch.float64)
    return g64.transformed(inv).to(torch.float32)


# --------------------------------------------------------------------------------------------
# reconstruction


@dataclass
class PreparedViews:
    """Model inputs built from the user's views.

    Attributes:
        images: ``[V, 3, S, S]`` float32 in [0, 1] (RGBA composited on white, padded square).
        cameras: the cameras used, in the user's frame, with intrinsics for ``S x S``.
        cameras_model: the same in the model frame.
        model_from_user: ``[4, 4]`` float64, ``x_model = M x_user``.
    """

    images: torch.Tensor
    cameras: Cameras
    cameras_model: Cameras
    model_from_user: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])


def prepare_views(cams: Cameras, size: int = DEFAULT_SIZE) -> PreparedViews:
    """Load, pad and resize the images, then map the cameras into the model frame."""
    check_view_count(len(cams))
    check_size(size)
    images, used = load_views(cams, size)
    cams_model, m = to_model_frame(used)
    return PreparedViews(images, used, cams_model, m)


@dataclass
class ReconResult:
    """What :func:`reconstruct` returns.

    Attributes:
        gaussians: the Gaussians in the user's (cameras') frame.
        gaussians_model: the same in the model frame (z-up, object in [-0.5, 0.5]^3).
        anchors: ``[S, 3]`` anchors (model frame).
        occupancy_logits: ``[G, G, G]`` proposal logits (model frame, X, Y, Z).
        raw_gaussians: ``[S*K, 14]`` activated model output (model frame): xyz, opacity,
            scale(3), rotation wxyz(4), rgb(3).
        model_from_user: ``[4, 4]`` float64 similarity, ``x_model = M x_user``.
        cameras: cameras used (user frame, intrinsics at the model input size).
        cameras_model: the same in the model frame.
        gs_per_token: Gaussians per anchor (K).
        timings: seconds per stage.
        dropped: GeoLRM Gaussians dropped for an opacity below ``min_opacity`` (they are in
            ``raw_gaussians``, not in ``gaussians``).
    """

    gaussians: Gaussians
    gaussians_model: Gaussians
    anchors: torch.Tensor
    occupancy_logits: torch.Tensor
    raw_gaussians: torch.Tensor
    model_from_user: torch.Tensor
    cameras: Cameras
    cameras_model: Cameras
    gs_per_token: int
    timings: dict[str, float] = field(default_factory=dict)
    dropped: int = 0


#: Model submodules whose start marks a stage (progress callbacks).
_STAGES = (
    ("serializer.encoder", "proposal: encoding views"),
    ("serializer.transformer", "proposal: occupancy"),
    ("lrm_generator.encoder", "reconstruction: encoding views"),
    ("lrm_generator.transformer", "reconstruction: transformer"),
)


def reconstruct(
    cams: Cameras | PreparedViews,
    model,
    size: int = DEFAULT_SIZE,
    device: str = "cpu",
    precision: str = "fp32",
    seed: int | None = None,
    on_stage: Callable[[str], None] | None = None,
    min_opacity: float = MIN_OPACITY,
) -> ReconResult:
    """Reconstruct 3D Gaussians from posed views.

    Args:
        cams: cameras with ``image_paths`` in any frame (from :func:`resolve_inputs`), or the
            output of :func:`prepare_views`.
        model: a :class:`pipelines.geolrm.GeoLRM` (moved to ``device``).
        size: model input size (multiple of 14); ignored for prepared views.
        device: torch device string (on MPS, an operation MPS lacks reruns GeoLRM on the CPU:
            :func:`pipelines.device.run_stage`).
        precision: ``fp32``; ``bf16``/``fp16`` run under CUDA autocast.
        seed: seeds torch and the model's anchor subset (None keeps the model's seed).
        on_stage: called with a short name as each model stage starts.
        min_opacity: Gaussians with a lower opacity are dropped (:data:`MIN_OPACITY`, as the
            official scripts; 0 keeps all); ``raw_gaussians`` keeps every one.
    """
    check_min_opacity(min_opacity)
    dtype = resolve_precision(precision, device)
    prep = cams if isinstance(cams, PreparedViews) else prepare_views(cams, size)
    handles = []
    if on_stage is not None:
        for name, label in _STAGES:
            module = model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(lambda *_a, _l=label: on_stage(_l)))

    def forward(dev: str):  # the whole stage, so that an MPS failure can rerun it on the CPU
        if seed is not None:
            torch.manual_seed(int(seed))
            model.set_options(seed=int(seed))
        net = model.to(dev)
        images = prep.images[None].to(dev)
        c2ws = prep.cameras_model.c2w[None].to(dev)
        ks = prep.cameras_model.normalized_K()[None].to(dev)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            return net(images, c2ws, ks)

    try:
        out = run_stage("GeoLRM", device, forward)
    finally:
        for h in handles:
            h.remove()
    n = int(out.anchor_counts[0])
    k = int(out.gs_per_token)
    g_model = out.to_gaussians(0).to("cpu", torch.float32, copy=True)  # plain tensors
    total = len(g_model)
    if min_opacity > 0:
        g_model = g_model[g_model.opacities >= min_opacity]
    return ReconResult(
        gaussians=_to_user(g_model, prep.model_from_user),
        gaussians_model=g_model,
        anchors=out.anchors[0, :n].to("cpu", torch.float32).clone(),
        occupancy_logits=out.occupancy_logits[0].to("cpu", torch.float32).clone(),
        raw_gaussians=out.gaussians[0, : n * k].to("cpu", torch.float32).clone(),
        model_from_user=prep.model_from_user.clone(),
        cameras=prep.cameras,
        cameras_model=prep.cameras_model,
        gs_per_token=k,
        timings=dict(out.timings),
        dropped=total - len(g_model),
    )


# --------------------------------------------------------------------------------------------
# outputs


@dataclass
class MeshSpec:
    """The mesh :func:`write_outputs` adds as ``mesh.glb`` (``--mesh``): the Gaussians fused
    into a TSDF (:func:`pipelines.mesh.gaussians_to_mesh`, with the input cameras for the
    unseen-surface fill), optionally textured."""

    resolution: int = 256
    faces: int = 100_000
    views: int = 60
    texture_size: int | None = None


def output_paths(
    out_dir: PathLike, save_raw: bool = False, video: bool = True, mesh: bool = False
) -> list[Path]:
    """The files :func:`write_outputs` writes into ``out_dir``."""
    out_dir = Path(out_dir)
    keys = ["ply", "cameras", "transform"] + (["raw"] if save_raw else [])
    keys += ["video"] if video else []
    keys += ["mesh"] if mesh else []
    return [out_dir / OUTPUT_NAMES[k] for k in keys]


def check_output_dir(
    out_dir: PathLike,
    protect: Sequence[PathLike] = (),
    save_raw: bool = False,
    video: bool = True,
    mesh: bool = False,
) -> None:
    """Refuse an output folder that is a file, or whose outputs would overwrite an input."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"-o {out_dir} is a file; pass a folder for the outputs")
    inputs = {Path(p).resolve() for p in protect}
    for p in output_paths(out_dir, save_raw, video, mesh):
        if p.resolve() in inputs:
            raise InputError(f"writing {p} would overwrite an input file; choose another -o folder")


def _cameras_json(result: ReconResult, out_dir: Path) -> dict:
    data = result.cameras.to_transforms_json(base_dir=out_dir)
    data["geolrm"] = {
        "note": (
            "poses in the input cameras' world frame; intrinsics for the square model input "
            f"({result.cameras.width} px: images padded square with white, then resized)"
        ),
        "size": result.cameras.width,
        "model_from_user": result.model_from_user.tolist(),
        "model_frame_transform_matrices": result.cameras_model.c2w.double().tolist(),
    }
    return data


def _write_raw(path: Path, result: ReconResult) -> None:
    from safetensors.torch import save_file

    tensors = {
        "anchors": result.anchors.contiguous(),
        "occupancy_logits": result.occupancy_logits.contiguous(),
        "gaussians": result.raw_gaussians.contiguous(),
        "model_from_user": result.model_from_user.contiguous(),
        "c2ws_model": result.cameras_model.c2w.contiguous(),
        "Ks_normalized": result.cameras_model.normalized_K().contiguous(),
    }
    meta = {
        "format": "pt",
        "frame": "model (z-up, object in [-0.5, 0.5]^3); x_model = model_from_user @ x_user",
        "gaussians_layout": "xyz(3) opacity(1) scale(3) rotation_wxyz(4) rgb(3), activated",
        "gs_per_token": str(result.gs_per_token),
        "anchor_count": str(int(result.anchors.shape[0])),
    }
    save_file(tensors, str(path), metadata=meta)


def write_outputs(
    result: ReconResult,
    out_dir: PathLike,
    save_raw: bool = False,
    video: bool = True,
    video_frames: int = 120,
    video_resolution: int = 512,
    fps: int = 30,
    device: str = "cpu",
    protect: Sequence[PathLike] = (),
    on_video_frame: Callable[[], None] | None = None,
    up: str | None = None,
    mesh: MeshSpec | None = None,
    on_mesh_view: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write the outputs; all or nothing.

    Files (see :data:`OUTPUT_NAMES`): ``model.ply`` (standard 3DGS layout, user frame, header
    frame = identity; with ``up`` the user frame is taken as z-up and the file is written for
    viewers with that up axis, e.g. ``"-y"`` for views from a generator rig), ``cameras.json`` (nerfstudio transforms of the cameras used, user
    frame), ``model_frame.json`` (the similarity ``M``), with ``save_raw`` ``raw.safetensors``
    (anchors, occupancy logits, raw Gaussians, model frame), with ``video`` ``turntable.mp4``
    (model frame, z-up, elevation 20 deg), with ``mesh`` ``mesh.glb`` (user frame taken as
    z-up, as ``geolrm mesh model.ply`` reads it; ``on_mesh_view`` reports the fusion renders).

    Everything is written into a hidden staging folder inside ``out_dir`` and renamed into
    place at the end: a failure or an interrupt leaves no partial file (and removes
    ``out_dir`` when this call created it and it stayed empty). Paths in ``protect`` (the
    inputs) are never overwritten.

    Returns:
        The written paths.
    """
    from pipelines.io_utils import write_text_atomic
    from pipelines.splats.frames import matrix_to_text
    from pipelines.splats.ply import save_ply

    out_dir = Path(out_dir)
    check_output_dir(out_dir, protect, save_raw, video, mesh is not None)
    targets = output_paths(out_dir, save_raw, video, mesh is not None)
    created = []
    for parent in (out_dir, *out_dir.parents):
        if parent.exists():
            break
        created.append(parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".geolrm-recon-", dir=out_dir))
    try:
        m_text = matrix_to_text(result.model_from_user)
        save_ply(
            stage / OUTPUT_NAMES["ply"],
            result.gaussians,
            up=up,
            comments=[
                "geolrm recon: Gaussians in the input cameras' world frame"
                + ("" if up is None else f" (z-up), written with up axis {up}"),
                f"geolrm model_from_user {m_text}",
            ],
        )
        cams_json = json.dumps(_cameras_json(result, out_dir), indent=1) + "\n"
        write_text_atomic(stage / OUTPUT_NAMES["cameras"], cams_json)
        transform = similarity_to_json(result.model_from_user)
        transform["description"] = (
            "similarity from the input cameras' world frame to GeoLRM's model frame "
            "(z-up, object in [-0.5, 0.5]^3, cameras at radius ~1.5); model.ply is in the input "
            "frame, turntable.mp4 and raw.safetensors in the model frame"
        )
        write_text_atomic(stage / OUTPUT_NAMES["transform"], json.dumps(transform, indent=1) + "\n")
        if save_raw:
            _write_raw(stage / OUTPUT_NAMES["raw"], result)
        if video:
            _write_video(
                stage / OUTPUT_NAMES["video"],
                result.gaussians_model,
                video_frames,
                video_resolution,
                fps,
                device,
                on_video_frame,
            )
        if mesh is not None:
            write_mesh(
                stage / OUTPUT_NAMES["mesh"],
                result.gaussians,
                result.cameras,
                mesh,
                device,
                on_mesh_view,
            )
        for target in targets:
            os.replace(stage / target.name, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return targets


def write_mesh(
    path: Path,
    g: Gaussians,
    cameras: Cameras | None,
    spec: MeshSpec,
    device: str = "cpu",
    on_view: Callable[[int], None] | None = None,
    on_stage: Callable[[str, int | None], None] | None = None,
) -> None:
    """Mesh ``g`` by :func:`pipelines.mesh.gaussians_to_mesh` with ``spec``'s settings (the
    input ``cameras``, same frame as ``g``, drive the unseen-surface fill) and export it to
    ``path`` (format from the suffix)."""
    from pipelines.mesh import export_mesh, gaussians_to_mesh

    made = gaussians_to_mesh(
        g,
        views=spec.views,
        resolution=spec.resolution,
        faces=spec.faces,
        device=device,
        on_view=on_view,
        texture_size=spec.texture_size,
        on_stage=on_stage,
        cameras=cameras,
    )
    export_mesh(made.mesh, path)


def _write_video(
    path: Path,
    g: Gaussians,
    frames: int,
    resolution: int,
    fps: int,
    device: str,
    on_frame: Callable[[], None] | None,
) -> None:
    from pipelines.export.media import video_writer
    from pipelines.render import render_frames, turntable_cameras

    cams = turntable_cameras(g, frames, TURNTABLE_ELEVATION_DEG, RENDER_FOV_DEG, resolution)
    with video_writer(path, fps) as append:
        for frame in render_frames(g, cams, "white", device, on_frame=on_frame):
            append(frame.rgb)
