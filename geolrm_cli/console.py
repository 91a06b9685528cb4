"""Console output shared by the commands: rich progress, one-line errors, exit codes."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import typer
from rich.console import Console

# soft_wrap: printed lines are never folded by rich (a path in a "done: ... -> PATH" line stays
# whole and copyable; the terminal wraps it for display)
console = Console(stderr=True, highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    """Print ``error: message`` as a single line on stderr."""
    from rich.markup import escape

    first = " ".join(str(message).split())  # never more than one line
    # escaped: "pip install 'geolrm[ray]'" is not rich markup
    console.print(f"[bold red]error:[/] {escape(first)}", soft_wrap=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr: ``note:`` for :class:`pipelines.errors.Note`, else
    ``warning:`` (never the file/line/source dump of Python's default)."""
    from rich.markup import escape

    from pipelines.errors import Note

    kind = "note" if issubclass(category, Note) else "warning"
    console.print(f"[yellow]{kind}:[/] " + escape(" ".join(str(message).split())), soft_wrap=True)


def run_cli(app: typer.Typer) -> int:
    """Run the Typer app; map bad input to exit code 2 and Ctrl-C to 130, without tracebacks.
    Library warnings and notes print as one line each (:func:`_show_warning`)."""
    import warnings

    from pipelines.errors import InputError

    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        rc = app(standalone_mode=False)  # click returns typer.Exit codes in this mode
    except InputError as e:
        error_line(str(e))
        return 2
    except (typer.Abort, KeyboardInterrupt):
        error_line("interrupted; no partial output was kept")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors and friends
        if isinstance(e, _click_exceptions()):
            e.show(file=sys.stderr)
            return 2
        raise
    finally:
        warnings.showwarning = shown
    return rc if isinstance(rc, int) else 0


def _click_exceptions() -> tuple[type[Exception], ...]:
    """click's exception base, and typer's own copy of it (typer >= 0.2x vendors click, so its
    usage errors, e.g. an option out of its range, are not click's)."""
    import click

    kinds: list[type[Exception]] = [click.exceptions.ClickException]
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # typer that uses click itself
        pass
    else:
        kinds.append(ClickException)
    return tuple(kinds)


@contextmanager
def progress(description: str, total: int | None):
    """A rich progress bar on stderr; yields ``advance(n=1)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*cols, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def resolve_device(name: str | None) -> str:
    """Device string from ``--device`` (auto -> cuda, else mps, else cpu); on MPS, one note
    saying what runs where."""
    from pipelines.device import device_type, mps_note
    from pipelines.device import resolve_device as _resolve
    from pipelines.errors import note

    dev = _resolve(name)
    if device_type(dev) == "mps":
        note(mps_note())
    return dev


def status_bar(spinner: bool = False):
    """A rich ``Progress`` on stderr: description, bar, n/total, elapsed, remaining and a
    ``status`` field (``add_task(..., status="")``); with ``spinner`` a spinner first that
    turns into a tick when the task stops."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    first = [SpinnerColumn(finished_text="[green]✓[/]")] if spinner else []
    return Progress(
        *first,
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
    )


@contextmanager
def stages():
    """Rich progress with one line per stage; yields ``start(name, total=None)`` and
    ``advance(n=1, status=None)`` (status: text shown after the bar, e.g. loss and PSNR);
    each new stage completes the previous one."""
    bar = status_bar(spinner=True)
    state: dict = {"task": None}

    def finish() -> None:
        task = state["task"]
        if task is not None:
            t = bar.tasks[task]
            bar.update(task, completed=t.total)
            bar.stop_task(task)
        state["task"] = None

    def start(name: str, total: int | None = None) -> None:
        finish()
        state["task"] = bar.add_task(name, total=total or 1, status="")

    def advance(n: int = 1, status: str | None = None) -> None:
        if state["task"] is not None:
            if status is None:
                bar.advance(state["task"], n)
            else:
                bar.update(state["task"], advance=n, status=status)

    with bar:
        try:
            yield start, advance
        finally:
            finish()
