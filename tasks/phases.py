"""The writer's phases as Prefect tasks: thin wrappers that add retries, logs and progress.

All phases run in the flow process (called, not submitted): they hold a writable icechunk
session, which cannot be pickled. Only ``write_lazy`` sends work to the cluster, by pointing
dask at the flow's DaskTaskRunner client for the duration of the write.

Retries: ``write_metadata``, ``write_eager`` and ``verify`` never retry, because a phase that
raised midway leaves the session half-written and it must be discarded, not written again.
``write_lazy`` writes into a fork that is merged only on success, and ``commit`` either moves
the branch or not, so both may retry transient storage and network errors.

Every task uses ``NO_CACHE``: hashing a Dataset argument costs seconds and hashing a writable
session logs an error on every call (see FIELD-NOTES).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import icechunk
from distributed import Client
from distributed.comm.core import CommClosedError
from prefect import Task, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_run_logger
from prefect.states import State
from prefect_dask import DaskTaskRunner

from tasks.commit import commit_session
from tasks.errors import IcefloeError
from tasks.plan import WritePlan
from tasks.progress import TaskCount, counting_scheduler, progress_hooks
from tasks.writer import XarrayDatasetWriter

__all__ = [
    "LazyWriteStats",
    "commit",
    "is_transient",
    "plan",
    "retry_transient",
    "verify",
    "write_eager",
    "write_lazy",
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


# -- phases that must not retry ---------------------------------------------------------------


@task(name="plan", cache_policy=NO_CACHE, retries=0)
def plan(writer: XarrayDatasetWriter) -> WritePlan:
    """Decide every step against the store; writes nothing. Every PlanError is raised here."""
    return writer.plan()


@task(name="write_metadata", cache_policy=NO_CACHE, retries=0)
def write_metadata(writer: XarrayDatasetWriter) -> None:
    """Create, replace, resize and delete arrays and set attributes in the session."""
    writer.write_metadata()


@task(name="write_eager", cache_policy=NO_CACHE, retries=0)
def write_eager(writer: XarrayDatasetWriter) -> None:
    """Write the in-memory (numpy-backed) variables in the flow process."""
    writer.write_eager()


@task(name="verify", cache_policy=NO_CACHE, retries=0)
def verify(writer: XarrayDatasetWriter) -> None:
    """Check the session against the plan before the expensive write; raises VerificationError."""
    writer.verify()


# -- the lazy write ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LazyWriteStats:
    """What write_lazy did: small on purpose, since Prefect may persist task results."""

    dask_tasks: int
    seconds: float
    scheduler: str


@task(
    name="write_lazy",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=_RETRY_DELAYS,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
def write_lazy(
    writer: XarrayDatasetWriter,
    scheduler_address: str | None = None,
    report_every: float = 1.0,
) -> LazyWriteStats:
    """Write the dask-backed variables on the flow's Dask cluster and merge them into the session.

    The cluster is, in order: a scheduler at ``scheduler_address`` (unless the flow's
    DaskTaskRunner already is that one), the flow's DaskTaskRunner, else the threaded
    scheduler. Progress goes to a Prefect progress artifact, the log (every quarter) and the
    hooks registered with ``tasks.progress.watch_progress``, every ``report_every`` seconds.
    """
    logger = _logger()
    count = TaskCount()
    started = time.perf_counter()
    with _dask_client(scheduler_address) as client:
        where = "threads" if client is None else str(client.scheduler.address)
        logger.info("write_lazy: computing on %s", where)
        with _ProgressReporter(count, logger, report_every), counting_scheduler(client, count):
            writer.write_lazy()
    seconds = time.perf_counter() - started
    done, _ = count.snapshot()
    logger.info("write_lazy: %d dask tasks finished in %.1f s", done, seconds)
    return LazyWriteStats(dask_tasks=done, seconds=seconds, scheduler=where)


@contextmanager
def _dask_client(scheduler_address: str | None) -> Iterator[Client | None]:
    runner = _flow_task_runner()
    if scheduler_address and not (
        isinstance(runner, DaskTaskRunner) and runner.address == scheduler_address
    ):
        # Asked for a cluster the flow's runner does not use (e.g. the flow parameter of a
        # deployment): connect to it for this write only.
        with Client(scheduler_address, set_as_default=False) as client:
            yield client
    elif isinstance(runner, DaskTaskRunner):
        # Called in the flow process, dask would use threads; the runner's client (created
        # on first access, so flows that never write lazily start no cluster) is the cluster.
        yield runner.client
    else:
        yield None


def _flow_task_runner() -> object | None:
    context = FlowRunContext.get()
    return context.task_runner if context is not None else None


class _ProgressReporter:
    """Reports a TaskCount from its own thread while the write blocks the task's thread.

    Prefect API calls and hooks run here, never on the dask client's event loop. The thread
    runs in a copy of the task's context so that Prefect finds the run and its settings.
    """

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
        self._artifact: UUID | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _ProgressReporter:
        if TaskRunContext.get() or FlowRunContext.get():
            self._artifact = create_progress_artifact(
                progress=0.0, description="write_lazy: dask tasks finished"
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
        if self._artifact is not None:
            update_progress_artifact(self._artifact, progress=round(100 * fraction, 1))
        quarter = int(4 * fraction)
        if quarter > self._logged_quarter and not final:
            self._logged_quarter = quarter
            self._logger.info("write_lazy: %d of %d dask tasks finished", done, total)
        for hook in progress_hooks():
            hook(done, total)


# -- commit -----------------------------------------------------------------------------------


@task(
    name="commit",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=_RETRY_DELAYS,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
def commit(session: icechunk.Session, message: str, metadata: Mapping[str, Any]) -> str | None:
    """Commit the session with ``metadata`` under ``icefloe``; None when it changed nothing.

    Rebases onto commits that landed meanwhile when they do not conflict (e.g. region writes
    of disjoint chunks); a real conflict raises CommitConflictError, which is not retried.
    """
    logger = _logger()
    if not session.has_uncommitted_changes:
        logger.info("commit: the session changed nothing; no commit")
        return None
    branch = session.branch  # a committed session no longer names its branch
    snapshot_id = commit_session(session, message, {"icefloe": dict(metadata)})
    logger.info("commit: %s on branch %s", snapshot_id, branch)
    return snapshot_id
