"""Holds a group's metadata lock until killed (a test helper).

    python -m tests.flows.hold_lock TARGET_JSON GROUP READY_FILE

Touches READY_FILE once it holds the lock, then sleeps; the test kills it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from flows.locks import serialized
from flows.targets import Target


def main(target_json: str, group: str, ready: str) -> None:
    target = Target.model_validate_json(target_json)
    with serialized(target, group, repo=target.open_repository(create=True)):
        Path(ready).touch()
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
