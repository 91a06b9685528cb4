"""Evaluation against a posed test set: image metrics of the Gaussians, geometry of the mesh.

``evaluate(out, gt_dir)`` scores the output of ``geolrm recon`` (a folder with ``model.ply``, or
a Gaussian ``.ply`` itself) against a dataset folder holding ``transforms_test.json`` (RGBA test
views) and ground-truth geometry (``points.npy`` or ``mesh.*``). The Gaussians must be in the
dataset's world frame, which is what ``geolrm recon`` writes when it was given the dataset's
cameras.

Protocol (recorded in the result's ``"protocol"`` entry):

* **Images.** The ground-truth PNGs have straight alpha; they are composited on white,
  ``rgb * a + (1 - a)``. With ``resolution`` the composite and the alpha are resized
  (antialiased bicubic, clamped to [0, 1]) so the longer side is ``resolution``; the test
  cameras are rescaled to match and the Gaussians are rendered on white at that size
  (:func:`pipelines.raster.rasterize`, values clamped to [0, 1], no 8-bit rounding).
* **PSNR** ``10 log10(1 / MSE)`` (data range 1), MSE over all pixels and channels:
  ``psnr_white`` over the full frame (the usual protocol, inflated by the easy white
  background), ``psnr_masked`` over the pixels whose ground-truth alpha is > 0.5 (both images
  still composited on white). The reported values are means of the per-view values.
* **SSIM** (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, data
  range 1, population (co)variances, mean over the valid (unpadded) window positions and the
  channels -- equal to ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``.
* **LPIPS** (Zhang et al. 2018, v0.1) with the VGG16 trunk (``"lpips_net": "vgg"``):
  :class:`pipelines.lpips.LPIPS`, the network GeoLRM trains with and reports as ``val/lpips``
  (torchmetrics' VGG LPIPS, the ``lpips`` package's). The official code ships no evaluation
  script for the paper's tables; this VGG LPIPS is the only one it computes. The AlexNet variant common elsewhere is not offered as a
  fallback: its values are not comparable with VGG ones, so a report would hold two metrics
  under one name. Computed like SSIM: over the full frame, both images on white in
  [0, 1], mapped to [-1, 1] (``normalize=True``); per view, and the mean of those. Needs the
  registry's ``vgg16`` and ``lpips-vgg`` weights in the local cache; nothing is downloaded.
  Otherwise ``"lpips": null`` and ``"lpips_skipped"`` names the ``geolrm weights download``
  commands that fetch them.
* **Mesh.** The mesh is read in its file's frame and brought to the z-up world (``.glb`` and
  ``.obj`` as written by ``geolrm mesh`` are y-up, ``.ply`` is z-up:
  :data:`pipelines.mesh.export.DEFAULT_UP`). ``n_points`` points are sampled uniformly on its
  surface (area-weighted, seeded). Ground truth: ``points.npy`` (a random seeded subset when it
  holds more than ``n_points``) or ``n_points`` samples of the dataset's ``mesh.*`` (vertices
  taken as stored, i.e. in the dataset's world frame). Chamfer distance
  ``= (mean_p min_g |p - g| + mean_g min_p |g - p|) / 2`` (L2, world units, not squared);
  F-score at ``tau`` ``= 2 P R / (P + R)`` with precision P = fraction of predicted points
  within ``tau`` of the ground truth and recall R = fraction of ground-truth points within
  ``tau`` of the prediction (``<= tau`` counts as within).

Non-finite values (a PSNR of identical images is +inf; a masked PSNR of a view with an empty
mask is NaN and left out of the mean) become ``null`` in JSON (:func:`to_json`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines import layout, lpips
from pipelines.cameras.cameras import Cameras
from pipelines.cameras.dataparsers import load_transforms
from pipelines.cameras.images import read_view
from pipelines.defaults import EvalConfig
from pipelines.device import stage_device
from pipelines.errors import InputError
from pipelines.mesh.export import DEFAULT_UP
from pipelines.raster import rasterize
from pipelines.splats.frames import world_to_file
from pipelines.splats.gaussians import Gaussians
from pipelines.splats.io import load_gaussians
from pipelines.weights import artifact

__all__ = [
    "GT_MASK_THRESHOLD",
    "LPIPS_NET",
    "MESH_NAMES",
    "EvalInputs",
    "chamfer_fscore",
    "evaluate",
    "evaluate_gaussians",
    "evaluate_inputs",
    "evaluate_mesh",
    "find_inputs",
    "load_gt_geometry",
    "load_gt_images",
    "load_mesh",
    "lpips_metric",
    "psnr",
    "sample_mesh_points",
    "ssim",
    "to_json",
]

GT_MASK_THRESHOLD = 0.5
#: The network of the reported LPIPS (the result's ``lpips_net``).
LPIPS_NET = "vgg"
TEST_TRANSFORMS = "transforms_test.json"
GT_POINTS = "points.npy"
#: Mesh names looked for in an output folder, in order (``geolrm mesh``'s default output for
#: ``model.ply`` is ``model_mesh.glb``).
MESH_NAMES = tuple(
    f"{stem}{ext}"
    for stem in (Path(layout.MESH).stem, f"{Path(layout.MODEL).stem}_mesh")
    for ext in (".glb", ".obj", ".ply")
)
_GT_MESH_EXTS = (".ply", ".obj", ".glb", ".gltf", ".off", ".stl")
_SSIM_WIN, _SSIM_SIGMA, _SSIM_K1, _SSIM_K2 = 11, 1.5, 0.01, 0.03
_EVAL = EvalConfig()


# --------------------------------------------------------------------------------------------
# image metrics


def psnr(pred: Tensor, gt: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` per image, in dB.

    Args:
        pred, gt: ``[..., H, W, C]`` images (same shape).
        mask: optional ``[..., H, W]`` boolean; the MSE is taken over the pixels where it is
            True (all channels). None = every pixel.
        data_range: the images' value range (1 for [0, 1]).

    Returns:
        ``[...]`` float64 PSNR: +inf where the images agree exactly, NaN where the mask is empty.
    """
    if pred.shape != gt.shape:
        raise InputError(f"psnr: shapes differ, {tuple(pred.shape)} vs {tuple(gt.shape)}")
    err = (pred.double() - gt.double()).square().mean(-1)  # [..., H, W]
    if mask is None:
        mse = err.mean((-2, -1))
    else:
        if mask.shape != err.shape:
            raise InputError(f"psnr: mask shape {tuple(mask.shape)}, expected {tuple(err.shape)}")
        m = mask.to(err.dtype)
        mse = (err * m).sum((-2, -1)) / m.sum((-2, -1))  # 0 / 0 = NaN for an empty mask
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, dtype, device) -> Tensor:
    """``[size]`` normalised 1-D Gaussian taps centred on the middle one."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(pred: Tensor, gt: Tensor, data_range: float = 1.0) -> Tensor:
    """Structural similarity (Wang et al. 2004) per image, averaged over pixels and channels.

    An 11x11 Gaussian window (sigma 1.5, separable), ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2``,
    population (co)variances; the SSIM map is kept only where the window fits inside the image
    (``[H - 10, W - 10]`` positions), so no padding convention enters. Computed in float64.

    Args:
        pred, gt: ``[..., H, W, C]`` images (same shape), ``H, W >= 11``.
        data_range: the images' value range R (1 for [0, 1]).

    Returns:
        ``[...]`` float64 mean SSIM (1 for identical images).
    """
    if pred.shape != gt.shape:
        raise InputError(f"ssim: shapes differ, {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if pred.dim() < 3:
        raise InputError(f"ssim: images must be [..., H, W, C], got {tuple(pred.shape)}")
    *lead, h, w, c = pred.shape
    if h < _SSIM_WIN or w < _SSIM_WIN:
        raise InputError(f"ssim: images of {w}x{h} px are smaller than the 11x11 window")
    # [..., H, W, C] -> [B*C, 1, H, W]: every channel is filtered on its own
    x = pred.double().reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    y = gt.double().reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    taps = _gaussian_window(_SSIM_WIN, _SSIM_SIGMA, x.dtype, x.device)

    def blur(z: Tensor) -> Tensor:  # [N, 1, H, W] -> [N, 1, H-10, W-10], valid convolution
        z = F.conv2d(z, taps.view(1, 1, 1, -1))
        return F.conv2d(z, taps.view(1, 1, -1, 1))

    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    per_image = s.reshape(-1, c, *s.shape[-2:]).mean((1, 2, 3))
    return per_image.reshape(lead)


def lpips_metric(
    device: str | torch.device = "cpu",
) -> tuple[Callable[[Tensor, Tensor], float] | None, str | None]:
    """LPIPS (VGG16, v0.1; :mod:`pipelines.lpips`) when its weights are cached: ``(fn, None)``,
    else ``(None, reason)`` with the ``geolrm weights download`` commands that fetch them.

    Nothing is downloaded. ``fn(pred, gt)`` takes ``[H, W, 3]`` images in [0, 1] (mapped to
    [-1, 1], the lpips convention, by ``normalize=True``), H and W at least
    :data:`pipelines.lpips.MIN_SIZE`, and returns the distance (0 for identical images).
    """
    missing = lpips.missing_weights()
    if missing:
        commands = " and ".join(f"`{artifact(name).download_command()}`" for name in missing)
        return None, f"the LPIPS (VGG16) weights are not downloaded; fetch them with {commands}"
    try:
        net = lpips.load_lpips(device=device)
    except InputError as e:  # a corrupt or wrong file skips the metric, saying which
        return None, str(e)

    def fn(pred: Tensor, gt: Tensor) -> float:
        a = pred.float().to(device).permute(2, 0, 1)[None]
        b = gt.float().to(device).permute(2, 0, 1)[None]
        with torch.no_grad():
            return float(net(a, b, normalize=True)[0])

    return fn, None


# --------------------------------------------------------------------------------------------
# geometry metrics


def chamfer_fscore(pred_pts: Any, gt_pts: Any, tau: float = _EVAL.tau) -> dict[str, float]:
    """Chamfer distance and F-score between two point sets (nearest neighbours by cKDTree).

    Args:
        pred_pts: ``[N, 3]`` predicted points.
        gt_pts: ``[M, 3]`` ground-truth points.
        tau: F-score distance threshold (world units).

    Returns:
        ``accuracy`` (mean distance of predicted points to the ground truth), ``completeness``
        (mean distance of ground-truth points to the prediction), ``chamfer`` (their mean),
        ``precision``, ``recall`` (fractions within ``tau``, inclusive) and ``fscore``
        (``2PR / (P + R)``, 0 when both are 0).
    """
    from scipy.spatial import cKDTree

    p = np.asarray(pred_pts, dtype=np.float64).reshape(-1, 3)
    g = np.asarray(gt_pts, dtype=np.float64).reshape(-1, 3)
    if len(p) == 0 or len(g) == 0:
        raise InputError("chamfer: both point sets need at least one point")
    if not (np.isfinite(p).all() and np.isfinite(g).all()):
        raise InputError("chamfer: point sets contain NaN or infinite coordinates")
    if not tau > 0:
        raise InputError(f"--tau must be positive, got {tau}")
    # exact nearest neighbours either way; unbalanced, non-compact trees answer far queries
    # (a misaligned mesh) several times faster on surface samples than scipy's defaults
    kw = {"balanced_tree": False, "compact_nodes": False}
    d_pg, _ = cKDTree(g, **kw).query(p, k=1, workers=-1)
    d_gp, _ = cKDTree(p, **kw).query(g, k=1, workers=-1)
    acc, comp = float(d_pg.mean()), float(d_gp.mean())
    prec, rec = float((d_pg <= tau).mean()), float((d_gp <= tau).mean())
    f = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {
        "chamfer": 0.5 * (acc + comp),
        "accuracy": acc,
        "completeness": comp,
        "precision": prec,
        "recall": rec,
        "fscore": f,
    }


def sample_mesh_points(mesh, n: int, seed: int = _EVAL.seed) -> np.ndarray:
    """``[n, 3]`` float64 points uniformly distributed on a triangle mesh's surface.

    Faces are drawn with probability proportional to their area, then a point uniformly inside
    each drawn triangle (``a + u (b - a) + v (c - a)``, folded into the triangle). The same
    ``seed`` gives the same points.

    Args:
        mesh: a ``trimesh.Trimesh`` (or anything with ``vertices`` ``[V, 3]`` and ``faces``
            ``[F, 3]``).
        n: number of points.
        seed: random seed.
    """
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    if n < 1:
        raise InputError(f"need at least one sample point, got {n}")
    if len(f) == 0:
        raise InputError("the mesh has no faces to sample")
    tri = v[f]  # [F, 3, 3]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=-1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        raise InputError("the mesh has zero surface area; nothing to sample")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(f), size=n, p=area / total)
    uv = rng.random((n, 2))
    fold = uv.sum(-1) > 1
    uv[fold] = 1 - uv[fold]
    return tri[idx, 0] + uv[:, :1] * e1[idx] + uv[:, 1:] * e2[idx]


def load_mesh(path: str | Path, up: str | None = None):
    """Read a mesh (``trimesh.Trimesh``) and rotate it from its file frame to the z-up world.

    Args:
        path: ``.glb`` / ``.obj`` / ``.ply`` (or another format trimesh reads).
        up: the file's up axis (``"z"``, ``"y"``, ``"-y"``); None = what ``geolrm mesh`` writes
            for the extension (y for .glb/.obj, z for .ply; z for other formats).
    """

    path = Path(path)
    if not path.is_file():
        raise InputError(f"mesh {path} not found; pass --mesh with an existing .glb/.obj/.ply")
    up = up or DEFAULT_UP.get(path.suffix.lower(), "z")
    file_from_world = world_to_file(up).double().numpy()  # check the axis before reading
    mesh = _read_mesh(path)
    mesh.apply_transform(file_from_world.T)  # inverse of a rotation: its transpose
    return mesh


def _read_mesh(path: Path):
    import trimesh

    try:
        loaded = trimesh.load(str(path), force="mesh", process=False)
    except Exception as e:
        raise InputError(f"{path}: cannot read the mesh ({type(e).__name__}: {e})") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise InputError(f"{path}: no triangles in the file; pass a triangle mesh")
    return loaded


def load_gt_geometry(
    gt_dir: str | Path, n: int = _EVAL.points, seed: int = _EVAL.seed
) -> tuple[np.ndarray, str]:
    """Ground-truth surface points of a dataset, in its world frame: ``(points [M, 3], source)``.

    ``points.npy`` (``[M, 3]``) is preferred (a seeded random subset of ``n`` when it holds more);
    otherwise ``n`` points sampled on the first ``mesh.*`` (vertices taken as stored).
    """
    gt_dir = Path(gt_dir)
    pts_path = gt_dir / GT_POINTS
    if pts_path.is_file():
        try:
            pts = np.load(pts_path, allow_pickle=False)
        except Exception as e:
            raise InputError(f"{pts_path}: cannot read ({type(e).__name__}: {e})") from None
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise InputError(f"{pts_path}: expected an [N, 3] array, got shape {pts.shape}")
        pts = pts.astype(np.float64)
        if not np.isfinite(pts).all():
            raise InputError(f"{pts_path}: contains NaN or infinite coordinates")
        if len(pts) > n:
            pts = pts[np.sort(np.random.default_rng(seed).choice(len(pts), n, replace=False))]
        return pts, GT_POINTS
    mesh_path = _gt_mesh_path(gt_dir)
    if mesh_path is None:
        raise InputError(
            f"{gt_dir} has no {GT_POINTS} or mesh.* ground-truth geometry for the mesh metrics"
        )
    return sample_mesh_points(_read_mesh(mesh_path), n, seed), mesh_path.name


def _gt_mesh_path(gt_dir: Path) -> Path | None:
    for ext in _GT_MESH_EXTS:
        if (gt_dir / f"mesh{ext}").is_file():
            return gt_dir / f"mesh{ext}"
    return None


def evaluate_mesh(
    mesh_path: str | Path,
    gt_dir: str | Path,
    n_points: int = _EVAL.points,
    tau: float = _EVAL.tau,
    seed: int = _EVAL.seed,
    up: str | None = None,
) -> dict[str, Any]:
    """Chamfer distance and F-score of a mesh file against a dataset's ground-truth geometry.

    Args:
        mesh_path: the predicted mesh (see :func:`load_mesh` for its frame).
        gt_dir: dataset folder with ``points.npy`` or ``mesh.*``.
        n_points: points sampled on the predicted mesh (and on a ground-truth mesh).
        tau: F-score threshold in world units.
        seed: sampling seed.
        up: the mesh file's up axis; None = ``geolrm mesh``'s habit for the extension.

    Returns:
        ``path``, ``gt``, ``points``, ``gt_points``, ``tau`` and the values of
        :func:`chamfer_fscore`.
    """
    if n_points < 1:
        raise InputError(f"--points must be at least 1, got {n_points}")
    gt_pts, source = load_gt_geometry(gt_dir, n_points, seed)
    mesh = load_mesh(mesh_path, up)
    pred = sample_mesh_points(mesh, n_points, seed)
    return {
        "path": str(mesh_path),
        "gt": source,
        "points": int(len(pred)),
        "gt_points": int(len(gt_pts)),
        "tau": float(tau),
        **chamfer_fscore(pred, gt_pts, tau),
    }


# --------------------------------------------------------------------------------------------
# images of the test set


def _target_size(width: int, height: int, resolution: int | None) -> tuple[int, int]:
    if resolution is None:
        return width, height
    if resolution < 16:
        raise InputError(f"--resolution must be at least 16, got {resolution}")
    s = resolution / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def load_gt_images(
    cams: Cameras, resolution: int | None = None
) -> tuple[Tensor, Tensor | None, Cameras]:
    """Load the cameras' RGBA test images composited on white, optionally resized.

    Args:
        cams: cameras with ``image_paths`` (all images of one size, the cameras' size or the
            same aspect ratio at another size).
        resolution: longer side of the comparison size; None = the images' own size.

    Returns:
        ``images [V, H, W, 3]`` float32 on white, ``alphas [V, H, W]`` float32 (None when the
        images have no alpha channel), and the cameras for ``W x H``.
    """
    if not cams.image_paths:
        raise InputError("the test cameras name no images; the ground truth needs its images")
    rgbs, alphas, any_alpha, size = [], [], False, None
    for p in cams.image_paths:
        rgb, a = read_view(p)  # composited on white
        any_alpha |= a is not None
        h, w = rgb.shape[-2:]
        if size is None:
            size = (w, h)
            if abs(w / h - cams.width / cams.height) * max(w, h) > 1.0:
                raise InputError(
                    f"{p}: image is {w}x{h} but its camera says {cams.width}x{cams.height}; "
                    "fix w/h in the camera file"
                )
        elif (w, h) != size:
            raise InputError(
                f"{p}: image is {w}x{h} but the first test image is {size[0]}x{size[1]}"
            )
        rgbs.append(rgb.permute(1, 2, 0))
        alphas.append(torch.ones(h, w) if a is None else a[0])
    assert size is not None
    tw, th = _target_size(*size, resolution)
    images, alpha = torch.stack(rgbs), torch.stack(alphas)
    if (tw, th) != size:
        images = _resize(images, tw, th)
        alpha = _resize(alpha[..., None], tw, th)[..., 0]
    out_cams = cams if (tw, th) == (cams.width, cams.height) else cams.resized(tw, th)
    return images, (alpha if any_alpha else None), out_cams


def _resize(x: Tensor, w: int, h: int) -> Tensor:
    """Antialiased bicubic resize of ``[V, H, W, C]``, clamped to [0, 1]."""
    y = F.interpolate(
        x.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False, antialias=True
    )
    return y.permute(0, 2, 3, 1).clamp(0.0, 1.0).contiguous()


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate_gaussians(
    g: Gaussians,
    cams: Cameras,
    gt_images: Tensor,
    gt_alphas: Tensor | None,
    names: list[str] | None = None,
    device: str = "cpu",
    backend: str = "auto",
    use_lpips: bool = True,
    on_view: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Render ``g`` from ``cams`` on white and compare with the ground truth.

    Args:
        g: Gaussians in the cameras' world frame.
        cams: V cameras of size ``W x H``.
        gt_images: ``[V, H, W, 3]`` ground truth in [0, 1], composited on white.
        gt_alphas: ``[V, H, W]`` ground-truth alpha (masked PSNR uses alpha > 0.5), or None.
        names: one label per view (default ``"000"``, ``"001"``, ...).
        device: torch device for rendering.
        backend: raster backend (see :func:`pipelines.raster.rasterize`).
        use_lpips: compute LPIPS (skipped with a reason when its weights are not cached or
            the images are smaller than 16 px).
        on_view: called after each view (progress bars).

    Returns:
        Means ``psnr_white``, ``psnr_masked``, ``ssim``, ``lpips`` (with ``lpips_net``; None
        when skipped, with ``lpips_skipped``), and ``per_view``: a list of the same values per
        view with its name.
    """

    n, h, w = len(cams), cams.height, cams.width
    if gt_images.shape != (n, h, w, 3):
        raise InputError(f"ground truth is {tuple(gt_images.shape)}, expected {(n, h, w, 3)}")
    if gt_alphas is not None and gt_alphas.shape != (n, h, w):
        raise InputError(f"ground-truth alpha is {tuple(gt_alphas.shape)}, expected {(n, h, w)}")
    names = names or [f"{i:03d}" for i in range(n)]
    device = stage_device(device, "raster")  # MPS: renders (and LPIPS) on the CPU
    if not use_lpips:
        lp_fn, lp_reason = None, "not requested"
    elif min(h, w) < lpips.MIN_SIZE:
        lp_fn, lp_reason = None, f"the images are smaller than {lpips.MIN_SIZE} px"
    else:
        lp_fn, lp_reason = lpips_metric(device)
    g = g.detach().to(device)
    bg = torch.ones(3, device=device)
    per_view = []
    with torch.no_grad():
        for i in range(n):
            out = rasterize(
                g, cams.c2w[i : i + 1], cams.K[i : i + 1], w, h, background=bg, backend=backend
            )
            pred = out.rgb[0].float().clamp(0.0, 1.0).cpu()
            gt = gt_images[i].float()
            row: dict[str, Any] = {"name": names[i], "psnr_white": float(psnr(pred, gt))}
            if gt_alphas is not None:
                row["psnr_masked"] = float(psnr(pred, gt, gt_alphas[i] > GT_MASK_THRESHOLD))
            else:
                row["psnr_masked"] = float("nan")
            row["ssim"] = float(ssim(pred, gt))
            row["lpips"] = lp_fn(pred, gt) if lp_fn is not None else None
            per_view.append(row)
            if on_view is not None:
                on_view()
    result: dict[str, Any] = {
        "psnr_white": _nanmean([r["psnr_white"] for r in per_view]),
        "psnr_masked": _nanmean([r["psnr_masked"] for r in per_view]),
        "ssim": _nanmean([r["ssim"] for r in per_view]),
        "lpips": _nanmean([r["lpips"] for r in per_view]) if lp_fn is not None else None,
    }
    if lp_fn is None:
        result["lpips_skipped"] = lp_reason
    else:
        result["lpips_net"] = LPIPS_NET
    if gt_alphas is None:
        result["psnr_masked_skipped"] = "the ground-truth images have no alpha channel"
    result["per_view"] = per_view
    return result


