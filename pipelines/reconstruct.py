"""Posed views -> 3D Gaussians with GeoLRM, in the user's own camera frame.

The GeoLRM stage of ``geolrm recon`` (the whole command is :func:`pipelines.recon.recon`)::

    from pipelines.outputs import write_outputs
    from pipelines.reconstruct import GeoLRMPipeline, resolve_inputs

    cams = resolve_inputs("views/", "cams.json")          # or "views/transforms.json", "zero123pp"
    pipe = GeoLRMPipeline.from_pretrained()               # registry weights (or checkpoint=, config=)
    scene = pipe(cams, size=448)                          # a pipelines.scene.Scene
    write_outputs(scene, "out/", video=None)              # model.ply, cameras.json, ...

Inputs: :func:`resolve_inputs` finds the views and their cameras (a transforms.json or a named
rig). Frames (:func:`pipelines.scene.to_model_frame`): GeoLRM runs in its z-up model frame;
the scene is returned in the user's frame too, the model-frame Gaussians are kept for the
turntable video.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.dataparsers import IMAGE_EXTENSIONS, load_transforms, resolve_image
from pipelines.cameras.images import load_views
from pipelines.defaults import (
    DEFAULT_SIZE,
    MAX_VIEWS,
    MIN_OPACITY,
    RIG_ELEVATION_DEG,
    RIG_INPUT_SIZE,
)
from pipelines.device import run_stage
from pipelines.errors import InputError
from pipelines.geolrm import GeoLRM
from pipelines.multiview.rigs import sv3d_cameras, zero123pp_cameras
from pipelines.scene import GeoLRMExtras, Scene, to_model_frame
from pipelines.weights import ensure

__all__ = [
    "PRECISIONS",
    "RIGS",
    "GeoLRMPipeline",
    "PreparedViews",
    "check_min_opacity",
    "check_size",
    "check_view_count",
    "default_size",
    "input_rig",
    "list_images",
    "load_config",
    "load_model",
    "prepare_views",
    "reconstruct",
    "resolve_checkpoint",
    "resolve_inputs",
    "resolve_precision",
]

PathLike = str | os.PathLike

PATCH = 14
#: Named rigs and the view counts they accept.
RIGS: dict[str, tuple[int, ...]] = {"zero123pp": (6, 4), "sv3d": (21,)}
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_IMAGE_SUFFIXES = {e.lower() for e in IMAGE_EXTENSIONS}


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
    rig_elevation_deg: float = RIG_ELEVATION_DEG,
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
        Their number is not checked here: GeoLRM takes 1 to :data:`MAX_VIEWS`
        (:func:`check_view_count`), the optimiser any number.

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
# the pipeline


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


#: Model submodules whose start marks a stage (progress callbacks).
_STAGES = (
    ("serializer.encoder", "proposal: encoding views"),
    ("serializer.transformer", "proposal: occupancy"),
    ("lrm_generator.encoder", "reconstruction: encoding views"),
    ("lrm_generator.transformer", "reconstruction: transformer"),
)


class GeoLRMPipeline:
    """GeoLRM on posed views: ``pipe(cams) -> Scene`` in the user's frame.

    ::

        pipe = GeoLRMPipeline.from_pretrained(device="cuda")    # registry weights
        scene = pipe(resolve_inputs("views/"), size=448, seed=42)

    Owns GeoLRM's limits: 1 to :data:`MAX_VIEWS` views, an input size that is a multiple of
    the ViT patch (14), ``min_opacity`` in [0, 1), fp32 anywhere and bf16 / fp16 on CUDA.

    Args:
        model: a :class:`pipelines.geolrm.GeoLRM`.
        device: torch device string (on MPS, an operation MPS lacks reruns GeoLRM on the CPU:
            :func:`pipelines.device.run_stage`).
        precision: ``fp32``; ``bf16``/``fp16`` run under CUDA autocast.
    """

    def __init__(self, model, device: str = "cpu", precision: str = "fp32") -> None:
        self.model = model
        self.device = device
        self.precision = precision

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: PathLike | None = None,
        config: dict | PathLike | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        **options: Any,
    ) -> GeoLRMPipeline:
        """Load the weights (:func:`load_model`: registry weights when ``checkpoint`` is None;
        ``options``: ``max_seq_len``, ``seed``, ``compat_padding``)."""
        return cls(load_model(checkpoint, config, **options), device, precision)

    def __call__(
        self,
        cams: Cameras | PreparedViews,
        size: int = DEFAULT_SIZE,
        seed: int | None = None,
        min_opacity: float = MIN_OPACITY,
        on_stage: Callable[[str], None] | None = None,
    ) -> Scene:
        """Reconstruct 3D Gaussians from posed views.

        Args:
            cams: cameras with ``image_paths`` in any frame (from :func:`resolve_inputs`), or
                the output of :func:`prepare_views`.
            size: model input size (multiple of 14); ignored for prepared views.
            seed: seeds torch and the model's anchor subset (None keeps the model's seed).
            min_opacity: Gaussians with a lower opacity are dropped (:data:`MIN_OPACITY`, as
                the official scripts; 0 keeps all); ``geolrm.raw_gaussians`` keeps every one.
            on_stage: called with a short name as each model stage starts.

        Returns:
            A :class:`~pipelines.scene.Scene` with :class:`~pipelines.scene.GeoLRMExtras`.
        """
        # 1. check the inputs
        check_min_opacity(min_opacity)
        dtype = resolve_precision(self.precision, self.device)
        # 2. prepare the views: load, pad square, resize (1 to 32 views, size a multiple of 14)
        # 3. the cameras to the model frame (M = I for cameras already in it)
        prep = cams if isinstance(cams, PreparedViews) else prepare_views(cams, size)
        # 4. proposal (occupancy -> anchors) and 5. reconstruction (anchors -> Gaussians): one
        # forward of the network; the hooks report its stages
        out = self._forward(prep, dtype, seed, on_stage)
        # 6. prune below min_opacity and map back to the user's frame
        n = int(out.anchor_counts[0])
        k = int(out.gs_per_token)
        g_model = out.to_gaussians(0).to("cpu", torch.float32, copy=True)  # plain tensors
        total = len(g_model)
        if min_opacity > 0:
            g_model = g_model[g_model.opacities >= min_opacity]
        extras = GeoLRMExtras(
            anchors=out.anchors[0, :n].to("cpu", torch.float32).clone(),
            occupancy_logits=out.occupancy_logits[0].to("cpu", torch.float32).clone(),
            raw_gaussians=out.gaussians[0, : n * k].to("cpu", torch.float32).clone(),
            gs_per_token=k,
            dropped=total - len(g_model),
        )
        return Scene.from_model_frame(
            g_model,
            prep.model_from_user.clone(),
            prep.cameras,
            prep.cameras_model,
            geolrm=extras,
            timings=dict(out.timings),
        )

    def _forward(
        self,
        prep: PreparedViews,
        dtype: torch.dtype,
        seed: int | None,
        on_stage: Callable[[str], None] | None,
    ):
        model = self.model
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
            return run_stage("GeoLRM", self.device, forward)
        finally:
            for h in handles:
                h.remove()


def reconstruct(
    cams: Cameras | PreparedViews,
    model,
    size: int = DEFAULT_SIZE,
    device: str = "cpu",
    precision: str = "fp32",
    seed: int | None = None,
    on_stage: Callable[[str], None] | None = None,
    min_opacity: float = MIN_OPACITY,
) -> Scene:
    """:class:`GeoLRMPipeline` of ``model`` on ``device`` at ``precision``, called once."""
    pipe = GeoLRMPipeline(model, device, precision)
    return pipe(cams, size=size, seed=seed, min_opacity=min_opacity, on_stage=on_stage)
