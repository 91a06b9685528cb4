"""CUDA benchmark: gsplat rasterisation and GeoLRM at fp32 / bf16 / fp16. Prints one JSON object.

Run on a machine with a GPU (and gsplat for the raster part):

    python bench/cuda.py                  # both parts
    python bench/cuda.py --part recon     # GeoLRM only (no gsplat needed)

* ``raster``: bench/raster.py's scene (262,144 Gaussians, 512 px, degree-1 SH). gsplat forward
  and forward + backward (median of ``--repeats``), against the pure-PyTorch reference backend
  on the same GPU in the same process (``speedup_vs_reference``), and the PSNR between the
  two images.
* ``recon``: the released GeoLRM architecture with random weights, anchors forced to 8192, on
  the Zero123++ layout (6 views x 448 px) and the SV3D layout (21 x 560). For each precision:
  median forward seconds, peak CUDA memory, the proposal logits' largest error against fp32
  (over their range) and the relative L2 error of the reconstruction latents given the fp32
  anchors (random weights: a check that autocast keeps the maths, not a quality number).
  ``speedup_vs_fp32`` is measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def cuda_timed(fn, repeats: int) -> tuple[float, object]:
    """(median seconds, last result) over ``repeats`` synchronised calls after one warm-up."""
    import torch

    out = fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_raster(n: int, size: int, repeats: int) -> dict:
    import torch
    from raster import look_at, make_scene

    from pipelines.cameras import fov_to_focal
    from pipelines.raster import rasterize

    scene = make_scene(n, 1).to("cuda")
    f = fov_to_focal(39.6, size)
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])[None].cuda()
    eye = torch.tensor([0.6, 0.5, 1.5])
    c2w = look_at(eye / eye.norm() * 1.5)[None].cuda()
    bg = (1.0, 1.0, 1.0)
    names = ["means", "scales", "quats", "opacities", "colors", "sh_rest"]
    params = {k: getattr(scene, k).clone().requires_grad_(True) for k in names}

    def forward(backend="gsplat"):
        with torch.no_grad():
            return rasterize(scene, c2w, K, size, size, bg, backend=backend)

    def forward_backward():
        out = rasterize(scene.with_(**params), c2w, K, size, size, bg, backend="gsplat")
        (out.rgb.sum() + out.alpha.sum() + out.depth.mean()).backward()
        for p in params.values():
            p.grad = None

    fwd, out = cuda_timed(forward, repeats)
    fb, _ = cuda_timed(forward_backward, repeats)
    torch.cuda.synchronize()
    t = time.perf_counter()
    ref = forward("reference")
    torch.cuda.synchronize()
    ref_s = time.perf_counter() - t
    mse = float(((out.rgb - ref.rgb) ** 2).mean())
    return {
        "n_gaussians": n,
        "resolution": size,
        "gsplat_forward_s": round(fwd, 5),
        "gsplat_forward_backward_s": round(fb, 5),
        "reference_forward_s": round(ref_s, 3),
        "speedup_vs_reference": round(ref_s / fwd, 1),
        "psnr_gsplat_vs_reference": round(10 * math.log10(1 / max(mse, 1e-20)), 2),
    }


def precision_error(model, inputs, ref, dtype) -> dict:
    """How far ``dtype`` autocast moves the two stages from fp32: the proposal logits (max abs
    error over the logits' range) and the reconstruction latents given the fp32 run's exact
    anchor list (relative L2). The official attention scrambles tokens across the sequence, so
    one anchor that crosses the top-k cut shifts every later token: comparing whole outputs of
    two runs would measure that shift, not the arithmetic."""
    import torch

    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        latents = model.lrm_generator.forward_latents(ref.points, *inputs).float()
    rel = (latents - ref.latents).norm() / ref.latents.norm()
    return {"latents_rel_l2_vs_fp32": round(float(rel), 5)}


def bench_recon(repeats: int) -> dict:
    import torch
    from recon import CASES, cameras

    from pipelines.geolrm import GeoLRM

    model = GeoLRM.from_config(None, force_anchors=8192).cuda().eval()
    results = {}
    for name, (views, size) in CASES.items():
        gen = torch.Generator().manual_seed(0)
        images = torch.rand(1, views, 3, size, size, generator=gen).cuda()
        c2ws, Ks = (t.cuda() for t in cameras(views))
        rows, ref, base = {}, None, None
        for precision, dtype in (
            ("fp32", torch.float32),
            ("bf16", torch.bfloat16),
            ("fp16", torch.float16),
        ):

            def run(dtype=dtype, inputs=(images, c2ws, Ks)):
                with (
                    torch.inference_mode(),
                    torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32),
                ):
                    return model(*inputs)

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            seconds, out = cuda_timed(run, repeats)
            g = out.gaussians.float()
            row = {
                "forward_s": round(seconds, 4),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "anchors": int(out.anchor_counts[0]),
                "stages_s": {k: round(v, 4) for k, v in out.timings.items()},
                "finite": bool(torch.isfinite(g).all()),
            }
            if ref is None:
                ref, base = out, seconds
            else:
                spread = float(ref.occupancy_logits.max() - ref.occupancy_logits.min())
                err = (out.occupancy_logits.float() - ref.occupancy_logits).abs().max()
                row["logits_max_err_over_range"] = round(float(err) / spread, 5)
                row.update(precision_error(model, (images, c2ws, Ks), ref, dtype))
                row["speedup_vs_fp32"] = round(base / seconds, 2)
            rows[precision] = row
        results[name] = rows
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "raster", "recon"), default="all")
    ap.add_argument("--n", type=int, default=262_144)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        sys.exit(2)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if args.part in ("all", "raster"):
        result["raster"] = bench_raster(args.n, args.size, args.repeats)
    if args.part in ("all", "recon"):
        result["recon"] = bench_recon(max(1, args.repeats // 2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
