"""Cameras: the type, geometry, orbit rigs, model-frame normalisation, camera files, view images.

* :mod:`~pipelines.cameras.cameras` -- the :class:`Cameras` type (OpenGL c2w, pixel K);
* :mod:`~pipelines.cameras.geometry` -- rotations, look-at poses, fov and focal length;
* :mod:`~pipelines.cameras.similarity` -- similarity transforms and their JSON files;
* :mod:`~pipelines.cameras.orbits` -- orbit poses and cameras, the turntable;
* :mod:`~pipelines.cameras.normalize` -- user frame -> GeoLRM's model frame;
* :mod:`~pipelines.cameras.dataparsers` -- camera files (``transforms.json``, G-Objaverse);
* :mod:`~pipelines.cameras.images` -- the views' images, padded and resized with their K.

Each module states its conventions at the top; this file only re-exports, and only the camera
model (the first five): the readers of files (``dataparsers``, ``images``, which load PIL) are
imported from their own modules, so that what needs a similarity or a pose (``splats``, the
rasteriser's callers) does not load image readers.
"""

from pipelines.cameras.cameras import Cameras, project_points
from pipelines.cameras.geometry import focal_to_fov, fov_to_focal, look_at
from pipelines.cameras.normalize import normalize_to_model_frame
from pipelines.cameras.orbits import (
    MODEL_RADIUS,
    RENDER_FOV_DEG,
    TURNTABLE_ELEVATION_DEG,
    orbit_cameras,
    orbit_poses,
)
from pipelines.cameras.similarity import (
    apply_similarity,
    decompose_similarity,
    invert_similarity,
    load_similarity,
    save_similarity,
    similarity_from_json,
    similarity_to_json,
)

__all__ = [
    "MODEL_RADIUS",
    "RENDER_FOV_DEG",
    "TURNTABLE_ELEVATION_DEG",
    "Cameras",
    "apply_similarity",
    "decompose_similarity",
    "focal_to_fov",
    "fov_to_focal",
    "invert_similarity",
    "load_similarity",
    "look_at",
    "normalize_to_model_frame",
    "orbit_cameras",
    "orbit_poses",
    "project_points",
    "save_similarity",
    "similarity_from_json",
    "similarity_to_json",
]
