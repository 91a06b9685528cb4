"""One photo -> the framed, square condition image a multi-view diffusion model expects.

Steps (what GeoLRM's ``run_geolrm_zero123.py`` and SV3D's ``simple_video_sample.py`` do):

1. read the photo (EXIF orientation applied; palette/greyscale/16-bit images converted);
2. background removal with rembg (``u2net`` by default), skipped when the image already has a
   non-trivial alpha channel or when ``remove_bg=False``;
3. crop to the object's alpha bounding box and pad it, centred, to a square in which the object's
   longer side fills ``foreground_ratio`` (0.85) of the side;
4. composite on the background the model was trained with (white for the InstantMesh
   Zero123++ UNet and SV3D, grey 127 for the original Zero123++ v1.2 UNet) and resize
   (Lanczos) to the model's input size.

rembg is imported only when a background has to be removed: its first import takes about a
minute (numba compiles pymatting). Its models live in ``U2NET_HOME`` (else ``~/.u2net``); a
missing model is reported in one line with the command that fetches it, never downloaded here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.errors import InputError

__all__ = [
    "DEFAULT_FOREGROUND_RATIO",
    "DEFAULT_REMBG_MODEL",
    "check_rembg",
    "GREY",
    "WHITE",
    "Preprocessed",
    "composite",
    "has_alpha",
    "load_photo",
    "preprocess",
    "recenter",
    "rembg_models",
    "remove_background",
]

PathLike = str | os.PathLike

DEFAULT_FOREGROUND_RATIO = 0.85
DEFAULT_REMBG_MODEL = "u2net"
WHITE = (255, 255, 255)
GREY = (127, 127, 127)
#: Alpha (0-255) above which a pixel belongs to the object when framing it. rembg leaves
#: faint noise (alpha 1-3) far from the object; the official code uses ``alpha > 0``.
ALPHA_THRESHOLD = 8
#: An alpha channel counts as non-trivial when at least this fraction of the pixels is not
#: fully opaque (the official scripts skip rembg for any RGBA input with an alpha < 255).
MIN_TRANSPARENT_FRACTION = 1e-3
#: Largest side handed to rembg (it segments at 320 px anyway; the mask is upsampled back).
REMBG_MAX_SIDE = 1024


@dataclass
class Preprocessed:
    """The result of :func:`preprocess`.

    Attributes:
        rgba: the framed object, RGBA, ``size x size`` (transparent background).
        image: ``rgba`` composited on ``background``, RGB, ``size x size``: the model input.
        background: the RGB background used.
        alpha_source: ``"input"`` (the photo's own alpha), ``"rembg:<model>"`` or ``"none"``
            (``remove_bg=False`` on an opaque photo: the whole image is the object).
        bbox: the object's box ``(left, top, right, bottom)`` in the photo's pixels.
    """

    rgba: Image.Image
    image: Image.Image
    background: tuple[int, int, int]
    alpha_source: str
    bbox: tuple[int, int, int, int]


# --------------------------------------------------------------------------------------------
# reading


def load_photo(path: PathLike) -> Image.Image:
    """Read a photo as RGBA (opaque when it has no alpha), EXIF orientation applied.

    Raises:
        InputError: missing file, not an image, or an empty image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; pass a PNG/JPEG/WebP photo")
    if path.is_dir():
        raise InputError(f"{path} is a folder; pass an image file (or use a folder of photos)")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
                im.mode == "P" and "transparency" in im.info
            )
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit greyscale: scale to 8 bit before converting
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if arr.max() > 255 else 255.0
                im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
            out = im.convert("RGBA") if alpha else im.convert("RGB").convert("RGBA")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{path}: cannot read image ({first}); pass a valid PNG/JPEG/WebP photo"
        ) from None
    if out.width < 2 or out.height < 2:
        raise InputError(f"{path}: image is {out.width}x{out.height}; pass a real photo")
    return out


