"""Counting dask tasks as they finish, on a distributed cluster or the threaded scheduler.

The writer computes inside ``icechunk.dask.store_dask``, so icefloe never holds the futures
of a lazy write. Instead, ``counting_scheduler`` installs a dask scheduler function that
counts the tasks of every computation it runs: on a distributed client it subscribes to the
scheduler's own progress plugin (what ``distributed.progress`` uses), on threads it is a dask
callback. Counts land in a ``TaskCount``; whoever reports them (a Prefect artifact, a log
line, a progress bar) reads it from its own thread, so nothing slow ever runs on the client's
event loop or inside a dask callback. No Prefect here: this is part of the writer library.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dask
import dask.threaded
from dask.callbacks import Callback
from distributed import Client
from distributed.client import futures_of
from distributed.diagnostics.progressbar import ProgressBar

__all__ = ["ProgressHook", "TaskCount", "counting_scheduler", "progress_hooks", "watch_progress"]

log = logging.getLogger(__name__)

ProgressHook = Callable[[int, int], None]
"""Called with (finished dask tasks, all dask tasks) of the lazy write so far."""

# How long to wait, after a computation ended, for the scheduler's last progress message.
_LISTENER_GRACE_SECONDS = 5.0

_hooks: list[ProgressHook] = []
_hooks_lock = threading.Lock()


@contextmanager
def watch_progress(hook: ProgressHook) -> Iterator[None]:
    """Call ``hook(done, total)`` while lazy writes in this process run inside the block.

    Process-wide rather than a context variable: Prefect may run a flow or task in another
    thread than the caller's, and a CLI progress bar must still see it.
    """
    with _hooks_lock:
        _hooks.append(hook)
    try:
        yield
    finally:
        with _hooks_lock:
            _hooks.remove(hook)


def progress_hooks() -> list[ProgressHook]:
    """The hooks registered with ``watch_progress`` now."""
    with _hooks_lock:
        return list(_hooks)


class TaskCount:
    """Finished and total dask tasks, summed over the computations of one phase; thread-safe.

    Several computations may run at once (a lazy write starts its next batch before the
    current one has finished): each counts in a slot of its own, opened by ``open``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed_done = 0
        self._closed_total = 0
        self._running: dict[int, tuple[int, int]] = {}
        self._opened = 0

    def open(self) -> int:
        """A slot for one more computation; its counts start at zero."""
        with self._lock:
            self._opened += 1
            self._running[self._opened] = (0, 0)
            return self._opened

    def update(self, computation: int, done: int, total: int) -> None:
        with self._lock:
            if computation in self._running:
                self._running[computation] = (done, max(total, done))

    def close(self, computation: int, *, complete: bool) -> None:
        """The computation ended: keep its counts (all of its tasks done when ``complete``,
        i.e. it succeeded)."""
        with self._lock:
            done, total = self._running.pop(computation, (0, 0))
            self._closed_done += total if complete else done
            self._closed_total += total

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            running = self._running.values()
            return (
                self._closed_done + sum(done for done, _ in running),
                self._closed_total + sum(total for _, total in running),
            )


@contextmanager
def counting_scheduler(client: Client | None, count: TaskCount) -> Iterator[None]:
    """Run dask computations in the block on ``client`` (threads when None), counting tasks.

    The computation starts deep inside icechunk, so the scheduler cannot be passed to it;
    it is routed through dask's config instead. dask's config is one per process, and
    flows may run in several threads of one process (backfill windows, served runs):
    the config therefore names one routing function for as long as any block is open,
    and each block's choice lives in a context variable of its own thread.
    """
    get: Callable[..., Any] = (
        dask.threaded.get if client is None else _DistributedCountingGet(client, count)
    )
    with _routing(get):
        if client is None:
            with _ThreadedCount(count):
                yield
        else:
            yield


_route: contextvars.ContextVar[Callable[..., Any] | None] = contextvars.ContextVar(
    "icefloe_dask_route", default=None
)
_routing_lock = threading.Lock()
_routing_users = 0
_scheduler_before: Any = None


def _routed_get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    get = _route.get()
    return (get or dask.threaded.get)(dsk, keys, **kwargs)


@contextmanager
def _routing(get: Callable[..., Any]) -> Iterator[None]:
    global _routing_users, _scheduler_before
    token = _route.set(get)
    with _routing_lock:
        if _routing_users == 0:
            _scheduler_before = dask.config.get("scheduler", None)
            dask.config.set(scheduler=_routed_get)
        _routing_users += 1
    try:
        yield
    finally:
        with _routing_lock:
            _routing_users -= 1
            if _routing_users == 0:
                dask.config.set(scheduler=_scheduler_before)
        _route.reset(token)


