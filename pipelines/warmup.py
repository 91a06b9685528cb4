"""Fill numba's on-disk cache before the first real run: ``python -m pipelines.warmup``.

The CPU paths (the rasteriser's forward and backward, hence the optimiser, turntables, renders
and evaluation; TSDF fusion; texture baking; GeoLRM's deformable sampling) are numba kernels
compiled on first use and then cached on disk (:func:`pipelines.numba_jit.cached_njit`). On two
cores the compile costs minutes, which would otherwise land on a user's first command. This
module runs the real entry points once on tiny inputs (a few dozen Gaussians, 32 px views, a
16^3 TSDF), so every kernel is compiled for the signatures (dtypes, array layouts) the real
runs use and written to the cache; later processes load it in about a second.

numba keys its cache on the source file and the CPU, so an edit of a kernel's module or another
machine compiles once more. ``scripts/setup.sh`` runs this at the end of the set-up; a step
that fails, or a cache that cannot be written, is reported as a ``note:`` line and never fails
(the kernels then compile on first use, as without the warm-up).

    python -m pipelines.warmup                    # every step
    python -m pipelines.warmup --only raster mesh
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from pipelines.geolrm.deformable import sample_views
from pipelines.geolrm.model import ProposalConfig, ReconstructionConfig, deformable_sample
from pipelines.mesh import gaussians_to_mesh
from pipelines.optimize.trainer import TrainConfig, optimize_gaussians
from pipelines.raster import cpu, rasterize
from pipelines.render import render_frames, turntable_cameras
from pipelines.splats.gaussians import Gaussians

RES = 32  # views' size in pixels
N_GAUSS = 64


def tiny_gaussians(n: int = N_GAUSS, seed: int = 0) -> Gaussians:
    """``n`` float32 Gaussians in a ball of radius ~0.5 around the origin (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) - 0.5) * 0.8
    scales = 0.04 + 0.08 * torch.rand(n, 3, generator=gen)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1)
    opacities = 0.5 + 0.4 * torch.rand(n, generator=gen)
    colors = torch.rand(n, 3, generator=gen)
    return Gaussians(means, scales, quats, opacities, colors)


def _cams(g: Gaussians, frames: int = 4, resolution: int = RES):
    return turntable_cameras(g, frames=frames, resolution=resolution)


def _raster() -> None:
    """One float32 forward + backward through every output of the CPU rasteriser, and one
    forward without autograd (turntables, renders)."""
    g0 = tiny_gaussians()
    cams = _cams(g0, frames=2)
    leaves = [t.clone().requires_grad_(True) for t in (g0.means, g0.scales, g0.quats)]
    opacities = g0.opacities.clone().requires_grad_(True)
    colors = g0.colors.clone().requires_grad_(True)
    g = Gaussians(*leaves, opacities, colors)
    out = rasterize(g, cams.c2w, cams.K, cams.width, cams.height, background=(1.0, 1.0, 1.0))
    (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()
    with torch.no_grad():
        rasterize(g0, cams.c2w, cams.K, cams.width, cams.height, background=(1.0, 1.0, 1.0))


def _optimize() -> None:
    """A few steps of the real optimiser (densify, prune, the photometric term) on 4 views."""
    target = tiny_gaussians()
    cams = _cams(target)
    with torch.no_grad():
        out = rasterize(target, cams.c2w, cams.K, cams.width, cams.height, (1.0, 1.0, 1.0))
    images = out.rgb.permute(0, 3, 1, 2).contiguous()
    masks = out.alpha[..., 0].contiguous()
    init = tiny_gaussians(seed=1)
    optimize_gaussians(init, cams, images, masks, TrainConfig(iterations=50), device="cpu")


def _turntable() -> None:
    """The turntable's renders (white background, one camera per call)."""
    g = tiny_gaussians()
    for _ in render_frames(g, _cams(g, frames=2)):
        pass


def _mesh() -> None:
    """TSDF fusion (numba path), marching cubes and a baked texture: ``geolrm mesh --texture``."""
    g = tiny_gaussians(n=256)
    gaussians_to_mesh(g, views=4, resolution=16, faces=None, texture_size=64)


def _geolrm() -> None:
    """GeoLRM's deformable sampling kernels (per view; all views, forward and backward), for
    the channels per head of the released model's proposal and reconstruction transformers
    (and of the tiny test model)."""
    gen = torch.Generator().manual_seed(0)
    channels = sorted(
        {
            c.transformer_dim // c.transformer_heads
            for c in (ProposalConfig(), ReconstructionConfig())
        }
        | {24}
    )
    shapes = ((4, 4), (2, 2))
    B, S, Hc, P = 1, 8, 2, 2
    L = sum(h * w for h, w in shapes)
    for C in channels:
        value = torch.randn(B, L, Hc, C, generator=gen)
        reference = torch.rand(B, S, 2, generator=gen)
        offsets = torch.randn(B, S, Hc, len(shapes), P, 2, generator=gen)
        weights = torch.rand(B, S, Hc, len(shapes), P, generator=gen)
        deformable_sample(value, shapes, reference, offsets, weights)
        value = value[:, None].requires_grad_()
        out = sample_views(value, shapes, reference[:, None], offsets, weights)
        out.sum().backward()


STEPS: dict[str, Callable[[], None]] = {
    "raster": _raster,
    "optimize": _optimize,
    "turntable": _turntable,
    "mesh": _mesh,
    "geolrm": _geolrm,
}


def cache_note() -> str | None:
    """A note when numba cannot cache the rasteriser's kernels here (None when it can)."""
    if type(cpu._forward_kernel._cache).__name__ == "NullCache":
        return "numba finds no writable cache folder here; the kernels compile in every process"
    return None


def cache_dir() -> str:
    """Where numba writes the rasteriser's cache (next to the module, or numba's user dir)."""
    return str(getattr(cpu._forward_kernel._cache, "_cache_path", "?"))


def warm_up(
    steps: list[str] | None = None, log: Callable[[str], None] | None = None
) -> dict[str, float | None]:
    """Run the warm-up steps (all by default); returns ``{step: seconds}``, None where a step
    failed (the failure is logged as a ``note:`` line, never raised)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    times: dict[str, float | None] = {}
    for name in steps or list(STEPS):
        t = time.perf_counter()
        try:
            STEPS[name]()
        except Exception as e:
            times[name] = None
            msg = str(e).splitlines()[0] if str(e) else ""
            log(
                f"note: warm-up step '{name}' failed ({type(e).__name__}: {msg}); "
                "its kernels are not cached (they compile on first use)"
            )
            continue
        times[name] = time.perf_counter() - t
        log(f"  {name}: {times[name]:.1f} s")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.warmup",
        description="Compile geolrm's numba kernels into numba's on-disk cache.",
    )
    parser.add_argument("--only", nargs="+", choices=list(STEPS), help="run only these steps")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    times = warm_up(args.only)
    total = time.perf_counter() - t
    note = cache_note()
    if note:
        print(f"note: {note}", file=sys.stderr)
    else:
        print(
            f"numba kernels compiled into their cache in {total:.0f} s ({cache_dir()}, ...)",
            file=sys.stderr,
        )
    return 0 if all(v is not None for v in times.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
