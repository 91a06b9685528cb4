"""Gaussian-splat rasterization (see :mod:`pipelines.raster.rasterize`): one entry point,
three backends (numba CPU, gsplat CUDA, pure-PyTorch reference), one output contract."""

from pipelines.raster.output import RenderMeta, RenderOutput
from pipelines.raster.rasterize import BACKENDS, rasterize, render_with, resolve_backend

__all__ = ["BACKENDS", "RenderMeta", "RenderOutput", "rasterize", "render_with", "resolve_backend"]