class _ThreadedCount(Callback):
    """A local-scheduler callback; the counts are the ones dask.diagnostics.ProgressBar uses."""

    def __init__(self, count: TaskCount) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # dask's Callback is unannotated
        self._count = count
        self._computation: int | None = None

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        self._computation = self._count.open()
        self._post(state)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], id: Any) -> None:
        self._post(state)

    def _finish(self, dsk: Any, state: dict[str, Any], errored: bool) -> None:
        if self._computation is not None:
            self._count.close(self._computation, complete=False)
            self._computation = None

    def _post(self, state: dict[str, Any]) -> None:
        if self._computation is None:
            return
        done = len(state["finished"])
        pending = sum(len(state[k]) for k in ("ready", "waiting", "running"))
        self._count.update(self._computation, done, done + pending)


class _SchedulerFeed(ProgressBar):
    """distributed's progress-bar plumbing with the drawing replaced by counting."""

    def __init__(self, futures: list[Any], client: Client, count: TaskCount) -> None:
        super().__init__(  # type: ignore[no-untyped-call]  # distributed's is unannotated
            futures, scheduler=scheduler_of(client), interval="250ms"
        )
        self._count = count
        self._computation = count.open()
        self._counting = True
        self._sized = False
        self._lock = threading.Lock()

    def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:
        with self._lock:
            if self._counting:
                self._count.update(self._computation, all - remaining, all)
                self._sized = True

    def counted_complete(self) -> bool:
        """The computation succeeded: if the feed has told its size, count it complete,
        ignore later messages and return True."""
        with self._lock:
            if not self._sized:
                return False
            self._counting = False
            self._count.close(self._computation, complete=True)
            return True

    def close(self) -> None:
        """The computation ended (or failed) and the listener with it: keep what was counted."""
        with self._lock:
            self._counting = False
            self._count.close(self._computation, complete=False)


class _DistributedCountingGet:
    """A dask scheduler function: ``client.get`` with the graph's progress fed to a count."""

    def __init__(self, client: Client, count: TaskCount) -> None:
        self._client = client
        self._count = count

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        client = self._client
        packed = client.get(dsk, keys, sync=False, **kwargs)
        futures = futures_of(packed)
        # The futures keep the output keys alive until the listener has seen the end; a
        # progress plugin set up on released keys would wait for them forever.
        feed = _SchedulerFeed(futures, client, self._count)
        loop = client.loop.asyncio_loop  # type: ignore[union-attr]  # always an AsyncIOLoop
        listener = asyncio.run_coroutine_threadsafe(feed.listen(), loop)  # type: ignore[no-untyped-call]
        try:
            result = client.gather(packed)
        except BaseException:
            _wait_for_listener(listener)
            _release(futures)
            feed.close()
            raise
        # Every task is done. The scheduler's feed says so only at its next tick (up to
        # 250 ms later; about 0.15 s per computation measured): once it has told the size,
        # count the computation complete now and release the futures when the listener
        # has ended on its own. A computation that ended before the feed was set up waits
        # for the feed's first message, which then already says "finished".
        if feed.counted_complete():
            _release_when_done(listener, futures)
        else:
            _wait_for_listener(listener)
            _release(futures)
            feed.close()
        return result


def _release(futures: list[Any]) -> None:
    for future in futures:
        with contextlib.suppress(Exception):  # the client may have closed meanwhile
            future.release()


def _release_when_done(listener: concurrent.futures.Future[Any], futures: list[Any]) -> None:
    """Release ``futures`` when ``listener`` ends, cancelling it after the grace period."""

    def cancel() -> None:
        with contextlib.suppress(Exception):  # the client's loop may be gone by then
            listener.cancel()

    timer = threading.Timer(_LISTENER_GRACE_SECONDS, cancel)
    timer.daemon = True

    def done(_: concurrent.futures.Future[Any]) -> None:
        timer.cancel()
        _release(futures)

    timer.start()
    listener.add_done_callback(done)


def _wait_for_listener(listener: concurrent.futures.Future[Any]) -> None:
    # Progress is a nicety: a listener that fails or lags must not fail or stall the write.
    try:
        listener.result(timeout=_LISTENER_GRACE_SECONDS)
    except concurrent.futures.TimeoutError:
        listener.cancel()
        log.debug("dask progress listener did not finish in time; counts may be short")
    except Exception:
        log.debug("dask progress listener failed", exc_info=True)


def scheduler_of(client: Client) -> str:
    """The address of ``client``'s scheduler, for logs and progress feeds."""
    scheduler = client.scheduler
    assert scheduler is not None, "a connected client always has a scheduler"
    return str(scheduler.address)
