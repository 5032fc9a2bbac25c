"""The scheduled append that deployments run on a cron or interval schedule.

A scheduled append asks the source for every label after the last stored one up to its
scheduled time, so a late run, a repeated run and the runs missed while the service was
down all end in the same state: labels already stored are skipped (``on_overlap="skip"``),
and a run with nothing new makes no commit.

Late data (docs/spec.md): when the source lacks a label on the group's step but has later
ones (a file that has not arrived), ``late_data="wait"`` (the default) appends only up to
the missing label, and the next run, which asks again from the last stored label, appends
it once it is there: the archive never publishes a gap. ``late_data="hole"`` appends
everything there is, writes the missing labels as fill values and records them as a gap in
the commit, for a backfill to fill later.

After its commit the run publishes the coverage (read from the commit's record: O(gaps),
tasks/coverage.py) and runs the validate flow as a subflow (flows/validate.py), which
requests a backfill for each gap.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import icechunk
import pandas as pd
from prefect import flow
from prefect.logging import get_run_logger

from flows.backfill import publish_coverage
from flows.credentials import load_credentials
from flows.forms import FORM
from flows.naming import run_name
from flows.parameter_docs import described
from flows.refusals import refusing
from flows.results import WriteResult
from flows.sources import Source, SourceModel, SyntheticSource
from flows.sources.synthetic import SYNTHETIC_VARIABLES
from flows.targets import Target
from flows.validate import announce_refused_append, validate_flow
from flows.write import RunOptions, WriteRun, run_write
from tasks.cluster import task_runner
from tasks.coverage import coverage
from tasks.errors import RequestError, TargetNotFoundError, is_refusal
from tasks.plan import human_bytes
from tasks.request import OnGap, WriteRequest
from tasks.stored import StoredGroup, normalize_group

__all__ = ["LATE_DATA", "LateData", "first_run_preview", "last_label", "scheduled_append_flow"]

LateData = Literal["wait", "hole"]
"""What a scheduled append does when a label on the step is missing but later ones are there."""

LATE_DATA: dict[LateData, OnGap] = {"wait": "stop", "hole": "fill"}
"""The append's ``on_gap`` for each late-data policy."""


def last_label(
    repo: icechunk.Repository, branch: str, group: str | None, append_dim: str
) -> pd.Timestamp | None:
    """The last label stored along ``append_dim``, or None when the group holds nothing yet."""
    stored = StoredGroup(repo.readonly_session(branch=branch).store, normalize_group(group))
    if stored.is_empty or append_dim not in stored.indexes:
        return None
    return pd.Timestamp(stored.indexes[append_dim][-1])


