"""Score a reconstruction against a dataset's test views (PSNR, SSIM, LPIPS) and geometry (Chamfer, F-score).

Examples:

  geolrm eval out/ --gt examples/spot

  geolrm eval examples/spot/spot.ply --gt examples/spot --resolution 128 --json spot_eval.json

  geolrm eval out/ --gt data/chair --mesh out/mesh.glb --points 100000 --tau 0.01
"""

from __future__ import annotations

from pathlib import Path

import typer

from geolrm_cli.options import ASSUME_UP, DEVICE, Up
from pipelines.defaults import EvalConfig

_EVAL = EvalConfig()


def _fmt(value, digits: int) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def _print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False)  # stdout: the report itself
    lp_note = result.get("lpips_skipped")
    table = Table(
        title=f"Test views ({result['views']}, {result['width']}x{result['height']} px, on white)",
        caption=f"LPIPS skipped: {lp_note}" if lp_note else None,
        caption_justify="left",
    )
    table.add_column("view")
    net = result.get("lpips_net")
    for name in ("PSNR white", "PSNR masked", "SSIM", f"LPIPS ({net})" if net else "LPIPS"):
        table.add_column(name, justify="right")
    for row in result["per_view"]:
        table.add_row(
            row["name"],
            _fmt(row["psnr_white"], 2),
            _fmt(row["psnr_masked"], 2),
            _fmt(row["ssim"], 4),
            _fmt(row["lpips"], 4) if row["lpips"] is not None else "skipped",
        )
    table.add_section()
    table.add_row(
        "[bold]mean[/]",
        f"[bold]{_fmt(result['psnr_white'], 2)}[/]",
        f"[bold]{_fmt(result['psnr_masked'], 2)}[/]",
        f"[bold]{_fmt(result['ssim'], 4)}[/]",
        f"[bold]{_fmt(result['lpips'], 4)}[/]" if result["lpips"] is not None else "skipped",
    )
    out.print(table)
    mesh = result.get("mesh")
    if mesh is None:
        out.print(f"Mesh: skipped ({result.get('mesh_skipped')})")
        return
    mt = Table(
        title=f"Mesh {Path(mesh['path']).name}",
        caption=f"vs {mesh['gt']}; {mesh['points']:,} / {mesh['gt_points']:,} points",
        caption_justify="left",
    )
    mt.add_column("metric")
    mt.add_column("value", justify="right")
    mt.add_row("Chamfer (L2, world units)", f"{mesh['chamfer']:.5f}")
    mt.add_row("  accuracy (mesh -> GT)", f"{mesh['accuracy']:.5f}")
    mt.add_row("  completeness (GT -> mesh)", f"{mesh['completeness']:.5f}")
    mt.add_row(f"precision @ {mesh['tau']:g}", f"{mesh['precision']:.4f}")
    mt.add_row(f"recall @ {mesh['tau']:g}", f"{mesh['recall']:.4f}")
    mt.add_row(f"[bold]F-score @ {mesh['tau']:g}[/]", f"[bold]{mesh['fscore']:.4f}[/]")
    out.print(mt)


def eval_cmd(
    out: Path = typer.Argument(
        ...,
        help="A `geolrm recon` output folder (model.ply; mesh.glb/.obj/.ply or model_mesh.* "
        "there is scored too) or a Gaussian .ply / .splat.",
    ),
    gt: Path = typer.Option(
        ...,
        "--gt",
        help="Dataset folder with transforms_test.json (RGBA test views) and points.npy or "
        "mesh.* (ground-truth geometry), in the frame recon was given.",
    ),
    mesh: Path | None = typer.Option(
        None, "--mesh", help="Mesh to score (default: found beside the model, see OUT)."
    ),
    resolution: int | None = typer.Option(
        None,
        "--resolution",
        min=16,
        max=4096,
        help="Compare at this size (longer side, px); the ground truth is resized. "
        "Default: the test images' size.",
    ),
    json_path: Path | None = typer.Option(
        None,
        "--json",
        help="Write the metrics here (default: OUT/eval.json, or <model>_eval.json beside a file).",
    ),
    points: int = typer.Option(
        _EVAL.points, "--points", min=1, help="Surface points sampled for Chamfer / F-score."
    ),
    tau: float = typer.Option(
        _EVAL.tau, "--tau", help="F-score distance threshold (world units, > 0)."
    ),
    seed: int = typer.Option(_EVAL.seed, "--seed", help="Seed of the surface sampling."),
    mesh_up: Up | None = typer.Option(
        None,
        "--mesh-up",
        help="Up axis of the mesh file (default: as `geolrm mesh` writes: y for .glb/.obj, "
        "z for .ply).",
    ),
    up: Up = ASSUME_UP,
    device: str = DEVICE,
) -> None:
    """Score a reconstruction against a dataset's test views and ground-truth geometry.

    Renders the test cameras on white and reports PSNR (full frame, and inside the ground-truth mask alpha > 0.5, where the easy white background does not count), SSIM, LPIPS with the VGG16 network GeoLRM trains with (when its weights are downloaded: `geolrm weights download vgg16` and `geolrm weights download lpips-vgg`), and for a mesh the Chamfer distance and F-score at --tau on --points sampled points. Prints a table and writes JSON.

    Examples:

      geolrm eval out/ --gt examples/spot

      geolrm eval examples/spot/spot.ply --gt examples/spot --resolution 128 --json spot_eval.json

      geolrm eval out/ --gt data/chair --mesh out/mesh.glb --points 100000 --tau 0.01
    """
    from geolrm_cli.console import console, progress, resolve_device
    from pipelines.errors import InputError
    from pipelines.evaluate import evaluate_inputs, find_inputs, to_json

    if not tau > 0:
        raise InputError(f"--tau must be positive, got {tau}")
    inputs = find_inputs(out, gt, mesh)
    if json_path is None:
        json_path = out / "eval.json" if out.is_dir() else out.with_name(out.stem + "_eval.json")
    if json_path.is_dir():
        raise InputError(f"--json {json_path} is a folder; name a .json file")
    protected = [inputs.model, inputs.gt_dir / "transforms_test.json"]
    protected += [inputs.mesh] if inputs.mesh is not None else []
    if json_path.resolve() in {p.resolve() for p in protected}:
        raise InputError(f"--json {json_path} would overwrite an input; choose another path")
    dev = resolve_device(device)

    from pipelines.io_utils import write_text_atomic

    cams = inputs.cameras
    with progress(f"Rendering {len(cams)} test views", len(cams)) as advance:
        result = evaluate_inputs(
            inputs,
            resolution=resolution,
            device=dev,
            n_points=points,
            tau=tau,
            seed=seed,
            assume_up=up.value,
            mesh_up=mesh_up.value if mesh_up is not None else None,
            on_view=advance,
        )
    _print_tables(result)
    write_text_atomic(json_path, to_json(result))
    console.print(f"[green]done:[/] metrics -> {json_path}")
