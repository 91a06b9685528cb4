"""Reconstruct 3D Gaussians from posed views (GeoLRM): model.ply, turntable.mp4, cameras.json.

Examples:

  geolrm recon views/ --cameras cams.json -o out/

  geolrm recon examples/spot/transforms_train.json --method optimize -o out/

  geolrm recon examples/spot/transforms_train.json --method optimize --mesh -o out/

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
from geolrm_cli.options import DEVICE, MESH, MESH_RESOLUTION, TEXTURE, TEXTURE_SIZE
from pipelines.defaults import MIN_OPACITY
from pipelines.errors import InputError


class Method(str, Enum):
    geolrm = "geolrm"
    optimize = "optimize"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def _step_reporter(advance):
    """A per-step callback of the optimiser that shows loss, PSNR and the Gaussian count."""
    state: dict = {"psnr": None}

    def on_step(info) -> None:
        # the PSNR of the one training view rendered per step is noisy: show a running mean
        p = state["psnr"]
        state["psnr"] = info.psnr if p is None else 0.9 * p + 0.1 * info.psnr
        status = f"loss {info.loss:.4f}  PSNR {state['psnr']:.2f} dB  {info.gaussians:,} Gaussians"
        advance(1, status=status)

    return on_step


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
    size: int | None = typer.Option(
        None,
        "--size",
        help="Model input size in pixels (multiple of 14); views are padded square. Default: "
        "the rig's (zero123pp 448, sv3d 560, as the official scripts), 448 for your own cameras.",
    ),
    min_opacity: float = typer.Option(
        MIN_OPACITY,
        "--min-opacity",
        help="Drop GeoLRM's Gaussians below this opacity before saving and rendering, as the "
        "official scripts do; 0 keeps all.",
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
    mesh: bool = MESH,
    mesh_resolution: int = MESH_RESOLUTION,
    texture: bool = TEXTURE,
    texture_size: int = TEXTURE_SIZE,
    rig_elevation: float = typer.Option(
        10.0, "--rig-elevation", help="Elevation in degrees of the sv3d rig's views."
    ),
    official_cameras: bool = typer.Option(
        False,
        "--official-cameras",
        help="With --cameras sv3d: frame i at azimuth i*360/21 as GeoLRM's official script "
        "assigns (reproduces its output, rotated 17.14 deg about z), instead of (i+1)*360/21, "
        "the azimuths SV3D generated the frames at.",
    ),
    device: str = DEVICE,
    precision: Precision = typer.Option(
        Precision.fp32, "--precision", help="fp32, or bf16/fp16 autocast (CUDA only)."
    ),
    seed: int = typer.Option(
        42, "--seed", help="Seed (anchor subset when above max_seq_len; optimisation samples)."
    ),
    method: Method = typer.Option(
        Method.geolrm,
        "--method",
        help="geolrm: the feed-forward network (needs its weights). optimize: no network, fit "
        "Gaussians to the views from their visual hull (RGBA views with transparent background).",
    ),
    refine: int = typer.Option(
        0,
        "--refine",
        min=0,
        help="With --method geolrm: then optimise the Gaussians against the views for N steps.",
    ),
    iterations: int | None = typer.Option(
        None,
        "--iterations",
        min=1,
        help="With --method optimize: optimisation steps (default 1500).",
    ),
    resolution: int = typer.Option(
        256,
        "--resolution",
        min=16,
        max=4096,
        help="Size in pixels the views are fitted at (--method optimize, --refine).",
    ),
) -> None:
    """Reconstruct 3D Gaussians from posed views with GeoLRM.

    Images (PNG/JPEG/WebP, RGBA composited on white, 1 to 32 views) with cameras in a nerfstudio / NeRF transforms.json, in any world frame, or from a named rig (zero123pp, sv3d).

    With --method optimize no network is used: the object is carved from the views' alpha masks (visual hull), Gaussians are sampled on it and fitted to the views (L1 + D-SSIM + mask loss, densification and pruning) for --iterations steps at --resolution pixels. --refine N does the same fit starting from GeoLRM's Gaussians.

    Writes into the output folder: model.ply (standard 3DGS layout, in the input cameras' frame, so `geolrm render out/model.ply --cameras cams.json` lines up with the photos), turntable.mp4 (unless --no-video), cameras.json (the cameras used), model_frame.json (the similarity to the model's frame), with --mesh mesh.glb (as `geolrm mesh out/model.ply` would write it, with the input cameras for its unseen-surface fill; textured with --texture) and, with --save-raw, raw.safetensors. Nothing is written when something fails.

    Examples:

      geolrm recon views/ --cameras cams.json -o out/

      geolrm recon data/transforms.json -o out/ --no-video

      geolrm recon examples/spot/transforms_train.json --method optimize -o out/

      geolrm recon examples/spot/transforms_train.json --method optimize --mesh -o out/

      geolrm recon views/ --cameras cams.json --refine 300 -o out/

      geolrm recon zero123pp_views/ --cameras zero123pp -o out/

      geolrm recon tests/fixtures/geolrm_tiny/tiny_views --checkpoint tests/fixtures/geolrm_tiny/geolrm_tiny_weights.safetensors --config examples/tiny/geolrm_tiny_config.json --size 112 -o out/
    """
    from geolrm_cli.console import console, resolve_device
    from pipelines import reconstruct as rc

    dev = resolve_device(device)
    rc.resolve_precision(precision.value, dev)
    optimize = method == Method.optimize
    if optimize:
        _check_optimize_options(
            checkpoint, config, refine, precision, max_seq_len, size, min_opacity
        )
    elif iterations is not None:
        raise InputError(
            "--iterations applies to --method optimize; with GeoLRM use --refine N to "
            "optimise its Gaussians for N steps"
        )
    else:
        size = size or rc.default_size(rc.input_rig(views, cameras))
        rc.check_size(size)
        rc.check_min_opacity(min_opacity)
    cams = rc.resolve_inputs(
        views, cameras, rig_elevation_deg=rig_elevation, official_cameras=official_cameras
    )
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
    mesh = mesh or texture
    spec = None
    if mesh:
        spec = rc.MeshSpec(
            resolution=mesh_resolution, texture_size=texture_size if texture else None
        )
    rc.check_output_dir(output, protect, save_raw, video, mesh)
    if optimize:
        from pipelines.optimize import check_masks

        check_masks(cams)
    else:
        config_dict = rc.load_config(config) if config is not None else None
        weights = rc.resolve_checkpoint(checkpoint)

    t0 = time.perf_counter()
    with stages() as (start, advance):
        if optimize:
            from pipelines.optimize import DEFAULT_ITERATIONS, optimize_views, to_recon_result

            steps = iterations or DEFAULT_ITERATIONS
            fitted = optimize_views(
                cams,
                resolution=resolution,
                iterations=steps,
                seed=seed,
                device=dev,
                on_step=_step_reporter(advance),
                on_stage=start,
            )
            result = to_recon_result(fitted)
            history = fitted.history
        else:
            start(f"Loading {len(cams)} views at {size} px")
            prep = rc.prepare_views(cams, size)
            start("Loading GeoLRM")
            model = rc.load_model(weights, config_dict, max_seq_len=max_seq_len, seed=seed)
            result = rc.reconstruct(
                prep,
                model,
                device=dev,
                precision=precision.value,
                seed=seed,
                on_stage=start,
                min_opacity=min_opacity,
            )
            del model
            history = []
            if refine:
                from pipelines.optimize import refine_result

                report = _step_reporter(advance)

                def on_refine_step(info) -> None:
                    history.append(info)
                    report(info)

                result = refine_result(
                    result,
                    cams,
                    refine,
                    resolution=resolution,
                    seed=seed,
                    device=dev,
                    on_step=on_refine_step,
                    on_stage=start,
                )
        start("Writing outputs")
        video_started = False

        def on_frame() -> None:  # the files appear together once the video is done
            nonlocal video_started
            if not video_started:
                start(f"Rendering turntable ({video_resolution} px)", video_frames)
                video_started = True
            advance()

        mesh_started = False

        def on_mesh_view(n: int) -> None:
            nonlocal mesh_started
            if not mesh_started:
                views = spec.views
                start(f"Mesh ({mesh_resolution} voxels, {views} views)", views)
                mesh_started = True
            advance(n)

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
            mesh=spec,
            on_mesh_view=on_mesh_view if mesh else None,
        )
    m = result.model_from_user
    frame = "model frame" if bool((m == _eye()).all()) else "input frame, mapped back"
    if optimize:
        how = f"optimised {len(history)} steps"
    else:
        how = f"{int(result.anchors.shape[0]):,} anchors"
        if min_opacity > 0:
            how += f", {result.dropped:,} dropped below opacity {min_opacity:g}"
        if history:
            how += f", refined {len(history)} steps"
    tail = history[-20:]
    fit = f", training PSNR {sum(h.psnr for h in tail) / len(tail):.2f} dB" if tail else ""
    console.print(
        f"[green]done:[/] {len(result.gaussians):,} Gaussians from {len(cams)} views "
        f"({how}, {frame}{fit}) in "
        f"{time.perf_counter() - t0:.1f} s -> {output}/ ({', '.join(p.name for p in written)})"
    )


def _check_optimize_options(
    checkpoint, config, refine, precision, max_seq_len, size, min_opacity
) -> None:
    """--method optimize uses no network: refuse the options that only GeoLRM reads."""
    given = [
        name
        for name, used in (
            ("--checkpoint", checkpoint is not None),
            ("--config", config is not None),
            ("--refine", bool(refine)),
            ("--precision", precision != Precision.fp32),
            ("--max-seq-len", max_seq_len is not None),
            ("--size", size is not None),
            ("--min-opacity", min_opacity != MIN_OPACITY),
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


def _eye():
    import torch

    return torch.eye(4, dtype=torch.float64)
