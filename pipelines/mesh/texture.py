"""Texture maps for meshes: UV unwrap, UV-space rasterisation, baking colour from the renders.

:func:`texture_mesh` is the whole step, on a mesh from
:func:`~pipelines.mesh.extract.extract_mesh` and the renders it was fused from
(:class:`~pipelines.mesh.views.FusionViews`):

1. :func:`unwrap` -- xatlas charts and packs the surface into one square atlas; vertices are
   split along chart seams;
2. :func:`rasterize_uv` -- every texel whose centre lies in a triangle in UV space gets that
   triangle and its barycentric coordinates; :func:`texel_points` turns them into a 3D
   position and an interpolated (smooth) normal;
3. :func:`view_colors` -- each texel's point is projected into every view; a view counts when
   the point is visible there (the rendered depth at its pixel agrees within ``depth_tol``,
   which also rules out background pixels, alpha < 0.5) and the surface faces the camera; the
   views' colours are averaged with weights ``cos^power`` of the angle between the normal and
   the direction to the camera (``power = 4``: the most frontal views dominate, so the texture
   stays sharp where views disagree slightly);
4. texels no view sees take the fused colour volume's colour
   (:func:`~pipelines.mesh.extract.sample_colors`, the vertex-colour rule);
5. :func:`dilate` -- every empty texel takes the colour of the nearest filled one, so bilinear
   filtering and mip-maps never mix in a colour from outside the chart.

Texel ``(row r, column c)`` of a ``T x T`` texture has its centre at ``u = (c + 0.5) / T``,
``v = 1 - (r + 0.5) / T`` (the OBJ / trimesh UV convention: ``v`` points up the image; glTF
export flips it). The two kernels have a compiled numba fast path and a readable NumPy
reference beside it (:func:`rasterize_uv_reference`, :func:`view_colors_reference`) that the
tests compare them to.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from pipelines.cameras.geometry import projection_matrices
from pipelines.errors import InputError
from pipelines.mesh.extract import sample_colors
from pipelines.numba_jit import cached_njit

__all__ = [
    "BakedTexture",
    "Unwrapped",
    "bake_texture",
    "check_texture_size",
    "default_depth_tol",
    "dilate",
    "rasterize_uv",
    "rasterize_uv_reference",
    "texel_points",
    "texture_mesh",
    "textured_mesh",
    "unwrap",
    "view_colors",
    "view_colors_reference",
]

TEXTURE_SIZES = (16, 8192)  # smallest and largest texture side accepted
CHUNK_FACES = 400  # faces per piece charted on its own (see unwrap)
_MIN_UV_AREA = 1e-12  # triangles with a smaller doubled texel-space area are skipped
_Z_MIN = 1e-6  # points closer to the camera plane than this are behind it
_BAND = 16  # texel rows per work item of the UV rasteriser


# ----------------------------------------------------------------------------- unwrap
class Unwrapped(NamedTuple):
    """A mesh cut along its UV seams (what :func:`unwrap` returns).

    Attributes:
        verts: ``[N, 3]`` float64 positions (a source vertex appears once per chart it is in).
        faces: ``[F, 3]`` int64, the source mesh's faces in the same order.
        uv: ``[N, 2]`` float32 in ``[0, 1]`` (``v`` up, see the module docstring).
        source: ``[N]`` int64 index of each vertex in the source mesh.
    """

    verts: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    source: np.ndarray


def _split_faces(centres: np.ndarray, ids: np.ndarray, max_faces: int) -> list[np.ndarray]:
    """Recursive median cuts along the longest axis until each piece has ``<= max_faces``."""
    if len(ids) <= max_faces:
        return [ids]
    c = centres[ids]
    axis = int(np.argmax(c.max(0) - c.min(0)))
    order = ids[np.argsort(c[:, axis], kind="stable")]
    half = len(order) // 2
    return _split_faces(centres, order[:half], max_faces) + _split_faces(
        centres, order[half:], max_faces
    )


def unwrap(
    mesh, size: int = 1024, padding: int = 1, chunk_faces: int | None = CHUNK_FACES
) -> Unwrapped:
    """UV-unwrap ``mesh`` with xatlas into one square atlas.

    Args:
        mesh: a ``trimesh.Trimesh``.
        size: the texture side the atlas is made for (sets the padding's scale).
        padding: texels left between charts (xatlas also leaves room for bilinear filtering).
        chunk_faces: cut the mesh into spatially compact pieces of about this many faces and
            chart each on its own (charts never cross a cut); None charts the mesh whole.
            xatlas's chart search grows faster than linearly with the faces of one mesh --
            measured on this project's 2-core CPU for a 100k-face mesh: whole 21 s, pieces of
            6k faces 11 s, of 400 faces 3.9 s -- while its charts hold about 40 faces each on
            such meshes, so 400-face pieces rarely cut a chart it would have made.

    Returns:
        :class:`Unwrapped`; UVs are scaled by the atlas's longer side, so texels stay square.

    Raises:
        InputError: the mesh has no faces.
    """
    import xatlas

    verts = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        raise InputError("the mesh has no faces; nothing to unwrap")
    centres = verts[faces].mean(1)
    pieces = _split_faces(centres, np.arange(len(faces)), chunk_faces or len(faces))
    atlas = xatlas.Atlas()
    used_per_piece = []
    for ids in pieces:
        used, local = np.unique(faces[ids], return_inverse=True)
        used_per_piece.append(used)
        atlas.add_mesh(
            np.ascontiguousarray(verts[used], np.float32),
            np.ascontiguousarray(local.reshape(-1, 3), np.uint32),
        )
    chart_options = xatlas.ChartOptions()
    pack_options = xatlas.PackOptions()
    pack_options.padding = int(padding)
    pack_options.bilinear = True
    pack_options.resolution = 0  # one atlas, as large as texels_per_unit makes it
    area = float(mesh.area) if mesh.area > 0 else 1.0
    pack_options.texels_per_unit = float(size * math.sqrt(0.75 / area))
    atlas.generate(chart_options, pack_options)
    side = max(atlas.width, atlas.height)
    out_faces = np.empty_like(faces)
    out_verts, out_uv, out_source = [], [], []
    offset = 0
    for k, (ids, used) in enumerate(zip(pieces, used_per_piece, strict=True)):
        vmap, index, uv = atlas[k]
        out_faces[ids] = index.astype(np.int64) + offset
        src = used[vmap.astype(np.int64)]
        out_source.append(src)
        out_verts.append(verts[src])
        scale = np.array([atlas.width / side, atlas.height / side], np.float32)
        out_uv.append(uv * scale)
        offset += len(vmap)
    uv = np.concatenate(out_uv).astype(np.float32)
    # xatlas's v runs down the atlas; the texture's v runs up (module docstring)
    uv[:, 1] = 1.0 - uv[:, 1]
    return Unwrapped(np.concatenate(out_verts), out_faces, uv, np.concatenate(out_source))


# ----------------------------------------------------------------------------- UV rasteriser
def _texel_xy(uv: np.ndarray, size: int) -> np.ndarray:
    """``[N, 2]`` float64 texel-space ``(column, row)``: texel centres at whole numbers."""
    uv = np.asarray(uv, dtype=np.float64)
    return np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], -1)


def rasterize_uv_reference(
    uv: np.ndarray, faces: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Readable reference of :func:`rasterize_uv`: one triangle at a time, in face order.

    A texel belongs to a triangle when its centre is inside or on the triangle's edges (all
    three barycentric coordinates ``>= 0``); where triangles share texels, the later face wins.
    Triangles with (nearly) zero area in UV space are skipped.

    Returns:
        ``(face_id [T, T] int32, -1 = no triangle; bary [T, T, 3] float32)``.
    """
    xy = _texel_xy(uv, size)
    face_id = np.full((size, size), -1, np.int32)
    bary = np.zeros((size, size, 3), np.float32)
    for f, (a, b, c) in enumerate(xy[np.asarray(faces)]):
        area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(area) < _MIN_UV_AREA:
            continue
        lo = np.maximum(np.ceil(np.minimum(np.minimum(a, b), c)), 0).astype(int)
        hi = np.minimum(np.floor(np.maximum(np.maximum(a, b), c)), size - 1).astype(int)
        if (hi < lo).any():
            continue
        px, py = np.meshgrid(
            np.arange(lo[0], hi[0] + 1, dtype=np.float64),
            np.arange(lo[1], hi[1] + 1, dtype=np.float64),
        )
        w0 = ((c[0] - b[0]) * (py - b[1]) - (c[1] - b[1]) * (px - b[0])) / area
        w1 = ((a[0] - c[0]) * (py - c[1]) - (a[1] - c[1]) * (px - c[0])) / area
        w2 = ((b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0])) / area
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        rows, cols = py[inside].astype(int), px[inside].astype(int)
        face_id[rows, cols] = f
        bary[rows, cols] = np.stack([w0[inside], w1[inside], w2[inside]], -1)
    return face_id, bary


