"""One flow run in a process of its own, as a Prefect worker runs it, for the scale benchmarks.

    python -m benchmarks.scale_runner '{"flow": "region_flow", "kwargs": {...}}'

Imports everything first and prints ``ready``; runs the flow when a line arrives on stdin
(so that many runs can start at the same moment, their start-up excluded), then prints one
JSON line: the flow run id, the result, and when the run started and ended (UNIX time).
Measured from outside, the process's memory is the flow process's own.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from typing import Any


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    # the writer's own retries (tasks.commit, tasks.publish) to stderr, where the benchmark
    # counts them: they are not Prefect run logs
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    writer_logs = logging.getLogger("tasks")
    writer_logs.addHandler(handler)
    writer_logs.setLevel(logging.INFO)
    import flows  # noqa: F401  (imported before "ready": start-up is not part of the run)
    from flows import backfill_flow, create_flow, maintenance_flow, region_flow

    chosen = {
        "region_flow": region_flow,
        "create_flow": create_flow,
        "maintenance_flow": maintenance_flow,
        "backfill_flow": backfill_flow,
    }[spec["flow"]]
    print("ready", flush=True)
    sys.stdin.readline()
    cpu_before = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    started = time.time()
    state = chosen(**spec["kwargs"], return_state=True)
    ended = time.time()
    result = state.result(raise_on_failure=False)
    out = {
        "flow_run_id": str(state.state_details.flow_run_id),
        "state": state.name,
        "message": state.message,
        "result": result.model_dump(mode="json") if hasattr(result, "model_dump") else repr(result),
        "started": started,
        "ended": ended,
        "cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu_before,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
