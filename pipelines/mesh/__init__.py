"""Gaussians to a triangle mesh: render depth + colour, fuse a TSDF, extract, decimate, export.

* :mod:`~pipelines.mesh.views` -- Fibonacci-sphere cameras framing the object, their renders;
* :mod:`~pipelines.mesh.tsdf` -- the TSDF volume and its fusion kernels (numba, PyTorch);
* :mod:`~pipelines.mesh.fusion` -- all the views fused into a TSDF over the object's box;
* :mod:`~pipelines.mesh.extract` -- marching cubes, main components, decimation, colours;
* :mod:`~pipelines.mesh.unseen` -- surface no input view saw, replaced by a membrane;
* :mod:`~pipelines.mesh.texture` -- UV unwrap and a texture baked from the renders;
* :mod:`~pipelines.mesh.pipeline` -- :func:`gaussians_to_mesh`, the whole chain;
* :mod:`~pipelines.mesh.export` -- ``.glb`` / ``.obj`` + ``.mtl`` / ``.ply``.

Each module states its conventions at the top; this file only re-exports.
"""

from pipelines.mesh.export import MESH_FORMATS, export_mesh
from pipelines.mesh.extract import (
    decimate,
    extract_mesh,
    keep_main_components,
    marching_cubes,
    sample_colors,
)
from pipelines.mesh.fusion import (
    auto_trunc_voxels,
    default_image_size,
    fuse_gaussians,
    fuse_views,
)
from pipelines.mesh.pipeline import MeshResult, gaussians_to_mesh
from pipelines.mesh.texture import bake_texture, texture_mesh, unwrap
from pipelines.mesh.tsdf import TSDFVolume, integrate_numba, integrate_torch
from pipelines.mesh.unseen import fill_unseen
from pipelines.mesh.views import (
    FusionViews,
    fibonacci_directions,
    mesh_cameras,
    object_box,
    render_views,
)

__all__ = [
    "FusionViews",
    "MESH_FORMATS",
    "MeshResult",
    "TSDFVolume",
    "auto_trunc_voxels",
    "bake_texture",
    "decimate",
    "default_image_size",
    "export_mesh",
    "extract_mesh",
    "fibonacci_directions",
    "fill_unseen",
    "fuse_gaussians",
    "fuse_views",
    "gaussians_to_mesh",
    "integrate_numba",
    "integrate_torch",
    "keep_main_components",
    "marching_cubes",
    "mesh_cameras",
    "object_box",
    "render_views",
    "sample_colors",
    "texture_mesh",
    "unwrap",
]
