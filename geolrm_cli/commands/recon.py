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

from enum import Enum
from pathlib import Path

import typer

from geolrm_cli import options as opt
from geolrm_cli.console import stages
from pipelines.defaults import DEFAULT_SIZE, OPTIMIZE_ITERATIONS, RIG_INPUT_SIZE
from pipelines.options import ReconOptions

_DEFAULTS = ReconOptions()


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
        "a transforms.json, or a folder of scenes (subfolders with a transforms.json each).",
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
        "the rig's ("
        + ", ".join(f"{k} {v}" for k, v in RIG_INPUT_SIZE.items())
        + f", as the official scripts), {DEFAULT_SIZE} for your own cameras.",
    ),
    min_opacity: float = opt.MIN_OPACITY_OPTION,
    max_seq_len: int | None = typer.Option(
        None, "--max-seq-len", min=1, help="Anchors kept (default: the config's, 8192 released)."
    ),
    save_raw: bool = typer.Option(
        _DEFAULTS.save_raw,
        "--save-raw",
        help="Also write raw.safetensors: anchors, occupancy logits, raw Gaussians (model frame).",
    ),
    video: bool = opt.VIDEO,
    video_frames: int = opt.VIDEO_FRAMES,
    video_resolution: int = opt.VIDEO_RESOLUTION,
    fps: int = opt.FPS,
    mesh: bool = opt.MESH,
    mesh_resolution: int = opt.MESH_RESOLUTION,
    texture: bool = opt.TEXTURE,
    texture_size: int = opt.TEXTURE_SIZE,
    rig_elevation: float = typer.Option(
        _DEFAULTS.rig_elevation,
        "--rig-elevation",
        help="Elevation in degrees of the sv3d rig's views.",
    ),
    official_cameras: bool = opt.OFFICIAL_CAMERAS,
    device: str = opt.DEVICE,
    precision: Precision = typer.Option(
        Precision(_DEFAULTS.precision),
        "--precision",
        help="fp32, or bf16/fp16 autocast (CUDA only).",
    ),
    seed: int = opt.seed_option(
        "Seed (anchor subset when above max_seq_len; optimisation samples)."
    ),
    method: Method = typer.Option(
        Method(_DEFAULTS.method),
        "--method",
        help="geolrm: the feed-forward network (needs its weights). optimize: no network, fit "
        "Gaussians to the views from their visual hull (RGBA views with transparent background).",
    ),
    refine: int = typer.Option(
        _DEFAULTS.refine,
        "--refine",
        min=0,
        help="With --method geolrm: then optimise the Gaussians against the views for N steps.",
    ),
    iterations: int | None = typer.Option(
        None,
        "--iterations",
        min=1,
        help=f"With --method optimize: optimisation steps (default {OPTIMIZE_ITERATIONS}).",
    ),
    resolution: int = typer.Option(
        _DEFAULTS.resolution,
        "--resolution",
        min=16,
        max=4096,
        help="Size in pixels the views are fitted at (--method optimize, --refine).",
    ),
    overwrite: bool = opt.OVERWRITE,
    ray: bool = opt.RAY,
    ray_address: str | None = opt.RAY_ADDRESS,
    ray_cpus_per_worker: int | None = opt.RAY_CPUS,
    workers: int | None = opt.WORKERS,
) -> None:
    """Reconstruct 3D Gaussians from posed views with GeoLRM.

    Images (PNG/JPEG/WebP, RGBA composited on white; GeoLRM takes 1 to 32 views, --method optimize any number) with cameras in a nerfstudio / NeRF transforms.json, in any world frame, or from a named rig (zero123pp, sv3d).

    With --method optimize no network is used: the object is carved from the views' alpha masks (visual hull), Gaussians are sampled on it and fitted to the views (L1 + D-SSIM + mask loss, densification and pruning) for --iterations steps at --resolution pixels. --refine N does the same fit starting from GeoLRM's Gaussians.

    Writes into the output folder: model.ply (standard 3DGS layout, in the input cameras' frame, so `geolrm render out/model.ply --cameras cams.json` lines up with the photos), turntable.mp4 (unless --no-video), cameras.json (the cameras used), model_frame.json (the similarity to the model's frame), with --mesh mesh.glb (as `geolrm mesh out/model.ply` would write it, with the input cameras for its unseen-surface fill; textured with --texture) and, with --save-raw, raw.safetensors. Nothing is written when something fails.

    A folder of scenes writes one subfolder per scene, skips those already done (unless --overwrite), records every scene in OUT/batch.json and exits with 1 when a scene failed; --ray spreads the scenes over a Ray cluster.

    Examples:

      geolrm recon views/ --cameras cams.json -o out/

      geolrm recon data/transforms.json -o out/ --no-video

      geolrm recon examples/spot/transforms_train.json --method optimize -o out/

      geolrm recon examples/spot/transforms_train.json --method optimize --mesh -o out/

      geolrm recon views/ --cameras cams.json --refine 300 -o out/

      geolrm recon scenes/ --method optimize -o out/ --ray

      geolrm recon zero123pp_views/ --cameras zero123pp -o out/

      geolrm recon tests/fixtures/geolrm_tiny/tiny_views --checkpoint tests/fixtures/geolrm_tiny/geolrm_tiny_weights.safetensors --config examples/tiny/geolrm_tiny_config.json --size 112 -o out/
    """
    from geolrm_cli.batches import ray_config, run_folder
    from geolrm_cli.console import console, resolve_device
    from pipelines.batch import ReconTask, list_scenes, recon_jobs
    from pipelines.errors import InputError
    from pipelines.recon import Recon, default_output

    cluster = ray_config(ray, ray_address, ray_cpus_per_worker, workers)

    opts = ReconOptions(
        cameras=cameras,
        method=method.value,
        checkpoint=checkpoint,
        config=config,
        size=size,
        min_opacity=min_opacity,
        max_seq_len=max_seq_len,
        save_raw=save_raw,
        video=video,
        video_frames=video_frames,
        video_resolution=video_resolution,
        fps=fps,
        mesh=mesh,
        mesh_resolution=mesh_resolution,
        texture=texture,
        texture_size=texture_size,
        rig_elevation=rig_elevation,
        official_cameras=official_cameras,
        device=resolve_device(device),
        precision=precision.value,
        seed=seed,
        refine=refine,
        iterations=iterations,
        resolution=resolution,
    )
    if list_scenes(views, cameras):
        base = default_output(views) if output is None else output
        task = ReconTask(opts)
        task.check()  # options and weights, before any work
        jobs = recon_jobs(views, base, cameras)
        run_folder(task, jobs, base, f"recon {views} -> {base}", overwrite, cluster)
        return
    if cluster is not None:
        raise InputError(
            "--ray runs a folder of scenes (subfolders with a transforms.json each); pass that "
            "folder, or leave out --ray"
        )
    job = Recon(views, output, opts)  # every check before any work
    with stages() as (start, advance):
        run = job.run(on_stage=start, advance=advance, on_step=_step_reporter(advance))
    scene, history = run.scene, run.scene.history
    frame = "model frame" if scene.in_model_frame else "input frame, mapped back"
    if scene.geolrm is None:
        how = f"optimised {len(history)} steps"
    else:
        how = f"{int(scene.geolrm.anchors.shape[0]):,} anchors"
        if min_opacity > 0:
            how += f", {scene.geolrm.dropped:,} dropped below opacity {min_opacity:g}"
        if history:
            how += f", refined {len(history)} steps"
    tail = history[-20:]
    fit = f", training PSNR {sum(h.psnr for h in tail) / len(tail):.2f} dB" if tail else ""
    console.print(
        f"[green]done:[/] {len(scene.gaussians):,} Gaussians from {run.views} views "
        f"({how}, {frame}{fit}) in "
        f"{run.seconds:.1f} s -> {run.out_dir}/ ({', '.join(p.name for p in run.files)})"
    )
