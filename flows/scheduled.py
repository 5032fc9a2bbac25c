"""The flows deployments run: a scheduled append, and one write flow for the Prefect UI.

A scheduled append asks the source for every label after the last stored one up to its
scheduled time, so a late run, a repeated run and the runs missed while the service was
down all end in the same state: labels already stored are skipped (``on_overlap="skip"``),
and a run with nothing new makes no commit.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import icechunk
import pandas as pd
from prefect import flow
from prefect.logging import get_run_logger

from flows.backfill import publish_coverage
from flows.results import WriteResult
from flows.runner import task_runner
from flows.sources import Source
from flows.targets import Target, TargetNotFoundError
from flows.write import (
    Encoding,
    RegionParameter,
    RunOptions,
    append_flow,
    create_flow,
    load_credentials,
    modify_flow,
    region_flow,
)
from tasks.coverage import coverage
from tasks.planner import OnOverlap
from tasks.stored import StoredGroup, normalize_group

__all__ = ["last_label", "scheduled_append_flow", "write_flow"]

WriteMode = Literal["create", "overwrite", "modify", "append", "region"]


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
def scheduled_append_flow(
    target: Target,
    source: Source,
    append_dim: str = "time",
    group: str | None = None,
    scheduled_time: dt.datetime | None = None,
    scheduler_address: str | None = None,
) -> WriteResult:
    """Append the source's labels after the last stored one up to the scheduled time
    (default: the run's scheduled start), catching up missed runs."""
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
    )
    repo = target.open_repository(credentials=load_credentials(target))
    publish_coverage(
        coverage(repo.readonly_session(branch=target.branch), normalize_group(group), append_dim),
        f"scheduled append of {target.describe()} at {until}",
    )
    return result


@flow(name="icefloe-write", task_runner=task_runner())
def write_flow(
    target: Target,
    source: Source,
    mode: WriteMode = "append",
    group: str | None = None,
    append_dim: str = "time",
    on_overlap: OnOverlap = "error",
    region: RegionParameter = "auto",
    only_new_vars: bool = False,
    encoding: Encoding | None = None,
    dry_run: bool = False,
    scheduler_address: str | None = None,
    options: RunOptions | None = None,
) -> WriteResult:
    """Any write, chosen by ``mode``, with its options: the form behind ad-hoc UI runs."""
    common = {
        "group": group,
        "dry_run": dry_run,
        "scheduler_address": scheduler_address,
        "options": options,
    }
    if mode in ("create", "overwrite"):
        return create_flow(
            target, source, overwrite=mode == "overwrite", encoding=encoding, **common
        )
    if mode == "modify":
        return modify_flow(target, source, only_new_vars=only_new_vars, encoding=encoding, **common)
    if mode == "append":
        return append_flow(target, source, append_dim=append_dim, on_overlap=on_overlap, **common)
    return region_flow(target, source, region=region, **common)
