"""Backfills: fill [start, end) window by window, and re-run only what is still missing.

    open target → extend the arrays to the range (one serialized metadata step)
    → read the coverage from the store → write each missing window as a region write,
    a few at a time → coverage artifact

What is missing is read from the store, never remembered: a re-run after a failure,
or after a scheduled append that came in between, fills exactly the windows without
data. Windows are region writes, so they commit side by side with each other and
with appends (a window whose arrays were resized meanwhile starts over).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import datetime as dt
import itertools
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import icechunk
import pandas as pd
import xarray as xr
from prefect import flow, task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel

from flows.lifeline import ensure_lifeline
from flows.locks import serialized
from flows.runner import task_runner
from flows.sources import Source, SourceModel
from flows.targets import Target
from flows.write import load_credentials, open_source
from tasks.commit import commit_lock, commit_session
from tasks.coverage import Coverage, coverage
from tasks.errors import CommitConflictError, PlanError
from tasks.phases import dask_client, retry_transient
from tasks.progress import TaskCount, counting_scheduler
from tasks.stored import StoredGroup, normalize_group
from tasks.writer import XarrayDatasetWriter

__all__ = ["BackfillResult", "backfill_flow", "publish_coverage"]


class BackfillResult(BaseModel):
    """What a backfill run did."""

    windows: int
    windows_written: int
    windows_already_filled: int
    labels_present: int
    labels_total: int
    gaps: int


@dataclass(frozen=True)
class Window:
    start: pd.Timestamp
    end: pd.Timestamp

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


def windows_between(start: Any, end: Any, freq: str) -> list[Window]:
    """[start, end) cut into windows of length ``freq`` (the last one may be shorter)."""
    first, last = pd.Timestamp(start), pd.Timestamp(end)
    if last <= first:
        raise PlanError(f"backfill end {last} is not after its start {first}; swap or fix them")
    edges = [*list(pd.date_range(first, last, freq=freq, inclusive="left")), last]
    return [Window(a, b) for a, b in itertools.pairwise(edges)]


@flow(name="icefloe-backfill", task_runner=task_runner())
def backfill_flow(
    target: Target,
    source: Source,
    start: dt.datetime,
    end: dt.datetime,
    freq: str = "1D",
    group: str | None = None,
    append_dim: str = "time",
    batch: int = 2,
    scheduler_address: str | None = None,
) -> BackfillResult:
    """Fill [start, end) along ``append_dim`` from the source, ``freq`` per window and
    ``batch`` windows at a time; windows that already hold data are left alone."""
    logger = get_run_logger()
    ensure_lifeline()  # killed, the run leaves no process behind (flows.lifeline)
    group = normalize_group(group)
    windows = windows_between(start, end, freq)
    repo = target.open_repository(create=True, credentials=load_credentials(target))
    with dask_client(scheduler_address) as client:
        with serialized(target, group, repo=repo), counting_scheduler(client, TaskCount()):
            extend_to(repo, target, source, group, append_dim, windows)
        found = coverage(repo.readonly_session(branch=target.branch), group, append_dim)
        todo = [w for w in windows if found.missing_between(w.start, w.end)]
        logger.info(
            "backfill %s → %s: %d windows, %d hold data already, %d to write, %d at a time",
            windows[0].start,
            windows[-1].end,
            len(windows),
            len(windows) - len(todo),
            len(todo),
            batch,
        )
        progress = create_progress_artifact(
            progress=0.0, description=f"backfill: windows written of {len(todo)}"
        )
        _run_windows(
            todo,
            batch,
            progress,
            lambda w: backfill_window(repo, target, source, group, append_dim, w, client),
        )
    found = coverage(repo.readonly_session(branch=target.branch), group, append_dim)
    publish_coverage(found, f"backfill of {target.describe()}")
    return BackfillResult(
        windows=len(windows),
        windows_written=len(todo),
        windows_already_filled=len(windows) - len(todo),
        labels_present=found.n_present,
        labels_total=len(found.labels),
        gaps=len(found.gaps()),
    )


def _run_windows(todo: list[Window], batch: int, progress: Any, run: Any) -> None:
    logger = get_run_logger()
    done = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, batch)) as pool:
        # each thread carries the flow's context, so its task runs belong to this flow run
        futures = {
            pool.submit(contextvars.copy_context().run, run, window): window for window in todo
        }
        for future in concurrent.futures.as_completed(futures):
            future.result()
            done += 1
            update_progress_artifact(progress, progress=round(100 * done / max(len(todo), 1), 1))
            logger.info("backfill: %d of %d windows written (%s)", done, len(todo), futures[future])


def extend_to(
    repo: icechunk.Repository,
    target: Target,
    source: SourceModel,
    group: str | None,
    append_dim: str,
    windows: list[Window],
) -> None:
    """Create the group from the first window if it is missing, then grow its arrays to
    the last window's end with labels only (values stay missing until their window runs)."""
    session = repo.writable_session(target.branch)
    stored = StoredGroup(session.store, group)
    first = windows[0]
    if stored.is_empty:
        initial = open_source(source, first.start, first.end)
        _commit_write(
            repo,
            session,
            initial,
            lambda w: w.for_append(group, append_dim=append_dim),
            f"icefloe: backfill created the group from {first}",
        )
        session = repo.writable_session(target.branch)
        stored = StoredGroup(session.store, group)
    last = stored.dataset.indexes[append_dim][-1]
    beyond = open_source(source, last, windows[-1].end)
    labels = beyond.indexes[append_dim]
    labels = labels[labels > last]
    if not len(labels):
        return
    extension = xr.Dataset(coords={append_dim: beyond[append_dim].sel({append_dim: labels})})
    _commit_write(
        repo,
        session,
        extension,
        lambda w: w.for_append(group, append_dim=append_dim, fill_missing=True),
        f"icefloe: backfill extended {append_dim} to {labels[-1]}",
    )
    get_run_logger().info(
        "backfill: extended %r by %d labels to %s", append_dim, len(labels), labels[-1]
    )


