"""Runs create_flow in batches and SIGKILLs its own process before the last batch.

    python -m benchmarks.kill REPO SCHEDULER SHAPE_JSON RUN_KEY BATCHES

Dies when batch BATCHES is about to start, i.e. with (BATCHES-1)/BATCHES of the lazy
write done and persisted (80 % for 5 batches), as tests/flows/kill_run.py does. The
Prefect API and the result storage come from the environment; the re-run happens in
the benchmark's process with the same run key.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import tasks.batches
from benchmarks.data import Shape, source_spec
from flows import Target, create_flow
from flows.write import RunOptions
from tasks.cluster import on_scheduler


def main(repo: str, scheduler: str, shape_json: str, run_key: str, batches: str) -> None:
    original = tasks.batches.write_batch
    started = 0

    def dying(*args: Any, **kwargs: Any) -> Any:
        nonlocal started
        started += 1
        if started >= int(batches):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    tasks.batches.write_batch = dying
    on_scheduler(create_flow, scheduler)(
        Target(repo=repo),
        source_spec(Shape(**json.loads(shape_json))),
        scheduler_address=scheduler,
        options=RunOptions(run_key=run_key, batches=int(batches), serialize=False),
    )


if __name__ == "__main__":
    main(*sys.argv[1:6])
