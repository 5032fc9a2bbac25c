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

import base64
import concurrent.futures
import contextvars
import datetime as dt
import itertools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import icechunk
import pandas as pd
import xarray as xr
from prefect import flow
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.logging import get_run_logger
from pydantic import BaseModel

from flows.credentials import load_credentials
from flows.forms import FORM
from flows.lifeline import ensure_lifeline
from flows.naming import artifact_key, run_name, tag_run
from flows.parameter_docs import described
from flows.refusals import refusing
from flows.results import WriteResult
from flows.sources import Source, SourceModel
from flows.sources.window import to_timestamp
from flows.targets import Target
from flows.write import WriteRun, open_source, run_write
from tasks.cluster import task_runner
from tasks.coverage import Coverage, coverage
from tasks.errors import PlanError, RequestError, TargetNotFoundError
from tasks.request import WriteRequest
from tasks.stored import StoredGroup, normalize_group
from tasks.writer import XarrayDatasetWriter

__all__ = ["BackfillResult", "backfill_flow", "publish_coverage"]


class BackfillResult(BaseModel):
    """What a backfill run did."""

    windows: int
    windows_written: int
    windows_already_filled: int
    windows_without_source_data: int  # the source had no labels there yet
    labels_present: int
    labels_total: int
    gaps: int


@dataclass(frozen=True)
class Window:
    start: pd.Timestamp
    end: pd.Timestamp

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


def _not_after(end: pd.Timestamp, label: Any) -> bool:
    """Whether ``end`` is at or before ``label`` (a datetime64 or cftime label); False when
    the label has no Gregorian counterpart (30 February in 360_day) to compare with."""
    try:
        return bool(end <= to_timestamp(label, "the last stored label"))
    except ValueError:
        return False


def windows_between(start: Any, end: Any, freq: str) -> list[Window]:
    """[start, end) cut into windows of length ``freq`` (the last one may be shorter)."""
    first, last = pd.Timestamp(start), pd.Timestamp(end)
    if last <= first:
        raise PlanError(f"backfill end {last} is not after its start {first}; swap or fix them")
    try:
        starts = pd.date_range(first, last, freq=freq, inclusive="left")
    except ValueError as err:
        raise RequestError(
            f"freq {freq!r} is not a pandas frequency ({err}); use e.g. '1D', '6h' or '1MS'"
        ) from None
    edges = [*list(starts), last]
    return [Window(a, b) for a, b in itertools.pairwise(edges)]


@flow(name="icefloe-backfill", flow_run_name=run_name, task_runner=task_runner())
@refusing
@described(
    start="The first time to fill.",
    end="The time to fill up to (not included).",
    freq='The length of one window, as a pandas frequency: "1D", "6h", "MS".',
    batch="How many windows are written at the same time.",
)
def backfill_flow(
    target: Target,
    source: Source,
    start: dt.datetime,
    end: dt.datetime,
    freq: str = "1D",
    group: Annotated[str | None, FORM] = None,
    append_dim: str = "time",
    batch: int = 2,
    scheduler_address: Annotated[str | None, FORM] = None,
) -> BackfillResult:
    """Fill [start, end) along ``append_dim`` from the source, window by window; windows
    that already hold data are left alone, so a re-run fills only what is missing."""
    logger = get_run_logger()
    ensure_lifeline()  # killed, the run leaves no process behind (flows.lifeline)
    tag_run(target, group, "backfill")
    group = normalize_group(group)
    windows = windows_between(start, end, freq)
    backfill = _Backfill(target, source, group, append_dim, scheduler_address)
    repo = backfill.open_or_create(windows)
    # before a cluster is started for it: a wrong dimension is refused at once
    _check_dimension(
        StoredGroup(repo.readonly_session(branch=target.branch).store, group), group, append_dim
    )
    backfill.extend_to(repo, windows)
    found = coverage(repo, group, append_dim, branch=target.branch)
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
        progress=0.0,
        description=f"backfill of {target.describe()}: {len(todo)} windows to write",
    )
    written = _run_windows(todo, batch, progress, backfill.write_window)
    found = coverage(repo, group, append_dim, branch=target.branch)
    publish_coverage(found, f"backfill of {target.describe()}", target)
    return BackfillResult(
        windows=len(windows),
        windows_written=written,
        windows_already_filled=len(windows) - len(todo),
        windows_without_source_data=len(todo) - written,
        labels_present=found.n_present,
        labels_total=found.n_labels,
        gaps=len(found.gaps),
    )


def _check_dimension(stored: StoredGroup, group: str | None, append_dim: str) -> None:
    if not stored.is_empty and append_dim not in stored.indexes:
        raise PlanError(
            f"it has no dimension {append_dim!r} to fill (its dimensions: "
            f"{sorted(str(d) for d in stored.sizes)}); pass one of them as --append-dim "
            "(append_dim=)",
            group=group,
        )


