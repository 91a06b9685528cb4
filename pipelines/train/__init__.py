"""Training GeoLRM (issue 14, in progress): :mod:`~pipelines.train.occupancy`, the proposal
stage's occupancy ground truth; :mod:`~pipelines.train.losses`, both stages' losses and the
occupancy metrics."""
