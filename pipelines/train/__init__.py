"""Training GeoLRM (``geolrm train``): :mod:`~pipelines.train.config` (the settings),
:mod:`~pipelines.train.data` (object folders -> samples and their order),
:mod:`~pipelines.train.occupancy` (the proposal stage's ground truth),
:mod:`~pipelines.train.losses`, :mod:`~pipelines.train.module` (the LightningModule) and
:mod:`~pipelines.train.engine` (:func:`~pipelines.train.engine.train`, the run folder).

Nothing is re-exported here: the command line reads :mod:`~pipelines.train.config` without
loading torch, so that ``geolrm --help`` stays fast.
"""
