"""Planning a write: one planner per mode, compared against what the group holds.

A planner reads the store (never writes), applies its mode's rules (docs/modes.md),
collects every problem it finds and raises them together as one PlanError, or returns
the plan together with the metadata steps and array writes that carry it out.
"""

from tasks.planners.append import AppendPlanner
from tasks.planners.base import ZARR_ENCODING_KEYS, Planned, Planner, check_dataset
from tasks.planners.create import CreatePlanner
from tasks.planners.modify import ModifyPlanner
from tasks.planners.region import RegionPlanner

__all__ = [
    "ZARR_ENCODING_KEYS",
    "AppendPlanner",
    "CreatePlanner",
    "ModifyPlanner",
    "Planned",
    "Planner",
    "RegionPlanner",
    "check_dataset",
]
