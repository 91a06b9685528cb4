"""1-D Gaussian filter taps shared by the fit's smoothing steps (the D-SSIM window of
:mod:`~pipelines.optimize.losses`, the blurred occupancy of
:func:`~pipelines.optimize.visual_hull.hull_normals`).

:func:`pipelines.optimize.photometric.blur` computes its taps in the images' dtype instead
(float32 arithmetic gives other bits than these float64 taps cast down), and
:mod:`pipelines.evaluate`'s SSIM follows the metric's own convention; both stay separate so
their numbers do not change.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gaussian_taps"]


def gaussian_taps(radius: int, sigma: float) -> Tensor:
    """``[2 radius + 1]`` float64 taps ``exp(-x^2 / (2 sigma^2))`` at ``x = -radius..radius``,
    normalised to sum 1."""
    x = torch.arange(2 * radius + 1, dtype=torch.float64) - radius
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()
