"""The antimatter15 ``.splat`` web format: 32 bytes per Gaussian, no header.

Layout (little-endian): position 3xf32 | scale 3xf32 (linear) | RGBA 4xu8 | rotation 4xu8
(``normalize(q_wxyz) * 128 + 128``). Degree-0 colour only. Gaussians are sorted big and opaque
first (``-(s0 s1 s2) * alpha``), as the reference converter does, so progressive viewers show
the important ones early. There is no header, so the frame cannot be recorded: files are
written in the 3DGS y-down habit by default and read back assuming the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipelines.errors import InputError
from pipelines.io_utils import atomic_path
from pipelines.splats.frames import world_to_file
from pipelines.splats.gaussians import Gaussians

_DTYPE = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
assert _DTYPE.itemsize == 32


def gaussians_to_splat_bytes(g: Gaussians, up: str = "-y") -> bytes:
    """Encode Gaussians (z-up world) as ``.splat`` bytes, frame rotated to ``up``."""
    g = g.detach().to("cpu", torch.float32).transformed(world_to_file(up))
    order = torch.argsort(-(g.scales.prod(-1) * g.opacities), stable=True).numpy()
    out = np.empty(len(g), dtype=_DTYPE)
    out["pos"] = g.means.numpy()[order]
    out["scale"] = g.scales.numpy()[order]
    rgba = torch.cat([g.colors, g.opacities[:, None]], 1)
    out["rgba"] = (rgba * 255).round().clamp(0, 255).to(torch.uint8).numpy()[order]
    q = torch.nn.functional.normalize(g.quats, dim=-1)
    out["rot"] = (q * 128 + 128).round().clamp(0, 255).to(torch.uint8).numpy()[order]
    return out.tobytes()


def save_splat(path: str | Path, g: Gaussians, up: str = "-y") -> Path:
    """Write a ``.splat`` file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(gaussians_to_splat_bytes(g, up))
    return path


def load_splat(path: str | Path, up: str = "-y") -> Gaussians:
    """Read a ``.splat`` file (values are quantised: colours/opacity to 1/255, rotations to 1/128)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; check the path") from None
    if len(raw) % 32:
        raise InputError(f"{path} is not a .splat file (size {len(raw)} is not a multiple of 32)")
    arr = np.frombuffer(raw, dtype=_DTYPE)
    rgba = torch.from_numpy(arr["rgba"].astype(np.float32) / 255.0)
    q = torch.from_numpy(arr["rot"].astype(np.float32)) - 128.0
    g = Gaussians(
        torch.from_numpy(arr["pos"].copy()),
        torch.from_numpy(arr["scale"].copy()),
        torch.nn.functional.normalize(q, dim=-1),
        rgba[:, 3].contiguous(),
        rgba[:, :3].contiguous(),
    )
    return g.transformed(world_to_file(up).T.contiguous())
