"""Benchmark TSDF fusion + mesh extraction on the CPU; prints one JSON object.

Workload (the issue's target: <= 10 s for fusion + extraction): ``--views`` (100) depth maps at
512 x 512 fused into a 256^3 volume, then marching cubes, main components, decimation to
``--faces`` (100k) and vertex colours.

Depth maps: the 21 real training views of Spot (``<data>/transforms_train.json``: 16-bit depth
PNGs, z = value * 1e-4, RGBA colour), cycled to ``--views``, when ``--data`` exists (default
``/work/shared/data/objects/spot``, the shared data set; nothing in the repository needs it);
otherwise ``--views`` analytic depth maps of a sphere seen from a Fibonacci sphere of cameras.
The volume's box comes from the back-projected depth maps (not from the ground truth).

Sanity check with real data: Chamfer distance between 100k points sampled on the extracted mesh
and the ground-truth surface samples ``<data>/points.npy`` (mean nearest-neighbour distance,
each direction, and their mean), also relative to the object's size (longest box side).

Timings: ``compile_or_cache_load_s`` is the first, tiny call of the numba kernels; ``fusion_s``
(band marking + fusion) and ``extraction_s`` (the four extraction steps, itemised) are best of
``--repeats``. ``--reference`` also times the pure-PyTorch fusion on the same maps at 64^3.

``--gaussians model.ply`` also times the whole pipeline (render 60 views, fuse, extract) with the
library defaults, with the same Chamfer check against ``<data>/points.npy``.

Usage: python bench/mesh.py [--data DIR] [--views 100] [--resolution 256] [--faces 100000]
                            [--gaussians model.ply] [--reference]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.mesh import extract as ex  # noqa: E402
from pipelines.mesh import fibonacci_directions  # noqa: E402
from pipelines.mesh.tsdf import TSDFVolume, integrate_numba, integrate_torch  # noqa: E402

DEFAULT_DATA = Path("/work/shared/data/objects/spot")


def load_real(data: Path, views: int):
    """Real depth + colour maps, cycled to ``views``: (depth, rgb, c2w, K, name)."""
    from PIL import Image

    from pipelines.cameras.dataparsers import load_transforms

    meta = json.loads((data / "transforms_train.json").read_text())
    unit = float(meta.get("depth_unit_scale_factor", 1e-4))
    cams = load_transforms(data / "transforms_train.json")
    depths, rgbs = [], []
    for frame in meta["frames"]:
        d = np.asarray(Image.open(data / frame["depth_file_path"])).astype(np.float32) * unit
        rgba = np.asarray(Image.open(data / frame["file_path"]).convert("RGBA")).astype(np.float32)
        depths.append(d)
        rgbs.append(rgba[..., :3] / 255.0)
    idx = [i % len(depths) for i in range(views)]
    depth = torch.from_numpy(np.stack(depths))[idx]
    rgb = torch.from_numpy(np.stack(rgbs))[idx]
    return depth, rgb, cams.c2w[idx], cams.K[idx], f"{data.name} ({len(depths)} real views cycled)"


def sphere_depth(c2w, K, size, radius):
    """Analytic camera-z depth of a sphere at the origin (0 = background)."""
    jj, ii = torch.meshgrid(
        torch.arange(size, dtype=torch.float64) + 0.5,
        torch.arange(size, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    out = torch.zeros(len(c2w), size, size)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    for v in range(len(c2w)):
        k = K[v].double()
        ray = torch.stack(
            [(ii - k[0, 2]) / k[0, 0], (jj - k[1, 2]) / k[1, 1], torch.ones_like(ii)], -1
        )
        rot = c2w[v, :3, :3].double() @ flip
        o = c2w[v, :3, 3].double()
        dw = ray @ rot.T
        a, b, c = (dw * dw).sum(-1), 2 * (dw @ o), o @ o - radius**2
        disc = b * b - 4 * a * c
        t = (-b - disc.clamp(min=0).sqrt()) / (2 * a)
        out[v] = torch.where(disc > 0, t, torch.zeros_like(t)).float()
    return out


def load_synthetic(views: int, size: int = 512):
    from pipelines.cameras import look_at

    c2w = look_at(fibonacci_directions(views) * 1.6)
    f = 0.5 * size / math.tan(math.radians(20))
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]]).expand(views, 3, 3).clone()
    depth = sphere_depth(c2w, K, size, 0.4)
    rgb = torch.full((views, size, size, 3), 0.5)
    return depth, rgb, c2w, K, "analytic sphere r=0.4"


def depth_box(depth, c2w, K, pad_frac=0.05):
    """Box of the back-projected foreground pixels (every 4th pixel), padded by 5%."""
    pts = []
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    for v in range(len(depth)):
        d = depth[v, ::4, ::4].double()
        jj, ii = torch.nonzero(d > 0, as_tuple=True)
        z = d[jj, ii]
        k = K[v].double()
        x = ((ii * 4 + 0.5) - k[0, 2]) / k[0, 0] * z
        y = ((jj * 4 + 0.5) - k[1, 2]) / k[1, 1] * z
        cam = torch.stack([x, y, z], -1) @ (c2w[v, :3, :3].double() @ flip).T
        pts.append(cam + c2w[v, :3, 3].double())
    p = torch.cat(pts)
    lo, hi = p.min(0).values, p.max(0).values
    pad = pad_frac * float((hi - lo).max())
    return lo - pad, hi + pad


def chamfer(mesh, points: np.ndarray, n: int = 100_000) -> dict:
    from scipy.spatial import cKDTree

    samples = np.asarray(mesh.sample(n, seed=0) if _has_seed(mesh) else mesh.sample(n))
    gt = points[np.random.default_rng(0).choice(len(points), min(n, len(points)), replace=False)]
    d_mesh_gt = cKDTree(gt).query(samples)[0]
    d_gt_mesh = cKDTree(samples).query(gt)[0]
    size = float((points.max(0) - points.min(0)).max())
    cd = 0.5 * (d_mesh_gt.mean() + d_gt_mesh.mean())
    return {
        "mesh_to_gt_mean": round(float(d_mesh_gt.mean()), 5),
        "gt_to_mesh_mean": round(float(d_gt_mesh.mean()), 5),
        "chamfer_mean": round(float(cd), 5),
        "chamfer_relative_to_size": round(cd / size, 5),
        "object_size": round(size, 4),
    }


def _has_seed(mesh) -> bool:
    import inspect

    return "seed" in inspect.signature(mesh.sample).parameters


def pipeline(path: Path, data: Path, faces: int) -> dict:
    """Time render -> fuse -> extract with the library defaults on a Gaussian file."""
    from pipelines.mesh import default_image_size, fuse_views, render_views
    from pipelines.splats.io import load_gaussians

    g = load_gaussians(path, quiet=True)
    res = 256
    t0 = time.perf_counter()
    fv = render_views(g, 60, default_image_size(res))
    t1 = time.perf_counter()
    vol = fuse_views(fv, res)
    t2 = time.perf_counter()
    mesh = ex.extract_mesh(vol, faces=faces)
    t3 = time.perf_counter()
    out = {
        "gaussians": len(g),
        "views": 60,
        "image_size": default_image_size(res),
        "trunc_voxels": round(vol.trunc / vol.voxel_size, 2),
        "render_s": round(t1 - t0, 3),
        "fusion_s": round(t2 - t1, 3),
        "extraction_s": round(t3 - t2, 3),
        "total_s": round(t3 - t0, 3),
        "mesh_faces": len(mesh.faces),
    }
    if (data / "points.npy").exists():
        out["chamfer"] = chamfer(mesh, np.load(data / "points.npy"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--views", type=int, default=100)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--faces", type=int, default=100_000)
    ap.add_argument("--trunc", type=float, default=4.0, help="truncation in voxels")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--reference", action="store_true")
    ap.add_argument(
        "--gaussians",
        type=Path,
        default=None,
        help="also time the whole Gaussians -> mesh pipeline on this .ply (defaults: 60 views)",
    )
    args = ap.parse_args()

    import numba

    real = (args.data / "transforms_train.json").exists()
    depth, rgb, c2w, K, source = (
        load_real(args.data, args.views) if real else load_synthetic(args.views)
    )
    lo, hi = depth_box(depth, c2w, K)

    t0 = time.perf_counter()
    warm = TSDFVolume.empty(lo, hi, 16, args.trunc)
    integrate_numba(warm, depth[:1, ::8, ::8].contiguous(), c2w[:1], K[:1] / 8, rgb[:1, ::8, ::8])
    compile_s = time.perf_counter() - t0

    fusion, steps, vol, mesh = [], None, None, None
    for _ in range(args.repeats):
        vol = TSDFVolume.empty(lo, hi, args.resolution, args.trunc)
        t0 = time.perf_counter()
        integrate_numba(vol, depth, c2w, K, rgb)
        fusion.append(time.perf_counter() - t0)
        import trimesh

        times = {}
        t0 = time.perf_counter()
        v, f = ex.marching_cubes(vol)
        times["marching_cubes_s"] = time.perf_counter() - t0
        n_mc = len(f)
        t0 = time.perf_counter()
        v, f = ex.keep_main_components(v, f)
        times["components_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        v, f = ex.decimate(v, f, args.faces)
        times["decimate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cols = ex.sample_colors(vol, v)
        times["colors_s"] = time.perf_counter() - t0
        if steps is None or sum(times.values()) < sum(steps.values()):
            steps = times
        mesh = trimesh.Trimesh(v, f, vertex_colors=(cols * 255).astype(np.uint8), process=False)
    fusion_s = min(fusion)
    extraction_s = sum(steps.values())
    result = {
        "source": source,
        "views": args.views,
        "image_size": list(depth.shape[1:]),
        "volume_shape": list(vol.shape),
        "voxel_size": round(vol.voxel_size, 6),
        "trunc_voxels": args.trunc,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "compile_or_cache_load_s": round(compile_s, 3),
        "fusion_s": round(fusion_s, 3),
        "extraction_s": round(extraction_s, 3),
        **{k: round(s, 3) for k, s in steps.items()},
        "fusion_plus_extraction_s": round(fusion_s + extraction_s, 3),
        "marching_cubes_faces": n_mc,
        "mesh_faces": len(mesh.faces),
        "mesh_vertices": len(mesh.vertices),
        "watertight": bool(mesh.is_watertight),
    }
    if real and (args.data / "points.npy").exists():
        result["chamfer"] = chamfer(mesh, np.load(args.data / "points.npy"))
    elif not real:
        r = np.linalg.norm(mesh.vertices, axis=1)
        result["sphere_radius_mean"] = round(float(r.mean()), 5)
        result["sphere_radius_error_max"] = round(float(np.abs(r - 0.4).max()), 5)
    if args.reference:
        ref = TSDFVolume.empty(lo, hi, 64, args.trunc)
        t0 = time.perf_counter()
        integrate_torch(ref, depth, c2w, K, rgb)
        ref_s = time.perf_counter() - t0
        fast = TSDFVolume.empty(lo, hi, 64, args.trunc)
        t0 = time.perf_counter()
        integrate_numba(fast, depth, c2w, K, rgb)
        fast_s = time.perf_counter() - t0
        band = ref.tsdf.abs() < 1
        result["reference_64cubed"] = {
            "torch_s": round(ref_s, 3),
            "numba_s": round(fast_s, 3),
            "band_max_abs_diff": float((ref.tsdf - fast.tsdf)[band].abs().max()),
        }
    if args.gaussians is not None:
        result["gaussians_to_mesh"] = pipeline(args.gaussians, args.data, args.faces)
    result["targets_met"] = {"fusion_plus_extraction_le_10s": fusion_s + extraction_s <= 10.0}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
