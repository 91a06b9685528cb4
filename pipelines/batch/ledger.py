"""The inputs of a batch and its record, ``batch.json``.

A batch is a list of :class:`Job` (one input, one output folder). :class:`Ledger` keeps one
:class:`Record` per job and writes them to ``<output>/batch.json`` atomically as results
arrive (at most once per ``interval`` seconds, and always at the end)::

    {"command": "gen", "started": "...", "updated": "...", "seconds": 12.3,
     "counts": {"done": 5, "skipped": 0, "failed": 1, "pending": 0, "running": 0},
     "inputs": [{"input": "photos/a.png", "output": "out/a", "status": "done",
                 "attempts": 1, "error": null, "seconds": 2.1, "worker": "w0@host:123",
                 "detail": "4,096 Gaussians"}, ...]}

The record describes the last run; whether an input is finished is decided from its output
folder (the tasks' ``finished``), never from this file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipelines.errors import InputError
from pipelines.io_utils import write_text_atomic

__all__ = ["BATCH_FILE", "FINAL", "STATUSES", "Job", "Ledger", "Record", "one_line"]

BATCH_FILE = "batch.json"
#: A record's status: waiting, being worked on, or one of the final three (:data:`FINAL`).
STATUSES = ("pending", "running", "done", "skipped", "failed")
FINAL = ("done", "skipped", "failed")


@dataclass(frozen=True)
class Job:
    """One input of a batch: its name (for messages), the input path, its output folder."""

    name: str
    src: Path
    out: Path


@dataclass
class Record:
    """What happened to one input (a row of ``batch.json``).

    Attributes:
        input / output: the paths, as given.
        status: one of :data:`STATUSES`.
        attempts: how many times a worker started it in this run (a worker that died counts).
        error: one line, for ``failed`` (and the last worker death of a retried input).
        seconds: wall time of the attempt that finished it.
        worker: the worker that finished it (``local``, or ``wN@host:pid`` on Ray).
        detail: one line about the result (e.g. the number of Gaussians).
    """

    input: str
    output: str
    status: str = "pending"
    attempts: int = 0
    error: str | None = None
    seconds: float | None = None
    worker: str | None = None
    detail: str | None = None


def one_line(error: BaseException | str, limit: int = 400) -> str:
    """An error as one line: its type (unless an input error) and message, whitespace
    collapsed, at most ``limit`` characters."""
    if isinstance(error, BaseException):
        text = str(error) or type(error).__name__
        if not isinstance(error, InputError):
            text = f"{type(error).__name__}: {text}"
    else:
        text = error
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Ledger:
    """The records of one batch run and their file.

    Args:
        path: ``batch.json`` (its folder is created on the first write).
        command: ``gen`` or ``recon``.
        jobs: the inputs, in order.
        interval: seconds between writes while the batch runs.
    """

    def __init__(self, path: str | os.PathLike, command: str, jobs: list[Job], interval=1.0):
        self.path = Path(path)
        self.command = command
        self.jobs = list(jobs)
        self.records = [Record(str(j.src), str(j.out)) for j in self.jobs]
        self.interval = interval
        self.started = _now()
        self._t0 = time.perf_counter()
        self._saved = float("-inf")

    def update(self, index: int, **fields) -> Record:
        """Change record ``index`` and write the file when ``interval`` has passed."""
        rec = self.records[index]
        for key, value in fields.items():
            if not hasattr(rec, key):
                raise AttributeError(f"Record has no field {key!r}")
            setattr(rec, key, value)
        if time.perf_counter() - self._saved >= self.interval:
            self.save()
        return rec

    def counts(self) -> dict[str, int]:
        """Records per status (every status of :data:`STATUSES`)."""
        out = dict.fromkeys(STATUSES, 0)
        for r in self.records:
            out[r.status] += 1
        return out

    @property
    def seconds(self) -> float:
        """Wall time since the ledger was made."""
        return time.perf_counter() - self._t0

    def save(self) -> None:
        """Write ``batch.json`` now (atomically)."""
        data = {
            "command": self.command,
            "started": self.started,
            "updated": _now(),
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "inputs": [asdict(r) for r in self.records],
        }
        write_text_atomic(self.path, json.dumps(data, indent=1) + "\n")
        self._saved = time.perf_counter()
