"""Posed views -> Gaussians (and a turntable, a mesh) in an output folder: ``geolrm recon``.

::

    from pipelines.options import ReconOptions
    from pipelines.recon import recon

    run = recon("examples/spot/transforms_train.json", "out/", ReconOptions(method="optimize"))
    run.files, run.scene.gaussians                      # written paths; the Gaussians (user frame)

The steps, each failing with a one-line :class:`~pipelines.errors.InputError` before any work
when it can:

1. check the options (those of the other method are refused; GeoLRM's size and opacity);
2. find the views and their cameras (:func:`~pipelines.reconstruct.resolve_inputs`); GeoLRM
   takes 1 to 32 of them, the optimiser any number;
3. protect the inputs: no output may replace a view, the camera file or the views'
   ``transforms.json``; check the weights (GeoLRM) or the views' alpha (optimiser);
4. the scene: :class:`~pipelines.reconstruct.GeoLRMPipeline` (then, with ``refine``,
   :func:`~pipelines.optimize.refine_result`), or :func:`~pipelines.optimize.optimize_views`;
5. the outputs, all or nothing (:func:`~pipelines.outputs.write_outputs`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines import layout
from pipelines.cameras.cameras import Cameras
from pipelines.defaults import MIN_OPACITY
from pipelines.errors import InputError
from pipelines.optimize import check_masks, optimize_views, refine_result
from pipelines.options import ReconOptions
from pipelines.outputs import check_output_dir, write_outputs
from pipelines.reconstruct import (
    RIGS,
    GeoLRMPipeline,
    check_min_opacity,
    check_size,
    check_view_count,
    default_size,
    input_rig,
    load_config,
    prepare_views,
    resolve_checkpoint,
    resolve_inputs,
    resolve_precision,
)
from pipelines.scene import Scene

__all__ = [
    "METHODS",
    "Recon",
    "ReconRun",
    "check_options",
    "default_output",
    "input_paths",
    "recon",
]

PathLike = str | os.PathLike
METHODS = ("geolrm", "optimize")

OnStage = Callable[..., None]
"""``on_stage(description)`` or ``on_stage(description, total_steps)`` when a stage starts."""


@dataclass
class ReconRun:
    """What :func:`recon` returns.

    Attributes:
        scene: the reconstruction (user and model frame).
        out_dir: the output folder.
        files: the written paths.
        views: number of input views.
        seconds: wall time of the work (after the checks).
    """

    scene: Scene
    out_dir: Path
    files: list[Path]
    views: int
    seconds: float


def default_output(views: PathLike) -> Path:
    """``<views>_recon`` next to the views folder (or next to the folder of a camera file)."""
    views = Path(views)
    base = (views if views.is_dir() else views.parent).resolve()
    return base.parent / f"{base.name}_recon"


def input_paths(views: PathLike, cameras: str | PathLike | None, cams: Cameras) -> list[Path]:
    """The files a run reads and must never replace: the images, the camera file."""
    views = Path(views)
    protect = list(cams.image_paths or [])
    if cameras is not None and str(cameras).lower() not in RIGS:
        protect.append(Path(cameras))
    if views.is_file():
        protect.append(views)
    elif cameras is None:
        protect.append(views / "transforms.json")
    return protect


def _check_optimize_options(opts: ReconOptions) -> None:
    """``method="optimize"`` uses no network: refuse the options that only GeoLRM reads."""
    given = [
        name
        for name, used in (
            ("--checkpoint", opts.checkpoint is not None),
            ("--config", opts.config is not None),
            ("--refine", bool(opts.refine)),
            ("--precision", opts.precision != "fp32"),
            ("--max-seq-len", opts.max_seq_len is not None),
            ("--size", opts.size is not None),
            ("--min-opacity", opts.min_opacity != MIN_OPACITY),
        )
        if used
    ]
    if given:
        hint = "; use --iterations for the number of steps" if "--refine" in given else ""
        hint += "; use --resolution for the size the views are fitted at" * ("--size" in given)
        raise InputError(
            f"{', '.join(given)} only apply to --method geolrm (--method optimize uses no "
            f"network){hint}"
        )


def check_options(opts: ReconOptions) -> None:
    """Step 1 without the views: the method, the precision on ``opts.device``, the options the
    method does not read, GeoLRM's opacity threshold and a given ``size``.

    Raises:
        InputError: the first bad option.
    """
    if opts.method not in METHODS:
        raise InputError(f"unknown --method {opts.method!r}; use {' or '.join(METHODS)}")
    resolve_precision(opts.precision, opts.device)
    if opts.method == "optimize":
        _check_optimize_options(opts)
    elif opts.iterations is not None:
        raise InputError(
            "--iterations applies to --method optimize; with GeoLRM use --refine N to "
            "optimise its Gaussians for N steps"
        )
    else:
        check_min_opacity(opts.min_opacity)
        if opts.size is not None:
            check_size(opts.size)


class Recon:
    """One ``recon`` run: the checks (steps 1-3) when it is built, the work on :meth:`run`.

    Args:
        views: a folder of views (with a ``transforms.json`` unless ``opts.cameras`` is
            given), or a ``transforms.json``.
        output: the output folder (None: :func:`default_output`).
        opts: :class:`~pipelines.options.ReconOptions` (``device`` already resolved).

    Raises:
        InputError: a bad option, input, output folder, missing weights or masks.
    """

    def __init__(
        self, views: PathLike, output: PathLike | None = None, opts: ReconOptions | None = None
    ) -> None:
        opts = opts or ReconOptions()
        views = Path(views)
        self.opts = opts
        # 1. the options
        check_options(opts)
        self.optimize = opts.method == "optimize"
        self.size = opts.size
        if not self.optimize:
            self.size = self.size or default_size(input_rig(views, opts.cameras))
            check_size(self.size)

        # 2. the views and their cameras
        self.cams = resolve_inputs(
            views,
            opts.cameras,
            rig_elevation_deg=opts.rig_elevation,
            official_cameras=opts.official_cameras,
        )
        if not self.optimize or len(self.cams) < 1:
            check_view_count(len(self.cams))

        # 3. the inputs stay untouched; the weights or the masks are there
        self.out_dir = default_output(views) if output is None else Path(output)
        self.protect = input_paths(views, opts.cameras, self.cams)
        self.turntable, self.mesh = opts.turntable(), opts.mesh_config()
        names = layout.recon_names(opts.save_raw, self.turntable is not None, self.mesh is not None)
        check_output_dir(self.out_dir, names, self.protect)
        self.config = self.weights = None
        if self.optimize:
            check_masks(self.cams)
        else:
            config = opts.config
            self.config = load_config(config) if isinstance(config, str | Path) else config
            self.weights = resolve_checkpoint(opts.checkpoint)

    def load_pipeline(self) -> GeoLRMPipeline:
        """The GeoLRM network these options ask for (``method="geolrm"``), on their device; a
        caller running many scenes with the same options loads it once and passes it to
        :meth:`run`."""
        opts = self.opts
        return GeoLRMPipeline.from_pretrained(
            self.weights,
            self.config,
            device=opts.device,
            precision=opts.precision,
            max_seq_len=opts.max_seq_len,
            seed=opts.seed,
        )

    def run(
        self,
        on_stage: OnStage | None = None,
        advance: Callable[[int], None] | None = None,
        on_step: Callable | None = None,
        pipeline: GeoLRMPipeline | None = None,
    ) -> ReconRun:
        """Reconstruct and write the outputs (steps 4-5).

        Args:
            on_stage: ``on_stage(description[, total])`` as each stage starts.
            advance: ``advance(n)`` as the turntable or the mesh makes progress.
            on_step: called with each optimisation step's
                :class:`~pipelines.optimize.StepInfo` (``optimize``, ``refine``).
            pipeline: GeoLRM already loaded by :meth:`load_pipeline` (None: loaded here and
                freed before the outputs).
        """
        opts, cams, dev = self.opts, self.cams, self.opts.device
        stage = on_stage or (lambda *_a: None)
        step = advance or (lambda _n=1: None)
        t0 = time.perf_counter()
        # 4. the scene
        if self.optimize:
            scene: Scene = optimize_views(
                cams,
                resolution=opts.resolution,
                iterations=opts.iterations,
                seed=opts.seed,
                device=dev,
                on_step=on_step,
                on_stage=stage,
            )
        else:
            stage(f"Loading {len(cams)} views at {self.size} px")
            prep = prepare_views(cams, self.size)
            if pipeline is None:
                stage("Loading GeoLRM")
            pipe = self.load_pipeline() if pipeline is None else pipeline
            scene = pipe(prep, seed=opts.seed, min_opacity=opts.min_opacity, on_stage=stage)
            del pipe  # a network loaded here is freed before the outputs
            if opts.refine:
                scene = refine_result(
                    scene,
                    cams,
                    opts.refine,
                    resolution=opts.resolution,
                    seed=opts.seed,
                    device=dev,
                    on_step=on_step,
                    on_stage=stage,
                )

        # 5. the outputs
        stage("Writing outputs")
        turntable, mesh = self.turntable, self.mesh
        started: set[str] = set()

        def on_frame() -> None:  # the files appear together once the video is done
            if "video" not in started:
                stage(f"Rendering turntable ({turntable.resolution} px)", turntable.frames)
                started.add("video")
            step(1)

        def on_mesh_view(n: int) -> None:
            if "mesh" not in started:
                stage(f"Mesh ({mesh.resolution} voxels, {mesh.views} views)", mesh.views)
                started.add("mesh")
            step(n)

        files = write_outputs(
            scene,
            self.out_dir,
            save_raw=opts.save_raw,
            video=turntable,
            device=dev,
            protect=self.protect,
            on_video_frame=on_frame,
            mesh=mesh,
            on_mesh_view=on_mesh_view,
        )
        return ReconRun(scene, self.out_dir, files, len(cams), time.perf_counter() - t0)


def recon(
    views: PathLike,
    output: PathLike | None = None,
    opts: ReconOptions | None = None,
    on_stage: OnStage | None = None,
    advance: Callable[[int], None] | None = None,
    on_step: Callable | None = None,
) -> ReconRun:
    """``Recon(views, output, opts).run(on_stage, advance, on_step)``: check everything, then
    reconstruct ``views`` into ``output`` (see the module docstring and :class:`Recon`)."""
    return Recon(views, output, opts).run(on_stage, advance, on_step)
