"""Look at a result in the browser: an interactive viewer (viser), or a self-contained page.

Examples:

  geolrm view out/

  geolrm view out/model.ply --mesh out/mesh.glb --cameras out/cameras.json

  geolrm view out/ --html scene.html
"""

from __future__ import annotations

from pathlib import Path

import typer

from geolrm_cli import options as opt
from geolrm_cli.options import ASSUME_UP, Up

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def host_warning(host: str, what: str) -> str | None:
    """The warning line for a server bound beyond this machine, or None for a local host."""
    if host in LOCAL_HOSTS:
        return None
    return (
        f"--host {host} makes the {what} reachable from other machines; anyone who can reach "
        "this port can use it"
    )


def view(
    path: Path = typer.Argument(
        ..., help="A recon/gen output folder (model.ply, mesh.glb, cameras.json) or a .ply/.splat."
    ),
    mesh: Path | None = typer.Option(
        None, "--mesh", help="A .glb mesh to show (toggle in the panel). Default: the folder's."
    ),
    cameras: Path | None = typer.Option(
        None,
        "--cameras",
        help="Cameras to show as frustums with their images (cameras.json / transforms.json). "
        "Default: the folder's cameras.json.",
    ),
    html: Path | None = typer.Option(
        None,
        "--html",
        help="Write one self-contained page (opens from file://, no server) and exit.",
    ),
    host: str = opt.HOST,
    port: int = opt.PORT,
    background: str = typer.Option(
        "white", "--background", help="Background colour: white, black, grey, #rrggbb or r,g,b."
    ),
    renders: Path | None = typer.Option(
        None,
        "--renders",
        help="Folder for the panel's Render PNG button (geolrm's rasteriser). Default: the "
        "model's folder.",
    ),
    up: Up = ASSUME_UP,
) -> None:
    """Look at Gaussians (SH of any degree), a mesh and the input cameras in the browser.

    Starts a local web viewer (viser) and prints its address: orbit with the mouse; the panel toggles the mesh, the cameras (frustums with their images) and the Gaussians, sets the background colour, and Render PNG renders the current view with geolrm's own rasteriser into --renders. Ctrl-C stops it. The frames are the files': model.ply's header frame, cameras.json as recon wrote it, the .glb's y-up turned back to z-up.

    With --html, writes one self-contained page instead (the Gaussians and camera outlines, drag to orbit), which opens from file:// with no server, for sharing a result.

    Examples:

      geolrm view out/

      geolrm view out/model.ply --mesh out/mesh.glb --cameras out/cameras.json

      geolrm view out/ --html scene.html

      geolrm view examples/spot/spot.ply --cameras examples/spot/transforms_train.json
    """
    from geolrm_cli.console import console
    from pipelines.errors import InputError
    from pipelines.viewer.scene import load_scene, parse_colour

    colour = parse_colour(background)
    if html is not None:
        if html.suffix.lower() not in (".html", ".htm"):
            raise InputError(f"--html {html}: name the page with .html")
        if html.exists() and html.is_dir():
            raise InputError(f"--html {html} is a folder; pass a file name ending in .html")
    if renders is not None and renders.exists() and not renders.is_dir():
        raise InputError(f"--renders {renders} is a file; pass a folder")
    scene = load_scene(path, mesh=mesh, cameras=cameras, assume_up=up.value)
    if html is not None:
        from pipelines.viewer.static import write_html

        write_html(scene, html, colour)
        console.print(
            f"[green]done:[/] {len(scene.gaussians):,} Gaussians -> {html} "
            f"({html.stat().st_size / 2**20:.1f} MiB; opens from file://)"
        )
        return

    from pipelines.viewer.server import Viewer, require_viser

    require_viser()
    warning = host_warning(host, "viewer")
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    try:
        viewer = Viewer(
            scene,
            host=host,
            port=port,
            renders=renders,
            background=colour,
            on_render=lambda p: console.print(f"saved {p}"),
        )
    except OSError as e:
        raise InputError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); try another --port"
        ) from None
    if port and viewer.server.get_port() != port:
        console.print(f"[yellow]note:[/] port {port} is taken; using {viewer.server.get_port()}")
    shown = [f"{len(scene.gaussians):,} Gaussians"]
    if scene.mesh is not None:
        shown.append("mesh")
    if scene.cameras is not None:
        shown.append(f"{len(scene.cameras)} cameras")
    console.print(f"viewer: {viewer.url} ({', '.join(shown)}); Ctrl-C stops it")
    serve_until_interrupted(viewer.stop)
    console.print("viewer stopped")


def serve_until_interrupted(stop) -> None:
    """Wait until Ctrl-C (SIGINT) or SIGTERM, then call ``stop()``; both end the command with
    exit code 0 (stopping a server is how it is meant to end)."""
    import signal
    import threading
    import time

    def interrupt(_sig, _frame) -> None:
        raise KeyboardInterrupt

    restore = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            restore.append((sig, signal.signal(sig, interrupt)))
    try:
        while True:
            time.sleep(0.25)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in restore:
            signal.signal(sig, handler)
        stop()
