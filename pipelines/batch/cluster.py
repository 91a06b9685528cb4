"""The inputs of a batch spread over Ray workers: actors that load the models once and take
one input at a time from the driver.

Each worker is a Ray actor (``num_gpus=1`` per GPU, or ``num_cpus=N`` with
``cpus_per_worker``) wrapping a :class:`~pipelines.batch.tasks.Worker`. The driver keeps the
queue: an idle worker gets the next input; a worker that dies under an input (killed, out of
host memory, node lost) is replaced, and the input goes back to the front of the queue for the
next free worker, up to ``max_attempts`` starts. A retried input is first checked against the
skip rule: its output is written all or nothing (:class:`~pipelines.outputs.Staging`), so a
worker that died after committing it left a finished output and the retry keeps it instead of
producing it twice; one that died before left only a staging folder, which the retry removes.

Outputs must be on a file system every worker and the driver see (one machine, or NFS and
the like on a cluster), and the options' paths (weights, inputs) must be valid on every node.

Why actors pulling from the driver and not Ray Data ``map_batches`` with an actor pool: the
driver sees every input's result the moment it arrives (progress, ``batch.json``), a death
costs one input rather than a block of rows, and the retry logic is the skip rule above;
``bench/batch.py`` measures both on the same no-op work.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Callable

from pipelines.batch.ledger import Job, one_line
from pipelines.batch.tasks import Outcome, Task, Worker
from pipelines.errors import require_package

__all__ = ["require_ray", "run_on_ray", "worker_count"]


def require_ray() -> None:
    """The one-line :class:`~pipelines.errors.InputError` naming ``pip install "geolrm[ray]"``
    when Ray is not installed."""
    require_package("ray", "--ray", "ray", "ray[data]>=2.30")


class _RayWorker:
    """One Ray actor: a :class:`Worker` on the actor's GPU (Ray sets ``CUDA_VISIBLE_DEVICES``)
    or on ``cpus`` CPU threads."""

    def __init__(self, task: Task, name: str, cpus: int) -> None:
        import ray
        import torch

        gpu = bool(ray.get_gpu_ids())
        if not gpu:
            torch.set_num_threads(cpus)
        where = f"{name}@{socket.gethostname()}:{os.getpid()}"
        self.worker = Worker(task.on_device("cuda" if gpu else "cpu"), where)

    def run(self, job: Job, skip_since: float | None) -> Outcome:
        return self.worker.run(job, skip_since)


def worker_count(resources: dict, workers: int | None, cpus_per_worker: int | None) -> tuple:
    """``(workers, actor resources)`` for a cluster with ``resources``
    (``ray.cluster_resources()``): one GPU each when it has GPUs and ``cpus_per_worker`` is
    None, else ``cpus_per_worker`` (default 1) CPUs each, as many as fit unless ``workers``."""
    gpus = int(resources.get("GPU", 0))
    if cpus_per_worker is None and gpus > 0:
        return workers or gpus, {"num_gpus": 1, "num_cpus": 1}
    per = cpus_per_worker or 1
    return workers or max(1, int(resources.get("CPU", 1)) // per), {"num_cpus": per}


def _death(error: BaseException) -> str:
    """One line for a worker that died: Ray's first sentence about it."""
    text = " ".join(str(error).split())
    cut = text.find(". ")
    return one_line(text[: cut + 1] if 0 < cut < 300 else text, limit=300)


def run_on_ray(
    task: Task,
    work: list[tuple[int, Job]],
    cfg,
    since: float,
    overwrite: bool,
    begin: Callable[[int], int],
    end: Callable[[int, Outcome], None],
    retry: Callable[[int, str], None],
    on_start: Callable[[int, int], None] | None = None,
) -> int:
    """Run ``work`` (``(index, job)`` pairs) on Ray workers; returns the number of workers.

    Args:
        cfg: a :class:`~pipelines.batch.run.RayConfig`.
        since: the batch's start (``time.time()``): with ``overwrite``, a retried input is
            kept when its output was written after it.
        begin: ``begin(index)`` as an input starts; returns its attempt number.
        end: ``end(index, outcome)`` as it finishes.
        retry: ``retry(index, error)`` when its worker died and it goes back in the queue.
    """
    require_ray()
    import ray
    from ray.exceptions import RayError, RayTaskError

    own = not ray.is_initialized()
    if own:
        ray.init(
            address=cfg.address,
            runtime_env=cfg.runtime_env,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            **cfg.init,
        )
    actors: dict = {}  # handle -> name
    try:
        n, resources = worker_count(ray.cluster_resources(), cfg.workers, cfg.cpus_per_worker)
        n = max(1, min(n, len(work)))
        cls = ray.remote(_RayWorker).options(**resources, max_restarts=0, max_task_retries=0)
        cpus = int(resources["num_cpus"])

        def spawn():
            name = f"w{len(actors)}"
            actor = cls.remote(task, name, cpus)
            actors[actor] = name
            return actor

        idle = [spawn() for _ in range(n)]
        if on_start:
            on_start(len(work), n)
        queue = deque(work)
        inflight: dict = {}  # ObjectRef -> (actor, index, job, attempt)
        while queue or inflight:
            while idle and queue:
                actor = idle.pop()
                i, job = queue.popleft()
                attempt = begin(i)
                # a retry first checks for the output its dead worker may have committed
                skip = None if attempt == 1 else (since if overwrite else 0.0)
                inflight[actor.run.remote(job, skip)] = (actor, i, job, attempt)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                actor, i, job, attempt = inflight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayTaskError as e:  # raised outside the task's own error handling
                    end(i, Outcome("failed", 0.0, actors[actor], error=one_line(e.cause or e)))
                    idle.append(actor)
                    continue
                except RayError as e:  # the worker died under the input
                    ray.kill(actor)
                    error = f"worker {actors[actor]} died: {_death(e)}"
                    if attempt < cfg.max_attempts:
                        queue.appendleft((i, job))
                        retry(i, error)
                    else:
                        error += f" ({attempt} attempts)"
                        end(i, Outcome("failed", 0.0, actors[actor], error=error))
                    if queue:
                        idle.append(spawn())  # a replacement
                    continue
                end(i, outcome)
                idle.append(actor)
        return n
    finally:
        for actor in actors:
            ray.kill(actor)
        if own:
            ray.shutdown()
