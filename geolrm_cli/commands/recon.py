"""Reconstruct 3D Gaussians from posed views (GeoLRM): model.ply, turntable.mp4, cameras.json.

Examples:

  geolrm recon views/ --cameras cams.json -o out/

  geolrm recon data/transforms.json -o out/ --no-video

  geolrm recon zero123pp_views/ --cameras zero123pp -o out/

  geolrm recon tests/fixtures/geolrm_tiny/tiny_views --checkpoint tests/fixtures/geolrm_tiny/geolrm_tiny_weights.safetensors --config examples/tiny/geolrm_tiny_config.json --size 112 -o out/
"""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path

import typer

from geolrm_cli.console import stages
from geolrm_cli.options import DEVICE


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def recon(
    views: Path = typer.Argument(
        ...,
        help="Folder of views (with a transforms.json unless --cameras is given), "
        "or a transforms.json.",
    ),
    cameras: str | None = typer.Option(
        None,
        "--cameras",
        help="Camera file (nerfstudio/NeRF transforms.json; frames matched to images by "
        "file_path, relative to the camera file), or a named rig: zero123pp (6 or 4 views) "
        "or sv3d (21 views), taking the folder's images in sorted order.",
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Output folder. Default: <views>_recon next to the input."
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="GeoLRM weights (.ckpt/.pt/.safetensors). Default: the registry's 'geolrm' "
        "artifact (geolrm weights download geolrm).",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Architecture JSON (dino/serializer/lrm_generator sections, or a file with a "
        "'tiny_config' key). Default: the released model.",
    ),
    size: int = typer.Option(
        448, "--size", help="Model input size in pixels (multiple of 14); views are padded square."
    ),
    max_seq_len: int | None = typer.Option(
        None, "--max-seq-len", min=1, help="Anchors kept (default: the config's, 8192 released)."
    ),
    save_raw: bool = typer.Option(
        False,
        "--save-raw",
        help="Also write raw.safetensors: anchors, occupancy logits, raw Gaussians (model frame).",
    ),
    video: bool = typer.Option(True, "--video/--no-video", help="Write turntable.mp4."),
    video_frames: int = typer.Option(120, "--video-frames", min=1, help="Turntable frames."),
    video_resolution: int = typer.Option(
        512, "--video-resolution", min=16, max=4096, help="Turntable size in pixels."
    ),
    fps: int = typer.Option(30, "--fps", min=1, help="Turntable frame rate."),
    rig_elevation: float = typer.Option(
        10.0, "--rig-elevation", help="Elevation in degrees of the sv3d rig's views."
    ),
    device: str = DEVICE,
    precision: Precision = typer.Option(
        Precision.fp32, "--precision", help="fp32, or bf16/fp16 autocast (CUDA only)."
    ),
    seed: int = typer.Option(42, "--seed", help="Seed (anchor subset when above max_seq_len)."),
) -> None:
    """Reconstruct 3D Gaussians from posed views with GeoLRM.

    Images (PNG/JPEG/WebP, RGBA composited on white, 1 to 32 views) with cameras in a nerfstudio / NeRF transforms.json, in any world frame, or from a named rig (zero123pp, sv3d).

    Writes into the output folder: model.ply (standard 3DGS layout, in the input cameras' frame, so `geolrm render out/model.ply --cameras cams.json` lines up with the photos), turntable.mp4 (unless --no-video), cameras.json (the cameras used), model_frame.json (the similarity to the model's frame) and, with --save-raw, raw.safetensors. Nothing is written when something fails.

    Examples:

      geolrm recon views/ --cameras cams.json -o out/

      geolrm recon data/transforms.json -o out/ --no-video

      geolrm recon zero123pp_views/ --cameras zero123pp -o out/

      geolrm recon tests/fixtures/geolrm_tiny/tiny_views --checkpoint tests/fixtures/geolrm_tiny/geolrm_tiny_weights.safetensors --config examples/tiny/geolrm_tiny_config.json --size 112 -o out/
    """
    from geolrm_cli.console import console, resolve_device
    from pipelines import reconstruct as rc

    dev = resolve_device(device)
    rc.resolve_precision(precision.value, dev)
    rc.check_size(size)
    cams = rc.resolve_inputs(views, cameras, rig_elevation_deg=rig_elevation)
    if output is None:
        base = views if views.is_dir() else views.parent
        output = base.resolve().parent / f"{base.resolve().name}_recon"
    protect = list(cams.image_paths or [])
    if cameras is not None and cameras.lower() not in rc.RIGS:
        protect.append(Path(cameras))
    if views.is_file():
        protect.append(views)
    elif cameras is None:
        protect.append(views / "transforms.json")
    rc.check_output_dir(output, protect, save_raw, video)
    config_dict = rc.load_config(config) if config is not None else None
    weights = rc.resolve_checkpoint(checkpoint)

    t0 = time.perf_counter()
    with stages() as (start, advance):
        start(f"Loading {len(cams)} views at {size} px")
        prep = rc.prepare_views(cams, size)
        start("Loading GeoLRM")
        model = rc.load_model(weights, config_dict, max_seq_len=max_seq_len, seed=seed)
        result = rc.reconstruct(
            prep, model, device=dev, precision=precision.value, seed=seed, on_stage=start
        )
        del model
        start("Writing outputs")
        video_started = False

        def on_frame() -> None:  # the files appear together once the video is done
            nonlocal video_started
            if not video_started:
                start(f"Rendering turntable ({video_resolution} px)", video_frames)
                video_started = True
            advance()

        written = rc.write_outputs(
            result,
            output,
            save_raw=save_raw,
            video=video,
            video_frames=video_frames,
            video_resolution=video_resolution,
            fps=fps,
            device=dev,
            protect=protect,
            on_video_frame=on_frame if video else None,
        )
    m = result.model_from_user
    frame = "model frame" if bool((m == _eye()).all()) else "input frame, mapped back"
    console.print(
        f"[green]done:[/] {len(result.gaussians):,} Gaussians from {len(cams)} views "
        f"({int(result.anchors.shape[0]):,} anchors, {frame}) in "
        f"{time.perf_counter() - t0:.1f} s -> {output}/ ({', '.join(p.name for p in written)})"
    )


def _eye():
    import torch

    return torch.eye(4, dtype=torch.float64)
