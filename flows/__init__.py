"""icefloe's Prefect flows, their parameter models and the CLI."""

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
