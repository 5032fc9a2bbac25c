"""Which Dask cluster a run's lazy write computes on, chosen in one place.

By default each flow run gets a LocalCluster of worker processes sized to the machine,
created by prefect-dask only when the run first needs it (a dry run or an idempotent
re-run starts none). A lazy write smaller than ``threads_below_bytes()`` (64 MiB unless
``ICEFLOE_THREADS_BELOW_BYTES`` says otherwise) starts none either: it runs on the flow
process's threads, because starting and stopping a LocalCluster takes seconds, far longer
than writing a few megabytes. A scheduler address, from the ``ICEFLOE_SCHEDULER_ADDRESS``
environment variable or given explicitly, points the run at a running cluster instead, and
is then used whatever the size.
``dask_client`` hands write_lazy the client of whichever applies; how work is routed to
that client thread by thread is ``tasks.progress.counting_scheduler``.

Part of the Prefect layer of ``tasks/`` (with ``phases.py``): the writer core never
imports it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
from distributed import Client, Nanny
from prefect import Flow
from prefect.context import FlowRunContext
from prefect_dask.task_runners import DaskTaskRunner

from tasks.errors import TargetUnreachableError

__all__ = [
    "MAX_LOCAL_WORKERS",
    "SCHEDULER_ADDRESS_ENV",
    "THREADS_BELOW_BYTES",
    "THREADS_BELOW_ENV",
    "WORKER_MALLOC_ENV",
    "WriterNanny",
    "check_scheduler",
    "dask_client",
    "local_cluster_kwargs",
    "on_scheduler",
    "scheduler_address",
    "task_runner",
    "threads_below_bytes",
]

SCHEDULER_ADDRESS_ENV = "ICEFLOE_SCHEDULER_ADDRESS"
# More worker processes than this mostly add memory pressure and start-up time on one host.
MAX_LOCAL_WORKERS = 8
THREADS_BELOW_ENV = "ICEFLOE_THREADS_BELOW_BYTES"
# A LocalCluster takes 2-5 s to start and 1-2 s to stop on a small machine; the threaded
# scheduler writes 64 MiB in well under a second.
THREADS_BELOW_BYTES = 64 * 2**20


# glibc's allocator in the worker processes of the LocalCluster icefloe starts. dask sets
# MALLOC_TRIM_THRESHOLD_=64 KiB so that workers hand freed memory back to the OS at once;
# that also pins glibc's mmap threshold at 128 KiB, so every chunk-sized buffer of a write
# (the block, its encoded and compressed bytes, the copy icechunk takes) is a fresh mapping
# whose pages the kernel faults in and zeroes: in a bulk write, half of the workers' CPU
# was kernel time. Buffers up to 64 MiB from the heap, and up to 256 MiB of freed heap kept
# for the next chunk, make the same write 1.8x faster here (docs/operations.md).
WORKER_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
}
_DASK_DEFAULT_TRIM = "65536"


class WriterNanny(Nanny):
    """dask's Nanny, starting its worker with WORKER_MALLOC_ENV, unless dask's config
    (``distributed.nanny.pre-spawn-environ``) tunes glibc's allocator otherwise.

    The environment is not asked: dask writes the values of every cluster it starts into
    the environment of the process that started it, so they say nothing of the user's wish.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        configured = {
            name: str(value)
            for name, value in dask.config.get("distributed.nanny.pre-spawn-environ").items()
        }
        if configured.get("MALLOC_MMAP_THRESHOLD_") is not None:
            return
        if configured.get("MALLOC_TRIM_THRESHOLD_", _DASK_DEFAULT_TRIM) != _DASK_DEFAULT_TRIM:
            return
        # both: the first is set before the process is spawned, the second after it started
        self.pre_spawn_env.update(WORKER_MALLOC_ENV)
        self.env.update(WORKER_MALLOC_ENV)


