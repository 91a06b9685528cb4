"""`geolrm mesh`: Gaussians (.ply / .splat) -> a coloured triangle mesh (.glb, .obj + .mtl, .ply);
its examples are in the command's docstring (`geolrm mesh --help`)."""

from __future__ import annotations

from pathlib import Path

import typer

from geolrm_cli.options import ASSUME_UP, DEVICE, TEXTURE_SIZE, Up
from pipelines import layout
from pipelines.defaults import MeshConfig

_MESH = MeshConfig()


def mesh(
    model: Path = typer.Argument(
        ..., help="Gaussian .ply (standard 3DGS, GeoLRM layout) or .splat."
    ),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Mesh file: .glb (glTF, y-up), .obj (+ .mtl beside it, y-up) or .ply (z-up). "
        "Default: <model>_mesh.glb next to the model.",
    ),
    faces: int = typer.Option(
        _MESH.faces, "--faces", min=4, help="Face budget: the mesh is decimated to at most this."
    ),
    resolution: int = typer.Option(
        _MESH.resolution,
        "--resolution",
        min=16,
        max=1024,
        help="TSDF voxels along the object's longest side (finer = more detail, slower).",
    ),
    views: int = typer.Option(
        _MESH.views, "--views", min=1, help="Views rendered and fused (spread over a sphere)."
    ),
    trunc: float | None = typer.Option(
        None,
        "--trunc",
        min=0.5,
        help="TSDF truncation distance in voxels (larger = smoother, steadier on noisy splats; "
        "smaller = sharper detail). Default: 4 voxels, or 4 x the Gaussians' median size if "
        "larger.",
    ),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        min=32,
        max=4096,
        help="Render size in pixels for fusion (default: 1.5 x --resolution, 128-1024).",
    ),
    texture: bool = typer.Option(
        False,
        "--texture",
        help="UV-unwrap the mesh and bake a texture map from the renders (sharper than vertex "
        "colours): embedded in .glb; .obj writes <name>.png beside its .mtl. Not for .ply.",
    ),
    texture_size: int = TEXTURE_SIZE,
    cameras: Path | None = typer.Option(
        None,
        "--cameras",
        help="The input views' cameras (nerfstudio/NeRF transforms.json in the model's frame). "
        "Surface none of them saw (e.g. the underside of an object filmed from above) is "
        "replaced by a membrane spanning its seen border. Default: cameras.json beside the "
        "model, as recon and gen write it.",
    ),
    fill: bool = typer.Option(
        True,
        "--fill-unseen/--keep-unseen",
        help="Membrane-fill surface the input views never saw (needs their cameras), or keep "
        "the fused shape there.",
    ),
    up: Up = ASSUME_UP,
    device: str = DEVICE,
) -> None:
    """Turn Gaussians into a coloured triangle mesh (.glb, .obj + .mtl, or .ply).

    Renders depth and colour from many views, fuses them into a TSDF, extracts the surface
    (marching cubes), keeps the main parts, decimates to --faces and colours the vertices.
    When the input views' cameras are known (--cameras, or cameras.json beside the model),
    surface they never saw is replaced by a membrane spanning its seen border.
    With --texture it also UV-unwraps the mesh and bakes a texture map from the renders.

    Examples:

      geolrm mesh out/model.ply -o out/mesh.glb

      geolrm mesh out/model.ply -o out/mesh.glb --texture

      geolrm mesh model.ply --cameras views/transforms.json -o mesh.glb

      geolrm mesh out/model.ply -o out/mesh.obj --faces 20000 --texture --texture-size 2048

      geolrm mesh out/model.ply -o out/mesh.ply --resolution 384 --views 100 --device cuda
    """
    from geolrm_cli.console import console, resolve_device, stages
    from pipelines.errors import InputError
    from pipelines.mesh.export import MESH_FORMATS, check_texture_format

    if not model.exists():
        raise InputError(f"{model} does not exist; pass a Gaussian .ply or .splat file")
    if model.is_dir():
        raise InputError(f"{model} is a folder; pass a Gaussian .ply or .splat file")
    if output is None:
        output = model.with_name(model.stem + "_mesh.glb")
    if output.suffix.lower() not in MESH_FORMATS:
        raise InputError(
            f"-o {output}: unknown mesh format {output.suffix or '(none)'!r}; "
            f"use {', '.join(MESH_FORMATS)}"
        )
    if texture:
        check_texture_format(output)
    if output.exists() and output.is_dir():
        raise InputError(f"-o {output} is a folder; name a .glb, .obj or .ply file")
    if output.resolve() == model.resolve():
        raise InputError("-o would overwrite the input model; choose another path")
    if cameras is not None and not fill:
        raise InputError("--cameras is only used to fill unseen surface; drop --keep-unseen")
    if cameras is None and fill and model.with_name(layout.CAMERAS).is_file():
        cameras = model.with_name(layout.CAMERAS)
    dev = resolve_device(device)

    from pipelines.cameras.dataparsers import load_transforms
    from pipelines.mesh import default_image_size, gaussians_to_mesh
    from pipelines.mesh.export import export_mesh
    from pipelines.splats.io import load_gaussians

    g = load_gaussians(model, assume_up=up.value)
    input_cams = None if cameras is None else load_transforms(cameras, require_images=False)
    size = image_size or default_image_size(resolution)
    n_input = 0 if input_cams is None else len(input_cams)
    labels = {
        "render": f"Rendering {len(g):,} Gaussians ({size} px)",
        "fuse": f"Fusing {views} views into a TSDF ({resolution} voxels wide)",
        "extract": "Extracting and decimating the mesh",
        "fill": f"Filling surface the {n_input} input views never saw",
        "texture": f"Unwrapping and baking a {texture_size} px texture",
    }
    with stages() as (start, advance):
        made = gaussians_to_mesh(
            g,
            views=views,
            resolution=resolution,
            faces=faces,
            trunc_voxels=trunc,
            image_size=size,
            device=dev,
            on_view=lambda *_a: advance(),
            texture_size=texture_size if texture else None,
            on_stage=lambda name, total: start(labels[name], total),
            cameras=input_cams,
        )
    result = made.mesh
    note = ""
    if made.filled is not None:
        note = f", {made.filled:.1%} of vertices unseen by {cameras.name} and filled"
    if made.texture_seen is not None:
        note += f", {texture_size} px texture ({made.texture_seen:.1%} of texels seen)"
    with console.status("Writing the mesh"):
        written = export_mesh(result, output)
    names = " + ".join(str(p) for p in written)
    console.print(
        f"[green]done:[/] {len(result.faces):,} faces, {len(result.vertices):,} vertices{note} "
        f"-> {names}",
        soft_wrap=True,
    )
