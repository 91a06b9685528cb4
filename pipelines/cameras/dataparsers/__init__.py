"""Camera file formats -> :class:`~pipelines.cameras.Cameras`: nerfstudio's ``transforms.json``
and G-Objaverse object folders (with the NumPy EXR reader their depth needs)."""

from pipelines.cameras.dataparsers.gobjaverse import (
    GObjaverseObject,
    is_gobjaverse_object,
    parse_gobjaverse,
    read_gobjaverse_depth,
)
from pipelines.cameras.dataparsers.transforms_json import (
    IMAGE_EXTENSIONS,
    ParsedTransforms,
    load_transforms,
    parse_transforms,
    resolve_image,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "GObjaverseObject",
    "ParsedTransforms",
    "is_gobjaverse_object",
    "load_transforms",
    "parse_gobjaverse",
    "parse_transforms",
    "read_gobjaverse_depth",
    "resolve_image",
]
