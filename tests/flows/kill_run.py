"""Runs one append flow and SIGKILLs its own process at a chosen point (a test helper).

    python -m tests.flows.kill_run REPO SCHEDULER POINT COUNT_FILE

REPO is a path, or a Target as JSON (e.g. on object storage, with credentials from the
environment or a Secret block). POINT is where the process dies: at the start of a phase
("write_metadata", "write_eager", "verify", "commit"), before the first batch
("write_lazy"), in the middle of a batch's dask computation ("mid_batch"), or before
batch K ("batch:K").
Each batch that really runs appends a line to COUNT_FILE. The patches live here, in
the test process that dies, and nowhere in icefloe.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import icechunk.dask

import tasks.batches
import tasks.phases
from flows import Target, append_flow
from flows.write import RunOptions
from tasks.writer import XarrayDatasetWriter

RUN_KEY = "resume-test"
BATCHES = 5
WINDOW = {
    "kind": "synthetic",
    "start": "2020-01-02",
    "periods": 120,
    "ny": 4,
    "nx": 6,
    "time_chunk": 24,
}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def dying(at: Callable[..., Any]) -> Callable[..., Any]:
    def patched(*args: Any, **kwargs: Any) -> Any:
        die()
        return at(*args, **kwargs)

    return patched


def counting_batches(count_file: str, die_before: int | None) -> Callable[..., Any]:
    original = tasks.batches.write_batch

    def patched(*args: Any, **kwargs: Any) -> Any:
        with open(count_file) as f:
            started = len(f.readlines())
        if die_before is not None and started + 1 >= die_before:
            die()
        result = original(*args, **kwargs)
        with open(count_file, "a") as f:
            f.write("batch\n")
        return result

    return patched


def target(repo: str) -> Target:
    """A Target from a path, or from its JSON."""
    return Target.model_validate_json(repo) if repo.lstrip().startswith("{") else Target(repo=repo)


def run(repo: str, scheduler: str) -> None:
    append_flow(
        target(repo),
        WINDOW,
        append_dim="time",
        scheduler_address=scheduler,
        # a killed holder would keep the group's lock for a minute; one writer here
        options=RunOptions(run_key=RUN_KEY, batches=BATCHES, serialize=False),
    )


def main(repo: str, scheduler: str, point: str, count_file: str) -> None:
    die_before = int(point.split(":")[1]) if point.startswith("batch:") else None
    if point == "write_lazy":
        die_before = 1
    tasks.batches.write_batch = counting_batches(count_file, die_before)
    phase_bodies = {
        "write_metadata": "_write_metadata",
        "write_eager": "_write_eager",
        "verify": "_verify",
    }
    if point in phase_bodies:
        name = phase_bodies[point]
        setattr(XarrayDatasetWriter, name, dying(getattr(XarrayDatasetWriter, name)))
    elif point == "commit":
        tasks.phases.publish = dying(tasks.phases.publish)
    elif point == "mid_batch":
        original = icechunk.dask.store_dask

        def store_then_die(*args: Any, **kwargs: Any) -> Any:
            # dies while the batch's chunks are being (or have just been) uploaded and its
            # fork has not come back: the worst moment for a half-written run
            threading.Timer(0.05, die).start()
            result = original(*args, **kwargs)
            time.sleep(5)
            return result

        icechunk.dask.store_dask = store_then_die
    run(repo, scheduler)


if __name__ == "__main__":
    main(*sys.argv[1:5])
