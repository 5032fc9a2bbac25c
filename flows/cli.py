"""The ``icefloe`` command: run the write flows, show a repository's history, try a demo.

Each write command runs its flow in this process (against the Prefect API configured in the
environment, or a temporary local one) and shows a progress bar while the lazy write runs.
"""

from __future__ import annotations

import json
import logging
import os
import textwrap
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import icechunk
import typer
from prefect import Flow
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from flows.backfill import backfill_flow, windows_between
from flows.launch import wait_for_temporary_api
from flows.options import loads_json, validate, validation_message
from flows.refusals import quiet_console
from flows.results import WriteResult
from flows.sources import SourceModel, SyntheticSource, parse_source
from flows.targets import Target, TargetError
from flows.validate import VALIDATE_EVERY
from flows.write import (
    Encoding,
    RegionParameter,
    append_flow,
    create_flow,
    modify_flow,
    region_flow,
)
from tasks.cluster import on_scheduler
from tasks.coverage import coverage
from tasks.errors import GroupNotFoundError, IcefloeError, PlanError, RequestError, is_refusal
from tasks.plan import human_bytes
from tasks.progress import watch_progress
from tasks.spec import DatasetSpec
from tasks.stored import StoredGroup, normalize_group

app = typer.Typer(
    name="icefloe",
    help="Write xarray datasets into Icechunk repositories as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)


def rebind_consoles() -> None:
    """New consoles for this process's stdout and stderr as they are now: the daemon's spare
    (flows/daemon.py) imported this module before it took over a command's terminal, and a
    console decides on colour when it is made."""
    global console, errors
    console = Console()
    errors = Console(stderr=True)


# Errors whose message says what to change, printed as one line; anything else (and
# icefloe's own non-refusals, such as VerificationError) keeps its traceback.
_USER_ERRORS = (IcefloeError, ValueError, OSError, ImportError)
# Set by --verbose: refusals show their traceback too.
_verbose = False

TARGET_EXAMPLE = (
    '{"repo": "s3://bucket/weather.icechunk", "storage_options": {"region": "eu-west-1"}}'
)
ENCODING_EXAMPLE = '{"air_temperature": {"chunks": [24, 3, 4], "dtype": "float32"}}'
REGION_EXAMPLE = '{"time": [24, 48]}'
_ENCODING = TypeAdapter(Encoding)
_REGION = TypeAdapter(RegionParameter)

DEMO_DIR = "icefloe-demo"


class LateDataOption(StrEnum):
    """The scheduled append's late-data policies (flows.scheduled.LateData)."""

    wait = "wait"
    hole = "hole"


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
def main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show the traceback of refused requests too, for reports."
        ),
    ] = False,
) -> None:
    """Write xarray datasets into Icechunk repositories as Prefect flows."""
    global _verbose
    _verbose = verbose
    if not verbose and "ICECHUNK_LOG" not in os.environ:
        # icechunk's advisories (local storage and concurrent committers, conditional PUTs)
        # went to stderr on every command, ahead of the one line that matters; they are
        # for library users, and --verbose (or ICECHUNK_LOG) shows them.
        icechunk.set_logs_filter("error")
    if not verbose:
        # A local cluster's start-up and shutdown chatter (a dozen INFO lines per worker)
        # would bury the run's own log lines: here, and in the worker processes, which read
        # dask's configuration from the environment. --verbose, or the variable set to
        # "info", shows them.
        logging.getLogger("distributed").setLevel(logging.WARNING)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    # The temporary Prefect server a run without PREFECT_API_URL starts would try to send
    # usage telemetry, and log an ERROR wherever there is no network; a user who wants it
    # sets the variable.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


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
        encoding=lambda: _encoding_option(encoding),
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
    update_spec: Annotated[
        bool,
        typer.Option(
            "--update-spec",
            help="Let the write change the structure the group's spec declares (dtype, "
            "dims, chunks, units, time encoding); the spec follows in the same commit.",
        ),
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
        update_spec=update_spec,
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
    on_gap: Annotated[
        str,
        typer.Option(
            help="Labels missing on the group's step: error (refuse), stop (append up to the "
            "first missing one) or fill (write them as fill values, recorded as a gap)."
        ),
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
        on_gap=on_gap,
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
    _write(
        region_flow,
        target,
        branch,
        source,
        dry_run,
        scheduler_address,
        group=group,
        region=lambda: _region_option(region),
    )


@app.command()
def log(
    target: TargetOption,
    branch: BranchOption = "main",
    limit: Annotated[int, typer.Option(help="Show at most this many commits.")] = 20,
) -> None:
    """Show the commits of a branch with what icefloe wrote in each, newest first."""
    with _user_errors():
        parsed = _target(target, branch)
        repo = parsed.open_repository()
        _require_branch(repo, parsed)
        snapshots = []
        for i, snapshot in enumerate(repo.ancestry(branch=branch)):
            if i >= limit:
                break
            snapshots.append(snapshot)
    # One block per commit, like `git log`: a table of seven columns broke ids, dates and
    # variable names mid-word in an 80-column terminal.
    width = max(40, console.width)
    for snapshot in snapshots:
        console.print("\n".join(_log_block(snapshot, width)), markup=False, highlight=False)
        console.print()


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
    batch: Annotated[
        int, typer.Option(min=1, help="Windows in flight on the cluster at once.")
    ] = 128,
    dry_run: DryRunOption = False,
    scheduler_address: SchedulerOption = None,
) -> None:
    """Fill [start, end) window by window; windows that hold data already are skipped."""
    with _user_errors():
        parsed_target = _target(target, branch)
        parsed_source = parse_source(source, name="--source")
        # Checked here too, so that dates in the wrong order start no flow run at all.
        windows = windows_between(start, end, freq)
        if dry_run:
            try:
                found = coverage(parsed_target.open_repository(), group, append_dim, branch=branch)
                todo = [w for w in windows if found.missing_between(w.start, w.end)]
            except (OSError, ValueError):
                todo = windows
            console.print(f"{len(todo)} of {len(windows)} windows would be written:")
            for window in todo:
                console.print(f"  {window}")
            return
        runnable = on_scheduler(backfill_flow, scheduler_address)
        wait_for_temporary_api()
        with _progress_bar(), quiet_console():
            result = runnable(
                target=parsed_target,
                source=parsed_source,
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
        parsed = _target(target, branch)
        repo = parsed.open_repository()
        _require_branch(repo, parsed)
        session = repo.readonly_session(branch=branch)
        _require_group(session, group, parsed)
        _require_dimension(session, group, append_dim)
        found = coverage(repo, normalize_group(group), append_dim, branch=branch)
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
    start: Annotated[
        datetime | None,
        typer.Option(
            help="Where the first scheduled run begins while the target is empty (default: "
            "the source's first label; the synthetic source's is 2020-01-01)."
        ),
    ] = None,
    late_data: Annotated[
        LateDataOption,
        typer.Option(
            help="A label missing on the step while later ones are there: wait (append up to "
            "it; the next run retries, no gap is published) or hole (append all, the missing "
            "labels as fill values, the gap recorded)."
        ),
    ] = LateDataOption.wait,
    validate_every: Annotated[
        float,
        typer.Option(
            min=1,
            help="Validate the archive every N seconds (it is also validated after each "
            "scheduled append).",
        ),
    ] = VALIDATE_EVERY,
) -> None:
    """Serve the deployments (append-scheduled, write, backfill, validate, maintenance)
    until stopped.

    Before serving it prints what the next scheduled run will write."""
    from deployments.serve import serve_deployments

    with _user_errors():
        if (interval is None) == (cron is None):
            raise ValueError("give exactly one of --interval SECONDS or --cron EXPR")
        serve_deployments(
            target=_target(target, branch),
            source=parse_source(source, name="--source"),
            group=group,
            append_dim=append_dim,
            interval=interval,
            cron=cron,
            scheduler_address=scheduler_address,
            start=start,
            late_data=late_data.value,
            validate_every=validate_every,
            verbose=_verbose,
        )


@app.command()
def daemon() -> None:
    """Keep an imported icefloe ready, so that commands start at once (until stopped).

    Commands that find its socket (ICEFLOE_DAEMON_SOCKET, default ~/.icefloe/daemon.sock)
    and share its Prefect, dask and icefloe settings run in its warm process, with their own
    terminal, environment and exit status; others run as before. ICEFLOE_DAEMON=0 turns
    it off for a command. See flows/daemon.py."""
    from flows.daemon import serve as serve_daemon

    raise typer.Exit(serve_daemon())


# -- the group's spec ---------------------------------------------------------------------------

spec_app = typer.Typer(
    name="spec",
    help="A group's declared spec (docs/spec.md): show it, declare it, compare with it.",
    no_args_is_help=True,
)
app.add_typer(spec_app)

SpecFileOption = Annotated[
    Path | None, typer.Option("--from", help="A spec as YAML (what `icefloe spec show` prints).")
]


@spec_app.command("show")
def spec_show(
    target: TargetOption,
    branch: BranchOption = "main",
    group: GroupOption = None,
    inferred: Annotated[
        bool,
        typer.Option(
            "--inferred", help="Print the spec of what the group holds now, not the stored one."
        ),
    ] = False,
    append_dim: Annotated[
        str | None, typer.Option(help="With --inferred: the dimension appends extend.")
    ] = None,
) -> None:
    """Print the group's spec as YAML."""
    from flows.spec import show_spec, stored_structure

    with _user_errors():
        parsed = _target(target, branch)
        if inferred:
            spec = stored_structure(parsed, group, append_dim)
        else:
            found = show_spec(parsed, group)
            if found is None:
                raise PlanError(
                    "the group has no spec (it was written before specs existed): `icefloe spec "
                    "init` adds one from its arrays, `icefloe spec show --inferred` prints it "
                    "first",
                    group=normalize_group(group),
                )
            spec = found
    typer.echo(spec.to_yaml(), nl=False)


@spec_app.command("init")
def spec_init(
    target: TargetOption,
    branch: BranchOption = "main",
    group: GroupOption = None,
    from_file: SpecFileOption = None,
    append_dim: Annotated[
        str | None,
        typer.Option(help="The dimension appends extend (default: guessed from the arrays)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the spec the group has already.")
    ] = False,
) -> None:
    """Store a spec with the group: inferred from its arrays, or read from --from.

    A group that holds nothing yet takes it as the declaration its first write follows."""
    from flows.spec import init_spec

    with _user_errors():
        parsed = _target(target, branch)
        declared = _spec_file(from_file)
        spec, snapshot = init_spec(parsed, group, declared, append_dim=append_dim, force=force)
    where = f"group {normalize_group(group)}" if normalize_group(group) else "the root group"
    console.print(f"Committed [bold]{snapshot}[/bold] to branch {branch}: the spec of {where}.")
    typer.echo(spec.to_yaml(), nl=False)


@spec_app.command("diff")
def spec_diff(
    target: TargetOption,
    branch: BranchOption = "main",
    group: GroupOption = None,
    from_file: SpecFileOption = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source", "-s", help="Compare what this source would write (path, glob or JSON)."
        ),
    ] = None,
) -> None:
    """What a YAML spec (--from) or a source (--source) changes against the group's spec.

    Exits 1 when they differ, like diff."""
    from flows.spec import diff_spec

    with _user_errors():
        if (from_file is None) == (source is None):
            raise RequestError("give exactly one of --from SPEC.yaml or --source SOURCE")
        parsed = _target(target, branch)
        if source is not None:
            changes = diff_spec(parsed, group, source=parse_source(source, name="--source"))
        else:
            changes = diff_spec(parsed, group, spec=_spec_file(from_file))
    if not changes:
        console.print("No differences from the group's spec.")
        return
    for change in changes:
        console.print(f"- {change}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _spec_file(path: Path | None) -> DatasetSpec | None:
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError as err:
        raise RequestError(f"--from {path}: cannot read the spec ({err.strerror})") from None
    try:
        return DatasetSpec.from_yaml(text)
    except ValueError as err:
        raise RequestError(f"--from {path}: {err}") from None


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
        parsed_source: SourceModel = parse_source(source, name="--source")
        # Options are parsed (and refused) after --target and --source, in the order given.
        options = {k: v() if callable(v) else v for k, v in options.items()}
        runnable = on_scheduler(flow, scheduler_address)
        wait_for_temporary_api()
        with _progress_bar(), quiet_console():
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
    try:
        if text.lstrip().startswith("{"):
            value = loads_json("--target", text, TARGET_EXAMPLE)
            return validate("--target", TypeAdapter(Target), value, TARGET_EXAMPLE)
        return Target(repo=text, branch=branch)
    except ValidationError as err:
        raise RequestError(validation_message("--target", err, "./archive")) from None


def _encoding_option(text: str | None) -> Encoding | None:
    if text is None:
        return None
    value = loads_json("--encoding", text, ENCODING_EXAMPLE)
    encoding: Encoding = validate("--encoding", _ENCODING, value, ENCODING_EXAMPLE)
    return encoding


def _region_option(text: str) -> RegionParameter:
    if text.strip() == "auto":
        return "auto"
    value = loads_json("--region", text, REGION_EXAMPLE)
    for dim, bounds in value.items():
        # Checked by hand: pydantic's answer for a union is one line per member it tried.
        pair = isinstance(bounds, list) and len(bounds) == 2
        if bounds != "auto" and not (pair and all(type(b) is int for b in bounds)):
            raise RequestError(
                f'--region is not valid: {dim!r} must be [start, stop] (two integers) or "auto", '
                f"not {json.dumps(bounds)}; e.g. --region '{REGION_EXAMPLE}'"
            )
    region: RegionParameter = validate("--region", _REGION, value, REGION_EXAMPLE)
    return region


def _require_branch(repo: icechunk.Repository, target: Target) -> None:
    """For commands that only read: a missing branch is named, not an icechunk error."""
    branches = repo.list_branches()
    if target.branch not in branches:
        raise TargetError(
            f"branch {target.branch!r} does not exist in {target.repo}: use one of "
            f"{sorted(branches)} (--branch)"
        )


def _require_group(session: Any, group: str | None, target: Target) -> None:
    """For commands that only read: a missing group is named, not a zarr KeyError."""
    normalized = normalize_group(group)
    if normalized is not None and not StoredGroup(session.store, normalized).exists:
        raise GroupNotFoundError(
            f"there is no group {normalized!r} in {target.repo} (branch {target.branch}); "
            "check --group for a typo",
            group=normalized,
        )


def _require_dimension(session: Any, group: str | None, dim: str) -> None:
    stored = StoredGroup(session.store, normalize_group(group))
    if not stored.is_empty and dim not in stored.indexes:
        raise PlanError(
            f"it has no dimension {dim!r} (its dimensions: "
            f"{sorted(str(d) for d in stored.sizes)}); pass one of them as --append-dim",
            group=normalize_group(group),
        )


@contextmanager
def _user_errors() -> Iterator[None]:
    """Requests icefloe refuses end as one line on stderr (exit 2 for a malformed option, 1
    otherwise); with --verbose their traceback comes first. Other errors propagate with
    their traceback: they are bugs to report."""
    try:
        yield
    except _USER_ERRORS as err:
        if isinstance(err, IcefloeError) and not is_refusal(err):
            raise
        if _verbose:
            errors.print("".join(traceback.format_exception(err)), markup=False, highlight=False)
        # soft_wrap: one line however narrow the terminal, so it can be grepped and copied
        errors.print(
            f"[red]error:[/red] {escape(str(err))}", markup=True, highlight=False, soft_wrap=True
        )
        raise typer.Exit(2 if isinstance(err, RequestError) else 1) from err


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
    # soft_wrap: one line, never broken mid-sentence at 80 columns when piped or logged
    console.print(
        f"Committed [bold]{result.snapshot_id}[/bold] to branch {result.branch}: {result.mode} "
        f"of {result.group or 'the root group'}, {len(result.variables)} variables, "
        f"{result.chunks_written} chunks, {human_bytes(result.bytes_written)}.",
        soft_wrap=True,
    )


def _log_block(snapshot: Any, width: int) -> list[str]:
    """``commit <id>  <date>``, then what icefloe wrote, each line wrapped at ``width``."""
    block = snapshot.metadata.get("icefloe") or {}
    head = f"commit {snapshot.id}  {snapshot.written_at.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    lines = [head.rstrip()]
    if not block:
        return lines + _wrapped(snapshot.message, width)
    what = [str(block.get("mode", "")), f"group {block.get('group') or '/'}"]
    if "label_range" in block:
        dim = block.get("append_dim", "")
        what.append(f"{dim} {' … '.join(block['label_range'])}".strip())
    elif "region" in block:
        what.append(", ".join(f"{d}[{a}:{b}]" for d, (a, b) in block["region"].items()))
    lines += _wrapped(" · ".join(w for w in what if w), width)
    size = []
    if "chunks_written" in block:
        size.append(f"{block['chunks_written']} chunks, {human_bytes(block['bytes_written'])}")
    if block.get("flow_run_name"):
        size.append(f"flow run {block['flow_run_name']}")
    if size:
        lines += _wrapped(" · ".join(size), width)
    if block.get("variables"):
        lines += _wrapped("variables: " + ", ".join(block["variables"]), width)
    for gap in block.get("gaps") or []:
        # labels an append left as fill values (on_gap="fill", late_data="hole")
        lines += _wrapped(f"gap: {gap['first']} … {gap['last']} ({gap['count']} labels)", width)
    if block.get("stopped_before"):
        lines += _wrapped(f"stopped before the missing label {block['stopped_before']}", width)
    if not snapshot.message.startswith("icefloe: "):  # icefloe's own repeats the lines above
        lines += _wrapped(snapshot.message, width)
    return lines


def _wrapped(text: str, width: int, indent: str = "    ") -> list[str]:
    # break_long_words=False: an id or a variable name stays whole, even if it overflows
    return textwrap.wrap(
        text,
        width=width,
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_long_words=False,
        break_on_hyphens=False,
    ) or [indent.rstrip()]


if __name__ == "__main__":
    app()
