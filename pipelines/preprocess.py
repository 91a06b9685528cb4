"""One photo -> the square condition image a multi-view diffusion model expects, the way the
official scripts make it.

Two styles, chosen by the multi-view back end (``preprocess(style=...)``); references are to
alibaba-yuanjing-aigclab/GeoLRM @ da3f30fb (``GEO``) and the installed rembg 2.0.86 (``REMBG``).

``"zero123pp"`` (GEO ``run_geolrm_zero123.py:127-144``):

1. an RGBA photo with any transparency keeps its alpha and colours, rembg is skipped
   (GEO ``src/utils/infer_util.py:16-22``); otherwise plain ``rembg.remove(photo, session)``
   runs on the full-resolution photo, and its RGBA is kept: rembg's ``naive_cutout``
   composites the photo with an empty image through the mask, so the colour is *multiplied by
   the mask* (REMBG ``bg.py:99-112``, the same in the rembg of 2024);
2. ``resize_foreground(image, 0.85)`` (``infer_util.py:25-63``): the box of the pixels with
   alpha > 0 (here > ``alpha_threshold``) is cropped as ``[min, max)`` (:31-39, the last row
   and column are dropped), padded, centred, to a square of its longer side (:41-49), then to
   ``int(side / 0.85)`` (:52-61), at the photo's resolution;
3. the pipeline's ``to_rgb_image`` pastes that RGBA on white through its alpha (GEO
   ``zero123plus/pipeline.py:30-38``; grey 127 for the original v1.2 UNet), so an edge pixel
   of a rembg cut-out gets ``c * a * a + 255 * (1 - a)`` (rembg's product, then the paste);
4. the VAE's ``CLIPImageProcessor`` (``pipeline.py:346-347``; ``feature_extractor_vae``:
   shortest edge 512, bilinear, centre crop 512) resizes the shortest edge to ``size``
   (long edge ``int(size * long / short)``) and crops the centre (offsets floored), as
   transformers' ``get_resize_output_image_size`` / ``center_crop`` do.

``"sv3d"`` (GEO ``sv3d_video_sample.py:132-165``):

1. an RGBA photo is used as is (:134-135); otherwise the photo is made a thumbnail of at most
   768 x 768 (``Image.thumbnail``, Lanczos, :138) and ``rembg.remove(thumb.convert("RGBA"),
   alpha_matting=True)`` runs on it (:139): pymatting's closed-form alpha and estimated
   foreground colours, straight alpha (REMBG ``bg.py:46-96``, thresholds 240 / 10, erosion 10);
   that RGBA is kept;
2. the box of alpha > 0 (``cv2.threshold`` + ``boundingRect``, :144-147, inclusive) goes,
   centred at ``side // 2 - h // 2``, on a transparent square of ``int(max(w, h) / 0.85)``
   (:148-159);
3. resized to ``size`` (576) with Lanczos (:161) and composited on white in float, truncated to
   uint8 (:163-165): one multiplication by alpha.

``remove_bg=False`` (GEO ``run_geolrm_zero123.py:136-138``: ``--no_rembg`` skips both rembg and
``resize_foreground``): the photo is used as is, without framing; the shortest edge is resized
to ``size`` and the centre cropped, exactly as the Zero123++ processor does (bilinear; a
transparent photo is pasted on the background first, as ``to_rgb_image``). The SV3D script has
no such option; ``"sv3d"`` does the same with its own resampling (Lanczos) and compositing.

Deliberate differences: an alpha channel counts only when at least ``MIN_TRANSPARENT_FRACTION``
of the pixels are not opaque (the official scripts: any pixel, and SV3D any RGBA file); the
object box uses alpha > ``ALPHA_THRESHOLD`` (8) against rembg's faint noise, the official
scripts alpha > 0 (``alpha_threshold=0`` reproduces them); EXIF orientation is applied when the
photo is read; the SV3D thumbnail is made from the decoded photo (the official script, on a
lazily opened JPEG, lets PIL decode it at a reduced DCT scale first: a difference only for
JPEGs of at least 3072 px on both sides).

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
from pipelines.weights import artifact, cache_location, list_artifacts, local_path, u2net_home

__all__ = [
    "DEFAULT_FOREGROUND_RATIO",
    "DEFAULT_REMBG_MODEL",
    "check_rembg",
    "GREY",
    "WHITE",
    "Preprocessed",
    "STYLES",
    "composite",
    "fit_square",
    "frame",
    "has_alpha",
    "load_photo",
    "object_bbox",
    "preprocess",
    "rembg_models",
    "remove_background",
]

PathLike = str | os.PathLike

DEFAULT_FOREGROUND_RATIO = 0.85
DEFAULT_REMBG_MODEL = "u2net"
WHITE = (255, 255, 255)
GREY = (127, 127, 127)
#: The preprocessing styles: the official Zero123++ (GeoLRM ``run_geolrm_zero123.py``) and
#: SV3D (``sv3d_video_sample.py``) ones, see the module docstring.
STYLES = ("zero123pp", "sv3d")
#: Alpha (0-255) above which a pixel belongs to the object when framing it. rembg leaves
#: faint noise (alpha 1-3) far from the object; the official code uses ``alpha > 0``
#: (``preprocess(alpha_threshold=0)``).
ALPHA_THRESHOLD = 8
#: An alpha channel counts as non-trivial when at least this fraction of the pixels is not
#: fully opaque (the official scripts skip rembg for any RGBA input with an alpha < 255).
MIN_TRANSPARENT_FRACTION = 1e-3
#: SV3D runs rembg (with alpha matting) on a thumbnail of at most this side
#: (GeoLRM ``sv3d_video_sample.py:138``).
SV3D_THUMBNAIL = 768


@dataclass
class Preprocessed:
    """The result of :func:`preprocess`.

    Attributes:
        rgba: the framed object, RGBA, ``size x size`` (transparent background; a rembg
            cut-out keeps rembg's colours: multiplied by the mask for ``"zero123pp"``, matted
            for ``"sv3d"``).
        image: the model input, RGB, ``size x size``, on ``background``: what the official
            pipeline feeds its VAE (``"zero123pp"``: the processor's 512 px image) or its
            model (``"sv3d"``).
        background: the RGB background used.
        alpha_source: ``"input"`` (the photo's own alpha), ``"rembg:<model>"`` or ``"none"``
            (``remove_bg=False`` on an opaque photo).
        bbox: the part of the photo shown, ``(left, top, right, bottom)`` in the photo's
            pixels: the object's box when framed, the centre crop with ``remove_bg=False``.
        style: the preprocessing style (:data:`STYLES`).
        condition: the RGB image the official pipeline is handed, before its own resizing
            (``"zero123pp"``: the framed object on ``background`` at the photo's resolution,
            what ``to_rgb_image`` returns; ``"sv3d"``: ``image``).
    """

    rgba: Image.Image
    image: Image.Image
    background: tuple[int, int, int]
    alpha_source: str
    bbox: tuple[int, int, int, int]
    style: str = "zero123pp"
    condition: Image.Image | None = None


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
    return [a.name for a in list_artifacts() if a.cache == "u2net"]


def check_rembg(model: str = DEFAULT_REMBG_MODEL) -> Path:
    """The cached ``.onnx`` of rembg model ``model`` (nothing is imported or downloaded);
    :class:`InputError` naming ``U2NET_HOME`` and the fetch command when it is missing."""
    return _rembg_model_path(model)


def _rembg_model_path(model: str) -> Path:
    """The cached ``.onnx`` of ``model``; InputError naming the fetch command when missing."""
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


def remove_background(
    image: Image.Image, model: str = DEFAULT_REMBG_MODEL, alpha_matting: bool = False
) -> Image.Image:
    """rembg's RGBA cut-out of ``image``, kept as ``rembg.remove`` returns it.

    ``alpha_matting=False`` (the Zero123++ script): the network's mask as alpha and the colour
    multiplied by it (rembg's ``naive_cutout``). ``alpha_matting=True`` (the SV3D script, which
    hands rembg an RGBA image): pymatting's alpha and estimated foreground colours, straight.
    """
    session = _rembg_session(model)
    import rembg

    if alpha_matting:
        out = rembg.remove(image.convert("RGBA"), session=session, alpha_matting=True)
    else:
        out = rembg.remove(image.convert("RGB"), session=session)
    if not isinstance(out, Image.Image):  # pragma: no cover - rembg returns PIL for PIL
        out = Image.fromarray(np.asarray(out))
    return out.convert("RGBA")


# --------------------------------------------------------------------------------------------
# framing and compositing


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise InputError(f"unknown preprocessing style {style!r}; use {' or '.join(STYLES)}")


def _check_ratio(foreground_ratio: float) -> None:
    if not 0.0 < foreground_ratio <= 1.0:
        raise InputError(f"--foreground-ratio must be in (0, 1], got {foreground_ratio}")


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


def frame(
    rgba: Image.Image,
    foreground_ratio: float = DEFAULT_FOREGROUND_RATIO,
    style: str = "zero123pp",
    threshold: int = ALPHA_THRESHOLD,
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The object of ``rgba`` (alpha > ``threshold``) centred on a transparent square whose side
    is ``int(longer side / foreground_ratio)``, at ``rgba``'s resolution, as the official style
    does it (module docstring); returns the square and the box cropped from ``rgba``.

    ``"zero123pp"`` (GeoLRM ``infer_util.py:25-63``): the crop is ``[first, last)`` (the last row
    and column of the object are left out), padded to a square of its longer side, then by
    ``(side - longer) // 2`` on the top and left. ``"sv3d"`` (``sv3d_video_sample.py:144-159``):
    the inclusive box, placed at ``side // 2 - h // 2`` (and ``- w // 2``).
    """
    _check_ratio(foreground_ratio)
    _check_style(style)
    a = np.asarray(rgba.convert("RGBA"))
    box = object_bbox(rgba.convert("RGBA"), threshold)
    if box is None:
        raise InputError("the image is fully transparent; there is no object to frame")
    left, top, right, bottom = box
    if style == "zero123pp":
        # y2 / x2 are the last indices and end the slices (at least one pixel kept)
        right, bottom = max(right - 1, left + 1), max(bottom - 1, top + 1)
    crop = a[top:bottom, left:right]
    h, w = crop.shape[:2]
    longer = max(h, w)
    side = max(int(longer / foreground_ratio), 1)
    if style == "zero123pp":
        y0 = (longer - h) // 2 + (side - longer) // 2
        x0 = (longer - w) // 2 + (side - longer) // 2
    else:
        y0, x0 = side // 2 - h // 2, side // 2 - w // 2
    out = np.zeros((side, side, 4), np.uint8)
    out[y0 : y0 + h, x0 : x0 + w] = crop
    return Image.fromarray(out, "RGBA"), (left, top, right, bottom)


def composite(
    rgba: Image.Image, background: tuple[int, int, int] = WHITE, style: str = "zero123pp"
) -> Image.Image:
    """RGB: ``rgba`` over a constant ``background``, once (straight alpha), rounded the way the
    official style does it.

    ``"zero123pp"``: PIL's paste through the alpha, as the pipeline's ``to_rgb_image``
    (GeoLRM ``zero123plus/pipeline.py:30-38``; rounded). ``"sv3d"``: float64
    ``c * a + bg * (1 - a)``, truncated to uint8 (``sv3d_video_sample.py:163-165``).
    """
    _check_style(style)
    rgba = rgba.convert("RGBA")
    bg = tuple(int(c) for c in background)
    if style == "zero123pp":
        out = Image.new("RGB", rgba.size, bg)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    x = np.asarray(rgba) / 255.0
    a = x[..., 3:]
    rgb = x[..., :3] * a + (np.asarray(bg, np.float64) / 255.0) * (1 - a)
    return Image.fromarray((rgb * 255).astype(np.uint8), "RGB")


def fit_square(
    image: Image.Image, size: int, resample: Image.Resampling
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The shortest edge resized to ``size`` (the long one to ``int(size * long / short)``),
    then the centre ``size x size`` cropped (offsets floored), as transformers'
    ``CLIPImageProcessor`` does; returns the square and the part of ``image`` it shows."""
    w, h = image.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    im = image.resize((nw, nh), resample) if (nw, nh) != (w, h) else image.copy()
    left, top = (nw - size) // 2, (nh - size) // 2
    box = (
        round(left * w / nw),
        round(top * h / nh),
        round((left + size) * w / nw),
        round((top + size) * h / nh),
    )
    return im.crop((left, top, left + size, top + size)), box


#: Resampling of the final resize: the Zero123++ VAE processor's (bilinear,
#: ``feature_extractor_vae/preprocessor_config.json`` resample 2), SV3D's Lanczos (:161).
_RESAMPLE = {"zero123pp": Image.Resampling.BILINEAR, "sv3d": Image.Resampling.LANCZOS}


def _scale_box(box, src: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` in an image of size ``src`` -> the covering box in one of size ``dst``."""
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    left, top, right, bottom = box
    return (
        int(np.floor(left * sx)),
        int(np.floor(top * sy)),
        min(int(np.ceil(right * sx)), dst[0]),
        min(int(np.ceil(bottom * sy)), dst[1]),
    )


def preprocess(
    photo: PathLike | Image.Image,
    size: int = 512,
    remove_bg: bool = True,
    rembg_model: str = DEFAULT_REMBG_MODEL,
    foreground_ratio: float = DEFAULT_FOREGROUND_RATIO,
    background: tuple[int, int, int] = WHITE,
    style: str = "zero123pp",
    alpha_threshold: int = ALPHA_THRESHOLD,
) -> Preprocessed:
    """Background removal (when needed), framing and compositing as the official script of
    ``style`` does them; see the module docstring.

    Args:
        photo: a path or a PIL image.
        size: side of the output square in pixels.
        remove_bg: run rembg on photos without a usable alpha channel; False uses the photo
            as is (no rembg, no framing: shortest edge resized, centre crop), as the official
            ``--no_rembg``.
        rembg_model: rembg model name (a ``weights.toml`` artifact cached in ``U2NET_HOME``).
        foreground_ratio: fraction of the square the object's longer side fills.
        background: RGB the object is composited on.
        style: ``"zero123pp"`` or ``"sv3d"`` (:data:`STYLES`): rembg's call (plain / alpha
            matting on a 768 px thumbnail), the framing, the order of resizing and compositing
            and their rounding.
        alpha_threshold: alpha above which a pixel is the object's when framing (0: the
            official scripts).

    Raises:
        InputError: unreadable image, fully transparent image, missing rembg model.
    """
    _check_ratio(foreground_ratio)
    _check_style(style)
    if size < 8:
        raise InputError(f"preprocess size must be at least 8 px, got {size}")
    image = load_photo(photo) if not isinstance(photo, Image.Image) else photo.convert("RGBA")
    bg = tuple(int(c) for c in background)
    resample = _RESAMPLE[style]
    alpha = has_alpha(image)

    if not remove_bg:  # the photo as is (run_geolrm_zero123.py:136-138 with --no_rembg)
        source = "input" if alpha else "none"
        rgba, box = fit_square(image, size, resample)
        if style == "zero123pp":  # to_rgb_image, then the processor
            condition = composite(image, bg, style) if alpha else image.convert("RGB")
            out, _ = fit_square(condition, size, resample)
        else:
            out = composite(rgba, bg, style)
            condition = out
        return Preprocessed(rgba, out, bg, source, box, style, condition)

    cut, scale_from = image, None
    if alpha:
        source = "input"
    else:
        source = f"rembg:{rembg_model}"
        if style == "sv3d":  # sv3d_video_sample.py:138-139
            thumb = image.convert("RGB")
            thumb.thumbnail((SV3D_THUMBNAIL, SV3D_THUMBNAIL), Image.Resampling.LANCZOS)
            cut = remove_background(thumb, rembg_model, alpha_matting=True)
            scale_from = cut.size
        else:  # infer_util.py:21, plain rembg on the photo
            cut = remove_background(image, rembg_model)
    if object_bbox(cut, alpha_threshold) is None:
        what = (
            "the photo is fully transparent"
            if source == "input"
            else (f"rembg ({rembg_model}) found no object")
        )
        raise InputError(
            f"{what}; pass a photo of one object on a plain background"
            + (" or try another --rembg-model" if source != "input" else "")
        )
    framed, box = frame(cut, foreground_ratio, style, alpha_threshold)
    if scale_from is not None:
        box = _scale_box(box, scale_from, image.size)
    if style == "zero123pp":
        condition = composite(framed, bg, style)  # to_rgb_image, at the photo's resolution
        out, _ = fit_square(condition, size, resample)  # feature_extractor_vae
        rgba, _ = fit_square(framed, size, resample)
    else:
        rgba = framed.resize((size, size), resample)  # :161
        out = composite(rgba, bg, style)  # :163-165
        condition = out
    return Preprocessed(rgba, out, bg, source, box, style, condition)