def _run_windows(
    todo: list[Window],
    batch: int,
    progress: UUID,
    write: Callable[[Window], WriteResult | None],
) -> int:
    """Write the windows a few at a time; returns how many the source had data for."""
    logger = get_run_logger()
    done = written = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, batch)) as pool:
        # each thread carries the flow's context, so its task runs belong to this flow run
        futures = {
            pool.submit(contextvars.copy_context().run, write, window): window for window in todo
        }
        for future in concurrent.futures.as_completed(futures):
            written += future.result() is not None
            done += 1
            update_progress_artifact(progress, progress=round(100 * done / max(len(todo), 1), 1))
            logger.info("backfill: %d of %d windows done (%s)", done, len(todo), futures[future])
    return written


@dataclass(frozen=True)
class _Backfill:
    """The writes of one backfill; each is an ordinary flow write (flows.write), so it
    plans, resumes, commits and records its commit like any other."""

    target: Target
    source: SourceModel
    group: str | None
    append_dim: str
    scheduler_address: str | None

    def _write(
        self, request: WriteRequest, window: Window, dataset: xr.Dataset, *, creates: bool = False
    ) -> WriteResult:
        run = WriteRun(
            self.target,
            self.source,
            request,
            scheduler_address=self.scheduler_address,
            create_repository=creates,
            window=(window.start.to_pydatetime(), window.end.to_pydatetime()),
            own_run=False,
        )
        return run_write(run, dataset)

    def _first_window(self, windows: list[Window]) -> tuple[WriteRequest, Window, xr.Dataset]:
        first = windows[0]
        request = WriteRequest(mode="append", group=self.group, append_dim=self.append_dim)
        return request, first, open_source(self.source, first.start, first.end, self.append_dim)

    def open_or_create(self, windows: list[Window]) -> icechunk.Repository:
        """The repository; a missing one is created (a backfill may start an archive), but
        only after the group's creation from the first window was planned in memory, so
        that a refused backfill leaves nothing behind."""
        credentials = load_credentials(self.target)
        try:
            return self.target.open_repository(credentials=credentials)
        except TargetNotFoundError:
            pass
        request, _, initial = self._first_window(windows)
        scratch = icechunk.Repository.create(icechunk.in_memory_storage()).writable_session("main")
        XarrayDatasetWriter(initial, store=scratch.store).for_request(request).plan()
        return self.target.open_repository(create=True, credentials=credentials)

    def extend_to(self, repo: icechunk.Repository, windows: list[Window]) -> None:
        """Create the group from the first window if it is missing, then grow its arrays to
        the last window's end with labels only (values stay missing until their window runs)."""
        stored = StoredGroup(repo.readonly_session(branch=self.target.branch).store, self.group)
        if stored.is_empty:
            self._write(*self._first_window(windows), creates=True)
            stored = StoredGroup(repo.readonly_session(branch=self.target.branch).store, self.group)
        _check_dimension(stored, self.group, self.append_dim)
        last = stored.indexes[self.append_dim][-1]
        if _not_after(windows[-1].end, last):
            return  # every window lies inside the stored labels: nothing to grow
        beyond = open_source(self.source, last, windows[-1].end, self.append_dim)
        labels = beyond.indexes[self.append_dim]
        labels = labels[labels > last]
        if not len(labels):
            return
        axis = beyond[self.append_dim].sel({self.append_dim: labels})
        self._write(
            WriteRequest(
                mode="append", group=self.group, append_dim=self.append_dim, fill_missing=True
            ),
            Window(pd.Timestamp(last), windows[-1].end),
            xr.Dataset(coords={self.append_dim: axis}),
        )
        get_run_logger().info(
            "backfill: extended %r by %d labels to %s", self.append_dim, len(labels), labels[-1]
        )

    def write_window(self, window: Window) -> WriteResult | None:
        """One window as a region write (started over when an append resized the arrays);
        None when the source has no labels in it yet (a file that has not arrived: a later
        backfill, requested by the next validation, fills it)."""
        ds = open_source(self.source, window.start, window.end, self.append_dim)
        if not ds.sizes.get(self.append_dim, 0):
            get_run_logger().info(
                "backfill: the source has no labels in %s yet; left for a later backfill", window
            )
            return None
        # variables without the append dimension (a grid mapping, static fields) are the
        # group's already; a region write may only hold what lies in the region
        ds = ds.drop_vars([n for n, v in ds.data_vars.items() if self.append_dim not in v.dims])
        request = WriteRequest(mode="region", group=self.group, region={self.append_dim: "auto"})
        return self._write(request, window, ds)


def publish_coverage(found: Coverage, title: str, target: Target) -> None:
    """A markdown table and a PNG strip of the coverage, as Prefect artifacts keyed by the
    archive and group, so the UI shows how coverage moved from run to run."""
    create_markdown_artifact(
        markdown=f"{found.markdown()}\n\n_{title}_",
        key=artifact_key("coverage", target, found.group),
        description=f"which labels along {found.append_dim!r} hold data: {title}",
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "coverage.png"
        found.plot(str(path))
        # Prefect shows images by URL; a data URL keeps the PNG with the artifact itself
        data = base64.b64encode(path.read_bytes()).decode()
        create_image_artifact(
            image_url=f"data:image/png;base64,{data}",
            key=artifact_key("coverage-plot", target, found.group),
            description=f"coverage along {found.append_dim!r}, gaps in red: {title}",
        )
