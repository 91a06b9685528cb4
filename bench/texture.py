"""Benchmark mesh texturing (UV unwrap + bake) on the CPU; prints one JSON object.

Workload (the target: <= 15 s to bake a 100k-face mesh at 1024^2 from 60 views at 384 px):
``--model`` (default ``examples/spot/spot.ply``, 20k Gaussians) is rendered from ``--views``
(60) Fibonacci-sphere views at ``--image-size`` (384) px, fused at ``--resolution`` (256) and
extracted with ``--faces`` (100k) faces -- the ``geolrm mesh`` defaults -- then textured at
``--size`` (1024).

Timings: ``compile_or_cache_load_s`` is a first, tiny bake (numba kernels compiled or loaded from
the cache); ``unwrap_s`` (xatlas) and ``bake_s`` (UV rasterisation, texel points, view colours,
fallback colours, padding; itemised) are best of ``--repeats``; ``export_glb_s`` writes the
textured ``.glb`` (PNG encoding included). ``seen_fraction``: covered texels some view saw;
``covered_fraction``: texels whose centre lies in a triangle.

Usage: python bench/texture.py [--model PLY] [--views 60] [--image-size 384] [--resolution 256]
                               [--faces 100000] [--size 1024] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.mesh import export_mesh, extract_mesh, fuse_views, render_views  # noqa: E402
from pipelines.mesh import texture as tx  # noqa: E402
from pipelines.mesh.extract import sample_colors  # noqa: E402
from pipelines.splats.io import load_gaussians  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def best_of(repeats: int, fn):
    """``(best seconds, last result)`` of ``repeats`` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bake_steps(uw, normals, fv, vol, size: int) -> dict:
    """The steps of :func:`pipelines.mesh.texture.bake_texture`, timed one by one."""
    times = {}
    t = time.perf_counter()
    face_id, bary = tx.rasterize_uv(uw.uv, uw.faces, size)
    times["rasterize_uv_s"] = time.perf_counter() - t
    t = time.perf_counter()
    texels, points, nrm = tx.texel_points(uw.verts, normals, uw.faces, face_id, bary)
    times["texel_points_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rgb, weight = tx.view_colors(points, nrm, fv, tx.default_depth_tol(fv, vol))
    times["view_colors_s"] = time.perf_counter() - t
    t = time.perf_counter()
    unseen = weight <= 0
    if unseen.any():
        rgb[unseen] = sample_colors(vol, points[unseen])
    times["fallback_s"] = time.perf_counter() - t
    image = np.zeros((size * size, 3), np.uint8)
    image[texels] = np.round(rgb * 255).astype(np.uint8)
    t = time.perf_counter()
    tx.dilate(image.reshape(size, size, 3), face_id >= 0)
    times["dilate_s"] = time.perf_counter() - t
    times["texels"] = len(texels)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "examples/spot/spot.ply")
    ap.add_argument("--views", type=int, default=60)
    ap.add_argument("--image-size", type=int, default=384)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--faces", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    g = load_gaussians(args.model)
    fv = render_views(g, args.views, args.image_size)
    vol = fuse_views(fv, args.resolution)
    mesh = extract_mesh(vol, faces=args.faces)

    t = time.perf_counter()
    small = extract_mesh(vol, faces=200)
    tx.texture_mesh(small, fv, vol, 64)
    compile_s = time.perf_counter() - t

    unwrap_s, uw = best_of(args.repeats, lambda: tx.unwrap(mesh, args.size))
    normals = np.asarray(mesh.vertex_normals, np.float64)[uw.source]
    bake_s, baked = best_of(
        args.repeats,
        lambda: tx.bake_texture(uw.verts, normals, uw.faces, uw.uv, fv, vol, args.size),
    )
    steps = bake_steps(uw, normals, fv, vol, args.size)
    textured = tx.textured_mesh(uw, baked.image)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        export_mesh(textured, Path(tmp) / "mesh.glb")
        export_s = time.perf_counter() - t
        glb_mb = (Path(tmp) / "mesh.glb").stat().st_size / 2**20

    print(
        json.dumps(
            {
                "model": str(args.model),
                "faces": len(mesh.faces),
                "unwrapped_vertices": len(uw.verts),
                "texture_size": args.size,
                "views": args.views,
                "image_size": args.image_size,
                "threads": torch.get_num_threads(),
                "compile_or_cache_load_s": round(compile_s, 2),
                "unwrap_s": round(unwrap_s, 2),
                "bake_s": round(bake_s, 2),
                "bake_steps": {
                    k: round(v, 3) if isinstance(v, float) else v for k, v in steps.items()
                },
                "texture_total_s": round(unwrap_s + bake_s, 2),
                "export_glb_s": round(export_s, 2),
                "glb_mib": round(glb_mb, 1),
                "covered_fraction": round(float(baked.covered.mean()), 3),
                "seen_fraction": round(baked.seen_fraction, 4),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
