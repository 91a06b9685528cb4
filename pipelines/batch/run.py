"""A batch from start to end: skip the finished inputs, run the others here or on Ray, keep
``batch.json`` up to date.

::

    from pipelines.batch import GenTask, RayConfig, gen_jobs, run_batch
    from pipelines.options import GenOptions

    task = GenTask(GenOptions(seed=42))
    task.check()                                        # options and weights, before any work
    result = run_batch(task, gen_jobs("photos/", "out/"), "out/")          # here, one by one
    result = run_batch(task, gen_jobs("photos/", "out/"), "out/", ray=RayConfig())  # on Ray
    result.ok, result.counts, result.per_worker()       # out/batch.json holds the records

An input is skipped when its output folder holds a finished output (the task's ``finished``;
``overwrite=True`` redoes it). A failing input is recorded and never stops the others.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.batch.cluster import require_ray, run_on_ray
from pipelines.batch.ledger import BATCH_FILE, Job, Ledger, Record
from pipelines.batch.tasks import Outcome, Task, Worker, produced

__all__ = ["BatchResult", "OnEvent", "RayConfig", "run_batch"]

PathLike = str | os.PathLike

OnEvent = Callable[[int, Record], None]
"""``on_event(index, record)`` when an input is finished (done, skipped, failed) or is put
back for another attempt after its worker died (status ``pending``, ``error`` set)."""


@dataclass
class RayConfig:
    """Where and how a batch runs on Ray (:func:`pipelines.batch.cluster.run_on_ray`).

    Attributes:
        address: the cluster (None: ``RAY_ADDRESS`` when set, else a local Ray started for
            this batch); ignored when Ray is initialised already.
        workers: number of workers (None: one per GPU of the cluster; on a cluster without
            GPUs, or with ``cpus_per_worker``, its CPUs // ``cpus_per_worker``). Never more
            than the inputs to run.
        cpus_per_worker: CPU workers with this many cores each (torch threads); None: GPU
            workers (``num_gpus=1``) when the cluster has GPUs, else 1-core CPU workers.
        max_attempts: how many times an input is started when its worker dies under it.
        runtime_env: Ray's ``runtime_env`` for the workers (e.g. ``env_vars``).
        init: more ``ray.init`` keyword arguments (a local Ray's ``num_cpus``, ...).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: int | None = None
    max_attempts: int = 3
    runtime_env: dict | None = None
    init: dict = field(default_factory=dict)


@dataclass
class BatchResult:
    """What :func:`run_batch` returns: the records (input order), the ``batch.json`` path,
    the wall time and the number of workers used."""

    records: list[Record]
    path: Path
    seconds: float
    workers: int

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(r.status for r in self.records))

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return all(r.status != "failed" for r in self.records)

    def per_worker(self) -> dict[str, int]:
        """Inputs each worker produced (done)."""
        return dict(Counter(r.worker for r in self.records if r.status == "done"))


def run_batch(
    task: Task,
    jobs: list[Job],
    base: PathLike,
    overwrite: bool = False,
    ray: RayConfig | None = None,
    on_event: OnEvent | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Run ``task`` on every job; ``base/batch.json`` records each input.

    Args:
        task: :class:`~pipelines.batch.tasks.GenTask` or ``ReconTask`` (checked already).
        jobs: the inputs (:func:`~pipelines.batch.tasks.gen_jobs`, ``recon_jobs``).
        base: the output folder of the batch (``batch.json`` goes there).
        overwrite: redo inputs whose output is finished already.
        ray: run on Ray with these settings (None: here, one input after another).
        on_event: see :data:`OnEvent`.
        on_start: ``on_start(inputs_to_run, workers)`` once the workers are known.
    """
    if ray is not None:
        require_ray()  # before anything is written
    ledger = Ledger(Path(base) / BATCH_FILE, task.command, jobs)
    emit = on_event or (lambda _i, _r: None)
    since = time.time()  # outputs written from now on are this batch's
    todo: list[int] = []
    for i, job in enumerate(jobs):
        if not overwrite and produced(task, job.out):
            emit(i, ledger.update(i, status="skipped", detail="finished earlier"))
        else:
            todo.append(i)
    ledger.save()

    def begin(i: int) -> int:
        """Mark input ``i`` running; returns its attempt number."""
        return ledger.update(i, status="running", attempts=ledger.records[i].attempts + 1).attempts

    def end(i: int, outcome: Outcome) -> None:
        rec = ledger.records[i]
        status, detail = outcome.status, outcome.detail
        if status == "skipped" and rec.attempts > 1:  # the dead worker had committed it
            status, detail = "done", "written by an earlier attempt before its worker died"
        error = outcome.error if status == "failed" else rec.error
        fields = dict(status=status, error=error, seconds=outcome.seconds, detail=detail)
        emit(i, ledger.update(i, **fields, worker=outcome.worker))

    def retry(i: int, error: str) -> None:
        emit(i, ledger.update(i, status="pending", error=error))

    try:
        if ray is None:
            if on_start:
                on_start(len(todo), 1 if todo else 0)
            worker = Worker(task)
            for i in todo:
                begin(i)
                end(i, worker.run(jobs[i]))
            workers = 1 if todo else 0
        elif todo:
            work = [(i, jobs[i]) for i in todo]
            workers = run_on_ray(
                task, work, ray, since, overwrite, begin, end, retry, on_start=on_start
            )
        else:
            workers = 0
            if on_start:
                on_start(0, 0)
    finally:
        ledger.save()
    return BatchResult(ledger.records, ledger.path, ledger.seconds, workers)