def _commit_write(
    repo: icechunk.Repository, session: icechunk.Session, ds: xr.Dataset, choose: Any, message: str
) -> str:
    plan = choose(XarrayDatasetWriter(ds, store=session.store)).write()
    with commit_lock(repo):
        return commit_session(
            session, message, {"icefloe": {"mode": plan.mode, "message": message}}
        )


@task(
    name="backfill_window",
    task_run_name="backfill-{window}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_transient,
)
def backfill_window(
    repo: icechunk.Repository,
    target: Target,
    source: SourceModel,
    group: str | None,
    append_dim: str,
    window: Window,
    client: Any,
    attempts: int = 4,
) -> str | None:
    """One window as a region write; starts over when an append resized the arrays."""
    ds = open_source(source, window.start, window.end)
    # variables without the append dimension (a grid mapping, static fields) are the
    # group's already; a region write may only hold what lies in the region
    ds = ds.drop_vars([n for n, v in ds.data_vars.items() if append_dim not in v.dims])
    for attempt in range(1, attempts + 1):
        session = repo.writable_session(target.branch)
        try:
            # this thread's dask work goes to the flow's cluster (threads if none)
            with counting_scheduler(client, TaskCount()):
                return _commit_write(
                    repo,
                    session,
                    ds,
                    lambda w: w.for_region(group, region={append_dim: "auto"}),
                    f"icefloe: backfill {append_dim} {window}",
                )
        except CommitConflictError as err:
            if err.overlapping or attempt == attempts:
                raise
            time.sleep(random.uniform(0.1, 0.5) * attempt)
    return None


def publish_coverage(found: Coverage, title: str) -> None:
    """A markdown table and a PNG strip of the coverage, as Prefect artifacts."""
    create_markdown_artifact(markdown=f"{found.markdown()}\n\n_{title}_", key="icefloe-coverage")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "coverage.png"
        found.plot(str(path))
        # Prefect shows images by URL; a data URL keeps the PNG with the artifact itself
        import base64

        data = base64.b64encode(path.read_bytes()).decode()
        create_image_artifact(
            image_url=f"data:image/png;base64,{data}", key="icefloe-coverage-plot"
        )
