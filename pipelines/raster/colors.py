"""Per-camera colour of each Gaussian: the one function every raster backend (and the
optimiser, through :func:`pipelines.raster.rasterize`) evaluates the colour with."""

from __future__ import annotations

import torch
from torch import Tensor

from pipelines.splats.gaussians import Gaussians
from pipelines.splats.sh import view_dependent_rgb

__all__ = ["camera_colors"]


def camera_colors(g: Gaussians, c2w: Tensor) -> Tensor:
    """``[C, N, 3]`` view-dependent colour of each of N Gaussians seen from the centre of each
    of C cameras ``c2w [C, 4, 4]`` (:func:`~pipelines.splats.sh.view_dependent_rgb`).

    Without higher-order SH the colour does not depend on the view, and the ``[N, 3]`` colours
    are expanded (a view, no copy; its gradient is the sum over the cameras).
    """
    if g.sh_rest is None:
        return g.colors[None].expand(len(c2w), -1, -1)
    cam_pos = c2w[:, :3, 3].to(g.means.dtype)
    return torch.stack(
        [view_dependent_rgb(g.colors, g.sh_rest, g.means, cam_pos[c]) for c in range(len(c2w))]
    )
