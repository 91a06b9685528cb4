"""Benchmark the CPU Gaussian rasterizer; prints one JSON object.

Scene: 262,144 Gaussians (GeoLRM's maximum) in an object-like shell inside [-0.5, 0.5]^3,
log-uniform scales 0.002-0.02, opacities spread over (0.02, 0.97), degree-1 SH colour; one
512x512 camera at radius 1.5 looking at the origin with a 39.6 degree field of view, white
background.

Timings, seconds per frame, after a warm-up call that compiles (or loads from numba's cache)
the kernels:

* ``fast_forward_s``: ``rasterize(..., backend="cpu")`` under ``torch.no_grad()``;
* ``fast_forward_backward_s``: forward with autograd + ``loss.backward()`` (loss = weighted
  sum of rgb and alpha + mean depth), gradients w.r.t. all Gaussian attributes;
* ``reference_forward_s``: the pure-PyTorch reference backend, one frame, no autograd graph,
  same process (skip with ``--skip-reference``; it takes minutes at full size).

Each fast timing is the median of ``--repeats`` runs (min and CPU time also reported: the
machine may be shared, and the median is what the targets are checked against).
``first_call_s`` is the warm-up call (numba compile, or cache load when the cache is warm);
``--cold-compile`` points numba at an empty cache dir first so that it measures a real compile.

Usage: python bench/raster.py [--n 262144] [--size 512] [--repeats 5] [--sh-degree 1]
                              [--skip-reference] [--cold-compile]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_scene(n: int, sh_degree: int = 1, seed: int = 0):
    """Object-like shell of Gaussians inside [-0.5, 0.5]^3."""
    import torch

    from pipelines.splats.gaussians import Gaussians

    gen = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    radius = 0.35 + 0.1 * torch.rand(n, 1, generator=gen)
    means = (dirs * radius * torch.tensor([1.0, 1.1, 0.9])).clamp(-0.5, 0.5)
    scales = torch.exp(math.log(0.002) + torch.rand(n, 3, generator=gen) * math.log(10.0))
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1)
    opacities = torch.rand(n, generator=gen) * 0.95 + 0.02
    colors = torch.rand(n, 3, generator=gen)
    sh_rest = None
    if sh_degree > 0:
        sh_rest = 0.1 * torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=gen)
    return Gaussians(means, scales, quats, opacities, colors, sh_rest)


def look_at(eye):
    """OpenGL camera-to-world looking from ``eye`` at the origin (y up)."""
    import torch

    forward = -eye / eye.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0]))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    m = torch.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -forward, eye
    return m


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(median wall, min wall, mean process CPU) seconds over ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), min(walls), statistics.mean(cpus)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=262_144)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sh-degree", type=int, default=1)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--cold-compile", action="store_true")
    args = ap.parse_args()
    if args.cold_compile:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-")

    import numba
    import torch

    from pipelines.cameras import fov_to_focal
    from pipelines.raster import rasterize

    size = args.size
    scene = make_scene(args.n, args.sh_degree)
    f = fov_to_focal(39.6, size)
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])[None]
    eye = torch.tensor([0.6, 0.5, 1.5])
    c2w = look_at(eye / eye.norm() * 1.5)[None]
    bg = (1.0, 1.0, 1.0)

    def forward():
        with torch.no_grad():
            return rasterize(scene, c2w, K, size, size, bg, backend="cpu")

    names = ["means", "scales", "quats", "opacities", "colors"]
    names += ["sh_rest"] if scene.sh_rest is not None else []
    params = {k: getattr(scene, k).clone().requires_grad_(True) for k in names}
    gen = torch.Generator().manual_seed(1)
    w_rgb = torch.rand(1, size, size, 3, generator=gen)
    w_a = torch.rand(1, size, size, 1, generator=gen)

    def forward_backward():
        out = rasterize(scene.with_(**params), c2w, K, size, size, bg, backend="cpu")
        loss = (out.rgb * w_rgb).sum() + (out.alpha * w_a).sum() + out.depth.mean()
        loss.backward()
        grads = [p.grad for p in params.values()]
        for p in params.values():
            p.grad = None
        return grads

    t0 = time.perf_counter()
    grads = forward_backward()  # compiles (or loads from the cache) every kernel
    first_call = time.perf_counter() - t0
    out = forward()
    fwd, fwd_min, fwd_cpu = timed(forward, args.repeats)
    fb, fb_min, fb_cpu = timed(forward_backward, args.repeats)

    result = {
        "n_gaussians": args.n,
        "resolution": [size, size],
        "sh_degree": args.sh_degree,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": numba.threading_layer(),
        "first_call_s": round(first_call, 3),
        "first_call_is": "cold compile" if args.cold_compile else "compile or numba cache load",
        "fast_forward_s": round(fwd, 4),
        "fast_forward_min_s": round(fwd_min, 4),
        "fast_forward_cpu_s": round(fwd_cpu, 4),
        "fast_forward_backward_s": round(fb, 4),
        "fast_forward_backward_min_s": round(fb_min, 4),
        "fast_forward_backward_cpu_s": round(fb_cpu, 4),
        "mean_alpha": round(float(out.alpha.mean()), 4),
        "grads_finite": all(bool(torch.isfinite(g).all()) for g in grads),
    }
    if not args.skip_reference:
        with torch.no_grad():
            t0 = time.perf_counter()
            ref = rasterize(scene, c2w, K, size, size, bg, backend="reference")
            ref_s = time.perf_counter() - t0
        mse = float(((ref.rgb - out.rgb) ** 2).mean())
        result.update(
            {
                "reference_forward_s": round(ref_s, 3),
                "speedup_forward_vs_reference": round(ref_s / fwd, 1),
                "psnr_fast_vs_reference_db": round(10 * math.log10(1.0 / max(mse, 1e-20)), 2),
            }
        )
    met = {"forward_le_1s": fwd <= 1.0, "forward_backward_le_3s": fb <= 3.0}
    if "speedup_forward_vs_reference" in result:
        met["speedup_ge_10x"] = result["speedup_forward_vs_reference"] >= 10
    result["targets_met"] = met
    print(json.dumps(result))


if __name__ == "__main__":
    main()
