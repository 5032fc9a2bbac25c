"""Which Dask cluster a flow's lazy write runs on.

By default each run gets a LocalCluster of worker processes sized to the machine, created by
prefect-dask only when the run first needs it (a dry run or an idempotent re-run starts
none). A scheduler address, from the ``ICEFLOE_SCHEDULER_ADDRESS`` environment variable or
given explicitly, points the run at a running cluster instead.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import Flow
from prefect_dask import DaskTaskRunner

__all__ = [
    "MAX_LOCAL_WORKERS",
    "SCHEDULER_ADDRESS_ENV",
    "on_scheduler",
    "scheduler_address",
    "task_runner",
]

SCHEDULER_ADDRESS_ENV = "ICEFLOE_SCHEDULER_ADDRESS"
# More worker processes than this mostly add memory pressure and start-up time on one host.
MAX_LOCAL_WORKERS = 8


def scheduler_address(explicit: str | None = None) -> str | None:
    """The scheduler to use: ``explicit``, else ``$ICEFLOE_SCHEDULER_ADDRESS``, else None."""
    return explicit or os.environ.get(SCHEDULER_ADDRESS_ENV) or None


def task_runner(address: str | None = None) -> DaskTaskRunner:
    """A DaskTaskRunner on ``scheduler_address(address)``, or on a new LocalCluster."""
    resolved = scheduler_address(address)
    if resolved:
        return DaskTaskRunner(address=resolved)
    # DaskTaskRunner(cluster=LocalCluster(...)) does not serialise; a class name and kwargs do.
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": min(os.cpu_count() or 1, MAX_LOCAL_WORKERS),
            "threads_per_worker": 1,
            # Processes: encoding and compression hold the GIL for much of a chunk write.
            "processes": True,
            "dashboard_address": None,
        },
    )


def on_scheduler(flow: Flow[Any, Any], address: str | None) -> Flow[Any, Any]:
    """``flow`` running its lazy write on the scheduler at ``address`` (None: the default)."""
    if not scheduler_address(address):
        return flow
    return flow.with_options(task_runner=task_runner(address))
