"""Per-scene Gaussian optimisation: fit Gaussians to posed views, with or without GeoLRM.

Two entry points, both working in GeoLRM's normalised model frame (cameras at radius 1.5
around the origin, so one set of learning rates and thresholds fits every capture) and
returning the Gaussians in the user's frame too:

* :func:`optimize_views` -- no network: the visual hull of the views' alpha masks
  (:mod:`~pipelines.optimize.visual_hull`) seeds Gaussians on its surface, then
  :func:`~pipelines.optimize.trainer.optimize_gaussians` fits them (``geolrm recon
  --method optimize``).
* :func:`refine_result` -- start from GeoLRM's feed-forward Gaussians and fit them to the
  same views (``geolrm recon --refine N``).

Both return a :class:`~pipelines.scene.Scene` (``optimize_views`` its subclass
:class:`OptimizeResult`, which adds the visual hull). There is no view limit: no network runs.

::

    from pipelines.optimize import optimize_views
    from pipelines.reconstruct import resolve_inputs

    cams = resolve_inputs("examples/spot/transforms_train.json")
    scene = optimize_views(cams, resolution=256, iterations=1500, seed=0)
    scene.gaussians  # user frame
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from PIL import Image, UnidentifiedImageError

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.images import image_has_alpha, load_views_and_masks
from pipelines.defaults import OPTIMIZE_ITERATIONS, OPTIMIZE_RESOLUTION
from pipelines.device import stage_device
from pipelines.errors import InputError
from pipelines.optimize.trainer import StepInfo, TrainConfig, optimize_gaussians
from pipelines.optimize.visual_hull import VisualHull, carve_visual_hull, hull_gaussians
from pipelines.scene import Scene, to_model_frame
from pipelines.splats.gaussians import Gaussians

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_INIT_GAUSSIANS",
    "DEFAULT_THICKNESS",
    "OptimizeResult",
    "check_masks",
    "optimize_views",
    "refine_result",
]

DEFAULT_INIT_GAUSSIANS = 30_000
"""Gaussians sampled on the visual hull at 256 px (scaled with the pixel count elsewhere)."""
DEFAULT_THICKNESS = 0.02
"""Initial Gaussians are discs tangent to the hull, this fraction of their radius thick
(:func:`~pipelines.optimize.visual_hull.hull_gaussians`)."""
#: Settings tuned on the four bench objects (bench/optimize.py) at 256 px on 2 CPU cores.
DEFAULT_CONFIG = TrainConfig(iterations=OPTIMIZE_ITERATIONS)


@dataclass
class OptimizeResult(Scene):
    """What :func:`optimize_views` returns: a :class:`~pipelines.scene.Scene` (no GeoLRM
    extras; ``history`` holds one :class:`StepInfo` per step, ``timings`` the stages' seconds;
    the cameras have intrinsics at the optimisation resolution) and the visual hull.

    Attributes:
        hull: the visual hull (model frame), or None when starting from given Gaussians.
    """

    hull: VisualHull | None = None


def check_masks(cams: Cameras) -> None:
    """Raise :class:`InputError` unless every view has an alpha channel (reads headers only,
    so that a run fails before any work)."""

    if cams.image_paths is None:
        raise InputError("these cameras have no image files; give a transforms.json with images")
    for p in cams.image_paths:
        try:
            with Image.open(p) as im:
                ok = image_has_alpha(im)
        except FileNotFoundError:
            raise InputError(f"{p}: image not found; check the image path") from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise InputError(f"{p}: cannot read image ({e}); replace it with a valid PNG") from None
        if not ok:
            raise InputError(
                f"{p}: the image has no alpha channel; --method optimize carves the object from "
                "the views' masks, give RGBA images with a transparent background"
            )


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 16:
        raise InputError(f"--resolution {resolution} is too small; use at least 16 (e.g. 256)")


def _recorder(
    history: list[StepInfo], on_step: Callable[[StepInfo], None] | None
) -> Callable[[StepInfo], None]:
    """A step callback that appends each step to ``history``, then calls ``on_step``."""

    def record(info: StepInfo) -> None:
        history.append(info)
        if on_step is not None:
            on_step(info)

    return record


def optimize_views(
    cams: Cameras,
    resolution: int = OPTIMIZE_RESOLUTION,
    iterations: int | None = None,
    seed: int = 0,
    init: Gaussians | None = None,
    config: TrainConfig | None = None,
    device: str = "cpu",
    n_init: int | None = None,
    hull_resolution: int | None = None,
    thickness: float | None = DEFAULT_THICKNESS,
    on_step: Callable[[StepInfo], None] | None = None,
    on_stage: Callable[..., None] | None = None,
) -> OptimizeResult:
    """Fit Gaussians to posed RGBA views.

    Args:
        cams: cameras with ``image_paths`` (RGBA, transparent background), any frame.
        resolution: square size the views are fitted at (padded square, resized).
        iterations: optimisation steps (default: the config's, :data:`~pipelines.defaults.OPTIMIZE_ITERATIONS`).
        seed: seeds the initial samples, the view order and the splits.
        init: starting Gaussians in the **user** frame (None: sample the visual hull).
        config: :class:`TrainConfig` (default :data:`DEFAULT_CONFIG`).
        device: torch device string.
        n_init: Gaussians sampled on the visual hull (default: :data:`DEFAULT_INIT_GAUSSIANS`
            at 256 px, scaled with the pixel count, 2,000 to 100,000).
        hull_resolution: voxels along the longest side of the carving grid (default: half
            the resolution, 32 to 160).
        thickness: initial Gaussians are discs tangent to the hull, this fraction of their
            radius thick (None: isotropic blobs, which end up about a radius inside the surface).
        on_step: per-step progress callback.
        on_stage: called as each stage starts with a short name, and for the optimisation
            stage also its number of steps (``on_stage(name)`` / ``on_stage(name, steps)``).

    Returns:
        :class:`OptimizeResult`.
    """
    device = stage_device(device, "optimize")  # MPS: the CPU (numba rasteriser)
    _check_resolution(resolution)
    if len(cams) < 1:
        raise InputError("no views given; give at least one view")
    cfg = config or DEFAULT_CONFIG
    cfg = replace(cfg, seed=int(seed), iterations=int(iterations or cfg.iterations))
    timings: dict[str, float] = {}
    stage = on_stage or (lambda *_a: None)

    t = time.perf_counter()
    stage(f"Loading {len(cams)} views at {resolution} px")
    images, masks, used = load_views_and_masks(cams, resolution)
    cams_model, m = to_model_frame(used)
    timings["load"] = time.perf_counter() - t

    hull = None
    if init is None:
        t = time.perf_counter()
        stage("Carving the visual hull")
        if n_init is None:
            n_init = int(min(100_000, max(2_000, DEFAULT_INIT_GAUSSIANS * (resolution / 256) ** 2)))
        if hull_resolution is None:
            hull_resolution = int(min(160, max(32, resolution // 2)))
        # both run on one torch thread (their own pipelines.threads.torch_threads decorator)
        hull = carve_visual_hull(cams_model, masks, resolution=hull_resolution, margin_px=0.5)
        init_model = hull_gaussians(
            hull, cams_model, images, n_init, seed=seed, masks=masks, thickness=thickness
        )
        timings["hull"] = time.perf_counter() - t
    else:
        init_model = init.to(torch.float64).transformed(m).to(torch.float32)

    history: list[StepInfo] = []
    step_cb = _recorder(history, on_step)
    t = time.perf_counter()
    stage(f"Optimising {cfg.iterations} steps", cfg.iterations)
    g_model = optimize_gaussians(
        init_model, cams_model, images, masks, cfg, on_step=step_cb, device=device, hull=hull
    )
    timings["optimize"] = time.perf_counter() - t
    return OptimizeResult.from_model_frame(
        g_model, m, used, cams_model, hull=hull, history=history, timings=timings
    )


def refine_result(
    scene: Scene,
    cams: Cameras,
    iterations: int,
    resolution: int = OPTIMIZE_RESOLUTION,
    seed: int = 0,
    config: TrainConfig | None = None,
    device: str = "cpu",
    on_step: Callable[[StepInfo], None] | None = None,
    on_stage: Callable[..., None] | None = None,
) -> Scene:
    """Refine a scene (GeoLRM's) against its views.

    The scene's Gaussians (model frame) are optimised for ``iterations`` steps against the
    views at ``resolution`` (with the mask loss when the views have alpha). Returns a copy of
    ``scene`` with the refined Gaussians (both frames); its GeoLRM extras (anchors, raw
    tensors) are kept.
    """
    _check_resolution(resolution)
    cfg = replace(config or DEFAULT_CONFIG, seed=int(seed), iterations=int(iterations))
    stage = on_stage or (lambda *_a: None)
    stage(f"Loading {len(cams)} views at {resolution} px for refinement")
    # views without alpha: masks None, RGB loss only
    images, masks, _ = load_views_and_masks(cams, resolution, require_alpha=False)
    cams_model = scene.cameras_model.resized(resolution, resolution)
    stage(f"Refining {iterations} steps", int(iterations))
    history = list(scene.history)
    step_cb = _recorder(history, on_step)
    g_model = optimize_gaussians(
        scene.gaussians_model, cams_model, images, masks, cfg, on_step=step_cb, device=device
    )
    return scene.with_gaussians(g_model, history=history)
