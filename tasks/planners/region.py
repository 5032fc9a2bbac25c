"""Planning ``region``: overwrite a region of existing arrays, placed by labels or indexes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from tasks.plan import (
    ArrayPlan,
    ArrayWrite,
    MetadataSteps,
)
from tasks.planners.base import (
    Planned,
    Planner,
    check_dataset,
    stored_variable,
    values_equal,
)
from tasks.request import RegionSpec, WriteMode
from tasks.stored import StoredGroup


class RegionPlanner(Planner):
    """Write values into a region of existing arrays; never change metadata."""

    mode: WriteMode = "region"

    def __init__(self, ds: xr.Dataset, stored: StoredGroup, region: RegionSpec) -> None:
        super().__init__(ds, stored)
        self.region_spec = region

    def plan(self) -> Planned:
        check_dataset(self.ds, self.problems)
        if not self.stored.arrays:
            self.problems.add(
                "the group holds no arrays; a region write needs the arrays to exist, create "
                "them first (for_create_or_overwrite, or for_append to extend)"
            )
        self.problems.raise_if_any()
        bounds = self._resolve_region()
        self.problems.raise_if_any()
        rows: list[ArrayPlan] = []
        writes: list[ArrayWrite] = []
        for hashable_name, variable in self.ds.variables.items():
            name = str(hashable_name)
            if name not in self.stored.arrays:
                self.problems.add(
                    f"variable {name!r} is not in the store; a region write cannot add variables, "
                    "add it first with for_modify"
                )
                continue
            in_region = [str(d) for d in variable.dims if str(d) in bounds]
            if not in_region:
                if name in self.ds.data_vars:
                    self.problems.add(
                        f"data variable {name!r} does not overlap the region {sorted(bounds)}; "
                        "drop it from the dataset or write it with for_modify"
                    )
                elif not values_equal(variable, stored_variable(self.stored, name)):
                    self.problems.add(
                        f"coordinate {name!r} lies outside the region and differs from the "
                        "stored one; a region write never changes it: select the stored values "
                        "or change it with for_modify"
                    )
                else:
                    rows.append(self.skip_row(name, "unchanged"))
                continue
            if not self.check_compatible(name, variable, "rewrite it with for_modify"):
                continue
            stored = self.stored.arrays[name]
            region = tuple(
                slice(*bounds[d]) if d in bounds else slice(0, n)
                for d, n in zip(stored.dims, stored.shape, strict=True)
            )
            for d, size, sl in zip(stored.dims, variable.shape, region, strict=True):
                if size != sl.stop - sl.start:
                    self.problems.add(
                        f"variable {name!r} has {d!r} of length {size} but the region spans "
                        f"{sl.stop - sl.start} ({d}[{sl.start}:{sl.stop}]); make them equal"
                    )
            if name in self.ds.indexes:
                stored_labels = stored_variable(self.stored, name)[{name: region[0]}]
                if not values_equal(variable, stored_labels):
                    self.problems.add(
                        f"labels of {name!r} differ from the stored labels at {name}"
                        f"[{region[0].start}:{region[0].stop}]; use region='auto' to place them by "
                        "label, or fix the slice"
                    )
                else:
                    rows.append(self.skip_row(name, "labels match"))
                continue
            if name in self.ds.coords:
                # rewriting an unchanged coordinate would make disjoint region runs conflict
                in_store = stored_variable(self.stored, name)[
                    dict(zip(stored.dims, region, strict=True))
                ]
                if values_equal(variable, in_store):
                    rows.append(self.skip_row(name, "unchanged"))
                    continue
            self.check_encodable(name, variable)
            self.guard.check_units(name, variable, "a region write")
            row, write = self.plan_write(name, variable, region, "region", stored.shape)
            rows.append(row)
            writes.append(write)
        return self.finish(
            rows,
            MetadataSteps(),
            writes,
            self.stored.attrs,
            [],
            region={d: (a, b) for d, (a, b) in bounds.items()},
        )

    def _resolve_region(self) -> dict[str, tuple[int, int]]:
        spec = self.region_spec
        if spec == "auto":
            spec = {str(d): "auto" for d in self.ds.dims if str(d) in self.stored.sizes}
            for dim in list(spec):
                unlabelled = dim not in self.ds.indexes and dim not in self.stored.indexes
                if unlabelled and self.ds.sizes[dim] == self.stored.sizes[dim]:
                    # nothing to place by (bounds' "bnds", a vertex dimension): a dataset
                    # that spans all of it covers the whole extent, as to_zarr does
                    spec[dim] = slice(0, self.stored.sizes[dim])
            if not spec:
                self.problems.add(
                    f"none of the dataset's dimensions {sorted(map(str, self.ds.dims))} is in the "
                    f"store ({sorted(self.stored.sizes)}); rename them to match"
                )
        if not isinstance(spec, Mapping):
            self.problems.add(f"region={spec!r} must be 'auto' or a mapping of dimension to slice")
            return {}
        bounds: dict[str, tuple[int, int]] = {}
        for dim, value in spec.items():
            dim = str(dim)
            if dim not in self.stored.sizes:
                self.problems.add(
                    f"region dimension {dim!r} is not in the store (it has "
                    f"{sorted(self.stored.sizes)}); remove it from the region"
                )
                continue
            if dim not in self.ds.dims:
                self.problems.add(
                    f"region dimension {dim!r} is not a dimension of the dataset; remove it from "
                    "the region or add the dimension"
                )
                continue
            size = self.stored.sizes[dim]
            if value == "auto":
                found = self._auto_bounds(dim)
                if found:
                    bounds[dim] = found
                continue
            if not isinstance(value, slice) or value.step not in (None, 1):
                self.problems.add(
                    f"region[{dim!r}] = {value!r} must be 'auto' or a slice with step 1"
                )
                continue
            start = 0 if value.start is None else value.start
            stop = size if value.stop is None else value.stop
            if not (0 <= start <= stop <= size):
                self.problems.add(
                    f"region[{dim!r}] = slice({value.start}, {value.stop}) is out of bounds: the "
                    f"stored {dim!r} has length {size}; pick a slice within [0, {size}] (or "
                    "extend the arrays with for_append first)"
                )
                continue
            bounds[dim] = (start, stop)
        return bounds

    def _auto_bounds(self, dim: str) -> tuple[int, int] | None:
        if dim not in self.ds.indexes or dim not in self.stored.indexes:
            self.problems.add(
                f"region[{dim!r}] = 'auto' needs a {dim!r} coordinate in both the dataset and "
                "the store; give an explicit slice instead"
            )
            return None
        labels, stored_labels = self.ds.indexes[dim], self.stored.indexes[dim]
        if not stored_labels.is_unique:
            self.problems.add(
                f"the stored labels of {dim!r} repeat, so region='auto' cannot place the "
                f"dataset by label; give an explicit slice instead, e.g. region={{{dim!r}: "
                "slice(start, stop)}"
            )
            return None
        positions = stored_labels.get_indexer(labels)
        if (positions < 0).any():
            missing = labels[positions < 0]
            self.problems.add(
                f"labels {[str(x) for x in missing[:5]]} of {dim!r} are not in the store; "
                "extend the arrays first (for_append, or backfill) or correct the labels"
            )
            return None
        if len(positions) and (np.diff(positions) != 1).any():
            self.problems.add(
                f"labels of {dim!r} are not a contiguous run of the stored labels; split the "
                "write into contiguous pieces"
            )
            return None
        return (int(positions[0]), int(positions[-1]) + 1) if len(positions) else (0, 0)
