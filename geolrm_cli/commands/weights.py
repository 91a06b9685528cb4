"""List, download, verify and locate the model weights geolrm uses (pipelines/weights.toml).

Examples:

  geolrm weights list

  geolrm weights download geolrm

  geolrm weights download zero123pp --accept-license

  geolrm weights verify

  geolrm weights path geolrm
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer

app = typer.Typer(
    name="weights",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def _short_source(a) -> str:
    """``org/repo`` for HF; ``host/…/file`` for long URLs (the full URL is in weights.toml)."""
    if a.is_hf or len(a.url) <= 40:
        return a.source
    rest = a.url.split("://", 1)[-1]
    return f"{rest.split('/', 1)[0]}/…/{rest.rsplit('/', 1)[-1]}"


def _size_text(a) -> str:
    if a.size_bytes:
        return _human(a.size_bytes)
    return f"~{a.approx_size}" if a.approx_size else "?"


@contextmanager
def _byte_progress(description: str):
    """A rich byte progress bar on stderr; yields ``update(done, total)``.

    The bar only appears on the first update, so errors raised before any byte moved are not
    preceded by an empty bar.
    """
    state: dict = {}

    def update(done: int, total: int | None) -> None:
        if "bar" not in state:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            from geolrm_cli.console import console

            bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task(description, total=total)
        state["bar"].update(state["task"], completed=done, total=total)

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].stop()


@app.command("list")
def list_cmd() -> None:
    """Show every model artifact: source, size, licence (NC = non-commercial), gating, cached.

    Example:

      geolrm weights list
    """
    from rich.console import Console
    from rich.table import Table

    from pipelines import weights as w

    table = Table(title=f"Model weights ({w.registry_path()})", title_justify="left")
    table.add_column("name", no_wrap=True)
    for col in ("repo / url", "size", "licence", "gated", "cached", "used by"):
        table.add_column(col, overflow="fold")
    for a in w.list_artifacts():
        cached = "[green]✓[/]" if w.local_path(a) is not None else "[red]✗[/]"
        licence = a.licence if a.commercial_use else f"{a.licence} [yellow](NC)[/]"
        table.add_row(
            a.name,
            _short_source(a),
            _size_text(a),
            licence,
            "yes" if a.gated else "no",
            cached,
            "; ".join(a.used_by),
        )
    Console(highlight=False).print(table)


@app.command("download", no_args_is_help=True)
def download_cmd(
    name: str = typer.Argument(..., help="Artifact name, as shown by `geolrm weights list`."),
    accept_license: bool = typer.Option(
        False,
        "--accept-license",
        help="Accept a non-commercial licence (required for zero123pp, instantmesh-unet, sv3d-*).",
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        help="Hugging Face token for gated repos (default: HF_TOKEN or the `hf auth login` token).",
        show_default=False,
    ),
    force: bool = typer.Option(False, "--force", help="Download again even if already cached."),
) -> None:
    """Download an artifact into its cache (HF cache, or ~/.u2net for rembg) and print its path.

    Examples:

      geolrm weights download geolrm

      geolrm weights download zero123pp --accept-license

      geolrm weights download sv3d-p --accept-license --token hf_xxx
    """
    from geolrm_cli.console import console
    from pipelines import weights as w

    a = w.artifact(name)
    if a.needs_acceptance and accept_license:
        console.print(f"{w.licence_notice(a)}; accepted with --accept-license.")
    if not force and w.local_path(a) is not None:
        console.print(f"'{a.name}' is already cached (use --force to fetch it again).")
    elif a.is_hf and not w.is_offline() and (accept_license or not a.needs_acceptance):
        console.print(f"downloading '{a.name}' from https://huggingface.co/{a.repo} ...")
    if a.is_hf:
        path = w.download(a, accept_license=accept_license, token=token, force=force)
    else:
        with _byte_progress(a.name) as update:
            path = w.download(
                a, accept_license=accept_license, token=token, progress=update, force=force
            )
    typer.echo(str(path))


@app.command("verify")
def verify_cmd(
    name: str | None = typer.Argument(None, help="Artifact to check (default: all of them)."),
) -> None:
    """Check cached files against the published size / sha256 (md5 for rembg models).

    Each file is ok, mismatch, missing, or unknown-hash (no published hash). Exits 1 if any
    file mismatches.

    Examples:

      geolrm weights verify

      geolrm weights verify instantmesh-unet
    """
    from rich.console import Console
    from rich.table import Table

    from pipelines import weights as w

    names = [w.artifact(name).name] if name else [a.name for a in w.list_artifacts()]
    styles = {w.OK: "green", w.MISMATCH: "bold red", w.MISSING: "yellow", w.UNKNOWN_HASH: "cyan"}
    table = Table(title="Model weights check", title_justify="left")
    for col in ("name", "file", "status", "detail"):
        table.add_column(col, overflow="fold")
    bad = False
    with _byte_progress("hashing") as update:
        for n in names:
            result = w.verify(n, progress=lambda _path, done, total: update(done, total))
            bad |= not result.ok
            for check in result.files:
                style = styles[check.status]
                table.add_row(n, check.path, f"[{style}]{check.status}[/]", check.detail)
    Console(highlight=False).print(table)
    if bad:
        # SystemExit, not typer.Exit: run_cli calls the app with standalone_mode=False, where
        # click turns typer.Exit into a return value that would be lost.
        raise SystemExit(1)


@app.command("path", no_args_is_help=True)
def path_cmd(
    name: str = typer.Argument(..., help="Artifact name, as shown by `geolrm weights list`."),
) -> None:
    """Print the local path of a cached artifact (a file, or a snapshot folder); exit 2 if missing.

    Example:

      geolrm weights path geolrm
    """
    from pipelines import weights as w

    typer.echo(str(w.ensure(name)))


@app.command("convert", no_args_is_help=True)
def convert_cmd(
    src: Path = typer.Argument(..., help="GeoLRM checkpoint (.ckpt, a torch state dict)."),
    output: Path = typer.Option(..., "-o", "--output", help="The .safetensors file to write."),
) -> None:
    """Convert a GeoLRM .ckpt to .safetensors (no pickle needed to load it afterwards).

    Example:

      geolrm weights convert "$(geolrm weights path geolrm)" -o geolrm.safetensors
    """
    from pipelines.errors import InputError

    if not src.is_file():
        raise InputError(f"checkpoint not found: {src}")
    if output.suffix != ".safetensors":
        raise InputError(f"output must be a .safetensors file, got {output}")
    if output.resolve() == src.resolve():
        raise InputError("output would overwrite the input checkpoint")
    try:
        from pipelines.geolrm.convert import convert_checkpoint
    except ImportError as e:
        raise InputError(f"checkpoint conversion is not available in this build ({e})") from None
    convert_checkpoint(src, output)
    typer.echo(str(output))
