"""Make ``examples/spot/spot.ply``: Gaussians fitted to the 21 bundled renders of Spot.

A demonstration asset for ``geolrm render`` (the README's first command). The Gaussians start
on the ground-truth surface samples (``points.npy``) with colours picked from the views, then
Adam fits colours, opacities, scales, rotations and positions to the 21 training views through
the differentiable CPU rasteriser (L1 on RGB + alpha). Deterministic for a fixed seed.

    .venv/bin/python examples/spot/make_spot_ply.py            # ~2-3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.cameras import project_points
from pipelines.cameras.dataparsers import load_transforms
from pipelines.cameras.images import load_views
from pipelines.raster import rasterize
from pipelines.splats.gaussians import Gaussians
from pipelines.splats.ply import save_ply

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaussians", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, default=HERE / "spot.ply")
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    cams = load_transforms(HERE / "transforms_train.json")
    rgba_cams = cams
    images, cams = load_views(cams, size=args.size, background=(1.0, 1.0, 1.0))  # [V,3,S,S]
    from PIL import Image

    alphas = (
        torch.stack(
            [
                torch.from_numpy(
                    np.array(Image.open(p).resize((args.size, args.size), Image.BILINEAR))
                )[..., 3]
                for p in rgba_cams.image_paths
            ]
        ).float()
        / 255.0
    )

    pts = torch.from_numpy(np.load(HERE / "points.npy")).float()
    pick = torch.randperm(len(pts), generator=torch.Generator().manual_seed(args.seed))[
        : args.gaussians
    ]
    means = pts[pick]
    # initial colour: mean over views where the point projects inside the image
    uv, _ = project_points(cams, means)  # [V,N,2]
    cols = torch.zeros(len(means), 3)
    cnt = torch.zeros(len(means), 1)
    for v in range(len(cams)):
        ij = uv[v].floor().long()
        ok = (ij >= 0).all(-1) & (ij < args.size).all(-1)
        c = images[v][:, ij[ok, 1], ij[ok, 0]].T
        cols[ok] += c
        cnt[ok] += 1
    colors = (cols / cnt.clamp_min(1)).clamp(0.02, 0.98)

    params = {
        "means": means.clone().requires_grad_(),
        "log_scales": torch.full((len(means), 3), float(np.log(0.008))).requires_grad_(),
        "quats": torch.nn.functional.normalize(torch.randn(len(means), 4), dim=-1).requires_grad_(),
        "logit_op": torch.full((len(means),), 2.0).requires_grad_(),
        "logit_rgb": torch.logit(colors).requires_grad_(),
    }
    lrs = {"means": 2e-4, "log_scales": 5e-3, "quats": 1e-3, "logit_op": 2e-2, "logit_rgb": 2e-2}
    opt = torch.optim.Adam([{"params": [p], "lr": lrs[k]} for k, p in params.items()])

    def gaussians() -> Gaussians:
        return Gaussians(
            params["means"],
            params["log_scales"].exp(),
            torch.nn.functional.normalize(params["quats"], dim=-1),
            torch.sigmoid(params["logit_op"]),
            torch.sigmoid(params["logit_rgb"]),
        )

    gen = torch.Generator().manual_seed(args.seed + 1)
    white = torch.ones(3)
    t0 = time.time()
    for step in range(args.steps):
        v = torch.randint(len(cams), (2,), generator=gen)
        out = rasterize(gaussians(), cams.c2w[v], cams.K[v], args.size, args.size, background=white)
        target = images[v].permute(0, 2, 3, 1)
        loss = (out.rgb - target).abs().mean() + 0.5 * (out.alpha[..., 0] - alphas[v]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            mse = ((out.rgb - target) ** 2).mean().item()
            print(json.dumps({"step": step, "loss": round(loss.item(), 5), "psnr": round(-10 * np.log10(mse), 2),
                              "seconds": round(time.time() - t0, 1)}))  # fmt: skip
    g = gaussians().detach()
    g = g[g.opacities > 0.02]
    save_ply(
        args.output,
        g,
        comments=["Spot (Keenan Crane, public domain), fitted by examples/spot/make_spot_ply.py"],
    )
    print(json.dumps({"written": str(args.output), "gaussians": len(g)}))


if __name__ == "__main__":
    main()
