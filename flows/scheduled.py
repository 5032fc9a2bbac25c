"""The scheduled append that deployments run on a cron or interval schedule.

A scheduled append asks the source for every label after the last stored one up to its
scheduled time, so a late run, a repeated run and the runs missed while the service was
down all end in the same state: labels already stored are skipped (``on_overlap="skip"``),
and a run with nothing new makes no commit.
"""

from __future__ import annotations

import datetime as dt

import icechunk
import pandas as pd
from prefect import flow
from prefect.logging import get_run_logger

from flows.backfill import publish_coverage
from flows.refusals import refusing
from flows.results import WriteResult
from flows.runner import task_runner
from flows.sources import Source
from flows.targets import Target, TargetNotFoundError
from flows.write import RunOptions, append_flow, load_credentials
from tasks.coverage import coverage
from tasks.stored import StoredGroup, normalize_group

__all__ = ["last_label", "scheduled_append_flow"]


def last_label(
    repo: icechunk.Repository, branch: str, group: str | None, dim: str
) -> pd.Timestamp | None:
    """The last label stored along ``dim``, or None when the group holds nothing yet."""
    stored = StoredGroup(repo.readonly_session(branch=branch).store, normalize_group(group))
    if stored.is_empty or dim not in stored.indexes:
        return None
    return pd.Timestamp(stored.indexes[dim][-1])


def _as_naive_utc(moment: dt.datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


@flow(name="icefloe-scheduled-append", task_runner=task_runner())
@refusing
def scheduled_append_flow(
    target: Target,
    source: Source,
    append_dim: str = "time",
    group: str | None = None,
    scheduled_time: dt.datetime | None = None,
    scheduler_address: str | None = None,
) -> WriteResult:
    """Append the source's labels after the last stored one up to the scheduled time,
    catching up runs that were missed; a run with nothing new makes no commit.

    Args:
        target: The repository (a path, or a file://, s3://, gs:// or az:// URL), its
            branch, and non-secret storage options.
        source: Where the data comes from: files, zarr, icechunk, python or synthetic.
        append_dim: The dimension to extend, e.g. "time".
        group: The group inside the repository, e.g. "era5/surface"; empty for the root.
        scheduled_time: Append up to this time; empty for the run's scheduled start.
        scheduler_address: A Dask scheduler (tcp://host:8786) for the heavy write; empty
            for a local cluster (or ICEFLOE_SCHEDULER_ADDRESS).
    """
    from prefect.runtime import flow_run

    logger = get_run_logger()
    until = _as_naive_utc(
        scheduled_time or flow_run.scheduled_start_time or dt.datetime.now(dt.UTC)
    )
    try:
        repo = target.open_repository(credentials=load_credentials(target))
        start = last_label(repo, target.branch, group, append_dim)
    except TargetNotFoundError:
        start = None  # a first run creates the repository and the group from the source's start
    logger.info("scheduled append: labels after %s up to %s", start or "the source's start", until)
    result = append_flow(
        target,
        source,
        append_dim=append_dim,
        group=group,
        on_overlap="skip",
        scheduler_address=scheduler_address,
        options=RunOptions(),
        window_start=start,
        window_end=until + pd.Timedelta(1, "ns"),
        # the documented first run: an empty target gets the repository and the group
        create_missing=True,
    )
    repo = target.open_repository(credentials=load_credentials(target))
    publish_coverage(
        coverage(repo.readonly_session(branch=target.branch), normalize_group(group), append_dim),
        f"scheduled append of {target.describe()} at {until}",
    )
    return result
