"""The ``icefloe`` command: run the write flows, show a repository's history, try a demo.

Each write command runs its flow in this process (against the Prefect API configured in the
environment, or a temporary local one) and shows a progress bar while the lazy write runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from prefect import Flow
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from flows.backfill import backfill_flow, windows_between
from flows.results import WriteResult
from flows.runner import on_scheduler
from flows.sources import SourceModel, SyntheticSource, parse_source
from flows.targets import Target
from flows.write import append_flow, create_flow, modify_flow, region_flow
from tasks.coverage import coverage
from tasks.errors import IcefloeError
from tasks.plan import human_bytes
from tasks.progress import watch_progress

app = typer.Typer(
    name="icefloe",
    help="Write xarray datasets into Icechunk repositories as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

# Errors whose message says what to change; anything else keeps its traceback.
_USER_ERRORS = (IcefloeError, ValueError, OSError, ImportError)

DEMO_DIR = "icefloe-demo"

TargetOption = Annotated[
    str,
    typer.Option(
        "--target", "-t", help="Repository path or URL (s3://, gs://, az://), or a JSON Target."
    ),
]
SourceOption = Annotated[
    str,
    typer.Option(
        "--source", "-s", help='Path or glob of files, or a JSON source spec ({"kind": ...}).'
    ),
]
BranchOption = Annotated[str, typer.Option(help="Branch to write to.")]
GroupOption = Annotated[
    str | None, typer.Option(help="Group inside the repository; root if unset.")
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the plan and write nothing.")]
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--scheduler-address",
        envvar="ICEFLOE_SCHEDULER_ADDRESS",
        help="Dask scheduler to write on (default: a local cluster sized to this machine).",
    ),
]


@app.callback()
def main() -> None:
    """Write xarray datasets into Icechunk repositories as Prefect flows."""
    # The local cluster's start-up and shutdown chatter would bury the run's own log lines.
    logging.getLogger("distributed").setLevel(logging.WARNING)


@app.command()
def create(
    target: TargetOption,
    source: SourceOption,
    branch: BranchOption = "main",
    group: GroupOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the group if it exists.")
    ] = False,
    encoding: Annotated[
        str | None, typer.Option(help="Per-variable encoding as JSON, as in xarray's to_zarr.")
    ] = None,
    dry_run: DryRunOption = False,
    scheduler_address: SchedulerOption = None,
) -> None:
    """Create a group from the source (and the repository, if needed)."""
    _write(
        create_flow,
        target,
        branch,
        source,
        dry_run,
        scheduler_address,
        group=group,
        overwrite=overwrite,
        encoding=_json_option("--encoding", encoding),
    )


@app.command()
def modify(
    target: TargetOption,
    source: SourceOption,
    branch: BranchOption = "main",
    group: GroupOption = None,
    only_new_vars: Annotated[
        bool, typer.Option("--only-new-vars", help="Write only variables the group lacks.")
    ] = False,
    dry_run: DryRunOption = False,
    scheduler_address: SchedulerOption = None,
) -> None:
    """Add variables to a group, overwrite existing ones and merge attributes."""
    _write(
        modify_flow,
        target,
        branch,
        source,
        dry_run,
        scheduler_address,
        group=group,
        only_new_vars=only_new_vars,
    )


@app.command()
def append(
    target: TargetOption,
    source: SourceOption,
    branch: BranchOption = "main",
    group: GroupOption = None,
    append_dim: Annotated[str, typer.Option(help="Dimension to append along.")] = "time",
    on_overlap: Annotated[
        str, typer.Option(help="Labels already stored: error, skip or overwrite.")
    ] = "error",
    dry_run: DryRunOption = False,
    scheduler_address: SchedulerOption = None,
) -> None:
    """Append the source's labels along a dimension."""
    _write(
        append_flow,
        target,
        branch,
        source,
        dry_run,
        scheduler_address,
        group=group,
        append_dim=append_dim,
        on_overlap=on_overlap,
    )


