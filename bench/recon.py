"""CPU benchmark of the GeoLRM reconstruction model (released architecture, random weights).

Prints one JSON object: for 6 views x 448 px (Zero123++ layout) and 21 views x 560 px (SV3D
layout), anchors forced to 8192 (max_seq_len of configs/geolrm.yaml), seconds per stage, peak
RSS, estimated FLOPs, the fp32 matmul peak measured in the same process, and the fraction of it
the whole forward achieves. Case ``train6x448``: the reconstruction transformer at a training
size (6 input views, 448 px, 4096 anchors, random encoder features), forward and forward +
backward with the cross-view attention sampling all views at once (``new``) and one view at a
time (``old``: the per-view loop, its forward with the per-view numba kernel, its backward
through the per-view torch sampling). Each case runs in its own process so peak RSS is per case.

    .venv/bin/python bench/recon.py                     # all cases
    .venv/bin/python bench/recon.py --case 6x448        # one case (what the parent runs)
    .venv/bin/python bench/recon.py --case train6x448 --train-layers 2   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {"6x448": (6, 448), "21x560": (21, 560)}
TRAIN_CASE = "train6x448"
TRAIN_VIEWS, TRAIN_SIZE, TRAIN_ANCHORS = 6, 448, 4096
#: layers of the released transformer's 16 in the training case: autograd keeps ~0.6 GB of
#: activations per layer at this size, so 4 layers keep the case within a few GB
TRAIN_LAYERS = 4
TRAIN_REPEATS = 2
TARGET_RSS_GB = {"6x448": 4.0, "21x560": 8.0}
TARGET_FRACTION = 0.5


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB


def matmul_peak_gflops(n: int = 4096, reps: int = 5) -> float:
    """Best of ``reps`` timings of an n x n x n fp32 matmul."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.matmul(a, b, out=out)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def cameras(views: int):
    """Official camera layouts: Zero123++ for 6 views, SV3D for 21 (radius 1.5, z-up), with
    GeoLRM's normalised intrinsics."""
    from pipelines.multiview.rigs import sv3d_cameras, zero123pp_cameras

    rig = zero123pp_cameras(6) if views == 6 else sv3d_cameras(10.0, official_offset=True)
    return rig.c2w[None], rig.normalized_K()[None].contiguous()


