"""The one in-memory type for a set of 3D Gaussians, shared by every stage.

All values are *activated* (what a renderer consumes), never the logits / logs stored in
files: file encodings live in :mod:`pipelines.splats.ply` and :mod:`pipelines.splats.splat`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from pipelines.splats.sh import eval_sh_basis

SH_C0 = 0.28209479177387814
"""Zeroth real spherical-harmonic basis constant, Y_0^0 = 1 / (2 sqrt(pi))."""


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0,1] -> DC spherical-harmonic coefficient (the 3DGS ``f_dc`` encoding)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """DC spherical-harmonic coefficient -> RGB (inverse of :func:`rgb_to_sh0`)."""
    return sh0 * SH_C0 + 0.5


@dataclass
class Gaussians:
    """A set of N 3D Gaussians in some world frame.

    Attributes:
        means: ``[N, 3]`` centres.
        scales: ``[N, 3]`` standard deviations along the local axes (activated, > 0).
        quats: ``[N, 4]`` unit rotation quaternions, real part first (w, x, y, z).
        opacities: ``[N]`` opacities in (0, 1).
        colors: ``[N, 3]`` base RGB (the view-independent, degree-0 colour), in [0, 1] for
            ordinary content; values outside are allowed (they come from SH files).
        sh_rest: ``[N, K-1, 3]`` higher-order SH coefficients (K = (degree+1)^2), or ``None``
            for degree 0. Coefficient order is the standard real SH basis order (as 3DGS).
    """

    means: torch.Tensor
    scales: torch.Tensor
    quats: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    sh_rest: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expect = {
            "means": (n, 3),
            "scales": (n, 3),
            "quats": (n, 4),
            "opacities": (n,),
            "colors": (n, 3),
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Gaussians.{name} has shape {got}, expected {shape}")
        if self.sh_rest is not None:
            k = self.sh_rest.shape[1] + 1
            if self.sh_rest.shape[0] != n or self.sh_rest.shape[2] != 3 or k not in (4, 9, 16):
                raise ValueError(
                    f"Gaussians.sh_rest has shape {tuple(self.sh_rest.shape)}, expected [N, K-1, 3] "
                    "with K in (4, 9, 16)"
                )

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        """Degree of the spherical-harmonic colour (0 = plain RGB)."""
        if self.sh_rest is None:
            return 0
        return int(round((self.sh_rest.shape[1] + 1) ** 0.5)) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    def _map(self, fn) -> Gaussians:
        return Gaussians(
            **{
                f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                for f in fields(self)
            }
        )

    def to(self, *args, **kwargs) -> Gaussians:
        """Move / cast every tensor, as ``torch.Tensor.to``."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> Gaussians:
        return self._map(lambda t: t.detach())

    def __getitem__(self, index) -> Gaussians:
        """Select Gaussians by boolean mask, index tensor or slice."""
        return self._map(lambda t: t[index])

    @staticmethod
    def cat(items: list[Gaussians]) -> Gaussians:
        """Concatenate several sets (they must share the SH degree)."""
        if len({g.sh_degree for g in items}) > 1:
            raise ValueError("cannot concatenate Gaussians of different SH degrees")
        out = {}
        for f in fields(Gaussians):
            vals = [getattr(g, f.name) for g in items]
            out[f.name] = None if vals[0] is None else torch.cat(vals, 0)
        return Gaussians(**out)

    def with_(self, **changes) -> Gaussians:
        """A copy with some attributes replaced."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ geometry
    def transformed(self, matrix: torch.Tensor) -> Gaussians:
        """Apply a similarity transform ``x -> s R x + t`` given as a 4x4 matrix.

        Args:
            matrix: ``[4, 4]``; its upper-left block must be ``s R`` with R a rotation and
                s > 0 a uniform scale (what frame changes and normalisations produce).

        Returns:
            The Gaussians in the new frame: means moved, scales multiplied by s, quaternions
            rotated by R, higher-order SH colour rotated with the frame.
        """
        m = matrix.to(self.means)
        sr = m[:3, :3]
        s = torch.linalg.det(sr).abs() ** (1.0 / 3.0)
        r = sr / s
        if torch.linalg.det(r) < 0 or not torch.allclose(r @ r.T, torch.eye(3).to(r), atol=1e-4):
            raise ValueError("transform must be a rotation times a positive uniform scale")
        means = self.means @ sr.T + m[:3, 3]
        quats = quat_multiply(matrix_to_quat(r).expand_as(self.quats), self.quats)
        sh_rest = self.sh_rest
        if sh_rest is not None:
            sh_rest = rotate_sh(sh_rest, r)
        return Gaussians(means, self.scales * s, quats, self.opacities, self.colors, sh_rest)


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of ``[..., 4]`` quaternions (w, x, y, z)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` quaternions (w, x, y, z; normalised here) -> ``[..., 3, 3]`` rotations."""
    q = torch.nn.functional.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(r: torch.Tensor) -> torch.Tensor:
    """``[3, 3]`` rotation -> ``[4]`` unit quaternion (w, x, y, z) with w >= 0."""
    r = r.double()
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    cands = torch.stack(
        [
            torch.stack([1 + tr, r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]),
            torch.stack(
                [
                    r[2, 1] - r[1, 2],
                    1 + r[0, 0] - r[1, 1] - r[2, 2],
                    r[0, 1] + r[1, 0],
                    r[0, 2] + r[2, 0],
                ]
            ),
            torch.stack(
                [
                    r[0, 2] - r[2, 0],
                    r[0, 1] + r[1, 0],
                    1 - r[0, 0] + r[1, 1] - r[2, 2],
                    r[1, 2] + r[2, 1],
                ]
            ),
            torch.stack(
                [
                    r[1, 0] - r[0, 1],
                    r[0, 2] + r[2, 0],
                    r[1, 2] + r[2, 1],
                    1 - r[0, 0] - r[1, 1] + r[2, 2],
                ]
            ),
        ]
    )
    # Pick the numerically best-conditioned candidate (largest diagonal term).
    diag = torch.stack(
        [
            1 + tr,
            1 + r[0, 0] - r[1, 1] - r[2, 2],
            1 - r[0, 0] + r[1, 1] - r[2, 2],
            1 - r[0, 0] - r[1, 1] + r[2, 2],
        ]
    )
    q = cands[int(torch.argmax(diag))]
    q = q / q.norm()
    if q[0] < 0:
        q = -q
    return q.float()


def rotate_sh(sh_rest: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Rotate higher-order SH coefficients ``[N, K-1, 3]`` by a rotation ``r`` ``[3, 3]``.

    Real SH of each degree span a rotation-invariant space, so the coefficient map is linear;
    it is found by least squares on the basis evaluated at random directions (exact up to
    float rounding, no Wigner-D bookkeeping).
    """
    deg = int(round((sh_rest.shape[1] + 1) ** 0.5)) - 1
    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(
        torch.randn(128, 3, generator=gen, dtype=torch.float64), dim=-1
    )
    r = r.double().cpu()
    # colour in the new frame: c'(d) = c(R^T d); with row vectors R^T d == d @ R.
    b_new = eval_sh_basis(deg, dirs)[:, 1:]
    b_old = eval_sh_basis(deg, dirs @ r)[:, 1:]
    m = torch.linalg.lstsq(b_new, b_old).solution  # b_old = b_new @ m  ->  a_new = m @ a_old
    return torch.einsum("jk,nkc->njc", m.to(sh_rest), sh_rest)