# --------------------------------------------------------------------------------------------
# whole runs


@dataclass
class EvalInputs:
    """What :func:`find_inputs` resolved.

    Attributes:
        model: the Gaussian file.
        gt_dir: the dataset folder.
        cameras: the test cameras (with their image paths).
        mesh: the mesh to score, or None.
        mesh_skipped: why there are no mesh metrics (None when ``mesh`` is set).
    """

    model: Path
    gt_dir: Path
    cameras: Cameras
    mesh: Path | None
    mesh_skipped: str | None = None


def _find_mesh(model: Path, out: Path) -> Path | None:
    if out.is_dir():
        candidates = [out / name for name in MESH_NAMES]
    else:
        candidates = [
            model.with_name(f"{model.stem}_mesh{ext}") for ext in (".glb", ".obj", ".ply")
        ]
    return next((p for p in candidates if p.is_file()), None)


def find_inputs(out: str | Path, gt_dir: str | Path, mesh: str | Path | None = None) -> EvalInputs:
    """Resolve the model, the test cameras and the mesh; fail early with one-line messages.

    Args:
        out: a ``geolrm recon`` output folder (``model.ply``; ``mesh.glb|obj|ply`` or
            ``model_mesh.*`` beside it are scored too) or a Gaussian ``.ply`` / ``.splat``
            (then ``<stem>_mesh.glb|obj|ply`` beside it is found).
        gt_dir: dataset folder with ``transforms_test.json`` (or that JSON file itself).
        mesh: explicit mesh file (overrides the search).
    """
    out = Path(out)
    if not out.exists():
        raise InputError(f"{out} does not exist; pass the folder `geolrm recon` wrote or a .ply")
    if out.is_dir():
        model = out / layout.MODEL
        if not model.is_file():
            raise InputError(
                f"{out} has no {layout.MODEL}; pass the folder `geolrm recon` wrote or a "
                "Gaussian .ply"
            )
    else:
        model = out
        if model.suffix.lower() not in (".ply", ".splat"):
            raise InputError(f"{out} is not a .ply/.splat file; pass a Gaussian .ply or a folder")
    gt = Path(gt_dir)
    if not gt.exists():
        raise InputError(f"--gt {gt} does not exist; pass the dataset folder")
    if gt.is_dir():
        transforms = gt / TEST_TRANSFORMS
        if not transforms.is_file():
            raise InputError(f"--gt {gt} has no {TEST_TRANSFORMS}; pass the dataset folder")
    else:
        transforms, gt = gt, gt.parent
    cams = load_transforms(transforms, require_images=True)
    skipped = None
    if mesh is not None:
        mesh_path: Path | None = Path(mesh)
        if not mesh_path.is_file():
            raise InputError(f"--mesh {mesh_path} not found; pass an existing .glb/.obj/.ply")
        if not (gt / GT_POINTS).is_file() and _gt_mesh_path(gt) is None:
            raise InputError(f"--gt {gt} has no {GT_POINTS} or mesh.* to score --mesh against")
    else:
        mesh_path = _find_mesh(model, out)
        if mesh_path is None:
            where = f"in {out}" if out.is_dir() else f"beside {out}"
            skipped = f"no mesh found {where} (run `geolrm mesh` or pass --mesh)"
        elif not (gt / GT_POINTS).is_file() and _gt_mesh_path(gt) is None:
            skipped = f"{gt} has no {GT_POINTS} or mesh.* ground truth"
            mesh_path = None
    return EvalInputs(model, gt, cams, mesh_path, skipped)