@app.command()
def region(
    target: TargetOption,
    source: SourceOption,
    branch: BranchOption = "main",
    group: GroupOption = None,
    region: Annotated[
        str,
        typer.Option(
            help='"auto" (placed by labels) or JSON per dimension, e.g. {"time": [24, 48]}.'
        ),
    ] = "auto",
    dry_run: DryRunOption = False,
    scheduler_address: SchedulerOption = None,
) -> None:
    """Overwrite a region of existing arrays with the source's values."""
    spec = "auto" if region.strip() == "auto" else _json_option("--region", region)
    _write(
        region_flow, target, branch, source, dry_run, scheduler_address, group=group, region=spec
    )


@app.command()
def log(
    target: TargetOption,
    branch: BranchOption = "main",
    limit: Annotated[int, typer.Option(help="Show at most this many commits.")] = 20,
) -> None:
    """Show the commits of a branch with what icefloe wrote in each."""
    with _user_errors():
        repo = _target(target, branch).open_repository()
        table = Table(title=f"{branch} of {target}", show_lines=False)
        for column in ("snapshot", "written", "mode", "group", "variables", "labels", "message"):
            table.add_column(column, overflow="fold")
        for i, snapshot in enumerate(repo.ancestry(branch=branch)):
            if i >= limit:
                break
            table.add_row(*_log_row(snapshot))
    console.print(table)


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=1, help="Days of hourly data to write.")] = 7,
    scheduler_address: SchedulerOption = None,
) -> None:
    """Write a synthetic weather dataset into ./icefloe-demo and show how to open it."""
    path = Path.cwd() / DEMO_DIR
    source = SyntheticSource(periods=24 * days)
    result = _write(
        create_flow,
        str(path),
        "main",
        source.model_dump_json(),
        False,
        scheduler_address,
        overwrite=True,
    )
    console.print(f"\nThe demo dataset is in [bold]{path}[/bold] ({result.mode}, root group).")
    console.print("Open it with xarray:\n")
    typer.echo(
        "import icechunk, xarray as xr\n"
        f"repo = icechunk.Repository.open(icechunk.local_filesystem_storage({str(path)!r}))\n"
        'ds = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)'
    )


@app.command()
def backfill(
    target: TargetOption,
    source: SourceOption,
    start: Annotated[datetime, typer.Option(help="First label of the range (inclusive).")],
    end: Annotated[datetime, typer.Option(help="End of the range (exclusive).")],
    freq: Annotated[str, typer.Option(help="Window length, a pandas frequency: 1D, 6h ...")] = "1D",
    branch: BranchOption = "main",
    group: GroupOption = None,
    append_dim: Annotated[str, typer.Option(help="The dimension to fill.")] = "time",
    batch: Annotated[int, typer.Option(min=1, help="Windows written at a time.")] = 2,
    dry_run: DryRunOption = False,
    scheduler_address: SchedulerOption = None,
) -> None:
    """Fill [start, end) window by window; windows that hold data already are skipped."""
    with _user_errors():
        parsed_target = _target(target, branch)
        if dry_run:
            windows = windows_between(start, end, freq)
            try:
                found = coverage(
                    parsed_target.open_repository().readonly_session(branch=branch),
                    group,
                    append_dim,
                )
                todo = [w for w in windows if found.missing_between(w.start, w.end)]
            except (OSError, ValueError):
                todo = windows
            console.print(f"{len(todo)} of {len(windows)} windows would be written:")
            for window in todo:
                console.print(f"  {window}")
            return
        runnable = on_scheduler(backfill_flow, scheduler_address)
        with _progress_bar():
            result = runnable(
                target=parsed_target,
                source=parse_source(source),
                start=start,
                end=end,
                freq=freq,
                group=group,
                append_dim=append_dim,
                batch=batch,
                scheduler_address=scheduler_address,
            )
    console.print(
        f"backfill: {result.windows_written} windows written, "
        f"{result.windows_already_filled} already held data; "
        f"{result.labels_present}/{result.labels_total} labels hold data, {result.gaps} gaps"
    )


@app.command(name="coverage")
def coverage_command(
    target: TargetOption,
    branch: BranchOption = "main",
    group: GroupOption = None,
    append_dim: Annotated[str, typer.Option(help="The dimension to inspect.")] = "time",
    png: Annotated[Path | None, typer.Option(help="Also write the plot to this PNG file.")] = None,
) -> None:
    """Show which labels along the append dimension hold data, gaps marked."""
    with _user_errors():
        repo = _target(target, branch).open_repository()
        found = coverage(repo.readonly_session(branch=branch), group, append_dim)
        if png is not None:
            found.plot(str(png))
    console.print(str(found), highlight=False)