class _QuietWorkerShutdown(logging.Filter):
    """Drops the nanny's "Worker process still alive after 4.0 seconds, killing" while
    dask's own messages are turned down (the CLI and served runs turn them down; --verbose
    or ``DASK_LOGGING__DISTRIBUTED=info`` turns them back on).

    It comes when a LocalCluster closes after the run, on a busy machine: the worker had
    finished, the run's data was already committed, and the nanny ends the slow process as
    it should. Noise by design, not a warning a user can act on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger("distributed").getEffectiveLevel() <= logging.INFO:
            return True
        return not str(record.msg).startswith("Worker process still alive after")


logging.getLogger("distributed.nanny").addFilter(_QuietWorkerShutdown())


def scheduler_address(explicit: str | None = None) -> str | None:
    """The scheduler to use: ``explicit``, else ``$ICEFLOE_SCHEDULER_ADDRESS``, else None."""
    return explicit or os.environ.get(SCHEDULER_ADDRESS_ENV) or None


def threads_below_bytes() -> int:
    """Lazy writes smaller than this run on the flow process's threads rather than on a new
    LocalCluster: ``$ICEFLOE_THREADS_BELOW_BYTES`` (0 always starts the cluster), else
    THREADS_BELOW_BYTES."""
    raw = os.environ.get(THREADS_BELOW_ENV, "").strip()
    if not raw:
        return THREADS_BELOW_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"{THREADS_BELOW_ENV}={raw!r} is not a byte count: set it to a whole number such as "
            f"{THREADS_BELOW_BYTES} (0 runs every lazy write on the cluster), or unset it"
        )
    return value


def local_cluster_kwargs() -> dict[str, Any]:
    """The LocalCluster a run starts when it has no scheduler address."""
    return {
        "n_workers": min(os.cpu_count() or 1, MAX_LOCAL_WORKERS),
        "threads_per_worker": 1,
        # Processes: encoding and compression hold the GIL for much of a chunk write.
        "processes": True,
        # any free port: the default 8787 warns whenever another cluster holds it
        "dashboard_address": ":0",
        "worker_class": "tasks.cluster.WriterNanny",
    }


def task_runner(address: str | None = None) -> DaskTaskRunner:
    """A DaskTaskRunner on ``scheduler_address(address)``, or on a new LocalCluster."""
    resolved = scheduler_address(address)
    if resolved:
        return DaskTaskRunner(address=resolved)
    # DaskTaskRunner(cluster=LocalCluster(...)) does not serialise; a class name and kwargs do.
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs()
    )


def on_scheduler(flow: Flow[Any, Any], address: str | None) -> Flow[Any, Any]:
    """``flow`` running its lazy write on the scheduler at ``address`` (None: the default)."""
    if not scheduler_address(address):
        return flow
    # DaskTaskRunner's futures subclass PrefectFuture; Prefect's annotation is invariant
    return flow.with_options(task_runner=task_runner(address))  # type: ignore[arg-type]


def check_scheduler(address: str | None, timeout: float = 10.0) -> None:
    """Fail before anything is written when the Dask scheduler cannot be reached."""
    if not address:
        return
    try:
        Client(address, timeout=timeout, set_as_default=False).close()
    except (OSError, TimeoutError, ValueError) as err:
        raise TargetUnreachableError(
            f"cannot reach the Dask scheduler at {address!r} ({type(err).__name__}: {err}); "
            "start it, fix the address, or unset scheduler_address / ICEFLOE_SCHEDULER_ADDRESS "
            "to use a local cluster"
        ) from err


@contextmanager
def dask_client(
    scheduler_address: str | None, lazy_bytes: int | None = None
) -> Iterator[Client | None]:
    """The client a lazy write of ``lazy_bytes`` computes on; None means this process's threads.

    In order: a scheduler at ``scheduler_address`` (unless the flow's DaskTaskRunner already
    is that one); the flow's DaskTaskRunner, unless it would have to start a LocalCluster for
    a write smaller than ``threads_below_bytes()``; else threads.
    """
    runner = _flow_task_runner()
    if scheduler_address and not (
        isinstance(runner, DaskTaskRunner) and runner.address == scheduler_address
    ):
        # Asked for a cluster the flow's runner does not use (e.g. the flow parameter of a
        # deployment): connect to it for this write only.
        with Client(scheduler_address, set_as_default=False) as client:
            yield client
    elif isinstance(runner, DaskTaskRunner) and not (
        runner.address is None and lazy_bytes is not None and lazy_bytes < threads_below_bytes()
    ):
        # Called in the flow process, dask would use threads; the runner's client (created
        # on first access, so flows that never write lazily start no cluster) is the cluster.
        yield runner.client
    else:
        yield None


def _flow_task_runner() -> object | None:
    context = FlowRunContext.get()
    return context.task_runner if context is not None else None
