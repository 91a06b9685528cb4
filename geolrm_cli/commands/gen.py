"""One photo to a 3D asset: background removal, multi-view diffusion (Zero123++ or SV3D), GeoLRM.

Examples:

  geolrm gen photo.png -o out/

  geolrm gen photos/ -o out/ --mesh

  geolrm gen photo.png -o out/ --texture

  geolrm gen photo.png --mv sv3d --elevation 5 -o out/
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from geolrm_cli import options as opt
from geolrm_cli.console import stages
from geolrm_cli.options import Up
from pipelines.defaults import MV_DEFAULTS, RIG_INPUT_SIZE
from pipelines.options import GenOptions

_DEFAULTS = GenOptions()
_ZERO123PP, _SV3D = MV_DEFAULTS["zero123pp"], MV_DEFAULTS["sv3d"]


class MultiView(str, Enum):
    zero123pp = "zero123pp"
    sv3d = "sv3d"


class GenPrecision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _stage_table(result):
    from rich.table import Table

    kinds = {s.memory for s in result.stages}
    mem = "peak GPU" if "gpu" in kinds else "peak MPS" if "mps" in kinds else "peak RSS"
    table = Table(title=f"{result.photo.name} -> {result.out_dir}", title_justify="left")
    table.add_column("stage")
    table.add_column("time", justify="right")
    table.add_column(mem, justify="right")
    for s in result.stages:
        table.add_row(s.name, f"{s.seconds:.1f} s", _bytes(s.peak_bytes))
    table.add_row("[bold]total[/]", f"[bold]{result.seconds:.1f} s[/]", "")
    return table


def gen(
    photo: Path = typer.Argument(
        ..., help="A photo (PNG/JPEG/WebP), or a folder of photos (one output subfolder each)."
    ),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Output folder. Default: <photo>_gen (or <folder>_gen) next to the input.",
    ),
    mv: MultiView = typer.Option(
        MultiView(_DEFAULTS.mv),
        "--mv",
        help="Multi-view model: zero123pp (6 views, CC-BY-NC weights) or sv3d (21 orbit "
        "frames; gated, non-commercial).",
    ),
    views: int | None = typer.Option(
        None,
        "--views",
        help=f"Views fed to GeoLRM. zero123pp: {_ZERO123PP.views} (default) or 4 (views 0, 2, "
        f"4, 5); sv3d: {_SV3D.views} (default) or fewer (frames 0, 21//n, ...).",
    ),
    steps: int | None = typer.Option(
        None,
        "--steps",
        min=1,
        help=f"Denoising steps (zero123pp {_ZERO123PP.steps}, sv3d {_SV3D.steps}).",
    ),
    guidance: float | None = typer.Option(
        None,
        "--guidance",
        help=f"Classifier-free guidance (zero123pp {_ZERO123PP.guidance}; sv3d: the peak of its "
        f"per-frame triangle schedule, {_SV3D.guidance}).",
    ),
    seed: int = opt.seed_option("One seed for every stage."),
    device: str = opt.DEVICE,
    precision: GenPrecision = typer.Option(
        GenPrecision(_DEFAULTS.precision),
        "--precision",
        help="auto (fp16 diffusion on CUDA and MPS, fp32 on CPU; GeoLRM fp32), or "
        "fp32/fp16/bf16 for both (fp16/bf16 on CUDA only).",
    ),
    low_vram: bool = typer.Option(
        _DEFAULTS.low_vram, "--low-vram", help="CUDA: fp16 weights and model CPU offload."
    ),
    rembg: bool = typer.Option(
        _DEFAULTS.remove_bg,
        "--rembg/--no-rembg",
        help="Remove the background with rembg and frame the object (rembg is skipped when "
        "the photo has an alpha channel). --no-rembg uses the photo as is, as the official "
        "scripts: shortest edge resized to the model input, centre crop, no framing.",
    ),
    rembg_model: str = typer.Option(
        _DEFAULTS.rembg_model,
        "--rembg-model",
        help="rembg model (geolrm weights list: u2net, isnet-...).",
    ),
    foreground_ratio: float = typer.Option(
        _DEFAULTS.foreground_ratio,
        "--foreground-ratio",
        help="Fraction of the square the object fills.",
    ),
    unet: str = typer.Option(
        _DEFAULTS.unet,
        "--unet",
        help="zero123pp UNet: instantmesh (white background, as GeoLRM), original (grey "
        "background) or a UNet state-dict file.",
    ),
    mv_weights: Path | None = typer.Option(
        None,
        "--mv-weights",
        help="Local multi-view weights instead of the registry's: the Zero123++ diffusers "
        "folder, or sv3d_p.safetensors.",
    ),
    tile: int | None = typer.Option(
        None,
        "--tile",
        help=f"View size of the multi-view model (zero123pp {_ZERO123PP.tile}, sv3d "
        f"{_SV3D.tile}); only change it for small test models.",
    ),
    elevation: float = typer.Option(
        _DEFAULTS.elevation, "--elevation", help="sv3d: camera elevation of the orbit in degrees."
    ),
    official_cameras: bool = opt.OFFICIAL_CAMERAS,
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="GeoLRM weights. Default: the registry's 'geolrm' artifact."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="GeoLRM architecture JSON (as `geolrm recon --config`)."
    ),
    size: int | None = typer.Option(
        None,
        "--size",
        help="GeoLRM input size, multiple of 14 (default as the official scripts: "
        + ", ".join(f"{k} {v}" for k, v in RIG_INPUT_SIZE.items())
        + ").",
    ),
    min_opacity: float = opt.MIN_OPACITY_OPTION,
    max_seq_len: int | None = typer.Option(
        None, "--max-seq-len", min=1, help="GeoLRM anchors kept (default: the config's)."
    ),
    refine: int = typer.Option(
        _DEFAULTS.refine,
        "--refine",
        min=0,
        help="Refine the Gaussians against the views for N steps.",
    ),
    video: bool = opt.VIDEO,
    video_frames: int = opt.VIDEO_FRAMES,
    video_resolution: int = opt.VIDEO_RESOLUTION,
    fps: int = opt.FPS,
    mesh: bool = opt.MESH,
    mesh_resolution: int = opt.MESH_RESOLUTION,
    texture: bool = opt.TEXTURE,
    texture_size: int = opt.TEXTURE_SIZE,
    overwrite: bool = opt.OVERWRITE,
    ray: bool = opt.RAY,
    ray_address: str | None = opt.RAY_ADDRESS,
    ray_cpus_per_worker: int | None = opt.RAY_CPUS,
    workers: int | None = opt.WORKERS,
    up: Up = typer.Option(
        Up(_DEFAULTS.up),
        "--up",
        help="Up axis of model.ply (-y: 3DGS/SuperSplat habit; z: GeoLRM's world).",
    ),
) -> None:
    """Turn one photo into a 3D asset: background removal, multi-view diffusion, GeoLRM.

    Writes into the output folder: input.png (the framed photo), views.png (every generated view), views/ (the views GeoLRM used with their transforms.json, so `geolrm recon OUT/views` reruns the last stage), model.ply, cameras.json, model_frame.json, turntable.mp4 (unless --no-video) and mesh.glb (with --mesh; textured with --texture). A folder of photos writes one subfolder per photo, skips those already done (unless --overwrite), records every photo in OUT/batch.json and exits with 1 when a photo failed; --ray spreads the photos over a Ray cluster.

    Weights come from the registry (`geolrm weights download zero123pp instantmesh-unet geolrm u2net --accept-license`); nothing is downloaded here.

    Examples:

      geolrm gen photo.png -o out/

      geolrm gen photos/ -o out/ --mesh

      geolrm gen photos/ -o out/ --ray

      geolrm gen photo.png -o out/ --texture

      geolrm gen photo.png --mv sv3d --elevation 5 -o out/
    """
    from geolrm_cli.batches import ray_config, run_folder
    from geolrm_cli.console import console, resolve_device
    from pipelines.batch import GenTask, gen_jobs
    from pipelines.errors import InputError
    from pipelines.generate import Generator

    dev = resolve_device(device)
    mesh = mesh or texture
    cluster = ray_config(ray, ray_address, ray_cpus_per_worker, workers)
    if not photo.exists():
        raise InputError(f"{photo}: no such file or folder; pass a photo or a folder of photos")
    if photo.is_dir():
        base = output or photo.resolve().parent / f"{photo.resolve().name}_gen"
        jobs = gen_jobs(photo, base)
    elif cluster is not None:
        raise InputError("--ray runs a folder of photos; pass the folder, or leave out --ray")
    else:
        base = output or photo.resolve().parent / f"{photo.stem}_gen"
    opts = GenOptions(
        mv=mv.value,
        views=views,
        steps=steps,
        guidance=guidance,
        seed=seed,
        device=dev,
        precision=precision.value,
        low_vram=low_vram,
        remove_bg=rembg,
        rembg_model=rembg_model,
        foreground_ratio=foreground_ratio,
        unet=unet,
        mv_weights=mv_weights,
        tile=tile,
        elevation=elevation,
        official_cameras=official_cameras,
        checkpoint=checkpoint,
        config=config,
        size=size,
        max_seq_len=max_seq_len,
        min_opacity=min_opacity,
        refine=refine,
        video=video,
        video_frames=video_frames,
        video_resolution=video_resolution,
        fps=fps,
        mesh=mesh,
        mesh_resolution=mesh_resolution,
        texture_size=texture_size if texture else None,
        up=up.value,
    )

    def note(text: str) -> None:
        console.print(f"[yellow]licence:[/] {text}", soft_wrap=True)

    if photo.is_dir():
        task = GenTask(opts)
        for text in task.check():  # options and weights, before any work
            note(text)
        run_folder(task, jobs, base, f"gen {photo} -> {base}", overwrite, cluster)
        return
    generator = Generator(opts)  # checks options and weights before any work
    with stages() as (start, advance):
        result = generator.run(photo, base, on_stage=start, advance=advance, on_note=note)
    console.print(_stage_table(result))
    dropped = f", {result.dropped:,} dropped below opacity {min_opacity:g}" * (min_opacity > 0)
    console.print(
        f"[green]done:[/] {result.gaussians:,} Gaussians{dropped} from {photo.name} -> {base}/ "
        f"({', '.join(sorted(p.name for p in result.files))})",
        soft_wrap=True,
    )
