"""Planning ``modify``: add variables, overwrite existing ones, merge attributes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import xarray as xr

from tasks.chunking import (
    full_region,
)
from tasks.plan import (
    ArrayPlan,
    ArrayWrite,
    MetadataSteps,
    SpecUpdate,
)
from tasks.planners.base import (
    Planned,
    Planner,
    changed_attrs,
    check_dataset,
    dtypes_compatible,
    stored_variable,
    values_equal,
)
from tasks.request import WriteMode
from tasks.stored import StoredGroup


class ModifyPlanner(Planner):
    """Add variables, overwrite existing ones (replacing those whose layout changed), merge attrs."""

    mode: WriteMode = "modify"

    def __init__(
        self,
        ds: xr.Dataset,
        stored: StoredGroup,
        encoding: Any = None,
        only_new: bool = False,
        update_spec: bool = False,
    ) -> None:
        super().__init__(ds, stored, encoding)
        self.only_new = only_new
        self.update_spec = update_spec

    def plan(self) -> Planned:
        check_dataset(self.ds, self.problems)
        if not self.stored.exists:
            self.problems.add(
                "the group does not exist; create it first with for_create_or_overwrite, or "
                "check the group path"
            )
        self.problems.raise_if_any()
        stored_arrays = self.stored.arrays
        ds = self.ds
        skipped_existing: list[str] = []
        if self.only_new:
            for name in [str(n) for n in ds.variables if str(n) in stored_arrays]:
                if name in ds.dims and not values_equal(
                    ds.variables[name], stored_variable(self.stored, name)
                ):
                    self.problems.add(
                        f"coordinate {name!r} differs from the stored one, so the new variables "
                        "would be mislabelled; select the stored labels or use for_modify without "
                        "drop_existing_vars to overwrite it"
                    )
                skipped_existing.append(name)
        new_vars: dict[str, xr.Variable] = {}
        replaced: dict[str, xr.Variable] = {}
        rows: list[ArrayPlan] = []
        writes: list[ArrayWrite] = []
        array_attrs: dict[str, dict[str, Any]] = {}
        for hashable_name, variable in ds.variables.items():
            name = str(hashable_name)
            if name in skipped_existing:
                rows.append(self.skip_row(name, "exists"))
                continue
            if name not in stored_arrays:
                new_vars[name] = variable
                continue
            stored = stored_arrays[name]
            same_layout = (
                tuple(map(str, variable.dims)) == stored.dims
                and variable.shape == stored.shape
                and dtypes_compatible(variable, *self.stored.schemas[name])
            )
            if not same_layout:
                replaced[name] = variable
                continue
            if name in ds.coords and values_equal(variable, stored_variable(self.stored, name)):
                rows.append(self.skip_row(name, "unchanged"))
            else:
                self.check_encodable(name, variable)
                row, write = self.plan_write(
                    name, variable, full_region(stored.shape), "overwrite", stored.shape
                )
                rows.append(dataclasses.replace(row, attrs={**stored.attrs, **variable.attrs}))
                writes.append(write)
            changed = changed_attrs(stored.attrs, variable.attrs)
            if changed:
                array_attrs[name] = {k: variable.attrs[k] for k in changed}
        self._check_dimension_sizes({**new_vars, **replaced})
        self.problems.raise_if_any()
        self._keep_declared_chunks(replaced)
        created_rows, template, encodings, created_writes = self.plan_creates(new_vars)
        replaced_rows, replaced_template, replaced_enc, replaced_writes = self.plan_creates(
            replaced, action="replace"
        )
        template = xr.merge([template, replaced_template]) if replaced else template
        # to_zarr(mode="a") replaces the group's attributes with the template's
        template.attrs = {**self.stored.attrs, **ds.attrs}
        encodings.update(replaced_enc)
        group_changes = changed_attrs(self.stored.attrs, ds.attrs)
        steps = MetadataSteps(
            delete=sorted(replaced),
            create_mode="a" if new_vars or replaced else None,
            template=template if new_vars or replaced else None,
            encoding=encodings,
            group_attrs={k: ds.attrs[k] for k in group_changes},
            array_attrs=array_attrs,
        )
        rows += created_rows + replaced_rows
        self.guard.check_structure(
            rows,
            encodings,
            allowed=self.update_spec,
            fix="pass update_spec=True (icefloe modify --update-spec) to change the spec with "
            "it, or write it as the spec declares",
        )
        self.guard.check_no_shrink(rows)
        steps.spec = self._spec(new_vars, [r.name for r in rows if r.action != "skip"])
        return self.finish(
            rows,
            steps,
            writes + created_writes + replaced_writes,
            {**self.stored.attrs, **ds.attrs},
            group_changes + [f"{n}.{k}" for n, attrs in array_attrs.items() for k in attrs],
        )

    def _keep_declared_chunks(self, replaced: Mapping[str, xr.Variable]) -> None:
        """A replaced variable keeps its declared chunks unless its encoding says otherwise,
        so that changing its dtype (update_spec) does not change its chunks as well."""
        spec = self.stored.spec
        if spec is None:
            return
        for name, variable in replaced.items():
            declared = spec.variables.get(name)
            if declared is not None and declared.chunks and len(declared.chunks) == variable.ndim:
                self.encoding.setdefault(name, {}).setdefault("chunks", declared.chunks)

    def _spec(self, created: Mapping[str, xr.Variable], changed: list[str]) -> SpecUpdate | None:
        """The spec lists the variables a modify adds; with update_spec, it takes the new
        structure of every variable the modify writes."""
        spec = self.stored.spec
        if spec is None:
            return None
        refresh = changed if self.update_spec else list(created)
        return SpecUpdate(base=spec, append_dim=spec.append_dim, refresh=tuple(refresh))

    def _check_dimension_sizes(self, changing: Mapping[str, xr.Variable]) -> None:
        """A created or replaced array must agree with the sizes of the arrays that stay."""
        kept_sizes: dict[str, tuple[int, str]] = {}
        for name, array in self.stored.arrays.items():
            if name not in changing:
                for dim, size in zip(array.dims, array.shape, strict=True):
                    kept_sizes.setdefault(dim, (size, name))
        for name, variable in changing.items():
            for new_dim, size in variable.sizes.items():
                dim = str(new_dim)
                if dim in kept_sizes and kept_sizes[dim][0] != size:
                    stored_size, holder = kept_sizes[dim]
                    self.problems.add(
                        f"variable {name!r} has {dim!r} of length {size} but the stored array "
                        f"{holder!r} has {stored_size}; make the lengths match, or rewrite the "
                        f"group with mode='w'"
                    )
