"""Images of posed views: one reader (colour and alpha from one read), square padding, resizing.

Conventions: images are float32 in [0, 1], channels first (``[C, H, W]``); alpha is straight
(not premultiplied) and composited on a ``background`` colour; non-square images are centred
on a square canvas (``left = (side - w) // 2``); resizing is bicubic and antialiased (as the
official scripts) and clamped to [0, 1]. Pixels are used as stored (EXIF orientation is not
applied). The intrinsics of :class:`Cameras` follow every padding and resize.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipelines.cameras.cameras import Cameras, PathLike
from pipelines.errors import InputError, path_error

__all__ = [
    "WHITE",
    "image_has_alpha",
    "load_images",
    "load_masks",
    "load_views",
    "load_views_and_masks",
    "read_image",
    "read_view",
]

WHITE = (1.0, 1.0, 1.0)


def image_has_alpha(im: Image.Image) -> bool:
    """Whether an open PIL image carries transparency (RGBA, LA, PA or palette with it)."""
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def read_image(path: Path) -> tuple[np.ndarray, bool]:
    """``([H, W, 4] uint8 RGBA, has_alpha)`` of one image (opaque ones get alpha 255); a
    missing or unreadable file is a one-line :class:`InputError`."""
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = image_has_alpha(im)
            arr = np.asarray(im.convert("RGBA")).copy()
    except FileNotFoundError:
        raise path_error(path, "image not found", "check the image path") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise path_error(
            path, f"cannot read image ({e})", "replace it with a valid PNG/JPEG/WebP"
        ) from None
    return arr, has_alpha


def read_view(
    path: Path, background: tuple[float, float, float] = WHITE
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One read of one image: its colour ``[3, H, W]`` float32 in [0, 1], alpha composited
    (straight) on ``background``, and its alpha ``[1, H, W]`` (``None`` when it has none)."""
    arr, has_alpha = read_image(path)
    x = torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0
    rgb, a = x[:3], x[3:4]
    if not has_alpha:
        return rgb.contiguous(), None
    bg = torch.tensor(background, dtype=torch.float32).view(3, 1, 1)
    return rgb * a + bg * (1.0 - a), a