def has_alpha(image: Image.Image, min_fraction: float = MIN_TRANSPARENT_FRACTION) -> bool:
    """True when ``image`` has an alpha channel with at least ``min_fraction`` of its pixels not
    fully opaque (a matte that can frame the object)."""
    if image.mode not in ("RGBA", "LA"):
        return False
    a = np.asarray(image.getchannel("A"))
    return bool((a < 255).mean() >= min_fraction)


# --------------------------------------------------------------------------------------------
# background removal


def rembg_models() -> list[str]:
    """The rembg models the weights registry knows (``geolrm weights download NAME``)."""
    from pipelines.weights import list_artifacts

    return [a.name for a in list_artifacts() if a.cache == "u2net"]


def check_rembg(model: str = DEFAULT_REMBG_MODEL) -> Path:
    """The cached ``.onnx`` of rembg model ``model`` (nothing is imported or downloaded);
    :class:`InputError` naming ``U2NET_HOME`` and the fetch command when it is missing."""
    return _rembg_model_path(model)


def _rembg_model_path(model: str) -> Path:
    """The cached ``.onnx`` of ``model``; InputError naming the fetch command when missing."""
    from pipelines.weights import artifact, cache_location, local_path, u2net_home

    known = rembg_models()
    if model not in known:
        raise InputError(
            f"unknown background-removal model {model!r}; use one of {', '.join(known)}"
        )
    a = artifact(model)
    path = local_path(a)
    if path is None:
        where = cache_location(a)
        home = "U2NET_HOME" + ("" if os.environ.get("U2NET_HOME") else f", now {u2net_home()}")
        raise InputError(
            f"background-removal model '{model}' is not in rembg's model folder {where} "
            f"({home}); fetch it with: geolrm weights download {model} "
            "(or pass a photo with a transparent background, or --no-rembg)"
        )
    return path


_SESSIONS: dict[str, object] = {}


def _rembg_session(model: str):
    path = _rembg_model_path(model)
    if model in _SESSIONS:
        return _SESSIONS[model]
    # rembg looks in U2NET_HOME and would download a missing/corrupt file: point it at the
    # folder we found and skip its checksum (the registry verifies downloads itself)
    os.environ["U2NET_HOME"] = str(path.parent)
    os.environ.setdefault("MODEL_CHECKSUM_DISABLED", "1")
    try:
        import rembg
    except ImportError as e:
        raise InputError(
            f"background removal needs rembg and onnxruntime ({e}); "
            "`pip install rembg onnxruntime`, or pass a photo with a transparent background"
        ) from None
    try:
        session = rembg.new_session(model)
    except Exception as e:  # onnxruntime / pooch errors: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"background-removal model '{model}' ({path}) could not be loaded ({first}); "
            f"re-fetch it with: geolrm weights download {model} --force"
        ) from None
    _SESSIONS[model] = session
    return session


def remove_background(image: Image.Image, model: str = DEFAULT_REMBG_MODEL) -> Image.Image:
    """RGBA copy of ``image`` with rembg's alpha matte (the RGB is kept as is)."""
    session = _rembg_session(model)
    import rembg

    rgb = image.convert("RGB")
    small = rgb
    if max(rgb.size) > REMBG_MAX_SIDE:
        small = rgb.copy()
        small.thumbnail((REMBG_MAX_SIDE, REMBG_MAX_SIDE), Image.Resampling.LANCZOS)
    mask = rembg.remove(small, session=session, only_mask=True)
    if not isinstance(mask, Image.Image):  # pragma: no cover - rembg returns PIL for PIL
        mask = Image.fromarray(np.asarray(mask))
    mask = mask.convert("L")
    if mask.size != rgb.size:
        mask = mask.resize(rgb.size, Image.Resampling.BILINEAR)
    out = rgb.copy()
    out.putalpha(mask)
    return out


# --------------------------------------------------------------------------------------------
# framing


