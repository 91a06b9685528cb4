"""A folder of inputs on the console: one progress bar over the inputs, a line per finished
input, the summary tables; over :func:`pipelines.batch.run_batch`."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import typer

from geolrm_cli.console import console, error_line, status_bar


def ray_config(ray: bool, address: str | None, cpus: int | None, workers: int | None):
    """The :class:`~pipelines.batch.RayConfig` of the ``--ray*`` options (None without
    ``--ray``; the other options alone are refused)."""
    from pipelines.batch import RayConfig, require_ray
    from pipelines.errors import InputError

    if not ray:
        given = [
            n
            for n, v in (
                ("--ray-address", address),
                ("--ray-cpus-per-worker", cpus),
                ("--workers", workers),
            )
            if v is not None
        ]
        if given:
            raise InputError(f"{', '.join(given)} only apply with --ray; add --ray")
        return None
    require_ray()  # the install command, before any work
    return RayConfig(address=address, workers=workers, cpus_per_worker=cpus)


def run_folder(task, jobs, base: Path, title: str, overwrite: bool, ray) -> None:
    """Run the batch with a live progress bar and print the summary; exit code 1 when an
    input failed."""
    from rich.markup import escape

    from pipelines.batch import run_batch

    bar = status_bar()
    counts: dict[str, int] = defaultdict(int)
    state = {"t0": time.perf_counter()}
    bar_id = bar.add_task(task.command, total=len(jobs), status="")

    def status() -> str:
        ran = counts["done"] + counts["failed"]
        rate = ran / max(time.perf_counter() - state["t0"], 1e-9)
        failed = f"[red]{counts['failed']} failed[/]" if counts["failed"] else "0 failed"
        return f"{counts['done']} done, {counts['skipped']} skipped, {failed}, {rate:.2f} inputs/s"

    def on_start(todo: int, workers: int) -> None:
        state["t0"] = time.perf_counter()
        where = f"{workers} Ray worker{'s' * (workers != 1)}" if ray is not None else "here"
        console.print(f"{todo} of {len(jobs)} inputs to run ({where})")

    def on_event(i: int, rec) -> None:
        job = jobs[i]
        name = escape(job.name)
        if rec.status == "pending":  # back in the queue
            console.print(f"[yellow]retry:[/] {name}: {escape(rec.error)}", soft_wrap=True)
            return
        counts[rec.status] += 1
        if rec.status == "done":
            console.print(
                f"[green]done:[/] {name} -> {escape(str(job.out))}/ ({escape(rec.detail or '')}, "
                f"{rec.seconds:.1f} s, {rec.worker})",
                soft_wrap=True,
            )
        elif rec.status == "skipped":
            console.print(f"skipped: {name} (finished; --overwrite redoes it)")
        else:
            error_line(f"{job.name}: {rec.error}")
        bar.update(bar_id, advance=1, status=status())

    with bar:
        result = run_batch(task, jobs, base, overwrite, ray, on_event, on_start)
    _summary(result, title)
    if not result.ok:
        raise typer.Exit(1)


def _summary(result, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col, just in (("status", "left"), ("inputs", "right"), ("time per input", "right")):
        table.add_column(col, justify=just)
    for status in ("done", "skipped", "failed"):
        recs = [r for r in result.records if r.status == status]
        secs = [r.seconds for r in recs if r.seconds is not None]
        mean = f"{sum(secs) / len(secs):.1f} s" if secs and status != "skipped" else "-"
        table.add_row(status, str(len(recs)), mean)
    ran = sum(1 for r in result.records if r.status in ("done", "failed"))
    table.add_row(
        "[bold]total[/]",
        str(len(result.records)),
        f"{result.seconds:.1f} s wall, {ran / max(result.seconds, 1e-9):.2f} inputs/s",
    )
    console.print(table)
    per = defaultdict(list)
    for r in result.records:
        if r.status in ("done", "failed") and r.worker:
            per[r.worker].append(r)
    if per:
        workers = Table(title="per worker", title_justify="left")
        for col in ("worker", "done", "failed", "time per input"):
            workers.add_column(col, justify="left" if col == "worker" else "right")
        for name, recs in sorted(per.items()):
            secs = [r.seconds for r in recs if r.seconds]
            done = sum(r.status == "done" for r in recs)
            mean = f"{sum(secs) / len(secs):.1f} s" if secs else "-"
            workers.add_row(name, str(done), str(len(recs) - done), mean)
        console.print(workers)
    console.print(f"record: {result.path}")
