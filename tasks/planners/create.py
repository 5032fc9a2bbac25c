"""Planning ``create`` (the group must hold nothing) and ``overwrite`` (it is replaced)."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
import xarray as xr

from tasks.plan import (
    ArrayPlan,
    MetadataSteps,
    SpecUpdate,
)
from tasks.planners.base import (
    Planned,
    Planner,
    check_dataset,
)
from tasks.planners.guards import check_first_labels
from tasks.spec import guess_append_dim
from tasks.stored import StoredGroup, dtype_label


class CreatePlanner(Planner):
    """``mode="w-"`` (the group must be empty) or ``"w"`` (the group is replaced)."""

    def __init__(
        self,
        ds: xr.Dataset,
        stored: StoredGroup,
        mode: Literal["w", "w-"],
        encoding: Any = None,
        append_dim: str | None = None,
    ) -> None:
        super().__init__(ds, stored, encoding)
        self.create_mode = mode
        self.mode = "overwrite" if mode == "w" and not stored.is_empty else "create"
        self.append_dim = append_dim
        # a spec declared ahead of the first write (icefloe spec init) rules it; an
        # overwrite replaces the group and infers a new one, keeping only the bounds
        self.declared = stored.spec if stored.is_empty else None
        if self.declared is None:
            self.guard.spec = None

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
        if self.declared is not None:
            for name, declared in self.declared.variables.items():
                # the declared chunks are the default encoding of a declared group
                if name in variables and declared.chunks:
                    self.encoding.setdefault(name, {}).setdefault("chunks", declared.chunks)
        rows, template, encodings, writes = self.plan_creates(variables)
        self.guard.check_declared_variables(variables)
        if self.declared is not None and self.declared.append_dim in self.ds.indexes:
            dim = self.declared.append_dim
            check_first_labels(self.ds.indexes[dim], self.declared, "error", dim, self.problems)
        self.guard.check_structure(
            rows,
            encodings,
            allowed=False,
            fix="write it as the spec declares (or pass its encoding), or declare the spec "
            "again (icefloe spec init --force)",
        )
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
        # to_zarr's "w-" refuses a group that exists, even one holding only attributes
        # (a declared spec)
        create_mode: Literal["w", "w-", "a"] = (
            "a" if self.create_mode == "w-" and self.stored.exists else self.create_mode
        )
        steps = MetadataSteps(
            create_mode=create_mode, template=template, encoding=encodings, spec=self._spec()
        )
        return self.finish(
            rows + deleted, steps, writes, self.ds.attrs, sorted(map(str, self.ds.attrs))
        )

    def spec_dim(self) -> str:
        """The dimension the new group's spec says appends extend."""
        if self.append_dim is not None:
            return self.append_dim
        previous = self.declared or self.stored.spec
        if previous is not None and previous.append_dim in self.ds.dims:
            return previous.append_dim
        return guess_append_dim(
            {str(n): tuple(map(str, v.dims)) for n, v in self.ds.variables.items()},
            unlimited=self.ds.encoding.get("unlimited_dims"),
            time_coords={
                str(n)
                for n, index in self.ds.indexes.items()
                if isinstance(index, pd.DatetimeIndex | xr.CFTimeIndex)
            },
        )

    def _spec(self) -> SpecUpdate:
        if self.declared is not None:
            return SpecUpdate(base=self.declared, append_dim=self.declared.append_dim)
        dim = self.spec_dim()
        labels = self.ds.indexes[dim] if dim in self.ds.indexes else pd.Index([])
        return SpecUpdate(base=self.stored.spec, append_dim=dim, labels=labels)
