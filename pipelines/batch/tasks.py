"""What a batch does to one input: the ``gen`` and ``recon`` tasks, the skip rule and the
:class:`Worker` that runs inputs in one process.

A task is a small picklable object (it travels to Ray workers) with

* ``command``: ``"gen"`` or ``"recon"``;
* ``check()``: every option and weight check, in the driver, before any work;
* ``finished(out_dir)``: the skip rule, the same one for the local and the Ray run
  (:func:`pipelines.layout.gen_finished`, :func:`pipelines.layout.recon_finished`);
* ``on_device(device)``: the task on another device (a Ray worker's GPU);
* ``load()``: what a worker loads once (the models);
* ``run(state, job)``: one input into its output folder, all or nothing
  (:class:`pipelines.outputs.Staging`); returns one line about the result.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from pipelines import layout
from pipelines.batch.ledger import Job, one_line
from pipelines.errors import InputError
from pipelines.generate import Generator, list_photos, output_folders
from pipelines.options import GenOptions, ReconOptions
from pipelines.outputs import remove_staging
from pipelines.recon import Recon, check_options
from pipelines.reconstruct import RIGS, list_images, load_config, resolve_checkpoint

__all__ = [
    "GenTask",
    "Outcome",
    "ReconTask",
    "Task",
    "Worker",
    "gen_jobs",
    "list_scenes",
    "produced",
    "recon_jobs",
]

PathLike = str | os.PathLike


class Task(Protocol):
    """The interface of :class:`GenTask` and :class:`ReconTask` (see the module docstring)."""

    command: str

    def check(self) -> list[str]: ...

    def finished(self, out_dir: Path) -> bool: ...

    def on_device(self, device: str) -> Task: ...

    def load(self) -> Any: ...

    def run(self, state: Any, job: Job) -> str: ...


# --------------------------------------------------------------------------------------------
# the inputs


def gen_jobs(folder: PathLike, base: PathLike) -> list[Job]:
    """One job per photo directly in ``folder``, into ``base / stem``
    (:func:`pipelines.generate.output_folders`)."""
    photos = list_photos(folder)
    if not photos:
        raise InputError(f"{folder} holds no PNG/JPEG/WebP photos; pass a photo or a folder")
    outs = output_folders(photos, Path(base))
    return [Job(p.name, p, o) for p, o in zip(photos, outs, strict=True)]


def list_scenes(folder: PathLike, cameras: str | PathLike | None = None) -> list[Path]:
    """The scenes of a folder of scenes: its subfolders holding a ``transforms.json`` (with a
    named rig as ``cameras``: those holding images), in sorted order; empty when ``folder``
    is itself one scene (it holds a ``transforms.json``, or images for a rig) or no folder."""
    folder = Path(folder)
    rig = cameras is not None and str(cameras).lower() in RIGS

    def is_scene(p: Path) -> bool:
        return bool(list_images(p)) if rig else (p / "transforms.json").is_file()

    if not folder.is_dir() or is_scene(folder):
        return []
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [p for p in subs if is_scene(p)]


def recon_jobs(
    folder: PathLike, base: PathLike, cameras: str | PathLike | None = None
) -> list[Job]:
    """One job per scene of ``folder`` (:func:`list_scenes`), into ``base / <scene name>``."""
    if cameras is not None and str(cameras).lower() not in RIGS:
        raise InputError(
            f"--cameras {cameras} names one scene's cameras; a folder of scenes reads each "
            "scene's own transforms.json (leave --cameras out, or name a rig)"
        )
    scenes = list_scenes(folder, cameras)
    if not scenes:
        raise InputError(
            f"{folder} holds no scenes (subfolders with a transforms.json); pass a scene or "
            "a folder of scene folders"
        )
    return [Job(s.name, s, Path(base) / s.name) for s in scenes]


# --------------------------------------------------------------------------------------------
# the tasks


@dataclass
class GenTask:
    """``geolrm gen`` on each photo, with one :class:`~pipelines.generate.Generator` per
    worker (models loaded on its first photo)."""

    opts: GenOptions
    command: str = "gen"

    def check(self) -> list[str]:
        """Every check :class:`~pipelines.generate.Generator` makes; returns the licence
        notes of the weights."""
        return Generator(self.opts).licence_notes()

    def finished(self, out_dir: Path) -> bool:
        return layout.gen_finished(out_dir, mesh=self.opts.mesh, video=self.opts.video)

    def on_device(self, device: str) -> GenTask:
        return replace(self, opts=replace(self.opts, device=device))

    def load(self) -> Generator:
        return Generator(self.opts)

    def run(self, state: Generator, job: Job) -> str:
        result = state.run(job.src, job.out)
        return f"{result.gaussians:,} Gaussians"


@dataclass
class ReconTask:
    """``geolrm recon`` on each scene (:class:`~pipelines.recon.Recon`); with GeoLRM the
    network is loaded once per worker."""

    opts: ReconOptions
    command: str = "recon"

    def check(self) -> list[str]:
        """The option checks of :func:`~pipelines.recon.check_options` and, for GeoLRM, its
        weights and config."""
        check_options(self.opts)
        if self.opts.method == "geolrm":
            resolve_checkpoint(self.opts.checkpoint)
            if isinstance(self.opts.config, str | Path):
                load_config(self.opts.config)
        return []

    def finished(self, out_dir: Path) -> bool:
        o = self.opts
        return layout.recon_finished(out_dir, o.save_raw, o.video, o.mesh_config() is not None)

    def on_device(self, device: str) -> ReconTask:
        return replace(self, opts=replace(self.opts, device=device))

    def load(self) -> dict:
        return {}  # GeoLRM loads on the first scene (its weights come from that scene's check)

    def run(self, state: dict, job: Job) -> str:
        scene = Recon(job.src, job.out, self.opts)
        pipe = None
        if not scene.optimize:
            if "pipeline" not in state:
                state["pipeline"] = scene.load_pipeline()
            pipe = state["pipeline"]
        run = scene.run(pipeline=pipe)
        return f"{len(run.scene.gaussians):,} Gaussians from {run.views} views"


# --------------------------------------------------------------------------------------------
# one worker


def produced(task: Task, out_dir: Path, since: float | None = None) -> bool:
    """The skip rule: ``out_dir`` holds ``task``'s finished output (written at or after the
    time ``since``, ``time.time()`` seconds, when given: an output of this batch, not an older
    one that ``--overwrite`` replaces)."""
    if not task.finished(out_dir):
        return False
    if since is None:
        return True
    return (out_dir / layout.MODEL).stat().st_mtime >= since


@dataclass
class Outcome:
    """What one attempt at one input gave: ``done``, ``skipped`` (its output was already
    there) or ``failed`` (with a one-line ``error``)."""

    status: str
    seconds: float
    worker: str
    detail: str | None = None
    error: str | None = None


class Worker:
    """Runs the inputs of one task in one process; the models load on the first input that
    needs them and stay loaded.

    Args:
        task: the task (already on this worker's device).
        name: shown in the records (``local``, ``w0@host:pid``).
    """

    def __init__(self, task: Task, name: str = "local") -> None:
        self.task = task
        self.name = name
        self.state: Any = None
        self.loaded = False

    def run(self, job: Job, skip_since: float | None = None) -> Outcome:
        """One attempt at ``job``: ``skipped`` when its output is there already (written
        since ``skip_since``; None: no check), else run it. Staging folders a killed earlier
        attempt left are removed first. Any exception becomes a ``failed`` outcome (the
        input's problem, never the batch's); Ctrl-C propagates."""
        t0 = time.perf_counter()
        if skip_since is not None and produced(self.task, job.out, skip_since):
            return Outcome("skipped", time.perf_counter() - t0, self.name)
        remove_staging(job.out)
        try:
            if not self.loaded:
                self.state = self.task.load()
                self.loaded = True
            detail = self.task.run(self.state, job)
        except Exception as e:  # recorded; the batch goes on
            return Outcome("failed", time.perf_counter() - t0, self.name, error=one_line(e))
        return Outcome("done", time.perf_counter() - t0, self.name, detail=detail)
