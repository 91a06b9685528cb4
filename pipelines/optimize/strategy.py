"""Densification and pruning (3DGS's rules, gsplat's ``strategy`` shape): a strategy object
whose hook the loop calls after each step's backward pass, its running state, and one round.

The norm of each Gaussian's screen-space mean gradient (in NDC units, as gsplat: pixels x
width / 2) is averaged over the steps that saw it; Gaussians above ``grad_threshold`` are
cloned when small (largest scale <= ``clone_scale`` x scene scale) or split in two when large
(samples drawn from the Gaussian, scales / 1.6). The gradient is read from the render's
``meta.means2d`` (:class:`~pipelines.raster.output.RenderMeta`, its gradient retained; exact on
every backend). Pruning removes low-opacity (< ``prune_opacity``) and huge (largest scale >
``prune_scale`` x scene scale) Gaussians, and those leaving an allowed region (the visual hull);
opacities can be reset periodically (to ``2 x prune_opacity``) so that Gaussians nothing needs
fade out and get pruned; when densification stops and at the end, Gaussians no training view
constrains (:func:`view_contributions`) go too. An optional cap keeps the highest-gradient
candidates when growth would exceed ``max_gaussians``.

The same code runs on CPU and CUDA (gsplat's ``DefaultStrategy`` has the same rules but no cap
and no hidden-Gaussian pruning, and one implementation keeps CPU and GPU runs comparable).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pipelines.optimize.config import TrainConfig
from pipelines.optimize.ops import (
    clone_gaussians,
    gaussians_from_params,
    prune_gaussians,
    reset_opacity,
    split_gaussians,
)
from pipelines.raster.output import RenderMeta
from pipelines.raster.visibility import view_contributions as contributions

__all__ = ["DensifyState", "DensifyStrategy", "densify_and_prune", "view_contributions"]


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
    g = gaussians_from_params({k: v.detach() for k, v in params.items()})
    return contributions(g, c2w, K, width, height, backend)


class DensifyStrategy:
    """When and how the Gaussians grow and shrink during the fit (gsplat's ``DefaultStrategy``
    with the rules above); holds the running :class:`DensifyState`.

    The loop calls :meth:`step_post_backward` once per step, after the backward pass and the
    Adam step (the order the measured defaults were tuned with; gsplat's trainer steps its
    optimisers after the hook).

    Args:
        cfg: the schedule and thresholds. n: initial number of Gaussians.
        scene_scale: the extent the scale thresholds are relative to.
        generator: draws the split samples.
        c2w, K, width, height: the V training views (``[V, 4, 4]``, ``[V, 3, 3]``), for the
            hidden-Gaussian pruning and the NDC scaling of the gradient.
        backend: the raster backend of those renders.
        inside: optional ``points [N, 3] -> bool [N]``, the region Gaussians must stay in.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        n: int,
        scene_scale: float,
        generator: torch.Generator,
        c2w: Tensor,
        K: Tensor,
        width: int,
        height: int,
        backend: str,
        inside: Callable[[Tensor], Tensor] | None = None,
    ):
        self.cfg = cfg
        self.start, self.stop, self.every, self.reset_every = cfg.schedule()
        self.scene_scale = scene_scale
        self.generator = generator
        self.c2w, self.K, self.width, self.height = c2w, K, width, height
        self.backend = backend
        self.inside = inside
        self.state = DensifyState.zeros(n, c2w.device)

    def step_post_backward(
        self,
        params: dict[str, Tensor],
        optimizers: dict[str, torch.optim.Optimizer],
        step: int,
        meta: RenderMeta,
    ) -> bool:
        """Accumulate the step's screen-space gradients (``meta.means2d.grad``) and run what
        the schedule asks for at the 1-based ``step``: a densification round, an opacity
        reset, the hidden-Gaussian pruning. Edits ``params`` / ``optimizers`` in place.

        Returns:
            True when the step did extra work (densified or pruned), False for a plain step.
        """
        cfg = self.cfg
        busy = False
        if step <= self.stop and meta.means2d.grad is not None:
            self.state.update(meta.means2d.grad.detach(), meta.visible, self.width, self.height)
            if step > self.start and step % self.every == 0:
                busy = True
                densify_and_prune(
                    params,
                    optimizers,
                    self.state,
                    cfg,
                    self.scene_scale,
                    self.generator,
                    prune_big=True,
                    inside=self.inside,
                )
        if self.reset_every and step % self.reset_every == 0 and step < self.stop:
            reset_opacity(params, optimizers, 2 * cfg.prune_opacity)
        prune_hidden = cfg.min_contribution > 0 or cfg.min_visible > 0
        if prune_hidden and step in (self.stop, int(cfg.iterations)):
            busy = True
            contrib, visible = view_contributions(
                params, self.c2w, self.K, self.width, self.height, self.backend
            )
            hidden = (contrib < cfg.min_contribution) | (visible < cfg.min_visible)
            prune_gaussians(params, optimizers, hidden)
            self.state = DensifyState.zeros(len(params["means"]), self.c2w.device)
        return busy
