"""icefloe's Prefect flows, their parameter models and the CLI.

The names below are imported on first use (PEP 562), not with the package: ``icefloe``
commands import ``flows.cli``, which must not pay for modules a command never uses
(the first second of every command is imports).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.backfill import backfill_flow
    from flows.maintenance import maintenance_flow
    from flows.results import WriteResult
    from flows.scheduled import scheduled_append_flow
    from flows.sources import Source
    from flows.targets import Target
    from flows.validate import validate_flow
    from flows.write import (
        RunOptions,
        append_flow,
        create_flow,
        modify_flow,
        region_flow,
        write_flow,
    )

_HOMES = {
    "RunOptions": "flows.write",
    "Source": "flows.sources",
    "Target": "flows.targets",
    "WriteResult": "flows.results",
    "append_flow": "flows.write",
    "backfill_flow": "flows.backfill",
    "create_flow": "flows.write",
    "maintenance_flow": "flows.maintenance",
    "modify_flow": "flows.write",
    "region_flow": "flows.write",
    "scheduled_append_flow": "flows.scheduled",
    "validate_flow": "flows.validate",
    "write_flow": "flows.write",
}

__all__ = [
    "RunOptions",
    "Source",
    "Target",
    "WriteResult",
    "append_flow",
    "backfill_flow",
    "create_flow",
    "maintenance_flow",
    "modify_flow",
    "region_flow",
    "scheduled_append_flow",
    "validate_flow",
    "write_flow",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