def estimate_flops(cfg, views: int, size: int, anchors: int) -> dict[str, float]:
    """FLOPs (2 x multiply-adds) per stage. 'gemm' counts matmuls/convs/attention products;
    'sampling' the bilinear gathers of the deformable attention (not matmul-shaped)."""
    d = cfg.dino
    dd, nl = d["hidden_size"], d["num_hidden_layers"]
    p = d["patch_size"]
    n_tok = (size // p) ** 2 + 1
    dino = (size // p) ** 2 * dd * 3 * p * p + nl * (
        4 * n_tok * dd * dd + 2 * n_tok * dd * int(dd * d["mlp_ratio"]) + 2 * n_tok * n_tok * dd
    )

    def encoder(c):
        low = (size // 4) ** 2 * c.encoder_feat_dim * 9 * 16
        deconv = (size // p) ** 2 * dd * c.encoder_feat_dim * 16
        return 2 * views * (dino + low + deconv)

    def transformer(c, S):
        D, H, P = c.transformer_dim, c.transformer_heads, c.num_deform_points
        from pipelines.geolrm.model import ffn_hidden_dim

        L = (size // 4) ** 2 + (2 * (size // p)) ** 2
        per_layer = (
            4 * S * D * D  # wq wk wv wo
            + 2 * S * H * D  # official per-token head x head attention (QK and AV)
            + 3 * S * D * ffn_hidden_dim(D)  # SwiGLU
            + S * D * (H * 2 * P * 3)  # sampling_offsets + attention_weights
            + S * D * D  # output_proj
            + views * S * D  # cross_view_weight
            + views * L * c.encoder_feat_dim * D  # value_proj
        )
        sampling = views * S * 2 * P * 4 * D  # 4 taps x channels, all heads
        return 2 * c.transformer_layers * per_layer, 2 * c.transformer_layers * sampling

    s, g = cfg.serializer, cfg.lrm_generator
    coarse = (s.grid_size // s.token_res) ** 3
    st, ss = transformer(s, coarse)
    st += 2 * coarse * s.transformer_dim * s.token_res**3  # upsample
    gt, gs = transformer(g, anchors)
    k14 = 14 * g.gs_per_token
    dec = 2 * anchors * (g.transformer_dim * k14 + k14 * k14)
    out = {
        "proposal_encoder": encoder(s),
        "proposal_transformer": st,
        "reconstruction_encoder": encoder(g),
        "reconstruction_transformer": gt,
        "decoder": dec,
    }
    out["gemm_total"] = sum(out.values())
    out["sampling_total"] = ss + gs
    return out


def run_case(name: str) -> dict:
    import torch

    from pipelines.geolrm import GeoLRM
    from pipelines.warmup import STEPS

    views, size = CASES[name]
    peak_before = matmul_peak_gflops()
    t = time.perf_counter()
    model = GeoLRM.from_config(None, force_anchors=8192)
    build_s = time.perf_counter() - t
    rss_model = peak_rss_gb()
    STEPS["geolrm"]()  # compile/load the numba sampling kernels outside the timing
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, views, 3, size, size, generator=gen)
    c2ws, Ks = cameras(views)
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        t, c = time.perf_counter(), time.process_time()
        out = model(images, c2ws, Ks)
        total, cpu = time.perf_counter() - t, time.process_time() - c
    load_after = os.getloadavg()[0]
    rss = peak_rss_gb()
    peak_after = matmul_peak_gflops()
    peak = max(peak_before, peak_after)
    anchors = int(out.anchor_counts[0])
    threads = torch.get_num_threads()
    flops = estimate_flops(model.config, views, size, anchors)
    tm = out.timings
    stages = {
        "encoders": tm["proposal_encoder"] + tm["reconstruction_encoder"],
        "proposal_encoder": tm["proposal_encoder"],
        "proposal_transformer": tm["proposal_transformer"],
        "reconstruction_encoder": tm["reconstruction_encoder"],
        "reconstruction_transformer": tm["reconstruction_transformer"],
        "decoder": tm["decoder"],
    }
    gflops_achieved = flops["gemm_total"] / total / 1e9
    per_stage_fraction = {
        k: round(flops[k] / tm[k] / 1e9 / peak, 3) for k in tm if k in flops and tm[k] > 0
    }
    return {
        "views": views,
        "image_size": size,
        "anchors": anchors,
        "gaussians": int(out.gaussians.shape[1]),
        "threads": threads,
        "build_s": round(build_s, 2),
        "forward_s": round(total, 2),
        "forward_cpu_s": round(cpu, 2),
        "stages_s": {k: round(v, 2) for k, v in stages.items()},
        "peak_rss_gb": round(rss, 3),
        "rss_after_model_build_gb": round(rss_model, 3),
        "target_peak_rss_gb": TARGET_RSS_GB[name],
        "est_gflop": {k: round(v / 1e9, 1) for k, v in flops.items()},
        "matmul_peak_gflops": round(peak, 1),
        "matmul_peak_gflops_before_after": [round(peak_before, 1), round(peak_after, 1)],
        "achieved_gflops": round(gflops_achieved, 1),
        "fraction_of_matmul_peak": round(gflops_achieved / peak, 3),
        # what the same work would reach with the cores to itself (CPU seconds / threads)
        "fraction_of_matmul_peak_by_cpu_time": round(
            flops["gemm_total"] / (cpu / threads) / 1e9 / peak, 3
        ),
        "fraction_of_matmul_peak_per_stage": per_stage_fraction,
        "target_fraction": TARGET_FRACTION,
        "load_avg_1min_before_after": [round(load_before, 2), round(load_after, 2)],
    }


def run_train_case(layers: int) -> dict:
    """Reconstruction transformer forward and forward + backward, all-view vs per-view."""
    import torch

    from pipelines.geolrm import GeoLRM
    from pipelines.geolrm.model import (
        CrossViewAttention,
        ImageFeatures,
        _deformable_sample_torch,
        deformable_sample,
    )

    model = GeoLRM.from_config(None)
    transformer = model.lrm_generator.transformer
    transformer.layers = transformer.layers[:layers]
    transformer.requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    c2ws, Ks = cameras(TRAIN_VIEWS)
    lo, hi = TRAIN_SIZE // 4, 2 * (TRAIN_SIZE // 14)
    shapes = ((lo, lo), (hi, hi))
    feat_dim = model.config.lrm_generator.encoder_feat_dim
    feats = torch.randn(1, TRAIN_VIEWS, lo * lo + hi * hi, feat_dim, generator=gen)
    features = ImageFeatures(feats, shapes)
    xyz = (torch.rand(1, TRAIN_ANCHORS, 3, generator=gen) - 0.5) * 0.8
    attentions = [m for m in transformer.modules() if isinstance(m, CrossViewAttention)]

    def use(variant: str, backward: bool) -> None:
        for m in attentions:
            m.__dict__.pop("forward", None)  # the class's forward: all views at once
            if variant == "old":
                sample = _deformable_sample_torch if backward else deformable_sample
                m.forward = lambda q, f, r, m=m, s=sample: m.forward_per_view(q, f, r, s)

    def step(backward: bool) -> float:
        transformer.zero_grad(set_to_none=True)
        t = time.perf_counter()
        if backward:
            transformer(xyz, features, c2ws, Ks).square().mean().backward()
        else:
            with torch.no_grad():
                transformer(xyz, features, c2ws, Ks)
        return time.perf_counter() - t

    # interleaved, best of REPEATS after a warm-up: the machine's load varies from run to run
    times: dict[str, list[float]] = {}
    for rep in range(TRAIN_REPEATS + 1):
        for backward in (False, True):
            for variant in ("new", "old"):
                use(variant, backward)
                dt = step(backward)
                key = f"{variant}_{'forward_backward' if backward else 'forward'}_s"
                if rep:  # rep 0 warms up (kernels loaded, allocator primed)
                    times.setdefault(key, []).append(dt)
    use("new", False)
    out = {k: round(min(v), 2) for k, v in times.items()}
    for kind in ("forward", "forward_backward"):
        out[f"speedup_{kind}"] = round(out[f"old_{kind}_s"] / out[f"new_{kind}_s"], 2)
    return {
        "views": TRAIN_VIEWS,
        "image_size": TRAIN_SIZE,
        "anchors": TRAIN_ANCHORS,
        "layers": f"{layers} of {model.config.lrm_generator.transformer_layers}",
        "threads": torch.get_num_threads(),
        **out,
        "peak_rss_gb": round(peak_rss_gb(), 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--case", choices=[*sorted(CASES), TRAIN_CASE], help="run one case in this process"
    )
    parser.add_argument("--train-layers", type=int, default=TRAIN_LAYERS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.case == TRAIN_CASE:
        print(json.dumps(run_train_case(args.train_layers)))
        return
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    results = {"cpu_count": os.cpu_count()}
    for name in [*CASES, TRAIN_CASE]:
        cmd = [sys.executable, __file__, "--case", name, "--train-layers", str(args.train_layers)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            results[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
