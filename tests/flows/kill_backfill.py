"""Runs one backfill and SIGKILLs its own process as it publishes its second group of
windows (a test helper for tests/flows/test_backfill.py).

    python -m tests.flows.kill_backfill REPO SCHEDULER

Windows of 6 hours in chunks of 12 (two windows a unit), two windows in flight, and every
finished unit committed at once: the first group lands, the process dies in the second.
The patches live here, in the process that dies, and nowhere in icefloe.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
from typing import Any

import flows.backfill
from flows import Target, backfill_flow
from tasks.publish import WindowPublisher

SOURCE = {"kind": "synthetic", "start": "2020-01-01", "ny": 4, "nx": 6, "time_chunk": 12}
START, END, FREQ = dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 3), "6h"


def run(repo: str, scheduler: str, batch: int = 2) -> Any:
    return backfill_flow(
        Target(repo=repo),
        SOURCE,
        start=START,
        end=END,
        freq=FREQ,
        batch=batch,
        scheduler_address=scheduler,
    )


def main(repo: str, scheduler: str) -> None:
    publish = WindowPublisher.publish
    calls = []

    def dying(self: WindowPublisher, *args: Any, **kwargs: Any) -> str:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return publish(self, *args, **kwargs)

    WindowPublisher.publish = dying  # type: ignore[method-assign]
    flows.backfill.COMMIT_EVERY_SECONDS = 0.0
    run(repo, scheduler)


if __name__ == "__main__":
    main(*sys.argv[1:3])
