"""Surface no input view saw: find it, and replace it by a membrane spanning its seen border.

Fusion views circle the whole object, but the input views usually do not: a 10 degree orbit never
sees the underside of a bottle. There the Gaussians (and so the fused mesh) keep whatever the
visual hull left, a cone hanging below the true bottom. No input image says what the surface
does there, so a prior has to: the smoothest surface spanning the seen border, i.e. the discrete
harmonic surface (each unseen vertex the mean of its neighbours; a flat disc for a flat rim).

* :func:`seen_vertices` tests each vertex against depth maps rendered at the input cameras;
* :func:`unseen_patches` groups the unseen vertices into connected patches; a patch counts as
  a blind spot only when the Gaussians under it were hidden in those views as well (their
  visible fraction, :func:`pipelines.raster.visibility.view_contributions`): a patch the views
  saw edge-on (an animal's belly filmed from slightly above) was shaped by the silhouettes and
  keeps its fitted shape;
* :func:`membrane_fill` solves the graph Laplace equation for the blind spots' positions
  (and colours), everything else held fixed;
* :func:`fill_unseen` chains them for a mesh fused from Gaussians.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.geometry import project
from pipelines.device import stage_device
from pipelines.mesh.views import object_box
from pipelines.raster.visibility import view_visibility
from pipelines.splats.gaussians import Gaussians

__all__ = [
    "UnseenFill",
    "anchored",
    "fill_unseen",
    "membrane_fill",
    "seen_vertices",
    "unseen_patches",
]

#: A vertex counts as seen when its depth is within this fraction of the object's radius of the
#: depth rendered at that pixel.
DEFAULT_TOLERANCE = 0.02
#: An unseen patch is filled when the median visible fraction of its Gaussians is below this.
DEFAULT_MAX_SUPPORT = 0.15


def seen_vertices(
    points: torch.Tensor,
    normals: torch.Tensor,
    depth: torch.Tensor,
    alpha: torch.Tensor,
    c2w: torch.Tensor,
    K: torch.Tensor,
    tol: float,
    min_alpha: float = 0.5,
    min_cos: float = 0.1,
) -> torch.Tensor:
    """Which points some view sees: in front of the camera, inside its image, facing it (not at
    a grazing angle), on an opaque pixel whose rendered depth matches the point's own.

    The depth test allows ``tol`` plus the depth change across one pixel of a surface as
    oblique as the point's normal (its pixel footprint times the tangent of the viewing angle,
    capped at 4), so grazing views of a smooth surface still count.

    Args:
        points: ``[N, 3]`` world positions.
        normals: ``[N, 3]`` outward unit normals.
        depth: ``[V, H, W]`` camera z (positive along the optical axis) per pixel.
        alpha: ``[V, H, W]`` accumulated opacity per pixel.
        c2w: ``[V, 4, 4]`` OpenGL camera-to-world (the camera looks down its -z, y up).
        K: ``[V, 3, 3]`` intrinsics in pixels (pixel centres at ``i + 0.5``).
        tol: depth tolerance in world units (for a surface facing the camera).
        min_alpha: pixels below this opacity are background.
        min_cos: a view sees a point only within ``acos(min_cos)`` of its normal (84 deg).

    Returns:
        ``[N]`` bool.
    """
    points = points.to(torch.float32)
    normals = normals.to(torch.float32)
    _, h, w = depth.shape
    seen = torch.zeros(len(points), dtype=torch.bool)
    for v in range(len(c2w)):
        origin = c2w[v, :3, 3].float()
        uv, z = project(points, c2w[v].float(), K[v], z_min=1e-6)
        ok = z > 1e-6
        col, row = uv[:, 0].floor(), uv[:, 1].floor()
        ok &= (col >= 0) & (col < w) & (row >= 0) & (row < h)
        c = col.clamp(0, w - 1).long()
        r = row.clamp(0, h - 1).long()
        ok &= alpha[v, r, c] >= min_alpha
        to_cam = origin - points
        cos = (to_cam * normals).sum(-1) / to_cam.norm(dim=-1).clamp_min(1e-12)
        ok &= cos > min_cos
        # one pixel's footprint at the point, times the slope of an oblique surface (capped)
        slope = ((1.0 - cos * cos).clamp_min(0.0).sqrt() / cos.clamp_min(1e-6)).clamp_max(4.0)
        ok &= (depth[v, r, c] - z).abs() <= tol + z / K[v, 0, 0] * slope
        seen |= ok
    return seen


def _adjacency(n: int, faces: np.ndarray, keep: np.ndarray | None = None):
    """``[n, n]`` symmetric scipy CSR adjacency of the mesh's edges (1 per edge), only edges
    between two ``keep`` vertices when given."""
    import scipy.sparse as sp

    f = np.asarray(faces, dtype=np.int64)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    if keep is not None:
        edges = edges[keep[edges[:, 0]] & keep[edges[:, 1]]]
    edges = np.concatenate([edges, edges[:, ::-1]])
    adj = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    adj.data[:] = 1.0  # an edge shared by two faces counts once
    return adj


def anchored(faces: np.ndarray, fixed: np.ndarray, adjacency=None) -> np.ndarray:
    """``[N]`` bool: vertices whose connected component of the mesh holds a ``fixed`` vertex
    (the ones :func:`membrane_fill` can move); ``adjacency``: the mesh's, if already built."""
    from scipy.sparse.csgraph import connected_components

    fixed = np.asarray(fixed, dtype=bool)
    adj = _adjacency(len(fixed), faces) if adjacency is None else adjacency
    _, comp = connected_components(adj, directed=False)
    return (np.bincount(comp, weights=fixed.astype(np.float64)) > 0)[comp]


