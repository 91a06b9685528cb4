"""Cameras: the type, geometry, orbit rigs, model-frame normalisation, camera files, view images.

* :mod:`~pipelines.cameras.cameras` -- the :class:`Cameras` type (OpenGL c2w, pixel K);
* :mod:`~pipelines.cameras.geometry` -- rotations, look-at poses, fov and focal length;
* :mod:`~pipelines.cameras.similarity` -- similarity transforms and their JSON files;
* :mod:`~pipelines.cameras.orbits` -- orbit poses and cameras, the turntable;
* :mod:`~pipelines.cameras.normalize` -- user frame -> GeoLRM's model frame;
* :mod:`~pipelines.cameras.dataparsers` -- camera files (``transforms.json``);
* :mod:`~pipelines.cameras.images` -- the views' images, padded and resized with their K.

Each module states its conventions at the top; this file only re-exports.
"""

from pipelines.cameras.cameras import Cameras, project_points
from pipelines.cameras.dataparsers import (
    IMAGE_EXTENSIONS,
    ParsedTransforms,
    load_transforms,
    parse_transforms,
)
from pipelines.cameras.geometry import focal_to_fov, fov_to_focal, look_at
from pipelines.cameras.images import (
    image_has_alpha,
    load_images,
    load_masks,
    load_views,
    load_views_and_masks,
    read_image,
    read_view,
)
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
    "IMAGE_EXTENSIONS",
    "MODEL_RADIUS",
    "RENDER_FOV_DEG",
    "TURNTABLE_ELEVATION_DEG",
    "Cameras",
    "ParsedTransforms",
    "apply_similarity",
    "decompose_similarity",
    "focal_to_fov",
    "fov_to_focal",
    "image_has_alpha",
    "invert_similarity",
    "load_images",
    "load_masks",
    "load_similarity",
    "load_transforms",
    "load_views",
    "load_views_and_masks",
    "look_at",
    "normalize_to_model_frame",
    "orbit_cameras",
    "orbit_poses",
    "parse_transforms",
    "project_points",
    "read_image",
    "read_view",
    "save_similarity",
    "similarity_from_json",
    "similarity_to_json",
]