def _as_naive_utc(moment: dt.datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


def first_run_preview(
    source: SourceModel,
    until: dt.datetime,
    start: dt.datetime | None = None,
) -> str:
    """What a scheduled run does against an empty target, in one sentence.

    A first run writes every source label up to its scheduled time: with the synthetic
    source's default start (2020) that is years of labels, which an operator should read
    before it happens, not find out from a 10-minute run. Only the synthetic source knows
    its labels without being opened; other kinds are described by their window.
    """
    end = _as_naive_utc(until)
    begin = None if start is None else _as_naive_utc(start)
    if isinstance(source, SyntheticSource) and source.calendar == "standard":
        origin = pd.Timestamp(source.start)
        first = origin if begin is None or begin <= origin else begin
        try:
            step = pd.Timedelta(pd.tseries.frequencies.to_offset(source.freq))
        except (ValueError, TypeError):  # months, years: no fixed step to count with
            step = None
        if step is not None:
            # labels are origin + k·step: the first one at or after `first`, up to `end`
            k0 = -((origin - first) // step)
            k1 = (end - origin) // step
            count = max(0, k1 - k0 + 1)
            size = count * source.ny * source.nx * SYNTHETIC_VARIABLES * 4  # float32
            return (
                f"the first run creates the group and writes {count:,} labels "
                f"({origin + k0 * step} … {origin + k1 * step}, every {source.freq}, about {human_bytes(size)}); "
                "choose a later start with --start (or the start parameter) to write less"
            )
    since = f"from {begin}" if begin is not None else "from the source's first label"
    return (
        f"the first run creates the group and writes every source label {since} up to "
        f"{end}; choose a later start with --start (or the start parameter) to write less"
    )


@flow(name="icefloe-scheduled-append", flow_run_name=run_name, task_runner=task_runner())
@refusing
@described(
    scheduled_time="Append up to this time; empty for the run's scheduled start.",
    start=(
        "Where the first run begins while the target holds nothing yet; empty for the "
        "source's first label (the synthetic source's is 2020-01-01: years of data)."
    ),
    late_data=(
        "When a label on the group's step is missing but later ones are there (a file that "
        'has not arrived): "wait" appends up to the missing label and the next run retries '
        'from there, so the archive never has a gap; "hole" appends everything, writes the '
        "missing labels as fill values and records the gap in the commit (a backfill fills "
        "it later)."
    ),
    validation=(
        "Validate the archive after the append (freshness, NaN fraction, gaps, structure) and "
        "request a backfill for each gap: the validate flow, run as part of this run."
    ),
)
def scheduled_append_flow(
    target: Target,
    source: Source,
    append_dim: str = "time",
    group: Annotated[str | None, FORM] = None,
    scheduled_time: Annotated[dt.datetime | None, FORM] = None,
    scheduler_address: Annotated[str | None, FORM] = None,
    start: Annotated[dt.datetime | None, FORM] = None,
    late_data: LateData = "wait",
    validation: bool = True,
) -> WriteResult:
    """Append the source's labels after the last stored one up to the scheduled time,
    catching up runs that were missed; a run with nothing new makes no commit."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    until = _as_naive_utc(
        scheduled_time or flow_run.scheduled_start_time or dt.datetime.now(dt.UTC)
    )
    try:
        repo = target.open_repository(credentials=load_credentials(target))
        after = last_label(repo, target.branch, group, append_dim)
    except TargetNotFoundError:
        after = None  # a first run creates the repository and the group from the source's start
    if after is None:
        if start is None and source.needs_window_start:
            raise RequestError(
                f"the first scheduled run into an empty target cannot tell where "
                f"{source.describe()} begins (its paths are named by the window start): give "
                "the first label to write as start (icefloe serve --start 2024-01-01)"
            )
        logger.info("scheduled append: %s", first_run_preview(source, until, start))
        after = None if start is None else _as_naive_utc(start)
    else:
        logger.info("scheduled append: labels after %s up to %s", after, until)
    # run_write itself, not append_flow as a subflow: a subflow is one more flow run to
    # create and finish, and a synchronous one waits for its heartbeat thread at exit, all
    # inside this run's time (a run with nothing new took about a second more).
    try:
        result = run_write(
            WriteRun(
                target,
                source,
                WriteRequest(
                    mode="append",
                    group=group,
                    append_dim=append_dim,
                    on_overlap="skip",
                    on_gap=LATE_DATA[late_data],
                ),
                scheduler_address=scheduler_address,
                options=RunOptions(),
                window=(after, until + pd.Timedelta(1, "ns")),
                # the documented first run: an empty target gets the repository and the group
                create_repository=True,
            )
        )
    except Exception as err:
        if validation and is_refusal(err):
            # a source that drifted from the spec (a dtype, a unit) is refused with the
            # branch unchanged: say so where users' automations listen
            announce_refused_append(target, normalize_group(group), err)
        raise
    if not result.skipped:
        # A run that wrote nothing leaves the coverage as the last run published it; drawing
        # it again (matplotlib's import alone is about a second in a new process) would
        # make a run with nothing new take seconds instead of a fraction of one.
        repo = target.open_repository(credentials=load_credentials(target))
        publish_coverage(
            coverage(repo, normalize_group(group), append_dim, branch=target.branch),
            f"scheduled append of {target.describe()} at {until}",
            target,
        )
    if validation:
        # A subflow, not an event-triggered deployment: it validates exactly the commit this
        # run made, shows as this run's child, and needs no automation service to run; the
        # append's own outcome stands whatever validation finds or fails on.
        state = validate_flow(target, group=group, append_dim=append_dim, return_state=True)
        if not state.is_completed():
            logger.warning("validation after the append did not complete: %s", state.message)
    return result
