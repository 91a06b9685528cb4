"""Settings of the per-scene fit (:func:`pipelines.optimize.trainer.optimize_gaussians`): one
dataclass owns every default, each with the measurement that chose it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainConfig"]


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
