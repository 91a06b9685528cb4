"""Render a Gaussian .ply (or .splat): turntable video, PNG frames, depth/alpha, or given cameras.

Examples:

  geolrm render out/model.ply --video -o turntable.mp4

  geolrm render out/model.ply --images --depth --sheet -o renders/

  geolrm render out/model.ply --cameras data/transforms_test.json -o test_renders/
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from geolrm_cli.options import ASSUME_UP, DEVICE, Up
from pipelines import layout
from pipelines.defaults import TurntableConfig

_TURNTABLE = TurntableConfig()


class Background(str, Enum):
    white = "white"
    black = "black"
    transparent = "transparent"


def render(
    model: Path = typer.Argument(
        ..., help="Gaussian .ply (standard 3DGS, GeoLRM layout) or .splat."
    ),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="A .mp4 file (video only) or a folder for all outputs. "
        "Default: <model>_turntable.mp4 or <model>_render/ next to the model.",
    ),
    video: bool = typer.Option(
        False, "--video", help="Write a turntable .mp4 (default when nothing else is asked)."
    ),
    images: bool = typer.Option(False, "--images", help="Write PNG frames into the output folder."),
    depth: bool = typer.Option(
        False, "--depth", help="Also write 16-bit depth PNGs (value = z / 1e-4, 0 = background)."
    ),
    alpha: bool = typer.Option(False, "--alpha", help="Also write 8-bit alpha PNGs."),
    sheet: bool = typer.Option(False, "--sheet", help="Also write contact_sheet.png with 8 views."),
    cameras: Path | None = typer.Option(
        None, "--cameras", help="Render exactly the views of this nerfstudio/NeRF transforms.json."
    ),
    frames: int = typer.Option(_TURNTABLE.frames, "--frames", min=1, help="Turntable frames."),
    fps: int = typer.Option(_TURNTABLE.fps, "--fps", min=1, help="Video frame rate."),
    elevation: float = typer.Option(
        _TURNTABLE.elevation_deg, "--elevation", help="Turntable elevation in degrees."
    ),
    resolution: int = typer.Option(
        _TURNTABLE.resolution,
        "--resolution",
        min=16,
        max=4096,
        help="Turntable image size in pixels.",
    ),
    distance: float | None = typer.Option(
        None,
        "--distance",
        help="Camera distance (default: fit the object's bounds into the frame).",
    ),
    fov: float = typer.Option(
        _TURNTABLE.fov_deg, "--fov", help="Turntable vertical field of view in degrees."
    ),
    background: Background = typer.Option(
        Background.white, "--background", help="Background colour."
    ),
    up: Up = ASSUME_UP,
    device: str = DEVICE,
) -> None:
    """Render a Gaussian .ply (or .splat): turntable video, PNG frames, depth/alpha, or given cameras.

    Examples:

      geolrm render out/model.ply --video -o turntable.mp4

      geolrm render out/model.ply --images --depth --sheet -o renders/

      geolrm render out/model.ply --cameras data/transforms_test.json -o test_renders/
    """
    from geolrm_cli.console import console, progress, resolve_device
    from pipelines.errors import InputError

    dev = resolve_device(device)
    if not model.exists():
        raise InputError(f"{model} does not exist; pass a Gaussian .ply or .splat file")
    if not (video or images or depth or alpha or sheet):
        video, images = cameras is None, cameras is not None
    to_file = output is not None and output.suffix.lower() == ".mp4"
    if to_file and (images or depth or alpha or sheet):
        raise InputError("-o names an .mp4 file but images were asked for; pass a folder to -o")
    if to_file and not video:
        raise InputError("-o names an .mp4 file; add --video or pass a folder to -o")
    if output is None:
        only_video = video and not (images or depth or alpha or sheet)
        output = model.with_name(model.stem + ("_turntable.mp4" if only_video else "_render"))
        to_file = only_video
    if output.resolve() == model.resolve():
        raise InputError("-o would overwrite the input model; choose another path")

    from pipelines.cameras.dataparsers import load_transforms
    from pipelines.export.media import video_writer, write_png
    from pipelines.render import contact_sheet, render_frames, turntable_cameras
    from pipelines.splats.io import load_gaussians

    g = load_gaussians(model, assume_up=up.value)
    if cameras is not None:
        cams = load_transforms(cameras, require_images=False)
        names = [Path(p).stem for p in cams.image_paths] if cams.image_paths else None
    else:
        cams = turntable_cameras(g, frames, elevation, fov, resolution, distance)
        names = None
    names = names or [f"{i:03d}" for i in range(len(cams))]
    folder = None if to_file else output
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder} exists and is not a folder; pass a folder or an .mp4 to -o")
        folder.mkdir(parents=True, exist_ok=True)
    video_path = output if to_file else (folder / layout.VIDEO)

    sheet_every = max(1, len(cams) // 8)
    sheet_imgs = []
    written: list[Path] = []
    import contextlib

    with contextlib.ExitStack() as stack:
        append = stack.enter_context(video_writer(video_path, fps)) if video else None
        advance = stack.enter_context(progress(f"Rendering {len(g):,} Gaussians", len(cams)))
        for fr in render_frames(g, cams, background.value, dev, on_frame=advance):
            name = names[fr.index]
            if append is not None:
                append(fr.rgb)
            if images:
                img = fr.rgba if fr.rgba is not None else fr.rgb
                written.append(write_png(folder / "images" / f"{name}.png", img))
            if depth:
                written.append(write_png(folder / "depth" / f"{name}.png", fr.depth))
            if alpha:
                written.append(write_png(folder / "alpha" / f"{name}.png", fr.alpha))
            if sheet and fr.index % sheet_every == 0 and len(sheet_imgs) < 8:
                sheet_imgs.append(fr.rgba if fr.rgba is not None else fr.rgb)
    if video:
        written.append(video_path)
    if sheet:
        written.append(write_png(folder / "contact_sheet.png", contact_sheet(sheet_imgs)))
    summary = f"{len(cams)} views" + (f" -> {video_path}" if video else "")
    if folder is not None:
        summary += f"; files in {folder}/"
    console.print(f"[green]done:[/] {summary}")
