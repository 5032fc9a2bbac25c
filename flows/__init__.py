"""icefloe's Prefect flows, their parameter models and the CLI."""

from flows.maintenance import maintenance_flow as maintenance_flow
from flows.results import WriteResult
from flows.sources import Source
from flows.targets import Target
from flows.write import append_flow, create_flow, modify_flow, region_flow

__all__ = [
    "Source",
    "Target",
    "WriteResult",
    "append_flow",
    "create_flow",
    "modify_flow",
    "region_flow",
]
