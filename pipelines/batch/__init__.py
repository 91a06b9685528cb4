"""Many inputs in one run: ``geolrm gen photos/`` and ``geolrm recon scenes/``, here or on a
Ray cluster, resumable (finished inputs are skipped) and recorded in ``batch.json``."""

from pipelines.batch.cluster import require_ray, run_on_ray, worker_count
from pipelines.batch.ledger import BATCH_FILE, Job, Ledger, Record
from pipelines.batch.run import BatchResult, RayConfig, run_batch
from pipelines.batch.tasks import (
    GenTask,
    Outcome,
    ReconTask,
    Worker,
    gen_jobs,
    list_scenes,
    produced,
    recon_jobs,
)

__all__ = [
    "BATCH_FILE",
    "BatchResult",
    "GenTask",
    "Job",
    "Ledger",
    "Outcome",
    "RayConfig",
    "ReconTask",
    "Record",
    "Worker",
    "gen_jobs",
    "list_scenes",
    "produced",
    "recon_jobs",
    "require_ray",
    "run_batch",
    "run_on_ray",
    "worker_count",
]