def object_bbox(
    rgba: Image.Image, threshold: int = ALPHA_THRESHOLD
) -> tuple[int, int, int, int] | None:
    """``(left, top, right, bottom)`` (exclusive) of the pixels with alpha > ``threshold``."""
    a = np.asarray(rgba.getchannel("A"))
    rows = np.flatnonzero((a > threshold).any(axis=1))
    cols = np.flatnonzero((a > threshold).any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def recenter(
    rgba: Image.Image,
    foreground_ratio: float = DEFAULT_FOREGROUND_RATIO,
    bbox: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """Crop ``rgba`` to ``bbox`` (default: :func:`object_bbox`) and centre it on a transparent
    square of side ``ceil(max(w, h) / foreground_ratio)`` (the object's longer side then fills
    ``foreground_ratio`` of the square)."""
    if not 0.0 < foreground_ratio <= 1.0:
        raise InputError(f"--foreground-ratio must be in (0, 1], got {foreground_ratio}")
    if bbox is None:
        bbox = object_bbox(rgba)
        if bbox is None:
            raise InputError("the image is fully transparent; there is no object to frame")
    crop = rgba.crop(bbox)
    w, h = crop.size
    side = max(int(np.ceil(max(w, h) / foreground_ratio - 1e-9)), 1)
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    canvas.paste(crop, ((side - w) // 2, (side - h) // 2))
    return canvas


def composite(rgba: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """RGB: ``rgba`` over a constant ``background`` (straight alpha), rounded to uint8."""
    x = np.asarray(rgba.convert("RGBA"), dtype=np.float32)
    a = x[..., 3:4] / 255.0
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
    rgb = x[..., :3] * a + bg * (1.0 - a)
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")


def preprocess(
    photo: PathLike | Image.Image,
    size: int = 512,
    remove_bg: bool = True,
    rembg_model: str = DEFAULT_REMBG_MODEL,
    foreground_ratio: float = DEFAULT_FOREGROUND_RATIO,
    background: tuple[int, int, int] = WHITE,
) -> Preprocessed:
    """Background removal (when needed), framing and compositing; see the module docstring.

    Args:
        photo: a path or a PIL image.
        size: side of the output square in pixels.
        remove_bg: run rembg on photos without a usable alpha channel (False: use the photo's
            alpha if it has one, else the whole image).
        rembg_model: rembg model name (a ``weights.toml`` artifact cached in ``U2NET_HOME``).
        foreground_ratio: fraction of the square the object's longer side fills.
        background: RGB the object is composited on.

    Raises:
        InputError: unreadable image, fully transparent image, missing rembg model.
    """
    if not 0.0 < foreground_ratio <= 1.0:
        raise InputError(f"--foreground-ratio must be in (0, 1], got {foreground_ratio}")
    if size < 8:
        raise InputError(f"preprocess size must be at least 8 px, got {size}")
    image = load_photo(photo) if not isinstance(photo, Image.Image) else photo.convert("RGBA")
    if has_alpha(image):
        source = "input"
    elif remove_bg:
        image = remove_background(image, rembg_model)
        source = f"rembg:{rembg_model}"
    else:
        source = "none"
    bbox = object_bbox(image)
    if bbox is None:
        what = (
            "the photo is fully transparent"
            if source == "input"
            else (f"rembg ({rembg_model}) found no object")
        )
        raise InputError(
            f"{what}; pass a photo of one object on a plain background"
            + (" or try another --rembg-model" if source != "input" else "")
        )
    if source == "none":  # no matte: frame the whole photo
        bbox = (0, 0, image.width, image.height)
    framed = recenter(image, foreground_ratio, bbox)
    framed = framed.resize((size, size), Image.Resampling.LANCZOS)
    return Preprocessed(
        rgba=framed,
        image=composite(framed, background),
        background=tuple(int(c) for c in background),
        alpha_source=source,
        bbox=bbox,
    )
