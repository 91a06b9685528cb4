"""Up-axis conventions for files written for viewers.

GeoLRM's world is z-up (right-handed). Viewers expect other habits: 3DGS/COLMAP scenes and
SuperSplat treat ``.ply``/``.splat`` as **y-down**, glTF is **y-up**. Each convention is a
proper rotation (signed axis permutation) from the z-up world to the file's frame.
"""

from __future__ import annotations

import torch

from pipelines.errors import InputError

# world (z-up) -> file frame; rows give the file axes in world coordinates.
_UP_MATRICES: dict[str, tuple[tuple[float, ...], ...]] = {
    # keep z up (nerfstudio's "Vertical Axis: z", the GeoLRM repository's own files)
    "z": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    # y up, as glTF / three.js: (x, y, z) -> (x, z, -y)
    "y": ((1, 0, 0), (0, 0, 1), (0, -1, 0)),
    # y down, as 3DGS / COLMAP / SuperSplat: (x, y, z) -> (x, -z, y)
    "-y": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
}
UP_CHOICES = tuple(_UP_MATRICES)


def world_to_file(up: str) -> torch.Tensor:
    """``[4, 4]`` rotation taking z-up world coordinates to a file whose up axis is ``up``.

    Args:
        up: one of ``"z"``, ``"y"``, ``"-y"``.
    """
    if up not in _UP_MATRICES:
        raise InputError(f"unknown up axis {up!r}; choose one of {', '.join(UP_CHOICES)}")
    m = torch.eye(4)
    m[:3, :3] = torch.tensor(_UP_MATRICES[up], dtype=torch.float32)
    return m


def matrix_to_text(m: torch.Tensor) -> str:
    """Sixteen numbers, row-major, exactly round-trippable through :func:`matrix_from_text`."""
    return " ".join(repr(float(v)) for v in m.reshape(-1).tolist())


def matrix_from_text(text: str) -> torch.Tensor:
    """Parse :func:`matrix_to_text` output back into a ``[4, 4]`` float64 tensor."""
    vals = [float(v) for v in text.split()]
    if len(vals) != 16:
        raise ValueError(f"expected 16 numbers, got {len(vals)}")
    return torch.tensor(vals, dtype=torch.float64).reshape(4, 4)
