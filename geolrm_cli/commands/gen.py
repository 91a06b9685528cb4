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

from geolrm_cli.console import stages
from geolrm_cli.options import DEVICE, MESH, MESH_RESOLUTION, TEXTURE, TEXTURE_SIZE, Up
from pipelines.defaults import MIN_OPACITY, RIG_INPUT_SIZE


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
        MultiView.zero123pp,
        "--mv",
        help="Multi-view model: zero123pp (6 views, CC-BY-NC weights) or sv3d (21 orbit "
        "frames; gated, non-commercial).",
    ),
    views: int | None = typer.Option(
        None,
        "--views",
        help="Views fed to GeoLRM. zero123pp: 6 (default) or 4 (views 0, 2, 4, 5); sv3d: "
        "21 (default) or fewer (frames 0, 21//n, ...).",
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Denoising steps (zero123pp 75, sv3d 50)."
    ),
    guidance: float | None = typer.Option(
        None,
        "--guidance",
        help="Classifier-free guidance (zero123pp 4.0; sv3d: the peak of its per-frame "
        "triangle schedule, 2.5).",
    ),
    seed: int = typer.Option(42, "--seed", help="One seed for every stage."),
    device: str = DEVICE,
    precision: GenPrecision = typer.Option(
        GenPrecision.auto,
        "--precision",
        help="auto (fp16 diffusion on CUDA and MPS, fp32 on CPU; GeoLRM fp32), or "
        "fp32/fp16/bf16 for both (fp16/bf16 on CUDA only).",
    ),
    low_vram: bool = typer.Option(
        False, "--low-vram", help="CUDA: fp16 weights and model CPU offload."
    ),
    rembg: bool = typer.Option(
        True,
        "--rembg/--no-rembg",
        help="Remove the background with rembg and frame the object (rembg is skipped when "
        "the photo has an alpha channel). --no-rembg uses the photo as is, as the official "
        "scripts: shortest edge resized to the model input, centre crop, no framing.",
    ),
    rembg_model: str = typer.Option(
        "u2net", "--rembg-model", help="rembg model (geolrm weights list: u2net, isnet-...)."
    ),
    foreground_ratio: float = typer.Option(
        0.85, "--foreground-ratio", help="Fraction of the square the object fills."
    ),
    unet: str = typer.Option(
        "instantmesh",
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
        help="View size of the multi-view model (zero123pp 320, sv3d 576); only change it "
        "for small test models.",
    ),
    elevation: float = typer.Option(
        10.0, "--elevation", help="sv3d: camera elevation of the orbit in degrees."
    ),
    official_cameras: bool = typer.Option(
        False,
        "--official-cameras",
        help="sv3d: frame i at azimuth i*360/21 as GeoLRM's official script assigns "
        "(reproduces its output, rotated 17.14 deg about z), instead of (i+1)*360/21, the "
        "azimuths SV3D generated the frames at.",
    ),
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
    min_opacity: float = typer.Option(
        MIN_OPACITY,
        "--min-opacity",
        help="Drop GeoLRM's Gaussians below this opacity before saving and rendering, as the "
        "official scripts do; 0 keeps all.",
    ),
    max_seq_len: int | None = typer.Option(
        None, "--max-seq-len", min=1, help="GeoLRM anchors kept (default: the config's)."
    ),
    refine: int = typer.Option(
        0, "--refine", min=0, help="Refine the Gaussians against the views for N steps."
    ),
    video: bool = typer.Option(True, "--video/--no-video", help="Write turntable.mp4."),
    video_frames: int = typer.Option(120, "--video-frames", min=1, help="Turntable frames."),
    video_resolution: int = typer.Option(
        512, "--video-resolution", min=16, max=4096, help="Turntable size in pixels."
    ),
    fps: int = typer.Option(30, "--fps", min=1, help="Turntable frame rate."),
    mesh: bool = MESH,
    mesh_resolution: int = MESH_RESOLUTION,
    texture: bool = TEXTURE,
    texture_size: int = TEXTURE_SIZE,
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Folder input: redo photos whose outputs already exist."
    ),
    up: Up = typer.Option(
        Up.minus_y,
        "--up",
        help="Up axis of model.ply (-y: 3DGS/SuperSplat habit; z: GeoLRM's world).",
    ),
) -> None:
    """Turn one photo into a 3D asset: background removal, multi-view diffusion, GeoLRM.

    Writes into the output folder: input.png (the framed photo), views.png (every generated view), views/ (the views GeoLRM used with their transforms.json, so `geolrm recon OUT/views` reruns the last stage), model.ply, cameras.json, model_frame.json, turntable.mp4 (unless --no-video) and mesh.glb (with --mesh; textured with --texture). A folder of photos writes one subfolder per photo and skips those already done (unless --overwrite).

    Weights come from the registry (`geolrm weights download zero123pp instantmesh-unet geolrm u2net --accept-license`); nothing is downloaded here.

    Examples:

      geolrm gen photo.png -o out/

      geolrm gen photos/ -o out/ --mesh

      geolrm gen photo.png -o out/ --texture

      geolrm gen photo.png --mv sv3d --elevation 5 -o out/
    """
    from geolrm_cli.console import console, error_line, resolve_device
    from pipelines.errors import InputError
    from pipelines.generate import Generator, GenOptions, finished, list_photos, output_folders

    dev = resolve_device(device)
    mesh = mesh or texture
    if not photo.exists():
        raise InputError(f"{photo}: no such file or folder; pass a photo or a folder of photos")
    if photo.is_dir():
        photos = list_photos(photo)
        if not photos:
            raise InputError(f"{photo} holds no PNG/JPEG/WebP photos; pass a photo or a folder")
        base = output or photo.resolve().parent / f"{photo.resolve().name}_gen"
        jobs = list(zip(photos, output_folders(photos, base), strict=True))
    else:
        base = output or photo.resolve().parent / f"{photo.stem}_gen"
        jobs = [(photo, base)]
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
    generator = Generator(opts)  # checks options and weights before any work

    def note(text: str) -> None:
        console.print(f"[yellow]licence:[/] {text}", soft_wrap=True)

    results, skipped, failed = [], [], []
    folder = photo.is_dir()
    for src, out in jobs:
        if folder and not overwrite and finished(out, mesh=mesh, video=video):
            skipped.append((src, out))
            continue
        try:
            with stages() as (start, advance):
                result = generator.run(src, out, on_stage=start, advance=advance, on_note=note)
        except InputError as e:
            if not folder:
                raise
            error_line(f"{src.name}: {e}")
            failed.append((src, str(e)))
            continue
        results.append(result)
        console.print(_stage_table(result))
        dropped = f", {result.dropped:,} dropped below opacity {min_opacity:g}" * (min_opacity > 0)
        console.print(
            f"[green]done:[/] {result.gaussians:,} Gaussians{dropped} from {src.name} -> {out}/ "
            f"({', '.join(sorted(p.name for p in result.files))})",
            soft_wrap=True,
        )
    if folder:
        from rich.table import Table

        table = Table(title=f"{photo} -> {base}", title_justify="left")
        for col, just in (
            ("photo", "left"),
            ("status", "left"),
            ("Gaussians", "right"),
            ("time", "right"),
            ("output", "left"),
        ):
            table.add_column(col, justify=just)
        for r in results:
            table.add_row(
                r.photo.name, "done", f"{r.gaussians:,}", f"{r.seconds:.1f} s", str(r.out_dir)
            )
        for src, out in skipped:
            table.add_row(src.name, "skipped (done; --overwrite redoes it)", "-", "-", str(out))
        for src, msg in failed:
            table.add_row(src.name, "[red]failed[/]", "-", "-", msg)
        console.print(table)
        if failed:
            raise typer.Exit(2)
