"""Planning ``create`` (the group must hold nothing) and ``overwrite`` (it is replaced)."""

from __future__ import annotations

from typing import Any, Literal

import xarray as xr

from tasks.plan import (
    ArrayPlan,
    MetadataSteps,
)

# Encoding keys xarray's zarr backend accepts; anything else a source carried along
# (netCDF's zlib, chunksizes, source, ...) is dropped rather than rejected.
from tasks.planners.base import (
    Planned,
    Planner,
    check_dataset,
    dtype_label,
)
from tasks.stored import StoredGroup


class CreatePlanner(Planner):
    """``mode="w-"`` (the group must be empty) or ``"w"`` (the group is replaced)."""

    def __init__(
        self, ds: xr.Dataset, stored: StoredGroup, mode: Literal["w", "w-"], encoding: Any = None
    ) -> None:
        super().__init__(ds, stored, encoding)
        self.create_mode = mode
        self.mode = "overwrite" if mode == "w" and not stored.is_empty else "create"

    def plan(self) -> Planned:
        check_dataset(self.ds, self.problems)
        if self.create_mode == "w-" and not self.stored.is_empty:
            contents = sorted(self.stored.arrays) or self.stored.subgroups
            self.problems.add(
                f"the group already exists and holds {', '.join(map(repr, contents[:8]))}; use "
                "mode='w' to replace it, for_modify to change it, or for_append to extend it"
            )
        unknown = set(self.encoding) - {str(n) for n in self.ds.variables}
        if unknown:
            self.problems.add(
                f"encoding names {sorted(unknown)}, which are not variables of the dataset; "
                "remove them from encoding"
            )
        self.problems.raise_if_any()
        variables = {str(n): v for n, v in self.ds.variables.items()}
        rows, template, encodings, writes = self.plan_creates(variables)
        template.attrs = dict(self.ds.attrs)
        deleted = (
            [
                ArrayPlan(
                    name, "delete", a.dims, (), a.shape, a.chunks, dtype_label(a.dtype), "metadata"
                )
                for name, a in self.stored.arrays.items()
                if name not in variables
            ]
            if self.create_mode == "w"
            else []
        )
        steps = MetadataSteps(create_mode=self.create_mode, template=template, encoding=encodings)
        return self.finish(
            rows + deleted, steps, writes, self.ds.attrs, sorted(map(str, self.ds.attrs))
        )
