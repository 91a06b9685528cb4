"""Training GeoLRM (issue 14, in progress): :mod:`~pipelines.train.data`, object folders ->
samples and their order; :mod:`~pipelines.train.occupancy`, the proposal stage's occupancy
ground truth; :mod:`~pipelines.train.losses`, both stages' losses and the occupancy metrics."""

from pipelines.train.data import (
    SampleKey,
    StepSampler,
    TrainDataset,
    TrainObject,
    ViewCounts,
    find_objects,
    object_occupancy,
)

__all__ = [
    "SampleKey",
    "StepSampler",
    "TrainDataset",
    "TrainObject",
    "ViewCounts",
    "find_objects",
    "object_occupancy",
]