def _pad_square(x: torch.Tensor, fill: tuple[float, ...]) -> tuple[torch.Tensor, int, int]:
    """Centre ``[C, H, W]`` on a square canvas of ``fill`` (one value per channel); returns the
    canvas and the (left, top) offset."""
    c, h, w = x.shape
    side = max(h, w)
    if h == w:
        return x, 0, 0
    left, top = (side - w) // 2, (side - h) // 2
    canvas = torch.tensor(fill, dtype=x.dtype).view(c, 1, 1).repeat(1, side, side)
    canvas[:, top : top + h, left : left + w] = x
    return canvas, left, top


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic antialiased resize of ``[C, S, S]`` to ``size`` (as the official scripts),
    clamped to [0, 1]."""
    if x.shape[-1] == size:
        return x
    y = torch.nn.functional.interpolate(
        x.unsqueeze(0), size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )
    return y.squeeze(0).clamp(0.0, 1.0)


def _square_mask(alpha: torch.Tensor, size: int | None) -> torch.Tensor:
    """``[1, H, W]`` alpha padded square with 0 and resized like the colours -> ``[S, S]``."""
    a, _, _ = _pad_square(alpha, (0.0,))
    return (a if size is None else _resize(a, size))[0]


def load_images(
    paths: Sequence[PathLike],
    size: int | None = None,
    background: tuple[float, float, float] = WHITE,
) -> torch.Tensor:
    """Load images as ``[V, 3, S, S]`` float32 in [0, 1].

    RGBA is composited on ``background`` (straight alpha), non-square images are centred on a
    square ``background`` canvas, then everything is resized to ``size`` (bicubic, antialiased;
    ``None`` keeps the padded size, which must then agree across images). Use
    :func:`load_views` when the images have cameras: it adjusts the intrinsics the same way.
    """
    if not paths:
        raise InputError("no images given; pass at least one image")
    out = []
    for p in paths:
        x, _, _ = _pad_square(read_view(Path(p), background)[0], background)
        out.append(x if size is None else _resize(x, size))
    sides = {x.shape[-1] for x in out}
    if len(sides) > 1:
        raise InputError(f"images have different sizes {sorted(sides)}; pass a common size")
    return torch.stack(out)


def load_views(
    cams: Cameras,
    size: int | None = 448,
    background: tuple[float, float, float] = WHITE,
) -> tuple[torch.Tensor, Cameras]:
    """Load the cameras' images for reconstruction.

    Each image is composited on ``background`` (straight alpha), centred on a square canvas
    (padding with ``background``) and resized to ``size x size`` (bicubic, antialiased, as the
    official scripts; ``None`` keeps the padded side). The intrinsics follow: the principal point
    moves by the padding offset, then K scales by ``size / side``.

    Images must all have the cameras' size; an image with the same aspect ratio at another
    resolution (e.g. a downscaled copy) is accepted and the intrinsics are rescaled. Pixels are
    used as stored (EXIF orientation is not applied), like the poses of COLMAP/nerfstudio.

    Returns:
        images: ``[V, 3, size, size]`` float32 in [0, 1].
        cameras: the same poses with intrinsics for ``size x size``.
    """
    images, _, _, out = _load(cams, size, background, masks=False)
    return images, out


def load_views_and_masks(
    cams: Cameras,
    size: int | None = 448,
    background: tuple[float, float, float] = WHITE,
    require_alpha: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, Cameras]:
    """:func:`load_views` and :func:`load_masks` from one read of each image.

    Returns:
        images: as :func:`load_views`.
        masks: ``[V, size, size]`` as :func:`load_masks`, or ``None`` when some view has no
            alpha and ``require_alpha`` is False.
        cameras: as :func:`load_views`.

    Raises:
        InputError: as :func:`load_views`; with ``require_alpha``, the first image without
            alpha as :func:`load_masks` (after every view was read, so a size error comes
            first, as when calling the two in turn).
    """
    images, masks, missing, out = _load(cams, size, background, masks=True)
    if missing is not None:
        if require_alpha:
            raise _no_alpha(missing)
        return images, None, out
    return images, masks, out


def _no_alpha(path: Path) -> InputError:
    return path_error(
        path, "the image has no alpha channel", "give RGBA views with a transparent background"
    )


def _load(
    cams: Cameras, size: int | None, background: tuple[float, float, float], masks: bool
) -> tuple[torch.Tensor, torch.Tensor | None, Path | None, Cameras]:
    """The loop of :func:`load_views` (and of the masks with ``masks``): images, masks (None
    without ``masks`` or when one is missing), the first image without alpha, the cameras."""
    if cams.image_paths is None:
        raise InputError("these cameras have no image files; give a transforms.json with images")
    first = None
    out, alphas = [], []
    missing = None
    work = cams
    for p in cams.image_paths:
        x, a = read_view(p, background)
        h, w = x.shape[-2:]
        if first is None:
            first = (w, h)
            if (w, h) != (cams.width, cams.height):
                if abs(w / h - cams.width / cams.height) * max(w, h) > 1.0:
                    raise path_error(
                        p,
                        f"image is {w}x{h} but its camera says {cams.width}x{cams.height}",
                        "fix w/h in the camera file or use the original images",
                    )
                work = cams.resized(w, h)
        elif (w, h) != first:
            raise path_error(
                p,
                f"image is {w}x{h} but {cams.image_paths[0].name} is {first[0]}x{first[1]}",
                "all views must share one image size",
            )
        x, _, _ = _pad_square(x, background)
        out.append(x if size is None else _resize(x, size))
        if masks and a is None:
            missing = missing or p
        elif masks and missing is None:
            alphas.append(_square_mask(a, size))
    assert first is not None
    side = max(first)
    work = work.padded((side - first[0]) // 2, (side - first[1]) // 2, side, side)
    if size is not None and size != side:
        work = work.resized(size, size)
    stacked = torch.stack(alphas) if masks and missing is None else None
    return torch.stack(out), stacked, missing, work


def load_masks(cams: Cameras, size: int | None = 448) -> torch.Tensor:
    """The views' alpha channels ``[V, S, S]`` in [0, 1], padded square (with 0) and resized
    exactly as :func:`load_views` treats the colours (bicubic, antialiased).

    Raises:
        InputError: an image without alpha, unreadable, or of another size than the first.
    """
    if cams.image_paths is None:
        raise InputError("these cameras have no image files; give a transforms.json with images")
    out = []
    for p in cams.image_paths:
        _, a = read_view(p)
        if a is None:
            raise _no_alpha(p)
        out.append(_square_mask(a, size))
    if len({tuple(a.shape) for a in out}) > 1:
        raise InputError("the views have different sizes; all views must share one image size")
    return torch.stack(out)
