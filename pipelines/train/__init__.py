"""Training GeoLRM (issue 14): occupancy ground truth so far."""

from pipelines.train.occupancy import (
    EDGE_ERODE_PX,
    SolidGrid,
    cell_centres,
    depth_points,
    occupancy_grid,
    occupancy_iou,
    sample_spacing,
    voxel_indices,
)

__all__ = [
    "EDGE_ERODE_PX",
    "SolidGrid",
    "cell_centres",
    "depth_points",
    "occupancy_grid",
    "occupancy_iou",
    "sample_spacing",
    "voxel_indices",
]