def membrane_fill(
    verts: np.ndarray, faces: np.ndarray, fixed: np.ndarray, values: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Harmonic fill: every free vertex becomes the mean of its edge neighbours.

    Solves the uniform graph Laplace equation ``L x = 0`` on the free vertices with the fixed
    ones as boundary values, for the positions and (optionally) per-vertex values such as
    colours. A component of the mesh without any fixed vertex is left as it is.

    Args:
        verts: ``[N, 3]`` float vertex positions.
        faces: ``[F, 3]`` int triangle indices.
        fixed: ``[N]`` bool, True where the vertex keeps its position.
        values: optional ``[N, C]`` float per-vertex values, filled the same way.

    Returns:
        ``(verts [N, 3] float64, values [N, C] float64 or None)``.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    x = np.asarray(verts, dtype=np.float64).copy()
    vals = None if values is None else np.asarray(values, dtype=np.float64).copy()
    adj = _adjacency(len(x), faces)
    fixed = np.asarray(fixed, dtype=bool)
    fixed = fixed | ~anchored(faces, fixed, adj)  # nothing to span: leave such components alone
    free = np.flatnonzero(~fixed)
    if len(free) == 0:
        return x, vals
    keep = np.flatnonzero(fixed)
    lap = (sp.diags(np.asarray(adj.sum(1)).ravel()) - adj).tocsr()
    rhs = x[keep] if vals is None else np.concatenate([x[keep], vals[keep]], 1)
    solved = splu(lap[free][:, free].tocsc()).solve(-(lap[free][:, keep] @ rhs))
    x[free] = solved[:, :3]
    if vals is not None:
        vals[free] = solved[:, 3:]
    return x, vals


def _resized(cameras: Cameras, size: int) -> Cameras:
    """``cameras`` scaled so that the longest image side is ``size`` pixels."""
    s = size / max(cameras.width, cameras.height)
    return cameras.resized(max(1, round(cameras.width * s)), max(1, round(cameras.height * s)))


def unseen_patches(faces: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    """``[N]`` int patch label of each vertex: connected components of the unseen vertices
    (through edges between two unseen vertices); -1 for seen vertices."""
    from scipy.sparse.csgraph import connected_components

    unseen = np.asarray(unseen, dtype=bool)
    _, labels = connected_components(_adjacency(len(unseen), faces, unseen), directed=False)
    return np.where(unseen, labels, -1)


@dataclass
class UnseenFill:
    """What :func:`fill_unseen` returns.

    Attributes:
        mesh: the filled ``trimesh.Trimesh``.
        unseen: ``[N]`` bool, vertices no input view saw (by :func:`seen_vertices`).
        filled: ``[N]`` bool, the unseen vertices that were membrane-filled (those in patches
            whose Gaussians the views hardly saw either).
    """

    mesh: object
    unseen: np.ndarray
    filled: np.ndarray


def fill_unseen(
    mesh,
    g: Gaussians,
    cameras: Cameras,
    tolerance: float = DEFAULT_TOLERANCE,
    max_support: float = DEFAULT_MAX_SUPPORT,
    size: int = 256,
    device: str = "cpu",
) -> UnseenFill:
    """Replace the parts of ``mesh`` that the input cameras never saw by a membrane spanning
    their seen border.

    1. :func:`seen_vertices` against ``g``'s depth rendered at ``cameras`` (the Gaussians the
       mesh was fused from; the input images are not needed);
    2. the unseen vertices form patches (:func:`unseen_patches`); a patch is filled only when
       the Gaussians under it were hidden in the views too: the median, over its vertices, of
       the largest visible fraction (:func:`~pipelines.raster.visibility.view_visibility`) of
       the 8 nearest Gaussians is below ``max_support``. A patch the views saw edge-on, such as
       the belly of an animal filmed from slightly above, keeps the fitted shape: its Gaussians
       were shaped by the silhouettes;
    3. :func:`membrane_fill` of positions and vertex colours.

    Args:
        mesh: ``trimesh.Trimesh`` in ``g``'s frame (e.g. from :func:`~pipelines.mesh.extract_mesh`).
        g: the Gaussians.
        cameras: the input views' cameras, in ``g``'s frame.
        tolerance: depth tolerance as a fraction of the object's bounding radius.
        max_support: patches whose Gaussians' median visible fraction reaches this are kept.
        size: render size (longest side) for the visibility tests.
        device: where to render.
    """
    import trimesh
    from scipy.spatial import cKDTree

    device = stage_device(device, "raster")
    _, _, _, radius = object_box(g)
    cams = _resized(cameras, size)
    # one render per view gives the depth for the seen test and the Gaussians' visibility
    vis = view_visibility(g.detach().to(device), cams.c2w, cams.K, cams.width, cams.height)
    depth, alpha = vis.depth.cpu(), vis.alpha.cpu()
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    normals = torch.tensor(np.array(mesh.vertex_normals), dtype=torch.float32)
    seen = seen_vertices(
        torch.from_numpy(verts), normals, depth, alpha, cams.c2w, cams.K, tolerance * radius
    ).numpy()
    unseen = ~seen
    filled = np.zeros_like(unseen)
    if unseen.any():
        _, nearest = cKDTree(g.means.detach().cpu().numpy()).query(verts, k=min(8, len(g)))
        support = vis.fraction.cpu().numpy()[nearest.reshape(len(verts), -1)].max(1)
        labels = unseen_patches(faces, unseen)
        for patch in np.unique(labels[unseen]):
            members = labels == patch
            if np.median(support[members]) < max_support:
                filled |= members
        filled &= anchored(faces, ~filled)  # a part no view saw at all has no border to span
    colors = np.asarray(mesh.visual.vertex_colors, dtype=np.float64)
    new_verts, new_colors = membrane_fill(verts, faces, ~filled, colors)
    rgba = np.clip(np.round(new_colors), 0, 255).astype(np.uint8)
    out = trimesh.Trimesh(new_verts, faces, vertex_colors=rgba, process=False)
    return UnseenFill(out, unseen, filled)
