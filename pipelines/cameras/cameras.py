"""The :class:`Cameras` type: pinhole cameras sharing one image size, and their projection.

Conventions (the same as the official GeoLRM code and nerfstudio):

* **World**: right-handed, **+z up**. GeoLRM was trained with the object at the origin inside
  [-0.5, 0.5]^3 and cameras on a sphere of radius ~1.5 looking at the origin.
* **Pose** ``c2w`` ``[V, 4, 4]``: OpenGL camera-to-world. Columns are the camera's +x (right),
  +y (up), +z (backwards; the camera looks along -z) in world coordinates, then the centre.
  For OpenCV (x right, y down, z forward) use ``c2w @ diag(1, -1, -1, 1)``.
* **Intrinsics** ``K`` ``[V, 3, 3]`` in **pixels**, OpenCV layout ``[[fx, s, cx], [0, fy, cy],
  [0, 0, 1]]``. Pixel (column i, row j) covers [i, i+1) x [j, j+1), so its centre is at
  (i + 0.5, j + 0.5) and ``cx = w / 2`` is the exact image centre (nerfstudio's convention).
  A world point X projects to ``u = cx + fx * x_c / (-z_c)``, ``v = cy - fy * y_c / (-z_c)``
  with ``(x_c, y_c, z_c) = inverse(c2w) X``. :meth:`Cameras.normalized_K` divides row 0 by the
  width and row 1 by the height, which is the normalised K GeoLRM consumes
  (``[[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]`` with ``f = 0.5 / tan(fov / 2)``).

Tensors are float32 on the CPU; maths that benefits from it runs in float64. Similarity
matrices (``M``, 4x4, ``x_model = M @ x_user``) are float64.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines.cameras.geometry import as_float64, focal_to_angle, nearest_rotation, project
from pipelines.cameras.similarity import decompose_similarity
from pipelines.errors import InputError

__all__ = ["Cameras", "PathLike", "project_points"]

PathLike = str | os.PathLike


@dataclass
class Cameras:
    """A set of pinhole cameras sharing one image size.

    Attributes:
        c2w: ``[V, 4, 4]`` float32 OpenGL camera-to-world matrices.
        K: ``[V, 3, 3]`` float32 intrinsics in pixels (pixel centres at ``i + 0.5``).
        width: image width in pixels, shared by all views.
        height: image height in pixels, shared by all views.
        image_paths: one image per view, or ``None`` when the cameras have no images.
    """

    c2w: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    image_paths: list[Path] | None = None

    def __post_init__(self) -> None:
        c2w = torch.as_tensor(self.c2w).detach().to(torch.float32)
        k = torch.as_tensor(self.K).detach().to(torch.float32)
        if c2w.ndim == 2:
            c2w = c2w.unsqueeze(0)
        if k.ndim == 2:
            k = k.unsqueeze(0).expand(c2w.shape[0], 3, 3)
        if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
            raise ValueError(f"c2w must be [V,4,4], got {tuple(c2w.shape)}")
        if k.shape != (c2w.shape[0], 3, 3):
            raise ValueError(f"K must be [V,3,3] with V={c2w.shape[0]}, got {tuple(k.shape)}")
        self.c2w = c2w.contiguous()
        self.K = k.contiguous()
        if int(self.width) != self.width or int(self.height) != self.height:
            raise ValueError(f"width/height must be integers, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if self.image_paths is not None:
            self.image_paths = [Path(p) for p in self.image_paths]
            if len(self.image_paths) != len(self):
                raise ValueError(
                    f"{len(self.image_paths)} image paths for {len(self)} cameras; need one each"
                )

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_normalized_K(
        cls,
        c2w: torch.Tensor,
        K_norm: torch.Tensor,
        width: int,
        height: int,
        image_paths: Sequence[PathLike] | None = None,
    ) -> Cameras:
        """Build from GeoLRM-style normalised intrinsics ``[V, 3, 3]`` (or ``[3, 3]``)."""
        k = as_float64(K_norm)
        if k.ndim == 2:
            k = k.unsqueeze(0).expand(torch.as_tensor(c2w).reshape(-1, 4, 4).shape[0], 3, 3)
        scale = torch.tensor([width, height, 1.0], dtype=torch.float64).view(1, 3, 1)
        paths = None if image_paths is None else [Path(p) for p in image_paths]
        return cls(c2w, (k * scale).float(), width, height, paths)

    # -- basic accessors ---------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def centers(self) -> torch.Tensor:
        """``[V, 3]`` camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    def normalized_K(self) -> torch.Tensor:
        """``[V, 3, 3]`` intrinsics divided by the image size (row 0 by width, row 1 by height).

        This is the K GeoLRM takes: ``[[fx/W, s/W, cx/W], [0, fy/H, cy/H], [0, 0, 1]]``.
        """
        scale = torch.tensor([self.width, self.height, 1.0], dtype=torch.float64)
        return (self.K.double() / scale.to(self.K.device).view(1, 3, 1)).float()

    def fov_deg(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Horizontal and vertical field of view ``([V], [V])`` in degrees (centred model)."""
        fx, fy = self.K[:, 0, 0].double(), self.K[:, 1, 1].double()
        return (
            torch.rad2deg(2 * torch.atan(0.5 * self.width / fx)).float(),
            torch.rad2deg(2 * torch.atan(0.5 * self.height / fy)).float(),
        )

    def to(self, device: torch.device | str) -> Cameras:
        """A copy with ``c2w`` and ``K`` on ``device`` (validation happens on the CPU first)."""
        out = self.clone()
        out.c2w, out.K = out.c2w.to(device), out.K.to(device)
        return out

    def clone(self) -> Cameras:
        paths = None if self.image_paths is None else list(self.image_paths)
        return Cameras(self.c2w.clone(), self.K.clone(), self.width, self.height, paths)

    # -- derived sets --------------------------------------------------------------------------

    def subset(self, indices: Sequence[int] | torch.Tensor) -> Cameras:
        """The cameras at ``indices`` (ints, in the given order, or a boolean mask ``[V]``)."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise InputError(f"view mask has {idx.numel()} entries for {len(self)} views")
            idx = torch.nonzero(idx).flatten()
        idx = idx.long().flatten()
        if idx.numel() == 0:
            raise InputError("no views selected; pick at least one view index")
        bad = [int(i) for i in idx if not -len(self) <= int(i) < len(self)]
        if bad:
            raise InputError(
                f"view index {bad[0]} is out of range for {len(self)} views; use 0..{len(self) - 1}"
            )
        paths = None if self.image_paths is None else [self.image_paths[int(i)] for i in idx]
        return Cameras(self.c2w[idx], self.K[idx], self.width, self.height, paths)

    def transformed(self, matrix: torch.Tensor) -> Cameras:
        """Move the cameras by a world similarity ``matrix`` ``[4, 4]`` (``x' = M x``).

        ``c2w' = M @ c2w`` with the scale divided out of the rotation columns and the rotation
        re-orthonormalised, so the result is again a rigid camera pose. Intrinsics are unchanged
        (a similarity does not change what a camera sees).
        """
        scale, rot, t = decompose_similarity(matrix)
        c2w = self.c2w.double()
        out = torch.zeros_like(c2w)
        out[:, :3, :3] = nearest_rotation(rot @ c2w[:, :3, :3])
        out[:, :3, 3] = scale * (c2w[:, :3, 3] @ rot.T) + t
        out[:, 3, 3] = 1.0
        paths = None if self.image_paths is None else list(self.image_paths)
        return Cameras(out.float(), self.K.clone(), self.width, self.height, paths)

    def resized(self, new_width: int, new_height: int) -> Cameras:
        """Cameras for the images resized to ``new_width x new_height`` (K rows scaled)."""
        sx, sy = new_width / self.width, new_height / self.height
        scale = torch.tensor([sx, sy, 1.0], dtype=torch.float64).to(self.K.device)
        k = (self.K.double() * scale.view(1, 3, 1)).float()
        paths = None if self.image_paths is None else list(self.image_paths)
        return Cameras(self.c2w.clone(), k, new_width, new_height, paths)

    def padded(self, left: int, top: int, new_width: int, new_height: int) -> Cameras:
        """Cameras for the images pasted at ``(left, top)`` on a ``new_width x new_height`` canvas.

        Negative offsets mean cropping. Only the principal point moves.
        """
        k = self.K.clone()
        k[:, 0, 2] += left
        k[:, 1, 2] += top
        paths = None if self.image_paths is None else list(self.image_paths)
        return Cameras(self.c2w.clone(), k, new_width, new_height, paths)

    # -- export --------------------------------------------------------------------------------

    def to_transforms_json(
        self,
        base_dir: PathLike | None = None,
        file_paths: Sequence[str] | None = None,
        per_frame_intrinsics: bool | None = None,
    ) -> dict[str, Any]:
        """A nerfstudio ``transforms.json`` dictionary (``json.dump`` it to write the file).

        Args:
            base_dir: folder the JSON will live in; image paths are written relative to it.
            file_paths: explicit ``file_path`` per frame (overrides ``image_paths``). Without
                either, frames are named ``images/000.png``, ``images/001.png``, ...
            per_frame_intrinsics: write ``fl_x, fl_y, cx, cy`` in every frame. ``None`` (default)
                writes them once at the top level when all views share them.

        ``w``/``h`` and ``camera_model: PERSPECTIVE`` are always top level. Top-level output also
        carries ``camera_angle_x`` for NeRF-synthetic readers.
        """
        if file_paths is not None:
            if len(file_paths) != len(self):
                raise InputError(f"{len(file_paths)} file paths for {len(self)} cameras")
            names = [str(p) for p in file_paths]
        elif self.image_paths is not None:
            names = []
            for p in self.image_paths:
                if base_dir is not None:
                    p = Path(os.path.relpath(Path(p).absolute(), Path(base_dir).absolute()))
                names.append(Path(p).as_posix())
        else:
            names = [f"images/{i:03d}.png" for i in range(len(self))]
        k = self.K.double()
        intr = torch.stack([k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]], dim=1)
        shared = bool(torch.all(intr == intr[:1])) and bool(torch.all(k[:, 0, 1] == 0))
        per_frame = (not shared) if per_frame_intrinsics is None else per_frame_intrinsics
        if not per_frame and not shared:
            raise InputError("the views have different intrinsics; write them per frame")
        out: dict[str, Any] = {"camera_model": "PERSPECTIVE", "w": self.width, "h": self.height}
        if not per_frame:
            fx, fy, cx, cy = (float(v) for v in intr[0])
            out.update(fl_x=fx, fl_y=fy, cx=cx, cy=cy)
            out["camera_angle_x"] = focal_to_angle(fx, self.width)
        frames = []
        c2w = self.c2w.double()
        for i in range(len(self)):
            frame: dict[str, Any] = {"file_path": names[i]}
            if per_frame:
                fx, fy, cx, cy = (float(v) for v in intr[i])
                frame.update(fl_x=fx, fl_y=fy, cx=cx, cy=cy)
            frame["transform_matrix"] = c2w[i].tolist()
            frames.append(frame)
        out["frames"] = frames
        return out


def project_points(cams: Cameras, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points ``[N, 3]`` into every view
    (:func:`~pipelines.cameras.geometry.project` in float64).

    Returns:
        uv: ``[V, N, 2]`` float32 pixel coordinates (pixel (i, j)'s centre is (i+.5, j+.5)).
        depth: ``[V, N]`` float32 distance along the optical axis (positive in front).
    """
    pts = as_float64(points).reshape(-1, 3)
    uv, depth = project(pts, cams.c2w.double()[:, None], cams.K.double()[:, None])
    return uv.float(), depth.float()
