"""The writer's phases as Prefect tasks: thin wrappers that add retries, logs and progress.

All phases run in the flow process (called, not submitted): they hold a writable icechunk
session, which cannot be pickled. Only ``write_lazy`` sends work to the cluster, by pointing
dask at the flow's DaskTaskRunner client for the duration of the write.

Retries: ``write_metadata``, ``write_eager`` and ``verify`` never retry, because a phase that
raised midway leaves the session half-written and it must be discarded, not written again.
``write_lazy`` writes into a fork that is merged only on success, and ``commit`` either moves
the branch or not, so both may retry transient storage and network errors.

Every task uses ``NO_CACHE``: hashing a Dataset argument costs seconds and hashing a writable
session logs an error on every call (see docs/stack-facts.md).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

import icechunk
from distributed.comm.core import CommClosedError
from prefect import Task, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_run_logger

from tasks import batches
from tasks.batches import LazyBatch, StartedBatch
from tasks.cluster import dask_client
from tasks.commit import commit_lock, commit_session
from tasks.coverage import RECORD_KEY, CoverageChange, coverage_record
from tasks.errors import IcefloeError
from tasks.plan import WritePlan
from tasks.progress import TaskCount, counting_scheduler, progress_hooks, scheduler_of
from tasks.publish import Audit, publish, publish_staged_snapshot
from tasks.writer import XarrayDatasetWriter, batch_summary

__all__ = [
    "BatchesAhead",
    "LazyWriteStats",
    "commit",
    "is_transient",
    "persisted",
    "plan",
    "retry_transient",
    "verify",
    "write_eager",
    "write_lazy",
    "write_lazy_batch",
    "write_metadata",
]

_module_log = logging.getLogger(__name__)

# Errors that say "the storage or the network hiccupped", as opposed to "the request is wrong".
_TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    CommClosedError,
    icechunk.StorageError,
)
_RETRY_DELAYS = [2.0, 10.0]


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a storage or network hiccup.

    icefloe's own errors never are: a PlanError, VerificationError or ChunkConflictError
    gives the same answer however often it is retried.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, IcefloeError):
            return False
        if isinstance(current, _TRANSIENT):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def retry_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient storage and network errors."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            result = state.result(raise_on_failure=False)
        except Exception as err:  # the result itself could not be read
            result = err
        exc = result if isinstance(result, BaseException) else None
    return exc is not None and is_transient(exc)


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    # Tasks can be called through .fn outside any run (tests, scripts): log plainly there.
    if TaskRunContext.get() or FlowRunContext.get():
        return get_run_logger()
    return _module_log


# -- the prepared workspace ---------------------------------------------------------------------
#
# A run works in a *workspace*: a ForkSession of the branch tip for every mode but
# overwrite, whose phases are persisted as task results under the run's resume key so that a
# killed run resumes from them; or, for overwrite (a deleted group cannot be merged
# from several forks), the writable session itself, which lives and dies with the
# process. ``resume_key`` is None for the latter, and nothing is persisted.

Workspace = icechunk.Session


def _phase_key(phase: str) -> Any:
    def key(context: Any, parameters: dict[str, Any]) -> str | None:
        resume_key = parameters.get("resume_key")
        return f"{resume_key}/{phase}" if resume_key else None

    return key


def persisted(task_: Task[..., Any], resume_key: str | None) -> Task[..., Any]:
    """``task_`` persisting its result under ``resume_key``, or persisting nothing without one.

    Without a key the task is built anew rather than through ``with_options``, which keeps
    the cache key function and makes Prefect warn about it on every run.
    """
    if resume_key:
        return task_
    return Task(
        fn=task_.fn,
        name=task_.name,
        task_run_name=task_.task_run_name,
        retries=task_.retries,
        retry_delay_seconds=task_.retry_delay_seconds,
        retry_jitter_factor=task_.retry_jitter_factor,
        retry_condition_fn=task_.retry_condition_fn,
        persist_result=False,
        cache_policy=NO_CACHE,
    )


@task(name="plan", task_run_name="plan", cache_policy=NO_CACHE, retries=0)
def plan(writer: XarrayDatasetWriter) -> WritePlan:
    """Decide every step against the store; writes nothing. Every PlanError is raised here."""
    return writer.plan()


@task(
    name="write_metadata",
    task_run_name="write_metadata",
    cache_key_fn=_phase_key("metadata"),
    persist_result=True,
    retries=0,
)
def write_metadata(
    writer: XarrayDatasetWriter, workspace: Workspace, resume_key: str | None
) -> Workspace:
    """Create, replace, resize and delete arrays and set attributes in the workspace.

    Call through ``persisted(write_metadata, resume_key)``: with a key the resulting fork
    is persisted, and a re-run with the same key gets it back instead of writing again.
    """
    writer.on_store(workspace.store, completed=[]).write_metadata()
    return workspace


@task(
    name="write_eager",
    task_run_name="write_eager",
    cache_key_fn=_phase_key("eager"),
    persist_result=True,
    retries=0,
)
def write_eager(
    writer: XarrayDatasetWriter, workspace: Workspace, resume_key: str | None
) -> Workspace:
    """Write the in-memory (numpy-backed) variables into the workspace (persisted like metadata)."""
    writer.on_store(workspace.store, completed=["write_metadata"]).write_eager()
    return workspace


@task(name="verify", task_run_name="verify", cache_policy=NO_CACHE, retries=0)
def verify(writer: XarrayDatasetWriter, workspace: Workspace) -> None:
    """Check the workspace against the plan before the expensive write; raises VerificationError.

    Never cached: a resumed run checks the persisted workspace again.
    """
    writer.on_store(workspace.store, completed=["write_metadata", "write_eager"]).verify()


# -- the lazy write ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LazyWriteStats:
    """What write_lazy did: small on purpose, since Prefect may persist task results."""

    batches: int
    batches_resumed: int
    dask_tasks: int
    seconds: float
    scheduler: str


@task(
    name="write_lazy",
    task_run_name="write_lazy {batch.index}",
    cache_key_fn=lambda context, parameters: (
        f"{parameters['resume_key']}/batch-{parameters['batch'].index}"
        f"-{parameters['batch'].start}-{parameters['batch'].stop}"
        if parameters["resume_key"]
        else None
    ),
    persist_result=True,
    retries=2,
    retry_delay_seconds=_RETRY_DELAYS,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
def write_lazy_batch(
    workspace: Workspace,
    batch: LazyBatch,
    resume_key: str | None,
    ahead: BatchesAhead | None = None,
) -> icechunk.session.ForkSession:
    """One chunk-aligned window of the lazy write, into its own copy of the workspace.

    Its ForkSession is persisted under the run's key as soon as it finishes: a killed
    run's re-run gets it back instead of writing the window again. With ``ahead``, the next
    batch starts computing now, while this one finishes (a batch resumed from an earlier
    run never gets here, so nothing already persisted is started again).
    """
    fork = _fork_of(workspace)
    _logger().info("write_lazy: %s", batch_summary(batch))
    started = ahead.take(batch) if ahead is not None else None
    if ahead is not None:
        ahead.start_next(batch)
    return batches.write_batch(fork, batch, started=started)


def _fork_of(workspace: Workspace) -> icechunk.session.ForkSession:
    return workspace if isinstance(workspace, icechunk.session.ForkSession) else workspace.fork()


class BatchesAhead:
    """Starts batch k+1 as soon as batch k starts writing: the cluster works through the
    boundary instead of waiting while batch k's forks are gathered and merged, its result
    persisted, and batch k+1's graph built and submitted. At most two batches compute at
    once, and the scheduler runs the older one's tasks first.

    Persisted batches stay a prefix of the batches: batch k+1's task (which takes the
    started computation's result, and persists it) still begins only after batch k's task
    ended. A run killed meanwhile loses the started batch's chunks, which nothing refers to.
    """

    def __init__(self, workspace: Workspace, todo: list[LazyBatch]) -> None:
        self._workspace = workspace
        self._todo = todo
        self._started: dict[int, StartedBatch] = {}
        self._lock = threading.Lock()

    def take(self, batch: LazyBatch) -> StartedBatch | None:
        with self._lock:
            return self._started.pop(batch.index, None)

    def start_next(self, batch: LazyBatch) -> None:
        position = next((i for i, b in enumerate(self._todo) if b.index == batch.index), None)
        if position is None or position + 1 >= len(self._todo):
            return
        following = self._todo[position + 1]
        with self._lock:
            if following.index not in self._started:
                self._started[following.index] = StartedBatch(_fork_of(self._workspace), following)

    def drop(self) -> None:
        """Forget started batches (the write failed): their results are never merged."""
        with self._lock:
            for started in self._started.values():
                started.cancel()
            self._started.clear()


def write_lazy(
    writer: XarrayDatasetWriter,
    workspace: Workspace,
    resume_key: str | None,
    target_batches: int = 1,
    scheduler_address: str | None = None,
    report_every: float = 1.0,
) -> tuple[list[icechunk.session.ForkSession], LazyWriteStats]:
    """The lazy phase: one ``write_lazy`` task per batch, on the flow's Dask cluster.

    The batch tasks are called from here, at the flow's level, not from inside another
    task: a task nested in a task persists its result only when the outer one finishes,
    which a killed run never does. The cluster is chosen by ``tasks.cluster.dask_client``
    (a small write runs on this process's threads); on a cluster each batch starts the
    next one ahead (``BatchesAhead``). Progress (dask tasks and batches) goes to Prefect
    progress artifacts, the log and the hooks of ``tasks.progress.watch_progress``.
    """
    logger = _logger()
    prepared = writer.on_store(
        workspace.store, completed=["write_metadata", "write_eager", "verify"]
    )
    todo = prepared.lazy_batches(target_batches=target_batches)
    lazy_bytes = sum(w.variable.nbytes for batch in todo for w in batch.writes)
    batch_task = persisted(write_lazy_batch, resume_key)
    count = TaskCount()
    started = time.perf_counter()
    forks: list[icechunk.session.ForkSession] = []
    resumed = 0
    with dask_client(scheduler_address, lazy_bytes) as client:
        where = "threads" if client is None else scheduler_of(client)
        logger.info("write_lazy: %d batches on %s", len(todo), where)
        batch_progress = _BatchProgress(len(todo))
        # on threads, a second computation would only compete for the same cores
        ahead = BatchesAhead(workspace, todo) if client is not None and len(todo) > 1 else None
        with _ProgressReporter(count, logger, report_every), counting_scheduler(client, count):
            try:
                for number, batch in enumerate(todo, start=1):
                    named = batch_task.with_options(
                        task_run_name=f"write_lazy {number}/{len(todo)}"
                    )
                    state = cast(
                        "State[icechunk.session.ForkSession]",
                        named(workspace, batch, resume_key, ahead, return_state=True),
                    )
                    resumed += state.name == "Cached"
                    forks.append(state.result())
                    batch_progress.advance(len(forks))
            finally:
                if ahead is not None:
                    ahead.drop()
    seconds = time.perf_counter() - started
    done, _ = count.snapshot()
    logger.info(
        "write_lazy: %d batches (%d resumed from an earlier run), %d dask tasks in %.1f s",
        len(todo),
        resumed,
        done,
        seconds,
    )
    return forks, LazyWriteStats(len(todo), resumed, done, seconds, where)


class _BatchProgress:
    """A progress artifact counting finished batches (dask tasks have their own)."""

    def __init__(self, total: int) -> None:
        self._total = total
        self._artifact: UUID | None = None
        if total > 1 and (TaskRunContext.get() or FlowRunContext.get()):
            self._artifact = cast(
                UUID,
                create_progress_artifact(
                    progress=0.0, description=f"write_lazy: batches finished of {total}"
                ),
            )

    def advance(self, done: int) -> None:
        if self._artifact is not None:
            update_progress_artifact(self._artifact, progress=round(100 * done / self._total, 1))


class _ProgressReporter:
    """Reports a TaskCount from its own thread while the write blocks the task's thread.

    Prefect API calls and hooks run here, never on the dask client's event loop. The thread
    runs in a copy of the task's context so that Prefect finds the run and its settings.
    Hooks (a progress bar in this process) hear every ``every`` seconds; the progress
    artifact, an API call that the Prefect server answers with a database write, at most
    every ``ARTIFACT_SECONDS``: once a second it cost the server as much CPU as a tenth of
    a worker during a bulk write on a small machine.
    """

    ARTIFACT_SECONDS = 5.0
    LOG_SECONDS = 60.0

    def __init__(
        self,
        count: TaskCount,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        every: float,
    ) -> None:
        self._count = count
        self._logger = logger
        self._every = every
        self._stop = threading.Event()
        self._last: tuple[int, int] | None = None
        self._logged_quarter = 0
        self._logged_at = time.monotonic()
        self._artifact: UUID | None = None
        self._artifact_at = time.monotonic()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _ProgressReporter:
        if TaskRunContext.get() or FlowRunContext.get():
            self._artifact = cast(
                UUID,
                create_progress_artifact(
                    progress=0.0, description="write_lazy: dask tasks finished"
                ),
            )
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), name="icefloe-progress", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_info[0] is None:
            self._report(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self._report(final=False)

    def _report(self, *, final: bool) -> None:
        done, total = self._count.snapshot()
        if (done, total) == self._last and not final:
            return
        self._last = (done, total)
        try:
            self._publish(done, total, final)
        except Exception:  # progress must never fail the write
            _module_log.debug("progress report failed", exc_info=True)

    def _publish(self, done: int, total: int, final: bool) -> None:
        fraction = done / total if total else (1.0 if final else 0.0)
        now = time.monotonic()
        if self._artifact is not None and (
            final or now - self._artifact_at >= self.ARTIFACT_SECONDS
        ):
            self._artifact_at = now
            update_progress_artifact(self._artifact, progress=round(100 * fraction, 1))
        # The total grows as batches are submitted: a quarter is of the tasks known now, so
        # a fraction that fell back when a batch arrived is logged again as it climbs. A
        # long batch logs at least every LOG_SECONDS.
        quarter = int(4 * fraction)
        self._logged_quarter = min(self._logged_quarter, quarter)
        if not final and (
            quarter > self._logged_quarter or now - self._logged_at >= self.LOG_SECONDS
        ):
            self._logged_quarter = quarter
            self._logged_at = now
            self._logger.info("write_lazy: %d of %d dask tasks finished", done, total)
        for hook in progress_hooks():
            hook(done, total)


# -- commit -----------------------------------------------------------------------------------


@task(
    name="commit",
    task_run_name="commit",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=_RETRY_DELAYS,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
def commit(
    repo: icechunk.Repository,
    branch: str,
    base_snapshot: str,
    workspace: Workspace,
    forks: list[icechunk.session.ForkSession],
    message: str,
    metadata: Mapping[str, Any],
    staging_branch: str | None = None,
    audit: Audit | None = None,
    coverage: CoverageChange | None = None,
    base_session: icechunk.Session | None = None,
) -> str:
    """Publish the run with one commit carrying ``metadata`` under ``icefloe``.

    With ``coverage`` the block also records the coverage the commit leaves (what the
    write changed, judged against the parent's record: tasks/coverage.py).

    A forked workspace and its batches are merged at the run's base and published
    (rebased when the branch moved, conflicts detected), by ``base_session`` (the run's
    clean session at the base) when given; a session workspace commits itself. With
    ``staging_branch`` the commit lands there, ``audit`` checks it, and the branch moves
    only if it did not move meanwhile. Conflicts raise CommitConflictError,
    which is not retried.
    """
    logger = _logger()

    def block(session: icechunk.Session) -> dict[str, Any]:
        described = dict(metadata)
        if coverage is not None:
            described[RECORD_KEY] = coverage_record(repo, session, coverage)
        return {"icefloe": described}

    with commit_lock(repo):
        if isinstance(workspace, icechunk.session.ForkSession):
            snapshot = publish(
                repo,
                branch,
                base_snapshot,
                [workspace, *forks],
                message,
                block,
                staging_branch=staging_branch,
                audit=audit,
                session=base_session,
            )
        else:
            workspace.merge(*forks)
            snapshot = commit_session(workspace, message, block)
            if staging_branch is not None:
                publish_staged_snapshot(
                    repo, branch, base_snapshot, snapshot, staging_branch, audit
                )
    logger.info("commit: %s on branch %s", snapshot, branch)
    return snapshot
