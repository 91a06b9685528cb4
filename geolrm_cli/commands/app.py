"""The web demo: photo -> multi-view grid -> Gaussians (preview, turntable, downloads); posed
views -> recon. A Gradio app on this machine.

Examples:

  geolrm app

  geolrm app --port 7860 --device cuda

  geolrm app --host 0.0.0.0 --max-upload-mb 20
"""

from __future__ import annotations

from pathlib import Path

import typer

from geolrm_cli import options as opt
from geolrm_cli.options import DEVICE


def free_port(host: str) -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("0.0.0.0", "::") else "", 0))
        return int(s.getsockname()[1])


def app_cmd(
    host: str = opt.HOST,
    port: int = opt.PORT,
    device: str = DEVICE,
    work_dir: Path | None = typer.Option(
        None,
        "--work-dir",
        help="Folder for the per-session outputs. Default: a temporary folder, removed at exit.",
    ),
    keep_minutes: float = typer.Option(
        60.0, "--keep-minutes", min=1.0, help="Remove a session's files this long after its job."
    ),
    max_upload_mb: int = typer.Option(50, "--max-upload-mb", min=1, help="Largest upload."),
    mv_weights: Path | None = typer.Option(
        None,
        "--mv-weights",
        envvar="GEOLRM_MV_WEIGHTS",
        help="Local multi-view weights (as `geolrm gen --mv-weights`).",
    ),
    unet: str = typer.Option(
        "instantmesh", "--unet", envvar="GEOLRM_UNET", help="zero123pp UNet (as `geolrm gen`)."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", envvar="GEOLRM_CHECKPOINT", help="GeoLRM weights (as `geolrm gen`)."
    ),
    config: Path | None = typer.Option(
        None, "--config", envvar="GEOLRM_CONFIG", help="GeoLRM architecture JSON."
    ),
    size: int | None = typer.Option(None, "--size", help="GeoLRM input size (multiple of 14)."),
    tile: int | None = typer.Option(
        None, "--tile", help="Multi-view tile size; only for small test models."
    ),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Default denoising steps."),
    video_frames: int = typer.Option(60, "--video-frames", min=1, help="Turntable frames."),
    video_resolution: int = typer.Option(
        384, "--video-resolution", min=16, max=2048, help="Turntable size in pixels."
    ),
) -> None:
    """Start the web demo (Gradio) and print its address; Ctrl-C stops it.

    Tab Photo: upload a photo; background removal (kept alpha when it has one), the multi-view grid, the Gaussians in an interactive 3D preview, the turntable, and downloads (model.ply, model.splat, mesh.glb). Options: multi-view model, views, steps, seed, mesh, texture.

    Tab Posed views: a .zip with a transforms.json and its images (or the files) -> recon with GeoLRM or --method optimize (needs no network weights).

    Missing weights show their one-line message with the download command on the page. Jobs run one at a time; each browser session's files are removed --keep-minutes after its job. The weight options also read GEOLRM_MV_WEIGHTS, GEOLRM_UNET, GEOLRM_CHECKPOINT, GEOLRM_CONFIG.

    Examples:

      geolrm app

      geolrm app --port 7860 --device cuda

      geolrm app --host 0.0.0.0 --max-upload-mb 20
    """
    import os

    from geolrm_cli.commands.view import host_warning, serve_until_interrupted
    from geolrm_cli.console import console, resolve_device
    from pipelines.errors import InputError

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    from pipelines.webapp import AppConfig, Sessions, build_app, require_gradio

    require_gradio()
    dev = resolve_device(device)
    for name, value in (("--checkpoint", checkpoint), ("--config", config)):
        if value is not None and not value.is_file():
            raise InputError(f"{name} {value}: no such file")
    if mv_weights is not None and not mv_weights.exists():
        raise InputError(f"--mv-weights {mv_weights}: no such file or folder")
    if work_dir is not None and work_dir.exists() and not work_dir.is_dir():
        raise InputError(f"--work-dir {work_dir} is a file; pass a folder")
    warning = host_warning(host, "app")
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    cfg = AppConfig(
        device=dev,
        work_dir=work_dir,
        keep_minutes=keep_minutes,
        max_upload_mb=max_upload_mb,
        mv_weights=mv_weights,
        unet=unet,
        checkpoint=checkpoint,
        config=config,
        size=size,
        tile=tile,
        steps=steps,
        video_frames=video_frames,
        video_resolution=video_resolution,
    )
    sessions = Sessions(work_dir, keep_minutes)
    try:
        demo = build_app(cfg, sessions)
        port = port or free_port(host)
        try:
            demo.launch(
                server_name=host,
                server_port=port,
                max_file_size=f"{max_upload_mb}mb",
                prevent_thread_lock=True,
                quiet=True,
                share=False,
                inbrowser=False,
                show_error=False,
                allowed_paths=[str(sessions.root)],
            )
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port} ({e}); try another --port") from None
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        console.print(f"app: http://{shown}:{port}/ (device {dev}); Ctrl-C stops it")
        serve_until_interrupted(demo.close)
        console.print("app stopped")
    finally:
        sessions.close()
