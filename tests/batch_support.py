"""A batch task for the tests, importable by Ray workers: it wraps a real task, logs every
input it produced (after the commit) and can make its worker process die on a first attempt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.outputs import STAGING_PREFIX


@dataclass
class Logged:
    """``inner`` with a production log (``log``: one line ``name pid`` per input produced) and
    deaths: on the first attempt at an input named in ``die_before`` the worker leaves a
    half-written staging folder and exits (as a process killed while writing); at one named in
    ``die_after`` it exits right after the commit. ``markers`` remembers the first attempts."""

    inner: object
    log: Path
    markers: Path
    die_before: tuple[str, ...] = ()
    die_after: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return self.inner.command

    def check(self) -> list[str]:
        return self.inner.check()

    def finished(self, out_dir: Path) -> bool:
        return self.inner.finished(out_dir)

    def on_device(self, device: str) -> Logged:
        return replace(self, inner=self.inner.on_device(device))

    def load(self):
        return self.inner.load()

    def _first(self, name: str, when: str) -> bool:
        self.markers.mkdir(parents=True, exist_ok=True)
        try:
            (self.markers / f"{name}.{when}").touch(exist_ok=False)
        except FileExistsError:
            return False
        return True

    def run(self, state, job) -> str:
        if job.name in self.die_before and self._first(job.name, "before"):
            partial = job.out / f"{STAGING_PREFIX}{self.command}-killed"
            partial.mkdir(parents=True, exist_ok=True)
            (partial / "model.ply").write_bytes(b"ply\nhalf")
            os._exit(1)
        detail = self.inner.run(state, job)
        with open(self.log, "a") as fh:
            fh.write(f"{job.name} {os.getpid()}\n")
        if job.name in self.die_after and self._first(job.name, "after"):
            os._exit(1)
        return detail
