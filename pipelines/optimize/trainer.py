"""Fit 3D Gaussians to posed views: Adam on the pre-activation parameters, densify and prune.

One step renders one (or a few) training views, takes the loss

    (1 - lambda) L1(rgb) + lambda (1 - SSIM(rgb)) + w_alpha L1(alpha, mask)
        + w_opacity mean(4 o (1 - o)) + w_flat mean(s_min / s_max)
        + w_novel mean(min(alpha_novel, 0.5))   (every few steps, a view off the training ring)
        + w_mvs L1(photo, neighbours' photos warped by the rendered depth)

and steps a per-parameter Adam. The parameters are kept in pre-activation form, under the
names gsplat uses: ``means``, ``scales`` (log), ``quats`` (unnormalised), ``opacities``
(logit), ``colors`` (RGB, linear) and, for SH degree > 0, ``sh_rest``.

Densification follows 3DGS: the norm of each Gaussian's screen-space mean gradient (in NDC
units, as gsplat: pixels x width / 2) is averaged over the steps that saw it; Gaussians above
``grad_threshold`` are cloned when small (largest scale <= ``clone_scale`` x scene scale) or
split in two when large (samples drawn from the Gaussian, scales / 1.6). The screen-space
gradient is exact on every backend: the rendering here runs the projection and compositing
as two stages and keeps the gradient of the projected means (``retain_grad``); on CUDA it is
gsplat's ``info["means2d"]``. Pruning removes low-opacity (< ``prune_opacity``) and huge
(largest scale > ``prune_scale`` x scene scale) Gaussians; opacities can be reset periodically
(to ``2 x prune_opacity``) so that Gaussians nothing needs fade out and get pruned. An optional
cap keeps the highest-gradient candidates when growth would exceed ``max_gaussians``.

The same strategy code runs on CPU and CUDA (gsplat's ``DefaultStrategy`` has the same rules
but no cap, and one implementation keeps CPU and GPU runs comparable). On CPU the loop is
deterministic for a fixed seed: the numba kernels sum in a fixed order and the torch glue runs
on one intra-op thread (a fixed reduction order; its ops here are small, and on a loaded
machine a second thread mostly waits for the scheduler). The numba kernels give the same
bits for any thread count, so their thread count is picked for speed: 1 or all cores,
whichever is measured faster while the loop runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.cameras import Cameras
from pipelines.errors import InputError
from pipelines.splats.gaussians import Gaussians

__all__ = [
    "StepInfo",
    "TrainConfig",
    "clone_gaussians",
    "densify_and_prune",
    "gaussians_from_params",
    "new_optimizers",
    "optimize_gaussians",
    "params_from_gaussians",
    "prune_gaussians",
    "psnr",
    "reset_opacity",
    "scene_scale",
    "split_gaussians",
    "ssim",
]


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig:
    """Optimisation settings. Schedule steps left ``None`` scale with ``iterations``.

    Attributes:
        iterations: optimisation steps.
        seed: seeds the view order and the split samples.
        views_per_step: training views rendered per step.
        sh_degree: colour SH degree (0 = plain RGB; higher degrees are added as zeros).
        lr_means: learning rate of the centres, times the scene scale; decays exponentially
            to ``lr_means * lr_means_final`` at the last step.
        lr_scales, lr_quats, lr_opacities, lr_colors, lr_sh_rest: Adam learning rates of the
            log-scales, quaternions, opacity logits, RGB and higher-order SH.
        ssim_weight: lambda of the D-SSIM term.
        alpha_weight: weight of the L1 loss between rendered alpha and the views' masks.
        opacity_weight: weight of ``mean(4 o (1 - o))`` over the opacities, which pushes each
            Gaussian to be opaque or gone: semi-transparent haze that the training views
            cannot tell from the surface behind it (e.g. inside a visual hull seen from one
            ring of cameras) otherwise survives and shows in views from other elevations.
            Measured with tangent-disc initialisation and ``flat_weight`` 0.05 (bench/optimize.py,
            test PSNR / mesh Chamfer): Suzanne 31.5 dB / 0.0079 at 0, 33.5 / 0.0070 at 0.003,
            35.1 / 0.0073 at 0.01; Spot 36.9 / 0.0037, 37.0 / 0.0031, 36.7 / 0.0041.
        novel_alpha_weight: weight of ``mean(min(a, 0.5))`` over the alpha of an extra render
            every ``novel_every`` steps from a new viewpoint (:func:`novel_camera`: a training
            camera swung about the look-at point by up to ``novel_tilt_deg``, at
            ``novel_scale`` of the training resolution). Haze that sits in front of the surface
            in every training view (the training loss cannot see it) shows as faint alpha
            against the background from other elevations; this makes it vanish (and erodes
            fins of the hull from their faint fringes), leaving solid coverage alone. 0
            disables. Measured (bench/optimize.py, test PSNR / F-score / Chamfer vs hull) at
            0 -> 0.25 -> 0.5: Suzanne 33.4 / 0.853 / 0.62 -> 34.2 / 0.866 / 0.58 -> 35.0 /
            0.883 / 0.54, Spot 37.0 / 0.988 / 0.669 -> 37.1 / 0.985 / 0.689 -> 36.8 / 0.976 /
            0.715 (the faint edges of thin parts erode too); the water bottle 34.9 -> 37.0 dB
            at 0.3. It costs one render per ``novel_every`` steps (+15 % time at 4).
        novel_every, novel_tilt_deg, novel_scale: see ``novel_alpha_weight``.
        mvs_weight: weight of the multi-view photometric term
            (:func:`pipelines.optimize.photometric.photometric_consistency`): each step's
            rendered depth lifts the view's solid pixels to 3D, and the photo is compared (L1)
            with its ``mvs_neighbours`` nearest views' photos (viewing directions within 60
            degrees; a view with none is left out) sampled there (all blurred by
            ``mvs_blur`` px, silhouette edges left out, occlusion checked against each
            neighbour's last rendered depth); from step ``mvs_start`` (default 6 % of the
            run) to ``mvs_stop`` (default: the end; stopping at 60 % gave Spot / Suzanne /
            water bottle +0.7 / +0.2 / +0.3 dB but F-score -0.005 / -0.006 / +0.002 and
            Chamfer +4-9 %). Silhouettes cannot see into concavities, and over a near-uniform
            surface a lid of Gaussians can repaint every training view; the photos still
            disagree about where the lid is, and this pulls it back onto the surface. 0
            disables. Measured
            (bench/optimize.py, test PSNR / F-score / Chamfer vs hull) at 0 -> 0.5 -> 1:
            Suzanne 34.2 / 0.866 / 0.58 -> 36.3 / 0.925 / 0.39 -> 36.1 / 0.932 / 0.38, Spot
            37.1 / 0.985 / 0.69 -> 36.2 / 0.988 / 0.64 -> 35.7 / 0.987 / 0.64 (its depth moves
            by changing opacities too, which costs some colour), water bottle 36.7 / 0.913 /
            0.59 -> 36.7 / 0.902 / 0.59 -> 36.0 / 0.904 / 0.59. It costs ~10 % time on CPU
            and ~60 % on CUDA (where the renders themselves are cheap).
        mvs_neighbours, mvs_blur, mvs_start, mvs_stop: see ``mvs_weight``.
        flat_weight: weight of ``mean(smallest scale / largest scale)`` (the largest one
            detached), which keeps the Gaussians flat discs: their rendered depth then hugs the
            surface instead of sitting about one radius behind it (meshes, see
            ``hull_gaussians(thickness=...)``).
        densify_start, densify_stop, densify_every: densify / prune every ``densify_every``
            steps in ``(densify_start, densify_stop]`` (defaults: 6 % / 60 % / 1/25 of the run,
            at least 25 steps).
        grad_threshold: mean screen-space gradient (NDC units) above which a Gaussian grows.
        clone_scale: largest scale (fraction of the scene scale) up to which it is cloned,
            above which it is split.
        prune_opacity: Gaussians below this opacity are removed.
        prune_scale: Gaussians whose largest scale exceeds this fraction of the scene scale are
            removed.
        opacity_reset_every: reset opacities every this many steps while densifying (0 =
            never; default: a third of the run, once, for runs of 600 steps or more).
        max_gaussians: cap on the number of Gaussians (None = no cap).
        min_contribution: Gaussians whose largest blending weight summed over the pixels of
            one training view (in pixels) stays below this in every view are pruned when
            densification stops and at the end: nothing in the views constrains them (e.g. the
            part of a visual hull hidden under an object), so they only show up, wrongly, in
            new views. 0 disables.
        min_visible: Gaussians whose visible fraction stays below this in every training view
            are pruned with ``min_contribution``: the blending weight summed over the view's
            pixels divided by the Gaussian's own footprint there (``o 2 pi sqrt(det Sigma2d)``,
            pixels), i.e. how much of it is not hidden behind others. Gaussians buried in a
            part of the visual hull that no view sees (under an object seen from above) are
            almost fully hidden in every view. 0 (default) disables: on the water bottle 0.1
            lifts test PSNR from 34.9 to 38.6 dB (the views from below no longer see a dark
            wedge) but leaves the bottle open at the bottom, and the fused mesh's Chamfer
            distance grows from 0.0054 to 0.0139.
        hull_margin: with a visual hull given, Gaussians whose centre leaves the hull grown by
            this many voxels are pruned at every densification round (the object lies inside
            its visual hull, so they are floaters).
        final_prune_opacity: Gaussians below this opacity are dropped from the result.
        threads: numba threads of the CPU rasteriser (None: 1 or all cores, whichever is
            measured faster while the loop runs; the results do not depend on it). Torch runs
            on one intra-op thread during the loop in any case.
    """

    iterations: int = 1500
    seed: int = 0
    views_per_step: int = 1
    sh_degree: int = 0
    lr_means: float = 4e-4
    lr_means_final: float = 0.01
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_colors: float = 2.5e-3
    lr_sh_rest: float = 2.5e-4
    ssim_weight: float = 0.2
    alpha_weight: float = 0.5
    opacity_weight: float = 0.003
    novel_alpha_weight: float = 0.25
    novel_every: int = 4
    novel_tilt_deg: float = 45.0
    novel_scale: float = 0.5
    flat_weight: float = 0.05
    mvs_weight: float = 0.5
    mvs_neighbours: int = 2
    mvs_blur: float = 1.0
    mvs_start: int | None = None
    mvs_stop: int | None = None
    densify_start: int | None = None
    densify_stop: int | None = None
    densify_every: int | None = None
    grad_threshold: float = 2e-4
    clone_scale: float = 0.01
    prune_opacity: float = 0.005
    prune_scale: float = 0.1
    opacity_reset_every: int | None = None
    max_gaussians: int | None = 300_000
    hull_margin: int = 2
    min_contribution: float = 0.02
    min_visible: float = 0.0
    final_prune_opacity: float = 0.005
    threads: int | None = None

    def schedule(self) -> tuple[int, int, int, int]:
        """``(densify_start, densify_stop, densify_every, opacity_reset_every)`` with the
        defaults filled in."""
        n = int(self.iterations)
        every = self.densify_every if self.densify_every is not None else max(25, n // 25)
        start = self.densify_start if self.densify_start is not None else max(1, round(0.06 * n))
        stop = self.densify_stop if self.densify_stop is not None else round(0.6 * n)
        reset = self.opacity_reset_every
        if reset is None:
            reset = n // 3 if n >= 600 else 0
        return int(start), int(stop), max(1, int(every)), int(reset)


@dataclass
class StepInfo:
    """What the per-step callback receives.

    Attributes:
        step: 1-based step just taken; iterations: total steps.
        loss: total loss of the step; psnr: PSNR (dB) of the rendered training view(s).
        gaussians: current number of Gaussians; seconds: wall time since the start.
    """

    step: int
    iterations: int
    loss: float
    psnr: float
    gaussians: int
    seconds: float


# --------------------------------------------------------------------------------------------
# losses


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g.to(dtype)


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of two image batches ``[B, C, H, W]`` in [0, 1] (Gaussian window, separable,
    zero padding as 3DGS; constants ``(0.01)^2`` and ``(0.03)^2``)."""
    c = x.shape[1]
    g = _gaussian_window(window, sigma, x.dtype).to(x.device)
    pad = window // 2

    def blur(t: Tensor) -> Tensor:
        t = F.conv2d(t, g.view(1, 1, 1, -1).expand(c, 1, 1, window), padding=(0, pad), groups=c)
        return F.conv2d(t, g.view(1, 1, -1, 1).expand(c, 1, window, 1), padding=(pad, 0), groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x * mu_x
    syy = blur(y * y) - mu_y * mu_y
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return (num / den).mean()


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of two images in [0, 1]."""
    mse = float(((a.detach() - b.detach()) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


# --------------------------------------------------------------------------------------------
# parameters


def params_from_gaussians(g: Gaussians, sh_degree: int = 0) -> dict[str, Tensor]:
    """Pre-activation leaf tensors (``requires_grad``) from activated Gaussians."""
    eps = 1e-6
    out = {
        "means": g.means.detach().float().clone(),
        "scales": torch.log(g.scales.detach().float().clamp_min(1e-8)),
        "quats": F.normalize(g.quats.detach().float(), dim=-1),
        "opacities": torch.logit(g.opacities.detach().float().clamp(eps, 1 - eps)),
        "colors": g.colors.detach().float().clone(),
    }
    if sh_degree > 0:
        k = (sh_degree + 1) ** 2 - 1
        rest = torch.zeros(len(g), k, 3, device=g.device)
        if g.sh_rest is not None:
            m = min(k, g.sh_rest.shape[1])
            rest[:, :m] = g.sh_rest[:, :m].detach().float()
        out["sh_rest"] = rest
    return {k: v.contiguous().requires_grad_(True) for k, v in out.items()}


def gaussians_from_params(params: dict[str, Tensor]) -> Gaussians:
    """Activated Gaussians (differentiable) from the parameters."""
    return Gaussians(
        means=params["means"],
        scales=torch.exp(params["scales"]),
        quats=F.normalize(params["quats"], dim=-1),
        opacities=torch.sigmoid(params["opacities"]),
        colors=params["colors"],
        sh_rest=params.get("sh_rest"),
    )


def new_optimizers(params: dict[str, Tensor], lrs: dict[str, float]) -> dict[str, torch.optim.Adam]:
    """One single-group Adam per parameter (eps 1e-15, as 3DGS)."""
    return {k: torch.optim.Adam([p], lr=lrs[k], eps=1e-15) for k, p in params.items()}


def _replace_rows(
    params: dict[str, Tensor],
    optimizers: dict[str, torch.optim.Optimizer],
    keep: Tensor | None,
    new: dict[str, Tensor] | None,
) -> None:
    """Keep the rows ``keep`` (bool, None = all) and append ``new`` rows, in place.

    Adam moments follow the kept rows; appended rows start with zero moments.
    """
    for name, old in list(params.items()):
        data = old.detach()
        if keep is not None:
            data = data[keep]
        if new is not None:
            data = torch.cat([data, new[name].to(data)], 0)
        p = data.contiguous().requires_grad_(True)
        opt = optimizers.get(name)
        if opt is not None:
            state = opt.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    t = state[key]
                    if keep is not None:
                        t = t[keep]
                    if new is not None:
                        t = torch.cat([t, t.new_zeros((len(new[name]),) + t.shape[1:])], 0)
                    state[key] = t.contiguous()
                opt.state[p] = state
            opt.param_groups[0]["params"] = [p]
        params[name] = p


def prune_gaussians(params, optimizers, remove: Tensor) -> int:
    """Remove the Gaussians where ``remove`` (bool ``[N]``) is true; returns how many."""
    n = int(remove.sum())
    if n:
        _replace_rows(params, optimizers, ~remove, None)
    return n


def clone_gaussians(params, optimizers, select: Tensor) -> int:
    """Append an exact copy of each selected Gaussian (3DGS clone); returns how many."""
    n = int(select.sum())
    if n:
        new = {k: v.detach()[select] for k, v in params.items()}
        _replace_rows(params, optimizers, None, new)
    return n


def split_gaussians(params, optimizers, select: Tensor, generator: torch.Generator) -> int:
    """Replace each selected Gaussian by two, centred on samples of the Gaussian itself, with
    scales divided by 1.6 (3DGS split); returns how many were split."""
    n = int(select.sum())
    if not n:
        return 0
    with torch.no_grad():
        from pipelines.splats.gaussians import quat_to_matrix

        sel = {k: v.detach()[select] for k, v in params.items()}
        scales = torch.exp(sel["scales"])  # [n, 3]
        rot = quat_to_matrix(sel["quats"])  # [n, 3, 3]
        z = torch.randn(2, n, 3, generator=generator, dtype=scales.dtype).to(scales.device)
        offsets = torch.einsum("nij,knj->kni", rot, z * scales[None])  # [2, n, 3]
        new = {k: torch.cat([v, v], 0) for k, v in sel.items()}
        new["means"] = (sel["means"][None] + offsets).reshape(2 * n, 3)
        new["scales"] = torch.cat([sel["scales"], sel["scales"]], 0) - math.log(1.6)
    _replace_rows(params, optimizers, ~select, new)
    return n


def reset_opacity(params, optimizers, value: float) -> None:
    """Clamp every opacity to at most ``value`` and clear its Adam moments."""
    with torch.no_grad():
        cap = math.log(value / (1 - value))
        params["opacities"].clamp_(max=cap)
    opt = optimizers.get("opacities")
    if opt is not None:
        state = opt.state.get(params["opacities"])
        if state:
            state["exp_avg"].zero_()
            state["exp_avg_sq"].zero_()


@dataclass
class DensifyState:
    """Running screen-space gradient statistics (per Gaussian)."""

    grad2d: Tensor
    count: Tensor

    @classmethod
    def zeros(cls, n: int, device) -> DensifyState:
        return cls(torch.zeros(n, device=device), torch.zeros(n, device=device))

    def update(self, means2d_grad: Tensor, visible: Tensor, width: int, height: int) -> None:
        """Accumulate ``|d loss / d means2d|`` (``[C, N, 2]`` pixels -> NDC units)."""
        c = means2d_grad.shape[0]
        scale = torch.tensor([width / 2.0 * c, height / 2.0 * c], device=means2d_grad.device)
        norm = (means2d_grad * scale).norm(dim=-1)  # [C, N]
        vis = visible.to(norm.dtype)
        self.grad2d += (norm * vis).sum(0)
        self.count += vis.sum(0)


def densify_and_prune(
    params: dict[str, Tensor],
    optimizers: dict[str, torch.optim.Optimizer],
    state: DensifyState,
    config: TrainConfig,
    scene_scale: float,
    generator: torch.Generator,
    prune_big: bool = True,
    inside: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, int]:
    """One densification round: clone / split high-gradient Gaussians, prune transparent and
    huge ones (and, with ``inside`` (points -> bool), those outside the allowed region), then
    reset the statistics (``state`` is replaced in place).

    Returns:
        counts ``{"cloned", "split", "pruned"}``.
    """
    n0 = len(params["means"])
    avg = state.grad2d / state.count.clamp_min(1)
    high = avg > config.grad_threshold
    if config.max_gaussians is not None:
        room = max(0, int(config.max_gaussians) - n0)
        if int(high.sum()) > room:  # keep the strongest candidates (each adds one Gaussian)
            keep = torch.zeros_like(high)
            if room:
                top = torch.topk(torch.where(high, avg, torch.full_like(avg, -1.0)), room).indices
                keep[top] = True
            high &= keep
    with torch.no_grad():
        max_scale = torch.exp(params["scales"]).max(-1).values
    small = max_scale <= config.clone_scale * scene_scale
    n_clone = clone_gaussians(params, optimizers, high & small)
    split_sel = torch.cat(
        [high & ~small, torch.zeros(n_clone, dtype=torch.bool, device=high.device)]
    )
    n_split = split_gaussians(params, optimizers, split_sel, generator)
    with torch.no_grad():
        op = torch.sigmoid(params["opacities"])
        remove = op < config.prune_opacity
        if prune_big:
            remove |= torch.exp(params["scales"]).max(-1).values > config.prune_scale * scene_scale
        if inside is not None:
            remove |= ~inside(params["means"].detach()).to(remove.device)
    n_prune = prune_gaussians(params, optimizers, remove)
    fresh = DensifyState.zeros(len(params["means"]), params["means"].device)
    state.grad2d, state.count = fresh.grad2d, fresh.count
    return {"cloned": n_clone, "split": n_split, "pruned": n_prune}


# --------------------------------------------------------------------------------------------
# rendering with the screen-space means exposed


def _colors_per_camera(g: Gaussians, c2w: Tensor) -> Tensor:
    from pipelines.splats.sh import view_dependent_rgb

    if g.sh_rest is None:
        return g.colors[None].expand(len(c2w), -1, -1)
    return torch.stack([view_dependent_rgb(g.colors, g.sh_rest, g.means, c[:3, 3]) for c in c2w])


def _render(
    g: Gaussians,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    bg: Tensor,
    backend: str,
    with_depth: bool = False,
):
    """``(rgb [C,H,W,3], alpha [C,H,W,1], means2d [C,N,2] (grad retained), visible [C,N],
    depth [C,H,W,1] or None)``; the expected depth is differentiable (``with_depth`` is
    needed on gsplat, where it costs a fourth channel)."""
    if backend == "gsplat":
        import gsplat

        flip = torch.tensor([1.0, -1.0, -1.0, 1.0], device=c2w.device)
        viewmats = torch.linalg.inv(c2w * flip)
        out, alpha, info = gsplat.rasterization(
            g.means,
            g.quats,
            g.scales,
            g.opacities,
            _colors_per_camera(g, c2w),
            viewmats=viewmats,
            Ks=K,
            width=width,
            height=height,
            eps2d=0.3,
            sh_degree=None,
            packed=False,
            rasterize_mode="classic",
            render_mode="RGB+ED" if with_depth else "RGB",
        )
        rgb = out[..., :3] + (1.0 - alpha) * bg[:, None, None, :]
        depth = out[..., 3:4] if with_depth else None
        m2d = info["means2d"]
        if m2d.requires_grad:
            m2d.retain_grad()
        radii = info["radii"]
        visible = (radii.reshape(radii.shape[0], radii.shape[1], -1) > 0).all(-1)
        return rgb, alpha, m2d, visible, depth

    from pipelines.raster.project import project, viewmats_from_c2w

    viewmats = viewmats_from_c2w(c2w.double()).to(g.means.dtype)
    if backend == "cpu":
        from pipelines.raster.cpu import project_cpu, rasterize_cpu

        proj = project_cpu(g.means, g.quats, g.scales, g.opacities, viewmats, K, width, height)
    else:
        proj = project(g.means, g.quats, g.scales, g.opacities, viewmats, K, width, height)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    feats = torch.cat([_colors_per_camera(g, c2w), proj.depths[..., None]], -1)
    visible = (proj.radii > 0).all(-1)
    if backend == "cpu":
        rgb, alpha, depth = rasterize_cpu(proj, feats, g.opacities, width, height, bg)
    else:
        from pipelines.raster import _finish
        from pipelines.raster.reference import rasterize_reference

        acc, alpha = rasterize_reference(proj, feats, g.opacities, width, height)
        out = _finish(acc, alpha, bg)
        rgb, depth = out.rgb, out.depth
    return rgb, alpha, proj.means2d, visible, depth


def _backend(device: torch.device) -> str:
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        from pipelines.raster.cuda import gsplat_available

        if gsplat_available():
            return "gsplat"
    return "reference"


@contextmanager
def _threads(n: int | None, cpu: bool):
    """On CPU, run with ``n`` torch intra-op threads (restored afterwards)."""
    if n is None or not cpu:
        yield
        return
    import numba

    # start numba's threading layer first: its OpenMP start-up resets the process-wide
    # OpenMP thread count, which torch's own ops read, on its first use
    numba.get_num_threads()
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _RasterThreads:
    """Picks the numba thread count of the CPU rasteriser while the loop runs.

    The kernels give bit-identical results for any thread count, so this only changes speed:
    on an idle machine all cores are ~1.8x faster than one, on a busy one a single thread can
    be several times faster (the OpenMP workers spin waiting for each other). With
    ``fixed=None`` the two settings are timed on a few steps every ``period`` steps and the
    faster one is used in between.
    """

    probe = 5
    period = 100

    def __init__(self, fixed: int | None, cpu: bool):
        import numba

        self.numba = numba
        self.saved = numba.get_num_threads()
        most = int(numba.config.NUMBA_NUM_THREADS)
        if not cpu:
            self.options = []
        elif fixed is not None:
            self.options = [max(1, min(int(fixed), most))]
        else:
            self.options = [1, most] if most > 1 else [1]
        self.cost: dict[int, float] = {}
        self.samples: list[float] = []
        self.current = self.options[-1] if self.options else None

    def _set(self, n: int) -> None:
        if n != self.numba.get_num_threads():
            self.numba.set_num_threads(n)
        self.current = n

    def before(self, step: int) -> None:
        if not self.options:
            return
        if len(self.options) == 1:
            self._set(self.options[0])
            return
        phase = (step - 1) % self.period
        best = min(self.options, key=lambda n: self.cost.get(n, -1.0))
        other = [n for n in self.options if n != best][0]
        if step <= 2 * self.probe + 2:  # warm up, then time both settings once
            want = self.options[-1] if step <= self.probe + 2 else self.options[0]
        else:
            want = other if phase < self.probe else best
        if want != self.current:
            self.samples = []
        self._set(want)

    def after(self, seconds: float, clean: bool) -> None:
        """Record a step's duration (``clean``: no densification or other extra work)."""
        if len(self.options) < 2 or not clean:
            return
        self.samples.append(seconds)
        if len(self.samples) >= 3:
            srt = sorted(self.samples)
            self.cost[self.current] = srt[len(srt) // 2]

    def __enter__(self) -> _RasterThreads:
        return self

    def __exit__(self, *_exc) -> None:
        if self.options:
            self.numba.set_num_threads(self.saved)


def scene_scale(cams: Cameras) -> float:
    """1.1 x the largest distance from a camera to the cameras' common look-at point (the
    extent the 3DGS thresholds are relative to)."""
    from pipelines.optimize.visual_hull import look_at_point

    centre = look_at_point(cams)
    d = float((cams.c2w[:, :3, 3].double() - centre).norm(dim=-1).max())
    return 1.1 * d if d > 0 else 1.0


def view_contributions(
    params: dict[str, Tensor],
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """``([N], [N])``: largest, over the given views, of each Gaussian's blending weight summed
    over the view's pixels (in pixels), and largest visible fraction (that weight over the
    Gaussian's footprint); :func:`pipelines.raster.visibility.view_contributions`."""
    from pipelines.raster.visibility import view_contributions as contributions

    g = gaussians_from_params({k: v.detach() for k, v in params.items()})
    return contributions(g, c2w, K, width, height, backend)


# --------------------------------------------------------------------------------------------
# the loop


def novel_camera(c2w: Tensor, centre: Tensor, max_tilt_deg: float, gen: torch.Generator) -> Tensor:
    """A new viewpoint: the camera ``c2w [4, 4]`` rotated about ``centre [3]`` by a random
    angle in ``[-max_tilt_deg, max_tilt_deg]`` about a random axis perpendicular to its line of
    sight to the centre. Same distance, still looking at the centre; from a ring of training
    cameras this reaches other elevations. Returns ``[4, 4]``."""
    pos = c2w[:3, 3] - centre
    sight = F.normalize(pos, dim=0)
    helper = torch.zeros_like(sight)
    helper[int(sight.abs().argmin())] = 1.0
    a = F.normalize(torch.linalg.cross(sight, helper), dim=0)
    b = torch.linalg.cross(sight, a)
    phi = float(torch.rand((), generator=gen)) * 2 * math.pi
    axis = a * math.cos(phi) + b * math.sin(phi)
    theta = math.radians(max_tilt_deg) * (2 * float(torch.rand((), generator=gen)) - 1)
    k = torch.zeros(3, 3, dtype=c2w.dtype, device=c2w.device)
    k[0, 1], k[0, 2], k[1, 2] = -axis[2], axis[1], -axis[0]
    k = k - k.T  # cross-product matrix of the axis
    eye = torch.eye(3, dtype=c2w.dtype, device=c2w.device)
    rot = eye + math.sin(theta) * k + (1 - math.cos(theta)) * (k @ k)  # Rodrigues
    out = c2w.clone()
    out[:3, :3] = rot @ c2w[:3, :3]
    out[:3, 3] = centre + rot @ pos
    return out


class _Targets:
    """Training images ``rgb [V,H,W,3]``, masks ``alpha [V,H,W,1]`` (or None) and cameras on
    the device."""

    def __init__(self, images: Tensor, masks: Tensor | None, cams: Cameras, dev):
        self.rgb = images.to(dev, torch.float32).permute(0, 2, 3, 1).contiguous()
        self.alpha = None if masks is None else masks.to(dev, torch.float32)[..., None]
        self.c2w, self.K = cams.c2w.to(dev), cams.K.to(dev)
        self.width, self.height = cams.width, cams.height


class _Photometric:
    """The multi-view photometric term (:mod:`pipelines.optimize.photometric`): blurred photos,
    each view's neighbours, and the last rendered depth of every view (for visibility)."""

    def __init__(self, tg: _Targets, cfg: TrainConfig):
        from pipelines.optimize.photometric import blur, neighbour_views, solid_pixels

        self.tg = tg
        self.images = blur(tg.rgb.permute(0, 3, 1, 2), cfg.mvs_blur)
        masks = torch.ones_like(self.images[:, 0]) if tg.alpha is None else tg.alpha[..., 0]
        # solid interiors only, in the reference and where the warp lands
        self.solid = solid_pixels(masks)
        self.neighbours = neighbour_views(tg.c2w, cfg.mvs_neighbours)
        self.depths = torch.zeros_like(masks)

    def loss(self, views: list[int], depth: Tensor, alpha: Tensor, active: bool) -> Tensor:
        from pipelines.optimize.photometric import photometric_consistency

        tg = self.tg
        total = depth.new_zeros(())
        for k, v in enumerate(views):
            d = depth[k, ..., 0]
            if active and self.neighbours[v]:
                nb = self.neighbours[v]
                valid = (self.solid[v] > 0.5) & (alpha[k, ..., 0].detach() > 0.9) & (d.detach() > 0)
                total = total + photometric_consistency(
                    d,
                    valid,
                    self.images[v],
                    tg.c2w[v],
                    tg.K[v],
                    self.images[nb],
                    self.solid[nb],
                    self.depths[nb],
                    tg.c2w[nb],
                    tg.K[nb],
                )
            self.depths[v] = d.detach()
        return total / len(views)


def optimize_gaussians(
    init: Gaussians,
    cams: Cameras,
    images: Tensor,
    masks: Tensor | None = None,
    config: TrainConfig | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    device: str | torch.device = "cpu",
    hull=None,
) -> Gaussians:
    """Optimise Gaussians against posed views.

    Args:
        init: starting Gaussians (activated), in the cameras' frame.
        cams: V cameras with intrinsics at the images' size.
        images: ``[V, 3, H, W]`` in [0, 1], composited on white (the renders use white too).
        masks: ``[V, H, W]`` alpha in [0, 1] for the mask loss, or None (no mask loss).
        config: :class:`TrainConfig` (defaults if None).
        on_step: called after every step with a :class:`StepInfo`.
        device: torch device; CPU uses the numba rasteriser, CUDA gsplat (the pure-torch
            reference rasteriser when gsplat is missing); MPS runs on the CPU.
        hull: optional :class:`~pipelines.optimize.visual_hull.VisualHull` (cameras' frame):
            Gaussians leaving it (grown by ``config.hull_margin`` voxels) are pruned.

    Returns:
        The optimised Gaussians (activated, detached, on the CPU), without those below
        ``config.final_prune_opacity``.
    """
    cfg = config or TrainConfig()
    if images.dim() != 4 or images.shape[0] != len(cams) or images.shape[1] != 3:
        raise InputError(f"images must be [V, 3, H, W] with V={len(cams)}")
    h, w = int(images.shape[2]), int(images.shape[3])
    if (w, h) != (cams.width, cams.height):
        raise InputError(f"images are {w}x{h} but the cameras are {cams.width}x{cams.height}")
    if len(init) == 0:
        raise InputError("no Gaussians to optimise; the initialisation is empty")
    from pipelines.device import stage_device

    dev = torch.device(stage_device(device, "optimize"))  # MPS: the CPU (numba rasteriser)
    backend = _backend(dev)
    cpu = dev.type == "cpu"
    start, stop, every, reset_every = cfg.schedule()
    extent = scene_scale(cams)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    inside = None
    if hull is not None:
        grown = hull.dilated(cfg.hull_margin)

        def inside(points: Tensor) -> Tensor:
            return grown.contains(points.cpu())

    t0 = time.perf_counter()

    with _threads(1, cpu), _RasterThreads(cfg.threads, backend == "cpu") as raster_threads:
        params = params_from_gaussians(init.to(dev), cfg.sh_degree)
        lrs = {
            "means": cfg.lr_means * extent,
            "scales": cfg.lr_scales,
            "quats": cfg.lr_quats,
            "opacities": cfg.lr_opacities,
            "colors": cfg.lr_colors,
            "sh_rest": cfg.lr_sh_rest,
        }
        optimizers = new_optimizers(params, lrs)
        state = DensifyState.zeros(len(init), dev)
        tg = _Targets(images, masks, cams, dev)
        n_views = len(cams)
        per_step = max(1, min(int(cfg.views_per_step), n_views))
        bg = torch.ones(per_step, 3, device=dev)
        order: list[int] = []
        decay = cfg.lr_means_final ** (1.0 / max(1, cfg.iterations))
        mvs = _Photometric(tg, cfg) if cfg.mvs_weight > 0 else None
        mvs_start = round(0.06 * cfg.iterations) if cfg.mvs_start is None else cfg.mvs_start
        mvs_stop = int(cfg.iterations) if cfg.mvs_stop is None else cfg.mvs_stop
        if cfg.novel_alpha_weight > 0:
            from pipelines.optimize.visual_hull import look_at_point

            centre = look_at_point(cams).to(dev, tg.c2w.dtype)
            nw = max(8, round(tg.width * cfg.novel_scale))
            nh = max(8, round(tg.height * cfg.novel_scale))
            novel_K = tg.K.clone()
            novel_K[:, 0] *= nw / tg.width
            novel_K[:, 1] *= nh / tg.height

        for step in range(1, int(cfg.iterations) + 1):
            t_step = time.perf_counter()
            raster_threads.before(step)
            clean = True
            while len(order) < per_step:
                order += torch.randperm(n_views, generator=gen).tolist()
            views, order = order[:per_step], order[per_step:]
            idx = torch.tensor(views, device=dev)
            g = gaussians_from_params(params)
            rgb, alpha, m2d, visible, depth = _render(
                g, tg.c2w[idx], tg.K[idx], tg.width, tg.height, bg, backend, mvs is not None
            )
            gt = tg.rgb[idx]
            l1 = (rgb - gt).abs().mean()
            loss = (1 - cfg.ssim_weight) * l1
            if cfg.ssim_weight > 0:
                d_ssim = 1.0 - ssim(rgb.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2))
                loss = loss + cfg.ssim_weight * d_ssim
            if tg.alpha is not None and cfg.alpha_weight > 0:
                loss = loss + cfg.alpha_weight * (alpha - tg.alpha[idx]).abs().mean()
            if cfg.flat_weight > 0:
                s = g.scales
                flat = s.min(-1).values / s.max(-1).values.detach()
                loss = loss + cfg.flat_weight * flat.mean()
            if cfg.opacity_weight > 0:
                loss = loss + cfg.opacity_weight * 4.0 * (g.opacities * (1 - g.opacities)).mean()
            if mvs is not None:
                loss = loss + cfg.mvs_weight * mvs.loss(
                    views, depth, alpha, mvs_start < step <= mvs_stop
                )
            if cfg.novel_alpha_weight > 0 and cfg.novel_every > 0 and step % cfg.novel_every == 0:
                v = views[0]
                c2w_new = novel_camera(tg.c2w[v], centre, cfg.novel_tilt_deg, gen)
                _, a_new, _, _, _ = _render(
                    g, c2w_new[None], novel_K[v : v + 1], nw, nh, bg[:1], backend
                )
                loss = loss + cfg.novel_alpha_weight * a_new.clamp(max=0.5).mean()
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers.values():
                opt.step()
            optimizers["means"].param_groups[0]["lr"] *= decay

            if step <= stop and m2d.grad is not None:
                state.update(m2d.grad.detach(), visible, tg.width, tg.height)
                if step > start and step % every == 0:
                    clean = False
                    densify_and_prune(
                        params,
                        optimizers,
                        state,
                        cfg,
                        extent,
                        gen,
                        prune_big=True,
                        inside=inside,
                    )
            if reset_every and step % reset_every == 0 and step < stop:
                reset_opacity(params, optimizers, 2 * cfg.prune_opacity)
            prune_hidden = cfg.min_contribution > 0 or cfg.min_visible > 0
            if prune_hidden and step in (stop, int(cfg.iterations)):
                clean = False
                contrib, visible = view_contributions(params, tg.c2w, tg.K, w, h, backend)
                hidden = (contrib < cfg.min_contribution) | (visible < cfg.min_visible)
                prune_gaussians(params, optimizers, hidden)
                state = DensifyState.zeros(len(params["means"]), dev)

            raster_threads.after(time.perf_counter() - t_step, clean)
            if on_step is not None:
                on_step(
                    StepInfo(
                        step=step,
                        iterations=int(cfg.iterations),
                        loss=float(loss.detach()),
                        psnr=psnr(rgb, gt),
                        gaussians=len(params["means"]),
                        seconds=time.perf_counter() - t0,
                    )
                )

        out = gaussians_from_params(params).detach().to("cpu")
    out = out[out.opacities >= cfg.final_prune_opacity]
    return out.with_(quats=F.normalize(out.quats, dim=-1))


def with_iterations(config: TrainConfig, iterations: int, seed: int | None = None) -> TrainConfig:
    """A copy of ``config`` with another step count (and seed); the schedule rescales."""
    changes: dict = {"iterations": int(iterations)}
    if seed is not None:
        changes["seed"] = int(seed)
    return replace(config, **changes)
