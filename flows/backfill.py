"""Backfills: fill [start, end) window by window, and re-run only what is still missing.

    open target → extend the arrays to the range (one serialized metadata step)
    → read the coverage from the store → write the missing windows on the cluster, in
    units of consecutive windows → publish finished units in groups, one commit each
    → coverage artifact

What is missing is read from the store, never remembered: a re-run after a failure,
or after a scheduled append that came in between, fills exactly the windows without
data. Every window is a region write planned, written and verified by the writer like
any region run, but not a flow write of its own: windows are grouped into units that
never share a chunk (tasks/windows.py), each unit is one task on a dask worker writing
into a copy of a fork of the tip, and the flow process only submits units, merges the
forks that come back and commits them in groups (tasks/publish.py:WindowPublisher). A
thousand windows cost a few commits, not a thousand plans, phases and rebases, and no
two windows of one backfill ever race each other for the branch. A commit is whole
windows or nothing; a group whose arrays a concurrent append resized is written again
from the new tip.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import itertools
import math
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import icechunk
import pandas as pd
import xarray as xr
from distributed import Client, Future, wait
from prefect import flow, task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from pydantic import BaseModel

from flows.credentials import load_credentials
from flows.forms import FORM
from flows.lifeline import ensure_lifeline
from flows.lineage import materialize_commit
from flows.metadata import commit_metadata, current_run, parameters_digest
from flows.naming import artifact_key, run_name, tag_run
from flows.parameter_docs import described
from flows.refusals import refusing
from flows.results import WriteResult
from flows.sources import Source, SourceModel
from flows.sources.window import to_timestamp
from flows.targets import Target
from flows.write import WriteRun, open_region_window, open_source, run_write
from tasks.cluster import check_scheduler, dask_client, task_runner
from tasks.cluster import scheduler_address as resolve_scheduler_address
from tasks.commit import Metadata
from tasks.coverage import RECORD_KEY, Coverage, CoverageChange, coverage, coverage_record
from tasks.errors import CommitConflictError, PlanError, RequestError, TargetNotFoundError
from tasks.phases import retry_transient
from tasks.plan import WritePlan
from tasks.publish import WindowPublisher
from tasks.request import WriteRequest
from tasks.stored import StoredGroup, normalize_group
from tasks.windows import UnitWritten, WindowSpan, positions_of, units_of, write_windows
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
    commits: int = 0  # of the windows (extending the range and creating the group aside)
    rebased_commits: int = 0  # of those, commits rebased over someone else's commit
    windows_rewritten: int = 0  # written again after a concurrent change of the arrays
    # where the time went: "extend" (creating the group, extending the range), "plan"
    # (coverage, cutting windows into units, planning the first), "write" (units on the
    # cluster and their commits), "total"
    seconds: dict[str, float] = {}


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
    batch=(
        "At most this many windows are in flight on the cluster: they are written in units "
        "of consecutive windows (at least two per worker thread, at most 1 GiB each) and "
        "committed in groups every few seconds."
    ),
)
def backfill_flow(
    target: Target,
    source: Source,
    start: dt.datetime,
    end: dt.datetime,
    freq: str = "1D",
    group: Annotated[str | None, FORM] = None,
    append_dim: str = "time",
    batch: int = 128,
    scheduler_address: Annotated[str | None, FORM] = None,
) -> BackfillResult:
    """Fill [start, end) along ``append_dim`` from the source, window by window; windows
    that already hold data are left alone, so a re-run fills only what is missing."""
    logger = get_run_logger()
    began = time.perf_counter()
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
    extended = time.perf_counter()
    # opened again: extending the range may have recorded the group's manifest splitting
    repo = target.open_repository(credentials=load_credentials(target))
    found = coverage(repo, group, append_dim, branch=target.branch)
    todo = [
        w
        for w, missing in zip(
            windows, found.missing_in([(w.start, w.end) for w in windows]), strict=True
        )
        if missing
    ]
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
    planned = time.perf_counter()
    done = backfill.write_windows(repo, todo, batch, progress) if todo else _Written()
    wrote = time.perf_counter()
    found = coverage(repo, group, append_dim, branch=target.branch)
    publish_coverage(found, f"backfill of {target.describe()}", target)
    if done.without_source:
        logger.info(
            "backfill: the source has no labels yet in %d of the windows; left for a later "
            "backfill (the next validation asks for it)",
            done.without_source,
        )
    return BackfillResult(
        windows=len(windows),
        windows_written=len(todo) - done.without_source,
        windows_already_filled=len(windows) - len(todo),
        windows_without_source_data=done.without_source,
        labels_present=found.n_present,
        labels_total=found.n_labels,
        gaps=len(found.gaps),
        commits=done.commits,
        rebased_commits=done.rebased,
        windows_rewritten=done.rewritten,
        seconds={
            "extend": extended - began,
            "plan": planned - extended + done.planning_seconds,
            "write": wrote - planned - done.planning_seconds,
            "total": time.perf_counter() - began,
        },
    )


def _check_dimension(stored: StoredGroup, group: str | None, append_dim: str) -> None:
    if not stored.is_empty and append_dim not in stored.indexes:
        raise PlanError(
            f"it has no dimension {append_dim!r} to fill (its dimensions: "
            f"{sorted(str(d) for d in stored.sizes)}); pass one of them as --append-dim "
            "(append_dim=)",
            group=group,
        )


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

    def write_windows(
        self, repo: icechunk.Repository, todo: list[Window], batch: int, progress: UUID
    ) -> _Written:
        """Write ``todo`` as region writes in units on the cluster, published in groups."""
        logger = get_run_logger()
        began = time.perf_counter()
        branch = self.target.branch
        stored = StoredGroup(repo.readonly_session(branch=branch).store, self.group)
        spans = positions_of(stored.indexes[self.append_dim], [(w.start, w.end) for w in todo])
        empty = [s for s in spans if s.hi <= s.lo]
        if empty:
            logger.warning(
                "backfill: %d windows hold no label of the source (%s …); nothing to write there",
                len(empty),
                f"[{empty[0].start}, {empty[0].end})",
            )
        spans = [s for s in spans if s.hi > s.lo]
        request = WriteRequest(mode="region", group=self.group, region={self.append_dim: "auto"})
        open_window = functools.partial(open_region_window, self.source, self.append_dim)
        publisher = WindowPublisher(repo, branch)
        base, fork = publisher.fork()
        # a request the group refuses is refused here, before any window is written, on
        # the first window the source has labels for
        without_source = 0
        for span in spans:
            opened = open_window(span.start, span.end)
            if opened.sizes.get(self.append_dim, 0):
                break
            without_source += 1
        else:
            return _Written(without_source=len(spans))
        template = XarrayDatasetWriter(opened, store=fork.store).for_request(request).plan()
        spans = spans[without_source:]
        # the chunk lengths along the dimension of the arrays the windows write (the
        # dimension's own coordinate holds the labels already and is not written)
        chunk_sizes = sorted(
            {a.chunks[a.dims.index(self.append_dim)] for a in template.arrays
             if a.action != "skip" and self.append_dim in a.dims}
        ) or [1]  # fmt: skip
        address = resolve_scheduler_address(self.scheduler_address)
        check_scheduler(address)
        with dask_client(address) as flow_client, contextlib.ExitStack() as stack:
            # without a cluster (the flow called with another task runner): this process
            client = flow_client or stack.enter_context(
                Client(processes=False, dashboard_address=None, set_as_default=False)
            )
            threads = max(1, sum(client.nthreads().values()))
            # ``batch`` windows in flight as two units per worker thread (one computing,
            # one queued, so that no worker waits for the flow between units); at least
            # two units per thread in all; no unit bigger than UNIT_BYTES (what a killed
            # run loses of one unit's work). A unit costs about 0.1 s whatever its size:
            # tiny windows want big units
            per_unit = max(
                1,
                min(
                    batch // (2 * threads),
                    math.ceil(len(spans) / (2 * threads)),
                    UNIT_BYTES // max(1, template.bytes_written),
                ),
            )
            units = units_of(spans, chunk_sizes, per_unit)
            logger.info(
                "backfill: %d windows in %d units of about %d (never sharing a chunk) on %d "
                "worker threads, %d windows at a time",
                len(spans),
                len(units),
                per_unit,
                threads,
                batch,
            )
            run = _UnitRun(
                client=client,
                publisher=publisher,
                write=functools.partial(write_windows, open_window=open_window, request=request,
                                        dim=self.append_dim),
                commit=functools.partial(self._commit, template=template, total=len(spans)),
                batch=batch,
                progress=progress,
                total=len(spans),
            )  # fmt: skip
            planned = time.perf_counter() - began
            written = run.run(units, base, fork)
            written.planning_seconds = planned
            written.without_source += without_source
            return written

    def _commit(
        self,
        publisher: WindowPublisher,
        base: str,
        written: list[UnitWritten],
        *,
        template: WritePlan,
        total: int,
        first: int,
    ) -> str:
        """One commit of finished units (a Prefect task run per commit, not per window)."""
        windows = sorted(w for unit in written for w in unit.windows)
        lo, hi = windows[0][0], windows[-1][1]
        chunks = sum(u.chunks_written for u in written)
        block = commit_metadata(
            plan=template,
            source=self.source,
            target=self.target,
            parameters=_parameters(),
            run=current_run(),
        )
        block.update(
            variables=sorted({v for u in written for v in u.variables}),
            chunks_written=chunks,
            bytes_written=sum(u.bytes_written for u in written),
            region={self.append_dim: [lo, hi]},
            windows=[list(w) for w in windows],
            base_snapshot=base,
            # as flows.write names a run: what a re-run with the same parameters shares
            run_key=parameters_digest(
                {k: v for k, v in _parameters().items() if k != "scheduler_address"}
            ),
        )
        where = f"group {self.group}" if self.group else "root group"
        message = (
            f"icefloe: backfill {where}: {len(windows)} windows, {chunks} chunks, "
            f"{self.append_dim}[{lo}:{hi}]"
        )
        label = f"commit windows {first + 1}-{first + len(windows)} of {total}"
        # the coverage record of the commit, judged again over the span the windows wrote
        # against its real parent (after any rebase), as every icefloe commit carries it
        change = CoverageChange(self.group, self.append_dim, {self.append_dim: (lo, hi)})

        def metadata(session: icechunk.Session) -> dict[str, Any]:
            record = coverage_record(publisher.repo, session, change)
            return {"icefloe": {**block, RECORD_KEY: record}}

        committed: str = _commit_windows.with_options(task_run_name=label)(
            publisher, base, [u.fork for u in written], message, metadata
        )
        # lineage: each commit, not each window, a materialization of the group's asset
        materialize_commit(self.target, self.source, self.group, committed, block)
        return committed


def _parameters() -> dict[str, Any]:
    context = FlowRunContext.get()
    return dict(context.parameters or {}) if context is not None else {}


@task(
    name="commit_windows",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=[2.0, 10.0],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
def _commit_windows(
    publisher: WindowPublisher,
    base: str,
    forks: list[Any],
    message: str,
    metadata: Metadata,
) -> str:
    snapshot = publisher.publish(base, forks, message, metadata)
    get_run_logger().info("%s: %s", message, snapshot)
    return snapshot


@dataclass
class _Written:
    commits: int = 0
    rebased: int = 0
    rewritten: int = 0
    planning_seconds: float = 0.0
    without_source: int = 0  # windows the source had no labels for yet


# How long finished units wait for their commit: a killed run loses at most about this
# much work and the archive shows progress this often, while tiny windows still share
# commits (a commit costs about 0.1 s, whatever it holds).
COMMIT_EVERY_SECONDS = 5.0
START_OVER_ATTEMPTS = 3
UNIT_BYTES = 2**30


@dataclass
class _UnitRun:
    """Units in flight on the cluster, and the commits of the finished ones.

    At most ``batch`` windows are in flight. Finished units wait up to COMMIT_EVERY_SECONDS
    (or until nothing else is in flight) and are then committed together, one commit per
    base they were forked from.
    """

    client: Client
    publisher: WindowPublisher
    write: functools.partial[UnitWritten]
    commit: functools.partial[str]
    batch: int
    progress: UUID
    total: int
    committed: int = 0
    rewritten: int = 0
    without_source: int = 0
    _fork_future: Future[Any] | None = field(default=None, repr=False)
    _base: str = ""

    def _set_base(self, base: str, fork: Any) -> None:
        # sent to every worker once per base, not with every unit
        self._base = base
        self._fork_future = self.client.scatter(fork, broadcast=True, hash=False)

    def run(self, units: list[list[WindowSpan]], base: str, fork: Any) -> _Written:
        logger = get_run_logger()
        self._set_base(base, fork)
        todo: deque[tuple[list[WindowSpan], int]] = deque((unit, 1) for unit in units)
        in_flight: dict[Future[Any], tuple[list[WindowSpan], int, str]] = {}
        finished: list[tuple[UnitWritten, list[WindowSpan], int, str]] = []
        waiting_since: float | None = None
        try:
            while todo or in_flight or finished:
                while todo and (
                    not in_flight or sum(len(u) for u, _, _ in in_flight.values()) < self.batch
                ):
                    unit, attempt = todo.popleft()
                    future = self.client.submit(self.write, self._fork_future, unit=unit,
                                                pure=False)  # fmt: skip
                    in_flight[future] = (unit, attempt, self._base)
                if in_flight:
                    done = self._wait(list(in_flight), self._until_commit(waiting_since))
                    for future, written in zip(done, self.client.gather(done), strict=True):
                        unit, attempt, base = in_flight.pop(future)
                        finished.append((written, unit, attempt, base))
                        waiting_since = waiting_since or time.monotonic()
                if finished and (not in_flight or self._until_commit(waiting_since) <= 0):
                    todo.extend(self._commit_finished(finished))
                    finished, waiting_since = [], None
                    update_progress_artifact(
                        self.progress,
                        progress=round(
                            100 * (self.committed + self.without_source) / self.total, 1
                        ),
                    )
                    logger.info("backfill: %d of %d windows committed", self.committed, self.total)
        finally:
            for future in in_flight:
                future.cancel()
        return _Written(
            self.publisher.commits,
            self.publisher.rebased,
            self.rewritten,
            without_source=self.without_source,
        )

    def _wait(self, futures: list[Future[Any]], timeout: float) -> list[Future[Any]]:
        """The futures that finished, waiting up to ``timeout`` s for the first one."""
        try:
            with self.client.as_current():  # wait() asks for "the" client
                done, _ = wait(futures, timeout=max(0.01, timeout), return_when="FIRST_COMPLETED")
        except TimeoutError:
            return []
        return list(done)

    @staticmethod
    def _until_commit(waiting_since: float | None) -> float:
        if waiting_since is None:
            return COMMIT_EVERY_SECONDS
        return COMMIT_EVERY_SECONDS - (time.monotonic() - waiting_since)

    def _commit_finished(
        self, finished: list[tuple[UnitWritten, list[WindowSpan], int, str]]
    ) -> list[tuple[list[WindowSpan], int]]:
        """Commit finished units, one commit per base; the units of a group whose arrays
        changed meanwhile come back to be written again from the new tip."""
        again: list[tuple[list[WindowSpan], int]] = []
        for base in dict.fromkeys(b for _, _, _, b in finished):
            group = [(w, u, a) for w, u, a, b in finished if b == base]
            # windows the source had no labels for left nothing in their unit's fork; a unit
            # of only such windows is done, the others count theirs once committed (a unit
            # written again reports its windows again)
            self.without_source += sum(len(w.without_source) for w, _, _ in group if not w.windows)
            group = [(w, u, a) for w, u, a in group if w.windows]
            if not group:
                continue
            rebased = self.publisher.rebased
            try:
                self.commit(self.publisher, base, [w for w, _, _ in group], first=self.committed)
            except CommitConflictError as err:
                attempts = max(a for _, _, a in group)
                if err.overlapping or attempts >= START_OVER_ATTEMPTS:
                    raise
                get_run_logger().warning(
                    "backfill: the arrays changed under %d windows (%s); writing them again "
                    "from the new tip",
                    sum(len(u) for _, u, _ in group),
                    "; ".join(err.conflicts) or err,
                )
                self.rewritten += sum(len(u) for _, u, _ in group)
                again += [(u, a + 1) for _, u, a in group]
                new_base, fork = self.publisher.fork()
                self._set_base(new_base, fork)
                continue
            self.committed += sum(len(w.windows) for w, _, _ in group)
            self.without_source += sum(len(w.without_source) for w, _, _ in group)
            if self.publisher.rebased > rebased and self._base == base:
                # someone else committed meanwhile: units not sent yet start from the new tip,
                # where they merge without a rebase again
                self._set_base(*self.publisher.fork())
        return again


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
