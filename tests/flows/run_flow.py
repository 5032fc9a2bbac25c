"""Runs one write flow in a process of its own, for the concurrency tests.

    python -m tests.flows.run_flow '{"flow": "region", "kwargs": {...}, "go": "<path>"}'

Everything is imported first; the flow then starts when the file ``go`` exists, so that
runs launched together really run together. ``"after"`` makes it wait longer:
``{"started": {"dir": d, "count": n}}`` until n gated runs (tests.flows.durability_sources)
are writing; ``{"lock": {"group": "g", "dim": "time", "length": 84}}`` until another run
holds the group's metadata lock or the group has that many labels (for an append that
must land after another one).

Prints one line ``RESULT <json>``: ``{"ok": <WriteResult>}`` or ``{"error": <class name>,
"message": ..., "overlapping": ...}``. The Prefect API comes from the environment
(PREFECT_API_URL), as for a deployment's flow run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import zarr

from flows import Target, append_flow, create_flow, modify_flow, region_flow
from flows.locks import lock_holder
from flows.write import load_credentials

FLOWS = {"append": append_flow, "create": create_flow, "modify": modify_flow, "region": region_flow}


def _lock_held(target: Target, group: str) -> bool:
    repo = target.open_repository(credentials=load_credentials(target))
    return lock_holder(target, group, repo) is not None


def _length(target: Target, group: str, dim: str) -> int:
    repo = target.open_repository(credentials=load_credentials(target))
    session = repo.readonly_session(branch=target.branch)
    return zarr.open_array(session.store, path=f"{group}/{dim}", mode="r").shape[0]


def _wait(spec: dict[str, Any], deadline: float) -> None:
    go = spec.get("go")
    while go and not os.path.exists(go):
        assert time.monotonic() < deadline, "never told to go"
        time.sleep(0.02)
    after = spec.get("after") or {}
    if "started" in after:  # {"dir": ..., "count": n}: n gated runs are writing
        folder, count = Path(after["started"]["dir"]), after["started"]["count"]
        while len(list(folder.glob("started-*"))) < count:
            assert time.monotonic() < deadline, f"{count} runs never started writing"
            time.sleep(0.05)
    if "lock" in after:  # {"group": ..., "dim": ..., "length": n}
        lock = after["lock"]
        target = Target.model_validate(spec["kwargs"]["target"])
        while not (
            _lock_held(target, lock["group"])
            or _length(target, lock["group"], lock["dim"]) >= lock["length"]
        ):
            assert time.monotonic() < deadline, "the earlier run never took the lock"
            time.sleep(0.2)


def main() -> None:
    spec = json.loads(sys.argv[1])
    print("READY", flush=True)  # imported: the rest starts within milliseconds of "go"
    try:
        _wait(spec, time.monotonic() + 180)
        result = FLOWS[spec["flow"]](**spec["kwargs"])
        out: dict[str, object] = {"ok": result.model_dump(mode="json")}
    except Exception as err:
        out = {
            "error": type(err).__name__,
            "message": str(err),
            "overlapping": getattr(err, "overlapping", None),
        }
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
