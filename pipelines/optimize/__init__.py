"""Per-scene Gaussian optimisation: fit Gaussians to posed views, with or without GeoLRM.

:func:`optimize_views` (no network: ``geolrm recon --method optimize``) and
:func:`refine_result` (GeoLRM's Gaussians refined: ``--refine N``) are in
:mod:`~pipelines.optimize.fit`; the loop is :mod:`~pipelines.optimize.trainer`.
"""

from pipelines.optimize.fit import (
    DEFAULT_CONFIG,
    DEFAULT_INIT_GAUSSIANS,
    DEFAULT_THICKNESS,
    OptimizeResult,
    check_masks,
    optimize_views,
    refine_result,
)
from pipelines.optimize.trainer import StepInfo, TrainConfig, optimize_gaussians
from pipelines.optimize.visual_hull import VisualHull, carve_visual_hull, hull_gaussians

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_INIT_GAUSSIANS",
    "DEFAULT_THICKNESS",
    "OptimizeResult",
    "StepInfo",
    "TrainConfig",
    "VisualHull",
    "carve_visual_hull",
    "check_masks",
    "hull_gaussians",
    "optimize_gaussians",
    "optimize_views",
    "refine_result",
]