def _bin_rows(xy: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Faces per band of :data:`_BAND` texel rows, in face order: ``(offsets, order)`` (CSR)."""
    ys = xy[faces][..., 1]
    r0 = np.maximum(np.ceil(ys.min(1)), 0)
    r1 = np.minimum(np.floor(ys.max(1)), size - 1)
    ok = r1 >= r0
    f = np.flatnonzero(ok)
    b0 = (r0[ok] // _BAND).astype(np.int64)
    n = (r1[ok] // _BAND).astype(np.int64) - b0 + 1
    face = np.repeat(f, n)
    band = np.repeat(b0, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    order = np.argsort(band, kind="stable")  # stable: face order within a band
    n_bands = -(-size // _BAND)
    offsets = np.zeros(n_bands + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(band, minlength=n_bands))
    return offsets, face[order].astype(np.int64)


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For every texel of a ``size x size`` texture, the triangle covering its centre in UV space.

    Numba fast path, in parallel over bands of texel rows (each band visits its triangles in
    face order, so the result is that of :func:`rasterize_uv_reference`).

    Args:
        uv: ``[N, 2]`` texture coordinates (module docstring's convention).
        faces: ``[F, 3]`` vertex indices.
        size: texture side ``T``.

    Returns:
        ``(face_id [T, T] int32, -1 = no triangle; bary [T, T, 3] float32)``: the barycentric
        coordinates of the texel centre in that triangle.
    """
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    xy = np.ascontiguousarray(_texel_xy(uv, size))
    face_id = np.full((size, size), -1, np.int32)
    bary = np.zeros((size, size, 3), np.float32)
    if len(faces):
        offsets, order = _bin_rows(xy, faces, size)
        _kernels()["raster"](xy, faces, offsets, order, _BAND, _MIN_UV_AREA, face_id, bary)
    return face_id, bary


def texel_points(
    verts: np.ndarray,
    normals: np.ndarray,
    faces: np.ndarray,
    face_id: np.ndarray,
    bary: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3D position and smooth normal of every covered texel.

    Args:
        verts: ``[N, 3]`` positions; normals: ``[N, 3]`` vertex normals; faces: ``[F, 3]``.
        face_id, bary: :func:`rasterize_uv`'s output.

    Returns:
        ``(texels [M] int64 flat texel index, points [M, 3] float64, normals [M, 3] float64
        unit length)``.
    """
    flat = face_id.reshape(-1)
    texels = np.flatnonzero(flat >= 0)
    tri = np.asarray(faces)[flat[texels]]
    w = bary.reshape(-1, 3)[texels].astype(np.float64)
    points = np.einsum("mk,mkd->md", w, np.asarray(verts, np.float64)[tri])
    nrm = np.einsum("mk,mkd->md", w, np.asarray(normals, np.float64)[tri])
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    return texels, points, nrm


# ----------------------------------------------------------------------------- view colours
def _view_arrays(fv) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(P [V, 3, 4] float64, eyes [V, 3] float64, depth [V, H, W] float32, rgb uint8)``."""
    P = np.ascontiguousarray(projection_matrices(fv.c2w, fv.K).numpy())
    eyes = np.ascontiguousarray(fv.c2w[:, :3, 3].detach().to("cpu", torch.float64).numpy())
    depth = np.ascontiguousarray(fv.depth.detach().to("cpu", torch.float32).numpy())
    rgb = fv.rgb.detach().cpu()
    if rgb.dtype != torch.uint8:
        rgb = (rgb.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return P, eyes, depth, np.ascontiguousarray(rgb.numpy())


def view_colors_reference(
    points: np.ndarray,
    normals: np.ndarray,
    fv,
    depth_tol: float,
    power: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Readable reference of :func:`view_colors`: view by view, vectorised over the points.

    For each view: project the point (OpenCV pixel coordinates, centres at ``i + 0.5``); skip
    it when behind the camera or outside the image, when the rendered depth at its pixel is
    background (0) or differs from the point's camera z by more than ``depth_tol``, or when
    the normal does not face the camera (``cos <= 0``). Its colour is the bilinear
    interpolation of the 4 nearest pixels, counting only pixels whose depth also agrees; its
    weight is ``cos^power``.

    Returns:
        ``(rgb [M, 3] float64 in [0, 1], weight [M] float64)``: the weighted mean colour (0
        where no view counts) and the sum of the weights.
    """
    P, eyes, depth, rgb = _view_arrays(fv)
    _, h, w = depth.shape
    x, y, z = (np.asarray(points, np.float64)[:, k] for k in range(3))
    n = np.asarray(normals, np.float64)
    acc = np.zeros((len(x), 3))
    wsum = np.zeros(len(x))
    for v in range(len(P)):
        p = P[v]
        cz = p[2, 0] * x + p[2, 1] * y + p[2, 2] * z + p[2, 3]
        front = cz > _Z_MIN
        zs = np.where(front, cz, 1.0)
        u = (p[0, 0] * x + p[0, 1] * y + p[0, 2] * z + p[0, 3]) / zs
        t = (p[1, 0] * x + p[1, 1] * y + p[1, 2] * z + p[1, 3]) / zs
        ok = front & (u >= 0) & (u < w) & (t >= 0) & (t < h)
        col = np.clip(np.floor(np.where(ok, u, 0)), 0, w - 1).astype(int)
        row = np.clip(np.floor(np.where(ok, t, 0)), 0, h - 1).astype(int)
        d = depth[v, row, col].astype(np.float64)
        ok &= (d > 0) & (np.abs(d - cz) <= depth_tol)
        dx, dy, dz = eyes[v, 0] - x, eyes[v, 1] - y, eyes[v, 2] - z
        dist = np.sqrt(dx * dx + dy * dy + dz * dz)
        cos = (n[:, 0] * dx + n[:, 1] * dy + n[:, 2] * dz) / np.maximum(dist, 1e-12)
        ok &= cos > 0
        # bilinear colour over the pixels that see the point
        fx, fy = u - 0.5, t - 0.5
        x0, y0 = np.floor(fx), np.floor(fy)
        ax, ay = fx - x0, fy - y0
        c_sum = np.zeros((len(x), 3))
        c_w = np.zeros(len(x))
        for oy, wy in ((0, 1.0 - ay), (1, ay)):
            for ox, wx in ((0, 1.0 - ax), (1, ax)):
                rr = np.clip(np.where(ok, y0, 0) + oy, 0, h - 1).astype(int)
                cc = np.clip(np.where(ok, x0, 0) + ox, 0, w - 1).astype(int)
                dn = depth[v, rr, cc].astype(np.float64)
                wn = wx * wy * ((dn > 0) & (np.abs(dn - cz) <= depth_tol))
                c_sum += wn[:, None] * rgb[v, rr, cc].astype(np.float64)
                c_w += wn
        weight = np.where(ok, np.maximum(cos, 0.0) ** power, 0.0)
        acc += (weight / np.maximum(c_w, 1e-300))[:, None] * c_sum
        wsum += weight
    mean = acc / np.maximum(wsum, 1e-300)[:, None] / 255.0
    return mean, wsum


def view_colors(
    points: np.ndarray,
    normals: np.ndarray,
    fv,
    depth_tol: float,
    power: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Visibility-tested, ``cos^power``-weighted mean colour of ``points`` over the views.

    Numba fast path (parallel over points) of :func:`view_colors_reference`, same rule.

    Args:
        points: ``[M, 3]`` world positions (the frame of ``fv``'s cameras).
        normals: ``[M, 3]`` unit normals (pointing out of the object).
        fv: :class:`~pipelines.mesh.views.FusionViews` (depth 0 = background, straight RGB).
        depth_tol: largest ``|rendered depth - point depth|`` (world units) that counts as
            visible.
        power: sharpening exponent of the cosine weight.

    Returns:
        ``(rgb [M, 3] float64 in [0, 1], weight [M] float64)``: mean colour (0 where no view
        counts) and the sum of the weights.
    """
    P, eyes, depth, rgb = _view_arrays(fv)
    pts = np.ascontiguousarray(points, np.float64)
    nrm = np.ascontiguousarray(normals, np.float64)
    acc = np.zeros((len(pts), 3))
    wsum = np.zeros(len(pts))
    if len(pts):
        _kernels()["colors"](
            pts, nrm, P, eyes, depth, rgb, float(depth_tol), float(power), acc, wsum
        )
    return acc / 255.0, wsum


# ----------------------------------------------------------------------------- numba kernels
@functools.cache
def _kernels() -> dict:
    """Compile (or load from numba's on-disk cache) the kernels on first use."""
    from numba import prange

    jit = functools.partial(cached_njit, error_model="numpy")

    @jit(parallel=True)
    def raster(xy, faces, offsets, order, band, min_area, face_id, bary):
        size = face_id.shape[0]
        for b in prange(offsets.shape[0] - 1):
            row_lo = b * band
            row_hi = min(row_lo + band, size) - 1
            for k in range(offsets[b], offsets[b + 1]):
                f = order[k]
                ax, ay = xy[faces[f, 0], 0], xy[faces[f, 0], 1]
                bx, by = xy[faces[f, 1], 0], xy[faces[f, 1], 1]
                cx, cy = xy[faces[f, 2], 0], xy[faces[f, 2], 1]
                area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
                if abs(area) < min_area:
                    continue
                c0 = max(math.ceil(min(min(ax, bx), cx)), 0)
                c1 = min(math.floor(max(max(ax, bx), cx)), size - 1)
                r0 = max(math.ceil(min(min(ay, by), cy)), row_lo)
                r1 = min(math.floor(max(max(ay, by), cy)), row_hi)
                for r in range(r0, r1 + 1):
                    py = float(r)
                    for c in range(c0, c1 + 1):
                        px = float(c)
                        w0 = ((cx - bx) * (py - by) - (cy - by) * (px - bx)) / area
                        w1 = ((ax - cx) * (py - cy) - (ay - cy) * (px - cx)) / area
                        w2 = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) / area
                        if w0 >= 0 and w1 >= 0 and w2 >= 0:
                            face_id[r, c] = f
                            bary[r, c, 0] = w0
                            bary[r, c, 1] = w1
                            bary[r, c, 2] = w2

    @jit(parallel=True)
    def colors(points, normals, P, eyes, depth, rgb, tol, power, acc, wsum):
        n_view, h, w = depth.shape
        for i in prange(points.shape[0]):
            x, y, z = points[i, 0], points[i, 1], points[i, 2]
            for v in range(n_view):
                cz = P[v, 2, 0] * x + P[v, 2, 1] * y + P[v, 2, 2] * z + P[v, 2, 3]
                if not cz > 1e-6:
                    continue
                u = (P[v, 0, 0] * x + P[v, 0, 1] * y + P[v, 0, 2] * z + P[v, 0, 3]) / cz
                t = (P[v, 1, 0] * x + P[v, 1, 1] * y + P[v, 1, 2] * z + P[v, 1, 3]) / cz
                if not (u >= 0 and u < w and t >= 0 and t < h):
                    continue
                d = np.float64(depth[v, int(math.floor(t)), int(math.floor(u))])
                if not (d > 0 and abs(d - cz) <= tol):
                    continue
                dx, dy, dz = eyes[v, 0] - x, eyes[v, 1] - y, eyes[v, 2] - z
                dist = math.sqrt(dx * dx + dy * dy + dz * dz)
                cos = (normals[i, 0] * dx + normals[i, 1] * dy + normals[i, 2] * dz) / max(
                    dist, 1e-12
                )
                if not cos > 0:
                    continue
                fx, fy = u - 0.5, t - 0.5
                x0, y0 = math.floor(fx), math.floor(fy)
                ax, ay = fx - x0, fy - y0
                s0 = s1 = s2 = sw = 0.0
                for oy in range(2):
                    wy = ay if oy else 1.0 - ay
                    rr = min(max(y0 + oy, 0), h - 1)
                    for ox in range(2):
                        wx = ax if ox else 1.0 - ax
                        cc = min(max(x0 + ox, 0), w - 1)
                        dn = np.float64(depth[v, rr, cc])
                        if dn > 0 and abs(dn - cz) <= tol:
                            wn = wx * wy
                            s0 += wn * np.float64(rgb[v, rr, cc, 0])
                            s1 += wn * np.float64(rgb[v, rr, cc, 1])
                            s2 += wn * np.float64(rgb[v, rr, cc, 2])
                            sw += wn
                weight = cos**power
                scale = weight / max(sw, 1e-300)
                acc[i, 0] += scale * s0
                acc[i, 1] += scale * s1
                acc[i, 2] += scale * s2
                wsum[i] += weight
            if wsum[i] > 0:
                for k in range(3):
                    acc[i, k] /= wsum[i]

    return {"raster": raster, "colors": colors}


# ----------------------------------------------------------------------------- bake
def dilate(image: np.ndarray, filled: np.ndarray, pixels: int | None = None) -> np.ndarray:
    """Spread filled texels into empty ones: each empty texel takes its nearest filled texel's
    colour (Euclidean distance).

    Args:
        image: ``[T, T, C]`` texture.
        filled: ``[T, T]`` bool, texels that hold a colour.
        pixels: only empty texels within this many texels of a filled one change; None = all
            (mip-map levels then never average in an unrelated colour).

    Returns:
        A new ``[T, T, C]`` array of ``image``'s dtype.
    """
    from scipy.ndimage import distance_transform_edt

    if filled.all() or not filled.any():
        return image.copy()
    dist, (rows, cols) = distance_transform_edt(~filled, return_indices=True)
    out = image[rows, cols]
    if pixels is not None:
        far = dist > pixels
        out[far] = image[far]
    return out


@dataclass
class BakedTexture:
    """What :func:`bake_texture` returns.

    Attributes:
        image: ``[T, T, 3]`` uint8 RGB texture (row 0 at the top, ``v = 1``).
        covered: ``[T, T]`` bool, texels whose centre lies in a triangle.
        seen: ``[T, T]`` bool, covered texels that at least one view saw (the rest took the
            fused colour volume's colour).
    """

    image: np.ndarray
    covered: np.ndarray
    seen: np.ndarray

    @property
    def seen_fraction(self) -> float:
        """Fraction of the covered texels that a view saw."""
        return float(self.seen.sum()) / max(int(self.covered.sum()), 1)


def default_depth_tol(fv, vol=None) -> float:
    """Visibility tolerance: the TSDF truncation distance of ``vol`` (where its colour fusion
    takes colour from, at least 4 voxels), else 1% of the object box's diagonal."""
    if vol is not None:
        return float(vol.trunc)
    return 0.01 * float((fv.hi - fv.lo).double().norm())


def bake_texture(
    verts: np.ndarray,
    normals: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    fv,
    vol=None,
    size: int = 1024,
    depth_tol: float | None = None,
    power: float = 4.0,
    pad: int | None = None,
) -> BakedTexture:
    """Bake a colour texture for an unwrapped mesh from the fusion renders.

    Args:
        verts, normals, faces, uv: the unwrapped mesh (``[N, 3]``, ``[N, 3]`` unit vertex
            normals, ``[F, 3]``, ``[N, 2]``), in the world frame of ``fv``.
        fv: :class:`~pipelines.mesh.views.FusionViews`.
        vol: the fused :class:`~pipelines.mesh.tsdf.TSDFVolume`: colour of texels no view sees
            (None: mid grey).
        size: texture side ``T`` in texels.
        depth_tol: visibility tolerance (world units); None = :func:`default_depth_tol`.
        power: sharpening exponent of the ``cos`` view weight.
        pad: see :func:`dilate` (None fills every empty texel).
    """
    check_texture_size(size)
    tol = default_depth_tol(fv, vol) if depth_tol is None else float(depth_tol)
    face_id, bary = rasterize_uv(uv, faces, size)
    texels, points, nrm = texel_points(verts, normals, faces, face_id, bary)
    rgb, weight = view_colors(points, nrm, fv, tol, power)
    unseen = weight <= 0
    if unseen.any():
        rgb[unseen] = sample_colors(vol, points[unseen]) if vol is not None else 0.5
    image = np.zeros((size * size, 3), np.uint8)
    image[texels] = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    covered = face_id >= 0
    seen = np.zeros(size * size, bool)
    seen[texels[~unseen]] = True
    image = dilate(image.reshape(size, size, 3), covered, pad)
    return BakedTexture(image, covered, seen.reshape(size, size))


def check_texture_size(size: int) -> None:
    """Raise :class:`InputError` unless ``size`` is a texture side geolrm bakes (16-8192)."""
    lo, hi = TEXTURE_SIZES
    if not lo <= size <= hi:
        raise InputError(f"--texture-size {size} is out of range; use {lo}-{hi}")


def textured_mesh(unwrapped: Unwrapped, image: np.ndarray):
    """A ``trimesh.Trimesh`` with UVs and a matte PBR material whose base colour is ``image``."""
    import trimesh

    material = trimesh.visual.material.PBRMaterial(
        name="geolrm",
        baseColorTexture=Image.fromarray(np.ascontiguousarray(image[..., :3]), "RGB"),
        baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0,
        roughnessFactor=1.0,
        doubleSided=False,
    )
    visual = trimesh.visual.TextureVisuals(uv=unwrapped.uv, material=material)
    return trimesh.Trimesh(unwrapped.verts, unwrapped.faces, visual=visual, process=False)


def texture_mesh(mesh, fv, vol=None, size: int = 1024, **bake_options):
    """Unwrap ``mesh`` and bake its texture from ``fv``: ``(textured mesh, BakedTexture)``.

    Args:
        mesh: a ``trimesh.Trimesh`` in the world frame of ``fv`` (vertex colours are dropped:
            glTF would multiply them into the texture).
        fv: the :class:`~pipelines.mesh.views.FusionViews` the mesh was fused from.
        vol: the fused volume (colour of texels no view sees), or None.
        size: texture side in texels (16-8192).
        bake_options: passed to :func:`bake_texture` (``depth_tol``, ``power``, ``pad``).

    Returns:
        A ``trimesh.Trimesh`` with ``TextureVisuals`` (split along UV seams), and the bake's
        :class:`BakedTexture`.
    """
    check_texture_size(size)
    uw = unwrap(mesh, size)
    normals = np.asarray(mesh.vertex_normals, np.float64)[uw.source]
    baked = bake_texture(uw.verts, normals, uw.faces, uw.uv, fv, vol, size, **bake_options)
    return textured_mesh(uw, baked.image), baked