def evaluate_inputs(
    inputs: EvalInputs,
    resolution: int | None = None,
    device: str = "cpu",
    n_points: int = _EVAL.points,
    tau: float = _EVAL.tau,
    seed: int = _EVAL.seed,
    assume_up: str = "-y",
    mesh_up: str | None = None,
    backend: str = "auto",
    use_lpips: bool = True,
    on_view: Callable[[], None] | None = None,
    on_mesh: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` on resolved inputs (``on_mesh`` is called before the mesh metrics)."""

    if n_points < 1:
        raise InputError(f"--points must be at least 1, got {n_points}")
    if not tau > 0:
        raise InputError(f"--tau must be positive, got {tau}")
    images, alphas, cams = load_gt_images(inputs.cameras, resolution)
    g = load_gaussians(inputs.model, assume_up=assume_up, quiet=True)
    names = []
    for p in cams.image_paths or []:
        try:
            names.append(Path(p).relative_to(inputs.gt_dir).as_posix())
        except ValueError:
            names.append(Path(p).name)
    image_metrics = evaluate_gaussians(
        g, cams, images, alphas, names, device, backend, use_lpips, on_view
    )
    result: dict[str, Any] = {
        "model": str(inputs.model),
        "gt_dir": str(inputs.gt_dir),
        "views": len(cams),
        "width": cams.width,
        "height": cams.height,
        "protocol": {
            "background": "white (ground truth composited rgb*a + (1-a), renders on white)",
            "psnr_masked": f"MSE over pixels with ground-truth alpha > {GT_MASK_THRESHOLD}",
            "ssim": "Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 1",
            "lpips": "v0.1, VGG16 trunk, full frame on white, [0, 1] mapped to [-1, 1]",
            "means": "mean of the per-view values",
            "chamfer": "(mean pred->gt + mean gt->pred nearest-neighbour L2) / 2, world units",
            "fscore": "2PR/(P+R), P/R = fraction of pred/gt points within tau of the other set",
        },
        **image_metrics,
    }
    if inputs.mesh is not None:
        if on_mesh is not None:
            on_mesh()
        result["mesh"] = evaluate_mesh(inputs.mesh, inputs.gt_dir, n_points, tau, seed, mesh_up)
    else:
        result["mesh"] = None
        result["mesh_skipped"] = inputs.mesh_skipped
    return result


def evaluate(
    out: str | Path,
    gt_dir: str | Path,
    mesh: str | Path | None = None,
    resolution: int | None = None,
    device: str = "cpu",
    n_points: int = _EVAL.points,
    tau: float = _EVAL.tau,
    seed: int = _EVAL.seed,
    assume_up: str = "-y",
    mesh_up: str | None = None,
    backend: str = "auto",
    use_lpips: bool = True,
) -> dict[str, Any]:
    """Score a reconstruction against a dataset's test views and geometry.

    Args:
        out: ``geolrm recon`` output folder or a Gaussian file (see :func:`find_inputs`).
        gt_dir: dataset folder with ``transforms_test.json`` and ``points.npy`` / ``mesh.*``.
        mesh: mesh file to score (default: found beside the model; none = no mesh metrics).
        resolution: comparison size (longer side, px); None = the test images' size.
        device: torch device for rendering.
        n_points: surface points sampled for the mesh metrics.
        tau: F-score threshold (world units).
        seed: sampling seed.
        assume_up: up axis of Gaussian .ply files that do not record their frame.
        mesh_up: the mesh file's up axis; None = ``geolrm mesh``'s habit for the extension.
        backend: raster backend.
        use_lpips: compute LPIPS when its weights are cached.

    Returns:
        A JSON-ready dict (after :func:`to_json`): inputs, size, ``protocol``, the mean image
        metrics, ``per_view`` values and ``mesh`` (or None with ``mesh_skipped``).
    """
    inputs = find_inputs(out, gt_dir, mesh)
    return evaluate_inputs(
        inputs, resolution, device, n_points, tau, seed, assume_up, mesh_up, backend, use_lpips
    )


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def to_json(result: dict[str, Any]) -> str:
    """The result as JSON text (non-finite numbers as ``null``), ending with a newline."""
    return json.dumps(_finite(result), indent=1, allow_nan=False) + "\n"
