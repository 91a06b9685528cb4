"""Camera file formats -> :class:`~pipelines.cameras.Cameras` (nerfstudio's ``transforms.json``
today)."""

from pipelines.cameras.dataparsers.transforms_json import (
    IMAGE_EXTENSIONS,
    ParsedTransforms,
    load_transforms,
    parse_transforms,
    resolve_image,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ParsedTransforms",
    "load_transforms",
    "parse_transforms",
    "resolve_image",
]
