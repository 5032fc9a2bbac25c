"""Runs one append flow that stops at a chosen point and waits there to be killed (a test
helper for tests/flows/test_crash.py).

    python -m tests.flows.crash_run REPO POINT AT_FILE COUNT_FILE RUN_KEY

POINT is where it waits: "write_metadata" (in the flow process, as the phase starts),
"write_lazy" (the third of five batches is running on the run's own LocalCluster, the
flow process waiting for it), or "commit" (about to publish). On arrival it writes
AT_FILE: its pid, flow run id and Prefect API URL, for the test to signal or cancel it.
Each batch that finishes appends a line to COUNT_FILE. With no PREFECT_API_URL in the
environment Prefect starts its temporary server, as for a user's script.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dask
import icechunk.dask
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

import tasks.batches
import tasks.phases
from flows import Target, append_flow
from flows.write import RunOptions
from tasks.writer import XarrayDatasetWriter
from tests.flows.kill_run import BATCHES, WINDOW

WAIT_SECONDS = 120.0


def options(run_key: str) -> RunOptions:
    # serialize: the re-run must get the group's lock back from the killed run. A key of
    # its own per test: runs share the base snapshot, and would resume each other's work.
    return RunOptions(run_key=run_key, batches=BATCHES, serialize=True)


def arrived(at_file: str) -> None:
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    info = {"pid": os.getpid(), "flow_run_id": str(flow_run.id), "api_url": api_url}
    Path(at_file + ".tmp").write_text(json.dumps(info))
    os.replace(at_file + ".tmp", at_file)


def _sleep_on_a_worker(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def main(repo: str, point: str, at_file: str, count_file: str, run_key: str) -> None:
    # The data is tiny: without this the lazy write would run on the flow process's threads
    # and no LocalCluster (whose worker processes must not outlive the run) would start.
    os.environ["ICEFLOE_THREADS_BELOW_BYTES"] = "0"
    original_batch = tasks.batches.write_batch
    third_batch_task = threading.Event()

    def counting(*args: Any, **kwargs: Any) -> Any:
        if args[1].index == 2:  # (fork, batch, ...)
            third_batch_task.set()
        result = original_batch(*args, **kwargs)
        with open(count_file, "a") as f:
            f.write("batch\n")
        return result

    tasks.batches.write_batch = counting

    def waiting(original: Any) -> Any:
        def patched(*args: Any, **kwargs: Any) -> Any:
            arrived(at_file)
            time.sleep(WAIT_SECONDS)
            return original(*args, **kwargs)

        return patched

    if point == "write_metadata":
        XarrayDatasetWriter._write_metadata = waiting(XarrayDatasetWriter._write_metadata)
    elif point == "commit":
        tasks.phases.publish = waiting(tasks.phases.publish)
    elif point == "write_lazy":
        original_store = icechunk.dask.store_dask
        calls: list[int] = []

        def store(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 3:
                # The third batch starts ahead, while the second one still computes: it
                # arrives once the third batch's own task has begun, i.e. once the first
                # two batches are finished and persisted, as in any long batch.
                third_batch_task.wait(WAIT_SECONDS)
                computation = dask.delayed(_sleep_on_a_worker)(WAIT_SECONDS)
                arrived(at_file)
                computation.compute()
            return original_store(*args, **kwargs)

        icechunk.dask.store_dask = store
    else:
        raise SystemExit(f"unknown point {point!r}")
    append_flow(Target(repo=repo), WINDOW, append_dim="time", options=options(run_key))


if __name__ == "__main__":
    main(*sys.argv[1:6])
