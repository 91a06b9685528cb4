"""Gaussians to a triangle mesh, the whole chain: render, fuse a TSDF, extract, fill, texture.

:func:`gaussians_to_mesh` is the whole pipeline:

1. :func:`~pipelines.mesh.views.render_views`: cameras on a Fibonacci sphere around the object
   (every elevation, so the top and the bottom are seen too), each framing the object's
   bounding sphere; :func:`pipelines.raster.rasterize` renders colour, opacity and
   alpha-normalised expected depth; pixels with opacity < 0.5 are background and carve free
   space;
2. :func:`~pipelines.mesh.fusion.fuse_views`: a :class:`~pipelines.mesh.tsdf.TSDFVolume` over
   the object's box fuses every depth map and straight colour in one call (numba on the CPU,
   PyTorch on CUDA);
3. unobserved voxels outside the object's bounding sphere are marked empty;
4. :func:`~pipelines.mesh.extract.extract_mesh`: marching cubes on
   :func:`~pipelines.mesh.tsdf.solid_tsdf` (interiors a few views saw through stay solid),
   main components, quadric decimation to the face budget, vertex colours from the fused
   colour volume;
5. when the input views' cameras are given, :func:`~pipelines.mesh.unseen.fill_unseen`: surface
   those views never saw (and whose Gaussians they never saw either), such as the visual hull's
   cone under an object filmed from above, becomes a membrane spanning its seen border;
6. optionally (``texture_size``) :func:`~pipelines.mesh.texture.texture_mesh`: UV unwrap
   (xatlas) and a texture map baked from the same renders.

Conventions: meshes are in the Gaussians' z-up world;
:func:`~pipelines.mesh.export.export_mesh` writes them as ``.glb`` / ``.obj`` + ``.mtl`` /
``.ply`` in each format's habit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.mesh.extract import extract_mesh
from pipelines.mesh.fusion import check_fusion_options, default_image_size, fuse_views
from pipelines.mesh.texture import check_texture_size, texture_mesh
from pipelines.mesh.unseen import fill_unseen
from pipelines.mesh.views import render_views
from pipelines.splats.gaussians import Gaussians

if TYPE_CHECKING:
    import trimesh

    from pipelines.cameras.cameras import Cameras

__all__ = ["MeshResult", "gaussians_to_mesh"]


@dataclass
class MeshResult:
    """What :func:`gaussians_to_mesh` made.

    Attributes:
        mesh: the ``trimesh.Trimesh`` (vertex colours, or UVs and a texture).
        filled: fraction of its vertices that no input view saw and the fill replaced (None
            when no cameras were given).
        texture_seen: fraction of the texels some render saw (None without a texture).
    """

    mesh: trimesh.Trimesh
    filled: float | None = None
    texture_seen: float | None = None


def gaussians_to_mesh(
    g: Gaussians,
    views: int = 60,
    resolution: int = 256,
    faces: int | None = 100_000,
    trunc_voxels: float | None = None,
    image_size: int | None = None,
    min_component: float = 0.05,
    device: str = "cpu",
    on_view: Callable[[int], None] | None = None,
    texture_size: int | None = None,
    on_stage: Callable[[str, int | None], None] | None = None,
    cameras: Cameras | None = None,
) -> MeshResult:
    """Gaussians -> coloured triangle mesh (z-up world like ``g``), with what each step did.

    Args:
        g: Gaussians.
        views: fusion views (Fibonacci sphere).
        resolution: TSDF voxels along the longest side of the object's box.
        faces: face budget of the decimated mesh (None: keep marching cubes' full mesh).
        trunc_voxels: TSDF truncation distance in voxels; None = :func:`~pipelines.mesh.fusion.auto_trunc_voxels`.
        image_size: render size (None: from ``resolution``, see :func:`~pipelines.mesh.fusion.fuse_gaussians`).
        min_component: keep connected components with at least this fraction of the largest
            one's faces (drops floaters).
        device: ``cpu`` or ``cuda[:N]`` (``mps``: the CPU; the texture is always baked on the
            CPU).
        on_view: progress callback, see :func:`~pipelines.mesh.fusion.fuse_gaussians`.
        texture_size: also UV-unwrap the mesh and bake a ``texture_size``-texel square texture
            from the renders (:func:`~pipelines.mesh.texture.texture_mesh`); the mesh then has
            UVs and a texture instead of vertex colours. None: vertex colours only.
        on_stage: called as each step starts with its name and, for ``"render"``, the number
            of views: ``render``, ``fuse``, ``extract``, ``fill`` (with ``cameras``),
            ``texture`` (with ``texture_size``).
        cameras: the input views' cameras (in ``g``'s frame), if known: surface they never saw
            is replaced by a membrane over its seen border
            (:func:`~pipelines.mesh.unseen.fill_unseen`), before any texture is baked.

    Raises:
        InputError: bad options, or nothing to mesh.
    """
    check_fusion_options(resolution, trunc_voxels)
    if texture_size is not None:
        check_texture_size(texture_size)
    stage = on_stage or (lambda name, total: None)
    size = default_image_size(resolution) if image_size is None else image_size
    stage("render", views)
    fv = render_views(g, views, size, device, on_view=on_view)
    stage("fuse", None)
    vol = fuse_views(fv, resolution, trunc_voxels, device)
    if texture_size is None:
        del fv  # only the texture bake needs the renders
    stage("extract", None)
    result = MeshResult(extract_mesh(vol, faces=faces, min_component=min_component))
    if cameras is not None:
        stage("fill", None)
        filled = fill_unseen(result.mesh, g, cameras, device=device)
        result.mesh, result.filled = filled.mesh, float(filled.filled.mean())
    if texture_size is not None:
        stage("texture", None)
        result.mesh, baked = texture_mesh(result.mesh, fv, vol, texture_size)
        result.texture_seen = float(baked.seen_fraction)
    return result
