"""Similarity transforms ``x -> s R x + t``: split, invert, apply, JSON round trip.

Conventions: a similarity is a ``[4, 4]`` float64 matrix ``M = [s R | t; 0 0 0 1]`` acting on
column vectors, ``x' = M @ [x, 1]`` (e.g. ``x_model = M @ x_user``), with ``s > 0`` and ``R`` a
proper rotation. Points are ``[..., 3]``; the maths runs in float64.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from pipelines.cameras.geometry import as_float64, nearest_rotation
from pipelines.errors import InputError, path_error
from pipelines.io_utils import write_text_atomic

__all__ = [
    "apply_similarity",
    "decompose_similarity",
    "invert_similarity",
    "load_similarity",
    "save_similarity",
    "similarity_from_json",
    "similarity_to_json",
]


def decompose_similarity(matrix: Any) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Split a similarity ``[4, 4]`` ``x -> s R x + t`` into ``(s, R [3,3], t [3])`` (float64).

    Raises:
        InputError: when the matrix is not a similarity (non-finite, shear, reflection, ...).
    """
    m = as_float64(matrix)
    if m.shape != (4, 4) or not bool(torch.all(torch.isfinite(m))):
        raise InputError("similarity transform must be a finite 4x4 matrix")
    if not torch.allclose(m[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)):
        raise InputError("similarity transform must have bottom row [0, 0, 0, 1]")
    a = m[:3, :3]
    det = float(torch.linalg.det(a))
    if det <= 0:
        raise InputError(f"similarity transform has det {det:.3g}; it must be a proper rotation")
    s = det ** (1.0 / 3.0)
    rot = a / s
    if float(torch.max(torch.abs(rot.T @ rot - torch.eye(3, dtype=torch.float64)))) > 1e-4:
        raise InputError("transform is not a similarity (rotation x uniform scale + translation)")
    return s, nearest_rotation(rot), m[:3, 3].clone()


def invert_similarity(matrix: Any) -> torch.Tensor:
    """Inverse ``[4, 4]`` float64 of a similarity ``x -> s R x + t``: ``x -> R^T (x - t) / s``."""
    s, rot, t = decompose_similarity(matrix)
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3] = rot.T / s
    out[:3, 3] = -(rot.T @ t) / s
    return out


def apply_similarity(matrix: Any, points: torch.Tensor) -> torch.Tensor:
    """Apply ``[4, 4]`` ``matrix`` to points ``[..., 3]`` (computed in float64, input dtype out)."""
    m = as_float64(matrix)
    p = as_float64(points)
    out = p @ m[:3, :3].T + m[:3, 3]
    return out.to(points.dtype) if isinstance(points, torch.Tensor) else out


def similarity_to_json(matrix: Any) -> dict[str, Any]:
    """A JSON-ready description of a similarity (exact float64 round trip)."""
    s, rot, t = decompose_similarity(matrix)
    return {
        "convention": "x_model = matrix @ [x_user, 1] (column vectors); matrix = [s*R | t]",
        "matrix": as_float64(matrix).tolist(),
        "scale": s,
        "rotation": rot.tolist(),
        "translation": t.tolist(),
    }


def similarity_from_json(data: Any, source: str = "similarity") -> torch.Tensor:
    """Read :func:`similarity_to_json` output (or a bare 4x4 list) back into ``[4, 4]`` float64."""
    raw = data.get("matrix") if isinstance(data, dict) else data
    try:
        m = torch.tensor(raw, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{source}: no 4x4 'matrix' of numbers; write it again") from None
    if m.shape != (4, 4):
        raise InputError(f"{source}: matrix has shape {tuple(m.shape)}, not 4x4; write it again")
    try:
        decompose_similarity(m)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None
    return m


def save_similarity(path: str | os.PathLike, matrix: Any) -> None:
    """Write :func:`similarity_to_json` to ``path`` atomically."""
    write_text_atomic(path, json.dumps(similarity_to_json(matrix), indent=1) + "\n")


def load_similarity(path: str | os.PathLike) -> torch.Tensor:
    """Read a file written by :func:`save_similarity`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise path_error(path, "file not found", "check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise path_error(path, "not valid JSON", "write it again with save_similarity") from None
    return similarity_from_json(data, str(path))
