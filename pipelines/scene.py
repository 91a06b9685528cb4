"""The reconstructed scene: what GeoLRM and the optimiser produce and the output writers consume.

Frames. GeoLRM was trained in a z-up world with the object inside [-0.5, 0.5]^3 and cameras
at radius ~1.5 looking at the origin; the optimiser works there too (one set of learning
rates and thresholds fits every capture). :func:`to_model_frame` maps the user's cameras
there with a similarity ``M`` (``x_model = M x_user``, ``[4, 4]`` float64): cameras already
in that frame are kept exactly (the official rigs reproduce bit for bit); any other set is
centred on the point the cameras look at, scaled to radius 1.5, turned z-up and rotated about
z so that the first camera sits at azimuth 0 (a canonical frame: a rotated, moved or rescaled
copy of the same capture gives the same model input, hence the same reconstruction, mapped
back by ``M^-1``). A :class:`Scene` holds the Gaussians in both frames: ``gaussians`` (user
frame, written to ``model.ply``) is :func:`to_user` of ``gaussians_model`` (model frame,
rendered for the turntable).

Only GeoLRM has anchors, occupancy and raw per-token Gaussians; they sit in the optional
:class:`GeoLRMExtras`, ``None`` for a scene the optimiser fitted without the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from pipelines.cameras.cameras import Cameras
from pipelines.cameras.normalize import normalize_to_model_frame
from pipelines.cameras.similarity import invert_similarity
from pipelines.splats.gaussians import Gaussians

__all__ = ["GeoLRMExtras", "Scene", "is_identity", "to_model_frame", "to_user"]

_IDENTITY = torch.eye(4, dtype=torch.float64)


def is_identity(m: torch.Tensor) -> bool:
    """True when the similarity ``m`` (``[4, 4]`` float64) is exactly the identity (cameras
    given in the model frame: both frames are the same)."""
    return torch.equal(m, _IDENTITY)


def to_model_frame(cams: Cameras) -> tuple[Cameras, torch.Tensor]:
    """Cameras in GeoLRM's frame and ``M`` (``[4, 4]`` float64, ``x_model = M x_user``).

    Cameras already in the model frame are returned unchanged with ``M = I``; others go to the
    canonical frame of :func:`~pipelines.cameras.normalize_to_model_frame` with the first
    camera at azimuth 0. Degenerate sets (all cameras at one point, looking away from each
    other) raise :class:`InputError`.
    """
    out, m = normalize_to_model_frame(cams)
    if is_identity(m):
        return out, m
    return normalize_to_model_frame(cams, first_azimuth_deg=0.0)


def to_user(g: Gaussians, m: torch.Tensor) -> Gaussians:
    """Model-frame Gaussians in the user's frame: ``M^-1`` applied in float64, returned in
    float32 (``g`` itself when ``M`` is the identity)."""
    if is_identity(m):
        return g
    return g.to(torch.float64).transformed(invert_similarity(m)).to(torch.float32)


@dataclass
class GeoLRMExtras:
    """What only the feed-forward network yields (all model frame, on the CPU, float32).

    Attributes:
        anchors: ``[S, 3]`` anchor points the proposal kept.
        occupancy_logits: ``[G, G, G]`` proposal logits (X, Y, Z).
        raw_gaussians: ``[S*K, 14]`` activated output: xyz, opacity, scale(3), rotation
            wxyz(4), rgb(3), before the opacity pruning.
        gs_per_token: Gaussians per anchor (K).
        dropped: Gaussians dropped for an opacity below ``min_opacity`` (in ``raw_gaussians``,
            not in the scene's Gaussians).
    """

    anchors: torch.Tensor
    occupancy_logits: torch.Tensor
    raw_gaussians: torch.Tensor
    gs_per_token: int
    dropped: int = 0


@dataclass
class Scene:
    """Gaussians fitted to posed views, in the user's and in the model frame.

    Attributes:
        gaussians: the Gaussians in the user's (input cameras') frame.
        gaussians_model: the same in the model frame.
        model_from_user: ``[4, 4]`` float64 similarity, ``x_model = M x_user``.
        cameras: the cameras used (user frame, intrinsics at the working size).
        cameras_model: the same in the model frame.
        geolrm: the network's extras (None when no network ran).
        history: one step record per optimisation step (``--method optimize``, ``--refine``).
        timings: seconds per stage.
    """

    gaussians: Gaussians
    gaussians_model: Gaussians
    model_from_user: torch.Tensor
    cameras: Cameras
    cameras_model: Cameras
    geolrm: GeoLRMExtras | None = None
    history: list[Any] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_model_frame(
        cls,
        gaussians_model: Gaussians,
        model_from_user: torch.Tensor,
        cameras: Cameras,
        cameras_model: Cameras,
        **extra: Any,
    ) -> Scene:
        """The scene of model-frame Gaussians; the user-frame ones are :func:`to_user` of them."""
        return cls(
            gaussians=to_user(gaussians_model, model_from_user),
            gaussians_model=gaussians_model,
            model_from_user=model_from_user,
            cameras=cameras,
            cameras_model=cameras_model,
            **extra,
        )

    def with_gaussians(self, gaussians_model: Gaussians, **changes: Any) -> Scene:
        """A copy with other model-frame Gaussians (and their user-frame twin)."""
        return replace(
            self,
            gaussians=to_user(gaussians_model, self.model_from_user),
            gaussians_model=gaussians_model,
            **changes,
        )

    @property
    def in_model_frame(self) -> bool:
        """True when the user's cameras were already in the model frame (``M = I``)."""
        return is_identity(self.model_from_user)
