"""The fit's parameters and the surgery on them (gsplat's ``strategy/ops.py``).

The parameters are pre-activation leaf tensors, under the names gsplat uses: ``means``,
``scales`` (log), ``quats`` (unnormalised), ``opacities`` (logit), ``colors`` (RGB, linear) and,
for SH degree > 0, ``sh_rest``; each has its own single-group Adam. The operations (prune,
clone, split, reset opacity) edit the rows of every parameter in place in the dict and carry
the Adam moments along (kept rows keep theirs, new rows start at zero).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.splats.gaussians import Gaussians, quat_to_matrix

__all__ = [
    "clone_gaussians",
    "gaussians_from_params",
    "new_optimizers",
    "params_from_gaussians",
    "prune_gaussians",
    "reset_opacity",
    "split_gaussians",
]


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
