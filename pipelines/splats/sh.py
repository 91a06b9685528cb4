"""Real spherical harmonics (the 3DGS basis and sign convention), degrees 0-3."""

from __future__ import annotations

import torch

_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def eval_sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Evaluate the real SH basis at unit directions.

    Args:
        degree: 0..3.
        dirs: ``[..., 3]`` unit vectors.

    Returns:
        ``[..., (degree+1)**2]`` basis values, in the 3DGS coefficient order.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree {degree} not supported (0-3)")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2[0] * x * y,
            _C2[1] * y * z,
            _C2[2] * (2 * zz - xx - yy),
            _C2[3] * x * z,
            _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, -1)


def view_dependent_rgb(
    colors: torch.Tensor, sh_rest: torch.Tensor | None, means: torch.Tensor, cam_pos: torch.Tensor
) -> torch.Tensor:
    """Colour of each Gaussian seen from ``cam_pos``.

    Args:
        colors: ``[N, 3]`` base (degree-0) RGB.
        sh_rest: ``[N, K-1, 3]`` or None.
        means: ``[N, 3]``.
        cam_pos: ``[3]`` camera centre (same world frame).

    Returns:
        ``[N, 3]`` RGB, clamped at 0 from below as 3DGS does.
    """
    if sh_rest is None:
        return colors
    degree = int(round((sh_rest.shape[1] + 1) ** 0.5)) - 1
    dirs = torch.nn.functional.normalize(means - cam_pos, dim=-1)
    basis = eval_sh_basis(degree, dirs)[..., 1:]  # [N, K-1]
    return (colors + torch.einsum("nk,nkc->nc", basis, sh_rest)).clamp_min(0.0)
