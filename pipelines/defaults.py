"""Defaults that the library and the CLI's options both read, and the config dataclasses that
own them (no heavy imports here, so that ``geolrm --help`` stays fast).

One home per default: a library signature or a Typer option that needs one of these values
reads it from here (``TurntableConfig().frames``, ``MeshConfig.resolution``...);
``tests/test_cli_defaults.py`` checks that every CLI default equals its dataclass field.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_SIZE",
    "DEFAULT_TEXTURE_SIZE",
    "MAX_VIEWS",
    "MIN_OPACITY",
    "MV_DEFAULTS",
    "OPTIMIZE_ITERATIONS",
    "OPTIMIZE_RESOLUTION",
    "RENDER_FOV_DEG",
    "RIG_ELEVATION_DEG",
    "RIG_INPUT_SIZE",
    "SEED",
    "TURNTABLE_ELEVATION_DEG",
    "EvalConfig",
    "MeshConfig",
    "MultiViewDefaults",
    "TurntableConfig",
]

#: GeoLRM input size for views with the user's own cameras.
DEFAULT_SIZE = 448
#: GeoLRM input size of each rig's views, as the official scripts resize them:
#: ``run_geolrm_zero123.py:170`` (``v2.functional.resize(images, 448, ...)``) and
#: ``run_geolrm_sv3d.py:103`` (``resize(images, 560, ...)``).
RIG_INPUT_SIZE: dict[str, int] = {"zero123pp": 448, "sv3d": 560}
#: GeoLRM's Gaussians with a lower opacity are dropped before saving and rendering, as the
#: official ``save_ply`` does (``src/models/renderer/gaussian_renderer.py:184-185`` keeps
#: ``opacity >= 0.005``). 0 keeps all.
MIN_OPACITY = 0.005
#: GeoLRM takes 1 to this many views (the released model's training range); the optimiser
#: (``--method optimize``) has no such limit.
MAX_VIEWS = 32
#: One seed for every stage of ``recon`` and ``gen``.
SEED = 42
#: Elevation in degrees of SV3D's orbit (``gen --elevation``, ``recon --rig-elevation``).
RIG_ELEVATION_DEG = 10.0

#: Optimisation steps of ``--method optimize``.
OPTIMIZE_ITERATIONS = 1500
#: Size in pixels the views are fitted at (``--method optimize``, ``--refine``).
OPTIMIZE_RESOLUTION = 256

#: Vertical field of view of rendered turntables and novel views: the official render fov
#: (``configs/geolrm.yaml``).
RENDER_FOV_DEG = 39.6
#: Elevation of the turntable orbit (degrees above the z = 0 plane).
TURNTABLE_ELEVATION_DEG = 20.0

#: Texture side in texels when a mesh is textured (``--texture``).
DEFAULT_TEXTURE_SIZE = 1024


@dataclass(frozen=True)
class TurntableConfig:
    """The turntable video (``turntable.mp4`` of recon / gen, ``geolrm render --video``).

    Attributes:
        frames: frames of one full turn.
        resolution: square frame size in pixels.
        fps: frame rate.
        elevation_deg: orbit elevation.
        fov_deg: vertical field of view.
    """

    frames: int = 120
    resolution: int = 512
    fps: int = 30
    elevation_deg: float = TURNTABLE_ELEVATION_DEG
    fov_deg: float = RENDER_FOV_DEG


@dataclass(frozen=True)
class MeshConfig:
    """The mesh (``mesh.glb`` of recon / gen ``--mesh``, ``geolrm mesh``): the Gaussians fused
    into a TSDF (:func:`pipelines.mesh.gaussians_to_mesh`), optionally textured.

    Attributes:
        resolution: TSDF voxels along the object's longest side.
        faces: face budget (decimated to at most this).
        views: views rendered and fused.
        texture_size: texels a side of the baked texture; None for vertex colours.
    """

    resolution: int = 256
    faces: int = 100_000
    views: int = 60
    texture_size: int | None = None


@dataclass(frozen=True)
class MultiViewDefaults:
    """Per multi-view model defaults of ``geolrm gen``.

    Attributes:
        views: views fed to GeoLRM.
        steps: denoising steps.
        guidance: classifier-free guidance (SV3D: the peak of its triangle schedule).
        tile: view size of the model's output.
        size: GeoLRM input size for its views (:data:`RIG_INPUT_SIZE`).
    """

    views: int
    steps: int
    guidance: float
    tile: int
    size: int


#: ``geolrm gen``'s defaults per multi-view model.
MV_DEFAULTS: dict[str, MultiViewDefaults] = {
    "zero123pp": MultiViewDefaults(6, 75, 4.0, 320, RIG_INPUT_SIZE["zero123pp"]),
    "sv3d": MultiViewDefaults(21, 50, 2.5, 576, RIG_INPUT_SIZE["sv3d"]),
}


@dataclass(frozen=True)
class EvalConfig:
    """The geometry protocol of ``geolrm eval`` (:mod:`pipelines.evaluate`).

    Attributes:
        points: surface points sampled on the mesh and the ground truth (Chamfer, F-score).
        tau: F-score distance threshold (world units).
        seed: seed of the surface sampling.
    """

    points: int = 100_000
    tau: float = 0.01
    seed: int = 0
