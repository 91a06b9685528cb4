"""``geolrm app``: a Gradio web demo of the whole chain, plus posed views -> ``recon``.

Tab *Photo*: upload a photo -> background removal (skipped when the photo has an alpha
channel) -> the multi-view grid -> GeoLRM's Gaussians in an interactive 3D preview (Gradio's
``Model3D`` shows ``.splat`` Gaussians and ``.glb`` meshes) -> the turntable -> downloads
(``model.ply``, ``model.splat``, ``mesh.glb``). Options: multi-view model, views, steps, seed,
mesh, texture. It runs :class:`pipelines.generate.Generator` (the same code as ``geolrm gen``).

Tab *Posed views*: a zip with a ``transforms.json`` and its images (or the files themselves)
-> ``recon`` with GeoLRM or ``--method optimize`` (no network weights needed).

Failures show as one ``error: ...`` line on the page (missing weights: the message with the
download command); nothing crashes the server. One job runs at a time (Gradio's queue, one
worker: one device), each browser session writes into its own folder, removed
:attr:`AppConfig.keep_minutes` after its last job, uploads are capped at
:attr:`AppConfig.max_upload_mb`, and the server binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.cameras.dataparsers import IMAGE_EXTENSIONS
from pipelines.defaults import MV_DEFAULTS, OPTIMIZE_ITERATIONS, OPTIMIZE_RESOLUTION, SEED
from pipelines.errors import InputError, require_package
from pipelines.generate import Generator, GenOptions
from pipelines.options import ReconOptions
from pipelines.recon import recon
from pipelines.reconstruct import resolve_checkpoint
from pipelines.splats.io import load_gaussians, save_gaussians

#: Image files a posed-views upload may hold (the transforms.json reader's, lower case).
IMAGE_SUFFIXES = tuple(dict.fromkeys(e.lower() for e in IMAGE_EXTENSIONS))


def require_gradio() -> None:
    """Raise the one-line :class:`InputError` naming the install command when gradio is missing."""
    require_package("gradio", "the web app", "app", "gradio>=5")


@dataclass
class AppConfig:
    """How the app runs (the ``geolrm app`` options).

    Attributes:
        device: torch device for every job (resolved).
        work_dir: where the per-session folders go (None: a temporary folder, removed at exit).
        keep_minutes: a session folder is removed this long after its last job.
        max_upload_mb: largest accepted upload.
        mv_weights / unet / checkpoint / config / size / tile: as ``geolrm gen`` (local or
            tiny test models instead of the registry's).
        steps: default denoising steps shown (None: the model's).
        video_frames / video_resolution: the turntable.
        mesh_resolution: TSDF voxels of ``mesh.glb``.
    """

    device: str = "cpu"
    work_dir: Path | None = None
    keep_minutes: float = 60.0
    max_upload_mb: int = 50
    mv_weights: Path | None = None
    unet: str = "instantmesh"
    checkpoint: Path | None = None
    config: Path | None = None
    size: int | None = None
    tile: int | None = None
    steps: int | None = None
    video_frames: int = 60
    video_resolution: int = 384
    mesh_resolution: int = 128


def error_text(e: BaseException) -> str:
    """The one line shown on the page for a failed job."""
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, InputError):
        return f"error: {msg}"
    return f"error: {type(e).__name__}: {msg} (this is a bug in geolrm; please report it)"


# ------------------------------------------------------------------------- session folders


class Sessions:
    """Per-browser-session output folders under one root, removed when idle for too long."""

    def __init__(self, root: Path | None, keep_minutes: float) -> None:
        self.owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="geolrm-app-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_s = keep_minutes * 60.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # sweep now and then even when no job starts (an idle app still forgets old sessions)
        every = min(300.0, max(5.0, self.keep_s / 4))
        self._sweeper = threading.Thread(target=self._sweep_every, args=(every,), daemon=True)
        self._sweeper.start()

    def _sweep_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.sweep()
            except OSError:  # a folder removed under our feet; try again next time
                pass

    def job_dir(self, session: str | None) -> Path:
        """A new empty folder for one job of ``session`` (old sessions are swept first)."""
        self.sweep()
        safe = "".join(c for c in (session or "anonymous") if c.isalnum() or c in "-_")[:64]
        folder = self.root / (safe or "anonymous")
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            folder.touch()  # the session's last activity
            job = Path(tempfile.mkdtemp(prefix=time.strftime("%H%M%S-"), dir=folder))
        return job

    def sweep(self, now: float | None = None) -> list[Path]:
        """Remove session folders idle for longer than the keep time; return them."""
        now = time.time() if now is None else now
        removed = []
        with self._lock:
            for folder in self.root.iterdir():
                if folder.is_dir() and now - folder.stat().st_mtime > self.keep_s:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
        return removed

    def close(self) -> None:
        """Stop sweeping; remove the root when the app created it."""
        self._stop.set()
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------- inputs


def unpack_views(files: list[str | Path], dest: Path, max_bytes: int) -> Path:
    """Put uploaded posed views into ``dest``; return the ``transforms.json`` to reconstruct.

    Args:
        files: one ``.zip`` (a ``transforms.json`` and the images it names, in any folder
            layout), or the ``transforms.json`` and image files themselves (frames then match
            the uploaded images by file name).
        dest: an empty folder.
        max_bytes: refuse archives that unpack to more than this.

    Raises:
        InputError: no transforms.json, an unsafe or oversized archive, unknown files.
    """
    paths = [Path(f) for f in files or []]
    if not paths:
        raise InputError("no files uploaded; upload a .zip or a transforms.json with its images")
    dest.mkdir(parents=True, exist_ok=True)
    zips = [p for p in paths if p.suffix.lower() == ".zip"]
    if zips:
        if len(paths) != 1:
            raise InputError("upload one .zip alone, or the transforms.json and images without it")
        try:
            with zipfile.ZipFile(zips[0]) as z:
                infos = [i for i in z.infolist() if not i.is_dir()]
                if sum(i.file_size for i in infos) > max_bytes:
                    raise InputError(
                        f"{zips[0].name} unpacks to more than {max_bytes // 2**20} MiB; "
                        "upload fewer or smaller views"
                    )
                root = dest.resolve()
                for info in infos:
                    target = (dest / info.filename).resolve()
                    if root not in target.parents:
                        raise InputError(f"{zips[0].name}: unsafe path {info.filename!r} in zip")
                    if "__MACOSX" in Path(info.filename).parts:
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
        except zipfile.BadZipFile:
            raise InputError(f"{zips[0].name} is not a readable zip archive") from None
        found = sorted(dest.rglob("transforms*.json"), key=lambda p: (len(p.parts), p.name))
        if not found:
            raise InputError(f"{zips[0].name} holds no transforms.json; add the camera file")
        return found[0]
    jsons = [p for p in paths if p.suffix.lower() == ".json"]
    images = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
    other = [p.name for p in paths if p not in jsons and p not in images]
    if len(jsons) != 1:
        raise InputError("upload exactly one transforms.json with the images (or one .zip)")
    if other:
        raise InputError(f"cannot use {other[0]}; upload PNG/JPEG/WebP images and a .json")
    by_name = {}
    for img in images:
        shutil.copy(img, dest / img.name)
        by_name[img.name] = img.name
    try:
        data = json.loads(jsons[0].read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{jsons[0].name} is not valid JSON ({e})") from None
    for frame in data.get("frames", []) if isinstance(data, dict) else []:
        fp = frame.get("file_path") if isinstance(frame, dict) else None
        if isinstance(fp, str):
            name = Path(fp).name
            match = by_name.get(name) or next(
                (n for n in by_name if Path(n).stem == Path(name).stem), None
            )
            if match is not None:
                frame["file_path"] = match
    out = dest / "transforms.json"
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


# ------------------------------------------------------------------------- jobs


@dataclass
class JobResult:
    """Files of one finished job (None where not made)."""

    folder: Path
    model: Path
    splat: Path
    video: Path | None = None
    mesh: Path | None = None
    input_image: Path | None = None
    views_image: Path | None = None
    message: str = ""

    @property
    def downloads(self) -> list[str]:
        return [str(p) for p in (self.model, self.splat, self.mesh) if p is not None]


def write_splat_file(folder: Path) -> Path:
    """``model.splat`` from ``model.ply``, in the 3DGS y-down habit: what SuperSplat and the
    other ``.splat`` viewers expect, and what Gradio's ``Model3D`` shows upright."""

    g = load_gaussians(folder / "model.ply", quiet=True)
    return save_gaussians(folder / "model.splat", g, up="-y")


class Jobs:
    """The work behind the two tabs; Generators stay loaded between jobs."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self._generators: dict[tuple, Any] = {}

    # -- photo -> 3D ------------------------------------------------------------------------

    def generator(self, opts):
        """A :class:`~pipelines.generate.Generator` for ``opts``; the loaded models of an
        earlier one with the same weights are reused (weights are resolved again, cheaply)."""

        key = tuple(
            str(getattr(opts, k))
            for k in (
                "mv",
                "device",
                "precision",
                "low_vram",
                "unet",
                "mv_weights",
                "checkpoint",
                "config",
                "max_seq_len",
                "seed",
            )
        )
        gen = Generator(opts)  # raises the missing-weights message before any work
        old = self._generators.get(key)
        if old is not None:
            gen.reuse_models(old)
        self._generators = {key: gen}  # one set of models in memory
        return gen

    def photo_options(
        self, mv: str, views: int | None, steps: int | None, seed: int, mesh: bool, texture: bool,
        remove_bg: bool,
    ):  # fmt: skip
        """:class:`~pipelines.generate.GenOptions` for one photo job."""

        cfg = self.cfg
        return GenOptions(
            mv=mv,
            views=views,
            steps=steps,
            seed=int(seed),
            device=cfg.device,
            remove_bg=remove_bg,
            unet=cfg.unet if mv == "zero123pp" else "instantmesh",
            mv_weights=cfg.mv_weights,
            tile=cfg.tile,
            checkpoint=cfg.checkpoint,
            config=cfg.config,
            size=cfg.size,
            video=True,
            video_frames=cfg.video_frames,
            video_resolution=cfg.video_resolution,
            mesh=mesh or texture,
            mesh_resolution=cfg.mesh_resolution,
            texture_size=1024 if texture else None,
        )

    def photo(self, photo: str | Path, out: Path, opts, on_stage: Callable | None = None):
        """Run the whole chain on one photo into ``out``."""
        gen = self.generator(opts)
        stage = on_stage or (lambda _d, _t=None: None)
        result = gen.run(photo, out, on_stage=stage)
        splat = write_splat_file(out)
        return JobResult(
            folder=out,
            model=out / "model.ply",
            splat=splat,
            video=out / "turntable.mp4" if (out / "turntable.mp4").exists() else None,
            mesh=out / "mesh.glb" if (out / "mesh.glb").exists() else None,
            input_image=out / "input.png",
            views_image=out / "views.png",
            message=f"done: {result.gaussians:,} Gaussians in {result.seconds:.1f} s",
        )

    # -- posed views -> recon -----------------------------------------------------------------

    def posed(
        self,
        transforms: Path,
        out: Path,
        method: str,
        iterations: int,
        resolution: int,
        mesh: bool,
        seed: int,
        on_stage: Callable | None = None,
    ) -> JobResult:
        """``recon`` of the uploaded views into ``out`` (see :func:`recon_views`)."""
        result = recon_views(
            transforms,
            out,
            method=method,
            iterations=iterations,
            resolution=resolution,
            mesh=mesh,
            seed=seed,
            device=self.cfg.device,
            checkpoint=self.cfg.checkpoint,
            config=self.cfg.config,
            size=self.cfg.size,
            video_frames=self.cfg.video_frames,
            video_resolution=self.cfg.video_resolution,
            mesh_resolution=self.cfg.mesh_resolution,
            on_stage=on_stage,
        )
        splat = write_splat_file(out)
        n, views = result
        return JobResult(
            folder=out,
            model=out / "model.ply",
            splat=splat,
            video=out / "turntable.mp4",
            mesh=out / "mesh.glb" if mesh else None,
            message=f"done: {n:,} Gaussians from {views} views ({method})",
        )


def recon_views(
    transforms: Path,
    out: Path,
    method: str = "geolrm",
    iterations: int = OPTIMIZE_ITERATIONS,
    resolution: int = OPTIMIZE_RESOLUTION,
    mesh: bool = False,
    seed: int = SEED,
    device: str = "cpu",
    checkpoint: Path | None = None,
    config: Path | None = None,
    size: int | None = None,
    video_frames: int = 60,
    video_resolution: int = 384,
    mesh_resolution: int = 128,
    on_stage: Callable | None = None,
) -> tuple[int, int]:
    """Posed views -> ``model.ply``, ``cameras.json``, ``turntable.mp4`` (and ``mesh.glb``):
    :func:`pipelines.recon.recon`, the workflow behind ``geolrm recon``, with the app's
    settings (a short turntable, a coarse mesh).

    Returns:
        ``(Gaussians, views)``.
    """
    optimize = method == "optimize"
    opts = ReconOptions(
        method=method,
        iterations=iterations if optimize else None,
        resolution=resolution,
        size=None if optimize else size,
        checkpoint=None if optimize else checkpoint,
        config=None if optimize else config,
        seed=seed,
        device=device,
        video_frames=video_frames,
        video_resolution=video_resolution,
        mesh=mesh,
        mesh_resolution=mesh_resolution,
    )
    run = recon(transforms, out, opts, on_stage=on_stage)
    return len(run.scene.gaussians), run.views


# ------------------------------------------------------------------------- the page


def build_app(cfg: AppConfig, sessions: Sessions):
    """The Gradio Blocks of the app (not launched)."""
    require_gradio()
    import gradio as gr

    jobs = Jobs(cfg)
    default_steps = cfg.steps or MV_DEFAULTS["zero123pp"].steps
    try:
        resolve_checkpoint(cfg.checkpoint)
        default_method = "geolrm"
    except InputError:
        default_method = "optimize"  # works with no network weights

    def progress_stage(progress):
        def on_stage(desc: str, total: int | None = None) -> None:
            progress(0.0 if total else None, desc=desc)

        return on_stage

    def run_photo(photo, mv, views, steps, seed, mesh, texture, remove_bg, request=None,
                  progress=gr.Progress()):  # fmt: skip
        empty = (None, None, None, None, None, None)
        if not photo:
            return ("error: upload a photo first", *empty)
        try:
            opts = jobs.photo_options(
                mv, int(views) if views else None, int(steps), seed, mesh, texture, remove_bg
            )
            out = sessions.job_dir(getattr(request, "session_hash", None))
            r = jobs.photo(photo, out, opts, on_stage=progress_stage(progress))
        except Exception as e:  # shown on the page; the server keeps serving
            return (error_text(e), *empty)
        video_path = str(r.video) if r.video else None
        return (
            r.message,
            str(r.input_image),
            str(r.views_image),
            str(r.splat),
            str(r.mesh) if r.mesh else None,
            video_path,
            r.downloads,
        )

    def run_posed(files, method, iterations, resolution, mesh, seed, request=None,
                  progress=gr.Progress()):  # fmt: skip
        empty = (None, None, None, None)
        try:
            out = sessions.job_dir(getattr(request, "session_hash", None))
            paths = [getattr(f, "name", f) for f in (files or [])]
            transforms = unpack_views(paths, out / "upload", cfg.max_upload_mb * 2**20 * 4)
            r = jobs.posed(
                transforms, out / "result", method, int(iterations), int(resolution), mesh,
                int(seed), on_stage=progress_stage(progress),
            )  # fmt: skip
        except Exception as e:
            return (error_text(e), *empty)
        mesh_path = str(r.mesh) if r.mesh else None
        return (r.message, str(r.splat), mesh_path, str(r.video), r.downloads)

    # gradio passes the request to parameters annotated gr.Request (a real class object: this
    # module's annotations are strings, which gradio cannot resolve for a local import)
    run_photo.__annotations__["request"] = gr.Request
    run_posed.__annotations__["request"] = gr.Request

    def results(tab: str):
        """The result widgets of a tab: the splats, the mesh, the turntable, the downloads."""
        return (
            gr.Model3D(label="Gaussians", clear_color=(1, 1, 1, 1), elem_id=f"{tab}-model"),
            gr.Model3D(label="Mesh (with Mesh ticked)", elem_id=f"{tab}-mesh"),
            gr.Video(label="Turntable", interactive=False, elem_id=f"{tab}-video"),
            gr.File(
                label="Downloads", file_count="multiple", interactive=False, elem_id=f"{tab}-files"
            ),
        )

    with gr.Blocks(title="geolrm", delete_cache=(600, int(cfg.keep_minutes * 60))) as demo:
        gr.Markdown(
            "# geolrm\nOne photo, or a set of posed photos, to 3D Gaussians "
            "([GeoLRM](https://arxiv.org/abs/2406.15333)). Jobs run one at a time."
        )
        with gr.Tab("Photo"):
            with gr.Row():
                with gr.Column():
                    photo = gr.Image(
                        label="Photo",
                        type="filepath",
                        image_mode="RGBA",
                        sources=["upload"],
                        elem_id="photo-input",
                    )
                    remove_bg = gr.Checkbox(
                        True, label="Remove the background (skipped when the photo has alpha)"
                    )
                    mv = gr.Dropdown(["zero123pp", "sv3d"], value="zero123pp", label="Multi-view")
                    views = gr.Slider(
                        0, 21, value=0, step=1, label="Views (0: the model's, zero123pp 6, sv3d 21)"
                    )
                    steps = gr.Slider(1, 150, value=default_steps, step=1, label="Steps")
                    seed = gr.Number(SEED, label="Seed", precision=0)
                    with gr.Row():
                        mesh = gr.Checkbox(False, label="Mesh")
                        texture = gr.Checkbox(False, label="Texture")
                    go = gr.Button("Generate", variant="primary")
                with gr.Column():
                    status = gr.Markdown(elem_id="photo-status")
                    with gr.Row():
                        framed = gr.Image(label="Input", interactive=False, elem_id="photo-framed")
                        grid = gr.Image(
                            label="Multi-view grid", interactive=False, elem_id="photo-grid"
                        )
                    model3d, mesh3d, video, files = results("photo")
            go.click(
                run_photo,
                [photo, mv, views, steps, seed, mesh, texture, remove_bg],
                [status, framed, grid, model3d, mesh3d, video, files],
                concurrency_id="device",
            )
        with gr.Tab("Posed views"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(
                        label="A .zip with transforms.json and images, or the files",
                        file_count="multiple",
                        file_types=[".zip", ".json", *IMAGE_SUFFIXES],
                        elem_id="posed-input",
                    )
                    method = gr.Radio(
                        ["geolrm", "optimize"],
                        elem_id="posed-method",
                        value=default_method,
                        label="Method (optimize: no network, RGBA views)",
                    )
                    iterations = gr.Slider(
                        10,
                        5000,
                        value=OPTIMIZE_ITERATIONS,
                        step=10,
                        label="Iterations",
                        elem_id="posed-iterations",
                    )
                    resolution = gr.Slider(
                        64,
                        512,
                        value=OPTIMIZE_RESOLUTION,
                        step=32,
                        label="Resolution",
                        elem_id="posed-resolution",
                    )
                    pmesh = gr.Checkbox(False, label="Mesh")
                    pseed = gr.Number(SEED, label="Seed", precision=0)
                    pgo = gr.Button("Reconstruct", variant="primary")
                with gr.Column():
                    pstatus = gr.Markdown(elem_id="posed-status")
                    pmodel, pmesh3d, pvideo, pfiles = results("posed")
            pgo.click(
                run_posed,
                [upload, method, iterations, resolution, pmesh, pseed],
                [pstatus, pmodel, pmesh3d, pvideo, pfiles],
                concurrency_id="device",
            )
    demo.queue(default_concurrency_limit=1)
    return demo
