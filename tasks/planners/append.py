"""Planning ``append``: extend the arrays along the append dimension with new labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from tasks.plan import (
    ArrayPlan,
    ArrayWrite,
    MetadataSteps,
    WritePlan,
)
from tasks.planners.base import (
    Planned,
    Planner,
    changed_attrs,
    check_dataset,
    labels_text,
    stored_variable,
    values_equal,
)
from tasks.planners.create import CreatePlanner
from tasks.planners.guards import (
    UPDATE_SPEC_HINT,
    OnStep,
    apply_on_step,
    check_first_labels,
    check_step,
    missing_value,
)
from tasks.request import OnGap, OnOverlap, WriteMode
from tasks.spec import IRREGULAR, infer_step, step_of_timedelta
from tasks.stored import SPEC_KEY, StoredGroup, dtype_label

# Labels per chunk of the append coordinate of a group created by an append: 512 KiB of
# int64, a few KB compressed; about seven years of hourly labels.
APPEND_COORD_CHUNK = 2**16


@dataclass(frozen=True)
class _Span:
    """Where an append lands along the append dimension."""

    old_len: int  # stored length before the append
    write_from: int  # store position of the first written label
    n_new: int  # labels written (new and, with on_overlap="overwrite", overlapping)

    @property
    def new_len(self) -> int:
        return max(self.old_len, self.write_from + self.n_new)

    def grown(self, shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
        return tuple(self.new_len if i == axis else n for i, n in enumerate(shape))


class AppendPlanner(Planner):
    """Extend every variable that has ``append_dim``; everything else must already match."""

    mode: WriteMode = "append"

    def __init__(
        self,
        ds: xr.Dataset,
        stored: StoredGroup,
        append_dim: str,
        on_overlap: OnOverlap = "error",
        update_attrs: Mapping[str, Any] | None = None,
        fill_missing: bool = False,
        on_gap: OnGap = "error",
    ) -> None:
        super().__init__(ds, stored)
        self.append_dim = append_dim
        self.on_overlap = on_overlap
        self.update_attrs = dict(update_attrs or {})
        self.fill_missing = fill_missing
        self.on_gap = on_gap
        self.on_step = OnStep()
        # the dtype and dims hints: with a spec, rewriting a variable is a declared change
        self.rewrite = (
            "rewrite it with for_modify"
            if stored.spec is None
            else "rewrite it with for_modify(update_spec=True)"
        )

    def plan(self) -> Planned:
        check_dataset(self.ds, self.problems)
        dim = self.append_dim
        if self.on_overlap not in ("error", "skip", "overwrite"):
            self.problems.add(
                f"on_overlap={self.on_overlap!r} is not one of 'error', 'skip', 'overwrite'"
            )
        if dim not in self.ds.dims:
            self.problems.add(
                f"append_dim {dim!r} is not a dimension of the dataset (its dimensions are "
                f"{sorted(map(str, self.ds.dims))}); pass one of those"
            )
        if SPEC_KEY in self.update_attrs:
            self.problems.add(
                f"update_attrs sets {SPEC_KEY!r}, the group's spec that icefloe keeps; leave it "
                "out, and change the spec with `icefloe spec init --force` (tasks.spec)"
            )
        self.problems.raise_if_any()
        if self.stored.is_empty:
            return self._plan_create()
        if dim not in self.stored.sizes:
            self.problems.add(
                f"append_dim {dim!r} is not a dimension of the stored group (it has "
                f"{sorted(self.stored.sizes)}); pass one of those"
            )
            self.problems.raise_if_any()
        return self._plan_extend()

    def _plan_create(self) -> Planned:
        """The group's first write: created from the dataset (its labels on the step of a
        spec declared ahead of it, holes handled as ``on_gap`` says)."""
        dim = self.append_dim
        labels = self._labels(self.ds)
        if labels is not None and not self.problems.items:
            self.on_step = check_first_labels(
                labels, self.stored.spec, self.on_gap, dim, self.problems
            )
        if self.on_step.keep is not None or self.on_step.labels is not None:
            fills = {
                str(n): missing_value(v, v.encoding.get("_FillValue"))
                for n, v in self.ds.variables.items()
            }
            self.ds = apply_on_step(self.ds, dim, 1, self.on_step, _known(fills), self.problems)
        self.problems.raise_if_any()
        creator = CreatePlanner(self.ds, self.stored, "w-", append_dim=dim)
        creator.growth_chunks = self._growth_chunks()
        planned = creator.plan()
        assert planned.steps.template is not None  # creating a group always has one
        planned.steps.template.attrs.update(self.update_attrs)
        labels = self._labels(planned.dataset)
        plan = planned.plan
        planned.plan = WritePlan(
            mode="append",
            group=plan.group,
            arrays=plan.arrays,
            group_attrs={**plan.group_attrs, **self.update_attrs},
            attrs_changed=plan.attrs_changed,
            append_dim=dim,
            label_range=labels_text(labels) if labels is not None and len(labels) else None,
            append_span=(0, planned.dataset.sizes[dim]),
            gaps=self.on_step.gaps,
            stopped_at=self.on_step.stopped_at,
        )
        return planned

    def _growth_chunks(self) -> dict[str, int]:
        """A group an append creates is going to grow along the append dimension: its
        coordinate is chunked for that (APPEND_COORD_CHUNK labels), not to the first
        run's length. A first backfill window of one hour would otherwise chunk the axis
        by the hour, and every later plan would read the axis a label per chunk."""
        coord = self.ds.variables.get(self.append_dim)
        if coord is None or coord.chunks is not None or coord.ndim != 1:
            return {}  # dask-backed: its own chunks decide, as xarray requires
        return {self.append_dim: APPEND_COORD_CHUNK}

    def _labels(self, ds: xr.Dataset) -> pd.Index | None:
        if self.append_dim not in ds.indexes:
            return None
        labels = ds.indexes[self.append_dim]
        if not labels.is_unique:
            dupes = labels[labels.duplicated()].unique()
            self.problems.add(
                f"coordinate {self.append_dim!r} has duplicated labels {[str(x) for x in dupes[:5]]}; "
                "drop the duplicates (e.g. ds.drop_duplicates)"
            )
        elif not labels.is_monotonic_increasing:
            self.problems.add(
                f"coordinate {self.append_dim!r} is not increasing; sort it with "
                f"ds.sortby({self.append_dim!r})"
            )
        return labels

    def _plan_extend(self) -> Planned:
        dim, stored = self.append_dim, self.stored
        write_from, keep_from = self._placement()
        self.problems.raise_if_any()
        ds = self.ds.isel({dim: slice(keep_from, None)})
        span = _Span(old_len=stored.sizes[dim], write_from=write_from, n_new=ds.sizes[dim])

        rows: list[ArrayPlan] = []
        writes: list[ArrayWrite] = []
        resize: dict[str, tuple[int, ...]] = {}
        with_dim = {str(n) for n, v in stored.arrays.items() if dim in v.dims}
        for hashable_name, variable in ds.variables.items():
            name = str(hashable_name)
            if name not in stored.arrays:
                self.problems.add(
                    f"variable {name!r} is not in the store; appending cannot add variables, add "
                    "it first with for_modify (or drop it from the dataset)"
                )
            elif dim not in variable.dims:
                if self._unchanged(name, variable):
                    rows.append(self.skip_row(name, "unchanged"))
            elif name not in with_dim:
                self.problems.add(
                    f"variable {name!r} has dimension {dim!r} in the dataset but not in the store; "
                    "rename the dimension or rewrite the variable with for_modify"
                )
            elif self.check_compatible(name, variable, self.rewrite):
                self.guard.check_units(name, variable, "an append")
                new_shape, row, write = self._plan_variable(name, variable, span)
                if new_shape != stored.arrays[name].shape:
                    resize[name] = new_shape
                rows.append(row)
                if write is not None:
                    writes.append(write)
        rows += self._plan_missing(sorted(with_dim - {str(n) for n in ds.variables}), span, resize)

        changed = changed_attrs(stored.attrs, self.update_attrs)
        steps = MetadataSteps(
            resize=resize if span.n_new else {},
            group_attrs={k: self.update_attrs[k] for k in changed},
        )
        label_range = None
        if span.n_new and dim in ds.indexes:
            label_range = labels_text(ds.indexes[dim])
        return self.finish(
            rows,
            steps,
            writes,
            {**stored.attrs, **self.update_attrs},
            changed,
            append_dim=dim,
            label_range=label_range,
            append_span=(span.write_from, span.new_len) if span.n_new else None,
            gaps=self.on_step.gaps,
            stopped_at=self.on_step.stopped_at,
        )

    def _placement(self) -> tuple[int, int]:
        """Where the write starts in the store, and the first dataset label it keeps."""
        dim, stored = self.append_dim, self.stored
        write_from, keep_from = stored.sizes[dim], 0
        new_labels = self._labels(self.ds)
        labels_ok = not self.problems.items
        if new_labels is not None and dim in stored.indexes and len(new_labels):
            stored_labels = stored.indexes[dim]
            if not (stored_labels.is_unique and stored_labels.is_monotonic_increasing):
                # placing labels needs a unique, increasing stored axis (pandas cannot even
                # look labels up in one with repeats)
                self.problems.add(
                    f"the stored coordinate {dim!r} is not unique and increasing, so appended "
                    f"labels cannot be placed after it; rewrite the group with sorted, unique "
                    f"labels (ds.drop_duplicates({dim!r}).sortby({dim!r})) before appending"
                )
            elif labels_ok and self._same_calendar(stored_labels, new_labels):
                write_from, keep_from = self._place_labels(stored_labels, new_labels)
        elif new_labels is None and dim in stored.arrays:
            self.problems.add(
                f"the store has a coordinate {dim!r} but the dataset has none; add the labels "
                f"with ds.assign_coords({dim}=...)"
            )
        elif new_labels is None and self.on_overlap != "error":
            # without labels nothing tells a re-run from new data: skipping or overwriting
            # would silently append the same values again
            self.problems.add(
                f"on_overlap={self.on_overlap!r} needs labels along {dim!r} to recognise what "
                f"is already stored, but neither the dataset nor the store has a {dim!r} "
                f"coordinate; add one (ds.assign_coords({dim}=...)) when creating the group, "
                "or append only new data with on_overlap='error'"
            )
        return write_from, keep_from

    def _unchanged(self, name: str, variable: xr.Variable) -> bool:
        """A variable without the append dimension must equal the stored one: never rewritten."""
        if values_equal(variable, stored_variable(self.stored, name)):
            return True
        self.problems.add(
            f"variable {name!r} has no {self.append_dim!r} dimension and differs from the "
            "stored one; appending never overwrites it: make it equal to the stored values, "
            "or change it with for_modify"
            + (
                ""
                if self.stored.spec is None
                else f" (or, if that changes its structure, {UPDATE_SPEC_HINT})"
            )
        )
        return False

    def _plan_variable(
        self, name: str, variable: xr.Variable, span: _Span
    ) -> tuple[tuple[int, ...], ArrayPlan, ArrayWrite | None]:
        """The grown shape, plan row and write of a variable along the append dimension."""
        dim, stored_array = self.append_dim, self.stored.arrays[name]
        for d, size, stored_size in zip(
            stored_array.dims, variable.shape, stored_array.shape, strict=True
        ):
            if d != dim and size != stored_size:
                self.problems.add(
                    f"variable {name!r} has {d!r} of length {size} but the store has "
                    f"{stored_size}; only {dim!r} may grow, select the stored extent of {d!r}"
                )
        self.check_encodable(name, variable)
        axis = stored_array.dims.index(dim)
        new_shape = span.grown(stored_array.shape, axis)
        if span.n_new == 0:
            return new_shape, self.skip_row(name, "already stored"), None
        region = tuple(
            slice(span.write_from, span.write_from + span.n_new) if i == axis else slice(0, n)
            for i, n in enumerate(new_shape)
        )
        overlap = span.write_from < span.old_len
        row, write = self.plan_write(
            name,
            variable,
            region,
            "resize" if span.new_len > span.old_len else "region",
            new_shape,
            note="upsert" if overlap and self.on_overlap == "overwrite" else "",
        )
        return new_shape, row, write

    def _plan_missing(
        self, missing: list[str], span: _Span, resize: dict[str, tuple[int, ...]]
    ) -> list[ArrayPlan]:
        """Stored variables along the append dimension that the dataset lacks."""
        if missing and not self.fill_missing:
            self.problems.add(
                f"variables {missing} have dimension {self.append_dim!r} in the store but are "
                "missing from the dataset; include them, or pass fill_missing=True to leave "
                "them at their fill value"
            )
            return []
        rows = []
        for name in missing:
            array = self.stored.arrays[name]
            new_shape = span.grown(array.shape, array.dims.index(self.append_dim))
            resize[name] = new_shape
            rows.append(
                ArrayPlan(
                    name,
                    "fill",
                    array.dims,
                    new_shape,
                    array.shape,
                    array.chunks,
                    dtype_label(array.dtype),
                    "metadata",
                    attrs=dict(array.attrs),
                )
            )
        return rows

    def _same_calendar(self, stored_labels: pd.Index, new_labels: pd.Index) -> bool:
        stored_calendar, new_calendar = _calendar(stored_labels), _calendar(new_labels)
        if stored_calendar == new_calendar:
            return True
        self.problems.add(
            f"labels along {self.append_dim!r} use the {new_calendar} calendar but the store "
            f"uses {stored_calendar}; convert them with ds.convert_calendar({stored_calendar!r})"
        )
        return False

    def _place_labels(self, stored_labels: pd.Index, new_labels: pd.Index) -> tuple[int, int]:
        """Where the new labels go: (store position of the first written, first kept label)."""
        dim = self.append_dim
        old_len = len(stored_labels)
        positions = stored_labels.get_indexer(new_labels)
        n_overlap = int((positions >= 0).sum())
        if n_overlap:
            overlap_positions = positions[:n_overlap]
            contiguous = (positions[n_overlap:] < 0).all() and (
                np.diff(overlap_positions) == 1
            ).all()
            if not contiguous:
                self.problems.add(
                    f"labels along {dim!r} interleave with the stored ones; an append may only "
                    "repeat a contiguous run of stored labels followed by new ones"
                )
                return old_len, 0
            if self.on_overlap == "error":
                first, last = new_labels[0], new_labels[n_overlap - 1]
                self.problems.add(
                    f"{n_overlap} label(s) along {dim!r} are already in the store "
                    f"({first} … {last}); pass on_overlap='skip' to write only new labels or "
                    "on_overlap='overwrite' to replace them"
                )
                return old_len, 0
            reaches_end = overlap_positions[-1] == old_len - 1
            if n_overlap < len(new_labels) and not reaches_end:
                self.problems.add(
                    f"labels along {dim!r} repeat stored labels that end before the last stored "
                    f"label {stored_labels[-1]} and then continue with new ones; that would "
                    "insert in the middle of the axis"
                )
                return old_len, 0
        fresh = new_labels[n_overlap:]
        if len(fresh):
            if fresh[0] <= stored_labels[-1]:
                self.problems.add(
                    f"label {fresh[0]} along {dim!r} is not after the last stored label "
                    f"{stored_labels[-1]}; appends must continue the axis (use for_region to "
                    "rewrite inside it)"
                )
            else:
                self._check_step(stored_labels, fresh, n_overlap)
        if self.on_overlap == "skip":
            return old_len, n_overlap
        return (int(positions[0]) if n_overlap else old_len), 0

    def _check_step(self, stored_labels: pd.Index, fresh: pd.Index, n_overlap: int) -> None:
        """New labels must continue on the step: the spec's, or for a group without one
        (or an irregular one), the stored labels' own when they are regular times."""
        step = self._step(stored_labels, fresh)
        if step is None:
            return
        self.on_step = check_step(
            stored_labels[-1], fresh, step, self.on_gap, self.append_dim, self.problems
        )
        if self.on_step.keep is None and self.on_step.labels is None:
            return
        fills = {
            str(n): missing_value(v, self.stored.encodings.get(str(n), {}).get("_FillValue"))
            for n, v in self.ds.variables.items()
        }
        self.ds = apply_on_step(
            self.ds, self.append_dim, n_overlap, self.on_step, _known(fills), self.problems
        )

    def _step(self, stored_labels: pd.Index, fresh: pd.Index) -> str | None:
        spec = self.stored.spec
        if spec is not None and spec.append_dim == self.append_dim and spec.is_regular:
            return spec.step
        if _calendar(stored_labels) is None:
            # numeric axes (depth levels, longitudes, model levels) are often irregular on
            # purpose: a few equal steps in the first part say nothing about the rest
            return None
        step = _regular_step(stored_labels)
        if step is None and len(stored_labels) == 1 and len(fresh) > 1:
            step = _regular_step(fresh)
            if step is None:
                # one stored label and new ones with a hole: their common step, if any
                inferred = infer_step(stored_labels.append(fresh))
                return None if inferred == IRREGULAR else inferred
        return None if step is None else step_of_timedelta(step)


def _known(fills: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fills.items() if value is not None}


def _calendar(labels: pd.Index) -> str | None:
    """The calendar of time labels, or None for labels that are not times."""
    if isinstance(labels, xr.CFTimeIndex):
        return str(labels.calendar)
    if isinstance(labels, pd.DatetimeIndex):
        return "proleptic_gregorian"
    return None


def _regular_step(labels: pd.Index) -> Any:
    if len(labels) < 2:
        return None
    steps = (
        pd.Index(labels[1:]) - pd.Index(labels[:-1])
        if not isinstance(labels, xr.CFTimeIndex)
        else pd.Index(np.diff(np.asarray(labels)))
    )
    try:
        unique = steps.unique()
    except TypeError:
        return None
    return unique[0] if len(unique) == 1 else None