@app.command()
def serve(
    target: TargetOption,
    source: SourceOption,
    interval: Annotated[
        float | None, typer.Option(help="Run the scheduled append every N seconds.")
    ] = None,
    cron: Annotated[str | None, typer.Option(help="Or on this cron schedule.")] = None,
    branch: BranchOption = "main",
    group: GroupOption = None,
    append_dim: Annotated[str, typer.Option(help="The dimension appends extend.")] = "time",
    scheduler_address: SchedulerOption = None,
) -> None:
    """Serve the deployments (append-scheduled, write, backfill, maintenance) until stopped."""
    from deployments.serve import serve_deployments

    with _user_errors():
        if (interval is None) == (cron is None):
            raise ValueError("give exactly one of --interval SECONDS or --cron EXPR")
        serve_deployments(
            target=_target(target, branch),
            source=parse_source(source),
            group=group,
            append_dim=append_dim,
            interval=interval,
            cron=cron,
            scheduler_address=scheduler_address,
        )


# -- helpers --------------------------------------------------------------------------------


def _write(
    flow: Flow[..., WriteResult],
    target: str,
    branch: str,
    source: str,
    dry_run: bool,
    scheduler_address: str | None,
    **options: Any,
) -> WriteResult:
    with _user_errors():
        parsed_target = _target(target, branch)
        parsed_source: SourceModel = parse_source(source)
        runnable = on_scheduler(flow, scheduler_address)
        with _progress_bar():
            result: WriteResult = runnable(
                target=parsed_target,
                source=parsed_source,
                dry_run=dry_run,
                scheduler_address=scheduler_address,
                **options,
            )
    _print_result(result, dry_run)
    return result


def _target(text: str, branch: str) -> Target:
    if text.lstrip().startswith("{"):
        return Target.model_validate_json(text)
    return Target(repo=text, branch=branch)


def _json_option(name: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        errors.print(f"[red]error:[/red] {name} is not valid JSON ({err})", highlight=False)
        raise typer.Exit(2) from err


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except _USER_ERRORS as err:
        errors.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        raise typer.Exit(1) from err


@contextmanager
def _progress_bar() -> Iterator[None]:
    """A bar fed by the lazy write's dask task counts; shown only once a lazy write starts."""
    progress = Progress(
        TextColumn("writing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("dask tasks"),
        TimeElapsedColumn(),
        console=console,
    )
    bar: TaskID | None = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            progress.start()
            bar = progress.add_task("write", total=total)
        progress.update(bar, completed=done, total=total)

    try:
        with watch_progress(update):
            yield
    finally:
        progress.stop()


def _print_result(result: WriteResult, dry_run: bool) -> None:
    if dry_run:
        console.print("\n[bold]Plan[/bold] (dry run, nothing written):")
        console.print(result.plan or "", markup=False, highlight=False, soft_wrap=True)
        return
    if result.snapshot_id is None:
        console.print(f"Nothing to write: branch {result.branch} already holds the source's data.")
        return
    console.print(
        f"Committed [bold]{result.snapshot_id}[/bold] to branch {result.branch}: {result.mode} "
        f"of {result.group or 'the root group'}, {len(result.variables)} variables, "
        f"{result.chunks_written} chunks, {human_bytes(result.bytes_written)}."
    )


def _log_row(snapshot: Any) -> tuple[str, ...]:
    block = snapshot.metadata.get("icefloe") or {}
    labels = ""
    if "label_range" in block:
        labels = " … ".join(block["label_range"])
    elif "region" in block:
        labels = ", ".join(f"{d}[{a}:{b}]" for d, (a, b) in block["region"].items())
    return (
        snapshot.id,
        snapshot.written_at.strftime("%Y-%m-%d %H:%M:%S"),
        str(block.get("mode", "")),
        str(block.get("group") or ("/" if block else "")),
        ", ".join(block.get("variables", [])),
        labels,
        snapshot.message,
    )


if __name__ == "__main__":
    app()
