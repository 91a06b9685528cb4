"""One photo -> 3D asset: background removal, multi-view diffusion, GeoLRM, outputs.

::

    from pipelines.generate import GenOptions, Generator

    gen = Generator(GenOptions(mv="zero123pp", seed=42))   # checks every weight file first
    result = gen.run("photo.png", "out/")                  # models load on the first run
    result.files, result.stages                            # written paths, time / memory

Stages (each timed, with its peak memory): background removal and framing
(:mod:`pipelines.preprocess`), loading and running the multi-view model
(:mod:`pipelines.multiview.zero123pp` or :mod:`pipelines.multiview.sv3d`), loading GeoLRM and
reconstructing (:mod:`pipelines.reconstruct`, on the views written to ``views/`` with the
rig's cameras in ``views/transforms.json``), optional refinement (``--refine N``), the outputs
(``model.ply``, ``turntable.mp4``) and, with ``mesh``, ``mesh.glb`` (with ``texture_size``:
UV-mapped, with a texture baked from the renders).

Output folder::

    input.png          the framed photo (RGBA, the multi-view model's input size)
    views.png          every generated view (Zero123++: its 3x2 grid; SV3D: 7x3 frames)
    views/NN.png       the views GeoLRM used (NN = index in the model's output order)
    views/transforms.json   their cameras (so `geolrm recon out/views` reruns the last stage)
    model.ply          the Gaussians (z-up model frame: the rig's cameras are in it)
    cameras.json, model_frame.json   as written by `geolrm recon`
    turntable.mp4      unless video=False
    mesh.glb           with mesh=True (texture embedded with texture_size)

Everything is written into a hidden staging folder inside the output folder and moved into
place at the end, so a failed run leaves the previous outputs (or nothing) behind.

One seed drives every stage: the multi-view sampler's generator, GeoLRM's anchor subset and
the refinement.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipelines import layout
from pipelines import preprocess as pp
from pipelines import reconstruct as rc
from pipelines.defaults import MV_DEFAULTS
from pipelines.device import device_type, diffusion_dtype, run_stage
from pipelines.errors import InputError
from pipelines.io_utils import atomic_path
from pipelines.mesh.texture import check_texture_size
from pipelines.multiview.rigs import (
    sv3d_cameras,
    sv3d_view_indices,
    zero123pp_cameras,
    zero123pp_view_indices,
)
from pipelines.optimize import refine_result
from pipelines.options import GenOptions
from pipelines.outputs import Staging, write_mesh, write_scene
from pipelines.threads import start_numba
from pipelines.weights import artifact, ensure, licence_notice

__all__ = [
    "GenOptions",
    "GenResult",
    "Generator",
    "StageStat",
    "list_photos",
    "output_folders",
]

PathLike = str | os.PathLike

UNET_CHOICES = ("instantmesh", "original")

OnStage = Callable[[str, int | None], None]
"""``on_stage(description, total_steps_or_None)`` when a stage starts."""


# --------------------------------------------------------------------------------------------
# options and results


@dataclass
class StageStat:
    """One stage: name, wall time, peak memory (``gpu``: CUDA allocated; ``mps``: Metal driver
    memory, sampled; ``rss``: process resident memory) in bytes (None when unknown)."""

    name: str
    seconds: float
    peak_bytes: int | None
    memory: str


@dataclass
class GenResult:
    """What :meth:`Generator.run` returns."""

    photo: Path
    out_dir: Path
    files: list[Path]
    gaussians: int
    stages: list[StageStat] = field(default_factory=list)
    alpha_source: str = ""
    dropped: int = 0

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


# --------------------------------------------------------------------------------------------
# memory / timing


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _mps_bytes() -> int | None:
    """Memory the Metal driver holds for this process (None where MPS cannot be queried)."""
    try:
        return int(torch.mps.driver_allocated_memory())
    except (AttributeError, RuntimeError):
        return None


class _PeakRSS:
    """Samples ``read()`` (default: the process's resident memory) every ``interval`` s in a
    thread."""

    def __init__(self, interval: float = 0.02, read: Callable[[], int | None] = _rss_bytes) -> None:
        self.interval = interval
        self.read = read
        self.peak = read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            v = self.read()
            if v is not None and (self.peak is None or v > self.peak):
                self.peak = v

    def __enter__(self) -> _PeakRSS:
        if self.peak is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        v = self.read()
        if v is not None and (self.peak is None or v > self.peak):
            self.peak = v


@contextmanager
def _measure(stats: list[StageStat], name: str, device: str) -> Iterator[None]:
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    t0 = time.perf_counter()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield
        finally:
            torch.cuda.synchronize(device)
            peak = int(torch.cuda.max_memory_allocated(device))
            stats.append(StageStat(name, time.perf_counter() - t0, peak, "gpu"))
        return
    mps = device_type(device) == "mps" and _mps_bytes() is not None
    with _PeakRSS(read=_mps_bytes if mps else _rss_bytes) as mon:
        try:
            yield
        finally:
            if mps:
                torch.mps.synchronize()
    stats.append(StageStat(name, time.perf_counter() - t0, mon.peak, "mps" if mps else "rss"))


# --------------------------------------------------------------------------------------------
# inputs / outputs


def list_photos(folder: PathLike) -> list[Path]:
    """The photos directly in ``folder`` (PNG/JPEG/WebP, natural order)."""

    return rc.list_images(folder)


def _save_png(path: Path, image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _sheet(images: list, columns: int):
    """Views tiled without gaps (Zero123++'s own grid layout when columns = 2)."""

    w, h = images[0].size
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for k, im in enumerate(images):
        sheet.paste(im, ((k % columns) * w, (k // columns) * h))
    return sheet


def output_folders(photos: list[Path], base: Path) -> list[Path]:
    """One output folder per photo: ``base / stem`` (``stem_ext`` when two photos share a
    stem)."""
    stems = [p.stem for p in photos]
    return [
        base / (p.stem if stems.count(p.stem) == 1 else f"{p.stem}_{p.suffix.lstrip('.')}")
        for p in photos
    ]


# --------------------------------------------------------------------------------------------
# multi-view back ends


@dataclass
class _Views:
    """Output of a multi-view back end."""

    sheet: object  # PIL image written as views.png
    images: list  # PIL images, every view in the model's output order
    cameras: object  # Cameras of every view (model frame, at the tile size)
    used: tuple[int, ...]  # indices fed to GeoLRM


class _Zero123pp:
    name = "zero123pp"

    def __init__(self, opts: GenOptions, device: str, dtype: torch.dtype, offload: bool):
        self.opts = opts
        self.device, self.dtype, self.offload = device, dtype, offload
        self.used = zero123pp_view_indices(opts.get("views"))
        unet = opts.unet
        self.unet_file: Path | None = None
        if opts.mv_weights is not None:
            self.folder = Path(opts.mv_weights)
            if not (self.folder / "model_index.json").is_file():
                raise InputError(
                    f"--mv-weights {self.folder}: not a Zero123++ model folder (no "
                    "model_index.json); pass the sudo-ai/zero123plus-v1.2 snapshot folder"
                )
        else:
            self.folder = ensure("zero123pp")
        if unet == "instantmesh":
            self.unet_file = ensure("instantmesh-unet")
        elif unet != "original":
            self.unet_file = Path(unet)
            if not self.unet_file.is_file():
                raise InputError(
                    f"--unet {unet}: no such file; use instantmesh, original or a UNet "
                    "state-dict file (.bin / .safetensors)"
                )
        self.background = (127, 127, 127) if unet == "original" else (255, 255, 255)
        self.pipe = None

    @property
    def licences(self) -> list[str]:
        return ["zero123pp"] + (["instantmesh-unet"] if self.opts.unet == "instantmesh" else [])

    def load(self) -> None:
        from pipelines.multiview.zero123pp import Zero123PlusPipeline  # diffusers: lazy

        self.pipe = Zero123PlusPipeline.from_pretrained(
            self.folder, self.unet_file, self.device, self.dtype, self.offload
        )

    @property
    def input_size(self) -> int:
        return self.pipe.input_size

    def generate(self, image, seed: int, on_step) -> _Views:
        tile = self.opts.get("tile")
        out = self.pipe(
            image,
            num_inference_steps=self.opts.get("steps"),
            guidance_scale=self.opts.get("guidance"),
            seed=seed,
            tile_size=tile,
            on_step=on_step,
        )
        return _Views(out.grid_image(), out.view_images(), zero123pp_cameras(6, tile), self.used)


class _SV3D:
    name = "sv3d"

    def __init__(self, opts: GenOptions, device: str, dtype: torch.dtype, offload: bool):
        self.opts = opts
        self.device, self.dtype, self.offload = device, dtype, offload
        self.used = tuple(sv3d_view_indices(opts.get("views")))
        if opts.unet != "instantmesh":
            raise InputError("--unet is a Zero123++ option; leave it out with --mv sv3d")
        if opts.mv_weights is not None:
            self.path = Path(opts.mv_weights)
            if not self.path.exists():
                raise InputError(f"--mv-weights {self.path}: no such file or folder")
        else:
            self.path = ensure("sv3d-p")
        self.background = (255, 255, 255)
        self.pipe = None

    @property
    def licences(self) -> list[str]:
        return ["sv3d-p"]

    def load(self) -> None:
        from pipelines.multiview.sv3d import SV3DPipeline  # diffusers: lazy

        self.pipe = SV3DPipeline.from_pretrained(self.path, self.device, self.dtype, self.offload)

    @property
    def input_size(self) -> int:
        return self.opts.get("tile")

    def generate(self, image, seed: int, on_step) -> _Views:
        size = self.opts.get("tile")
        out = self.pipe(
            image,
            num_inference_steps=self.opts.get("steps"),
            max_guidance_scale=self.opts.get("guidance"),
            elevation_deg=self.opts.elevation,
            seed=seed,
            size=size,
            on_step=on_step,
        )
        images = out.frame_images()
        cams = sv3d_cameras(self.opts.elevation, size, official_offset=self.opts.official_cameras)
        return _Views(_sheet(images, 7), images, cams, self.used)


# --------------------------------------------------------------------------------------------
# the chain


class Generator:
    """The whole chain; weights are checked when it is built, models load on the first run
    and stay loaded for the next photos."""

    def __init__(self, opts: GenOptions) -> None:
        if opts.mv not in MV_DEFAULTS:
            raise InputError(f"unknown --mv {opts.mv!r}; use {' or '.join(MV_DEFAULTS)}")
        self.opts = opts
        self.device = opts.device
        cuda = device_type(self.device) == "cuda"
        if opts.precision == "auto":
            mv_dtype = diffusion_dtype(self.device)  # fp16 on CUDA and MPS
            self.recon_precision = "fp32"
        else:
            rc.resolve_precision(opts.precision, self.device)
            mv_dtype = rc.PRECISIONS[opts.precision]
            self.recon_precision = opts.precision
        if opts.low_vram and cuda:
            mv_dtype = torch.float16 if mv_dtype == torch.float32 else mv_dtype
        self.mv_dtype = mv_dtype
        for key, lo in (("steps", 1), ("tile", 8), ("size", 14)):
            if opts.get(key) < lo:
                raise InputError(f"--{key} must be at least {lo}, got {opts.get(key)}")
        if opts.refine < 0:
            raise InputError(f"--refine must be >= 0, got {opts.refine}")
        rc.check_size(opts.get("size"))
        rc.check_min_opacity(opts.min_opacity)
        if opts.official_cameras and opts.mv != "sv3d":
            raise InputError(
                "--official-cameras is an SV3D option (GeoLRM's SV3D script assigns frame i "
                "azimuth i*360/21); leave it out with --mv zero123pp"
            )
        if not 0.0 < opts.foreground_ratio <= 1.0:
            raise InputError(f"--foreground-ratio must be in (0, 1], got {opts.foreground_ratio}")
        if opts.texture_size is not None:
            if not opts.mesh:
                raise InputError("a mesh texture needs the mesh; add --mesh")
            check_texture_size(opts.texture_size)
        backend = _Zero123pp if opts.mv == "zero123pp" else _SV3D
        # every weight file is resolved now: a missing one fails before any work is done
        self.mv = backend(opts, self.device, mv_dtype, opts.low_vram and cuda)
        self.config = (
            opts.config
            if opts.config is None or isinstance(opts.config, dict)
            else rc.load_config(opts.config)
        )
        self.checkpoint = rc.resolve_checkpoint(opts.checkpoint)
        self.model = None
        # numba's OpenMP layer (GeoLRM's CPU kernels, the rasterizer) resets torch's intra-op
        # thread count; each run starts from the count seen here so that every photo of a
        # folder gets the same numerics as a single run
        self.threads = torch.get_num_threads()
        start_numba()  # numba's pool starts now, torch's count kept (pipelines.threads)

    def reuse_models(self, other: Generator) -> None:
        """Use the models ``other`` has loaded (built with the same weights, device and
        precision), so that a long-lived caller such as ``geolrm app`` loads them once."""
        self.mv.pipe, self.model = other.mv.pipe, other.model

    # -- helpers ------------------------------------------------------------------------------

    def licence_notes(self) -> list[str]:
        """One line per non-commercial licence of the weights in use (registry weights)."""

        if self.opts.mv_weights is not None and self.opts.mv == "sv3d":
            return [licence_notice(artifact("sv3d-p"))]
        notes = []
        for name in self.mv.licences:
            a = artifact(name)
            if a.needs_acceptance:
                notes.append(licence_notice(a))
        return notes

    def _load(self, stats: list[StageStat], on_stage: OnStage, on_note) -> None:
        if self.mv.pipe is None:
            for note in self.licence_notes():
                on_note(note)
            on_stage(f"Loading {self.mv.name}", None)

            def load_mv() -> None:
                if self.mv.pipe is None:  # not loaded already by an MPS fallback
                    self.mv.load()

            with _measure(stats, f"load {self.mv.name}", self.device):
                self._mv_stage(load_mv)
        if self.model is None:
            on_stage("Loading GeoLRM", None)
            with _measure(stats, "load GeoLRM", self.device):
                self.model = rc.load_model(
                    self.checkpoint,
                    self.config,
                    max_seq_len=self.opts.max_seq_len,
                    seed=self.opts.seed,
                )

    def _mv_stage(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` with the multi-view model; on MPS, an operation MPS lacks
        (:func:`pipelines.device.run_stage`) reloads the model on the CPU in fp32 (it stays
        there for the next photos) and reruns ``fn``."""

        def attempt(dev: str) -> Any:
            if dev != self.mv.device:  # the rerun after an MPS failure
                self.mv = type(self.mv)(self.opts, dev, torch.float32, False)
                self.mv_dtype = torch.float32
                self.mv.load()
            return fn()

        return run_stage(f"multi-view diffusion ({self.mv.name})", self.mv.device, attempt)

    # -- run ----------------------------------------------------------------------------------

    def run(
        self,
        photo: PathLike,
        out_dir: PathLike,
        on_stage: OnStage | None = None,
        advance: Callable[[int], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> GenResult:
        """Generate the asset for one photo into ``out_dir`` (see the module docstring).

        Args:
            on_stage: ``on_stage(description, total)`` as each stage starts.
            advance: ``advance(n)`` as a stage with a total makes progress.
            on_note: called with the licence notices of the weights when they load.
        """

        opts = self.opts
        on_stage = on_stage or (lambda _d, _t: None)
        step = advance or (lambda _n=1: None)
        photo, out_dir = Path(photo), Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(f"-o {out_dir} is a file; pass a folder for the outputs")
        stats: list[StageStat] = []
        seed = int(opts.seed)
        torch.set_num_threads(self.threads)
        dev = self.device

        # read the photo before loading anything (a bad image fails fast)
        image = pp.load_photo(photo)
        if opts.remove_bg and not pp.has_alpha(image):
            pp.check_rembg(opts.rembg_model)  # a missing rembg model fails fast too
        self._load(stats, on_stage, on_note or (lambda _n: None))

        on_stage("Background removal and framing", None)
        with _measure(stats, "preprocess", dev):
            prep = pp.preprocess(
                image,
                size=self.mv.input_size,
                remove_bg=opts.remove_bg,
                rembg_model=opts.rembg_model,
                foreground_ratio=opts.foreground_ratio,
                background=self.mv.background,
                style=self.mv.name,  # the official script's steps ("zero123pp" / "sv3d")
            )

        with Staging(out_dir, "gen", stale=layout.GEN_NAMES) as stage:
            _save_png(stage.file(layout.PHOTO), prep.rgba)
            steps = opts.get("steps")
            on_stage(f"Multi-view diffusion ({self.mv.name}, {steps} steps)", steps)
            with _measure(stats, f"multi-view ({self.mv.name})", dev):
                views = self._mv_stage(
                    # the image the official pipeline is handed (Zero123++: before its own
                    # CLIP / VAE resizing, so both branches see what they see there)
                    lambda: self.mv.generate(prep.condition, seed, lambda i, n: step(1))
                )
            _save_png(stage.file(layout.SHEET), views.sheet)
            views_dir = stage.file(layout.VIEWS)
            views_dir.mkdir()
            width = len(str(len(views.images) - 1))
            names = [f"{k:0{max(2, width)}d}.png" for k in views.used]
            for k, name in zip(views.used, names, strict=True):
                _save_png(views_dir / name, views.images[k])
            cams = views.cameras.subset(list(views.used))
            tj = cams.to_transforms_json(file_paths=names)
            tj["geolrm"] = {
                "generator": self.mv.name,
                "note": "model-frame cameras of the generated views (z-up, radius 1.5)",
                "views": list(views.used),
                "seed": seed,
            }
            (stage.path / layout.VIEWS_CAMERAS).write_text(json.dumps(tj, indent=1) + "\n")

            on_stage("GeoLRM reconstruction", None)
            with _measure(stats, "GeoLRM", dev):
                cams_in = rc.resolve_inputs(views_dir)
                prepared = rc.prepare_views(cams_in, opts.get("size"))
                scene = rc.reconstruct(
                    prepared,
                    self.model,
                    device=dev,
                    precision=self.recon_precision,
                    seed=seed,
                    on_stage=lambda name: on_stage(f"GeoLRM: {name}", None),
                    min_opacity=opts.min_opacity,
                )
            if opts.refine:
                on_stage(f"Refining ({opts.refine} steps)", opts.refine)
                with _measure(stats, f"refine ({opts.refine})", dev):
                    scene = refine_result(
                        scene,
                        cams_in,
                        opts.refine,
                        seed=seed,
                        device=dev,
                        on_step=lambda _info: step(1),
                    )

            video_started = False
            turntable = opts.turntable()

            def on_frame() -> None:
                nonlocal video_started
                if not video_started:
                    on_stage(f"Turntable ({turntable.resolution} px)", turntable.frames)
                    video_started = True
                step(1)

            on_stage(f"Writing {layout.MODEL}", None)
            with _measure(stats, "outputs" + (" + turntable" if opts.video else ""), dev):
                # cameras.json names the views relative to the folder they are written in
                write_scene(
                    scene,
                    stage,
                    base_dir=stage.path,
                    video=turntable,
                    device=dev,
                    on_video_frame=on_frame if opts.video else None,
                    up=opts.up,
                )
            if opts.mesh:
                spec = opts.mesh_config()
                on_stage(f"Mesh ({spec.resolution} voxels)", spec.views)

                def mesh_stage(name: str, _total: int | None) -> None:
                    if name == "texture":
                        on_stage(f"Mesh texture ({spec.texture_size} px)", None)

                with _measure(stats, "mesh" + (" + texture" if spec.texture_size else ""), dev):
                    write_mesh(
                        stage.file(layout.MESH),
                        scene.gaussians_model,
                        scene.cameras_model,
                        spec,
                        dev,
                        on_view=lambda *_a: step(1),
                        on_stage=mesh_stage,
                    )
        files = stage.written
        return GenResult(
            photo=photo,
            out_dir=out_dir,
            files=files,
            gaussians=len(scene.gaussians),
            stages=stats,
            alpha_source=prep.alpha_source,
            dropped=scene.geolrm.dropped,
        )
