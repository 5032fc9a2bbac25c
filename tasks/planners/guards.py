"""The group's declared spec against one write: structure, units, labels, no shrinking.

Every planner asks the guard before it returns a plan (docs/spec.md):

- a write that would change the structure the spec declares (dims, dtype, chunks,
  units, the append dimension's time encoding) is refused, unless it is a modify that
  passes ``update_spec=True``; a modify may add variables, which the spec then lists;
- values in other units than the declared ones are never appended or written into a
  region (an append keeps the stored attributes, so they would silently mean another
  unit);
- the append dimension never shrinks, except by replacing the whole group (overwrite).

Labels on the step are the append planner's (tasks/planners/append.py), with the
helpers of tasks/spec.py. A group without a spec (written before specs existed) gets
none of these checks beyond the planners' own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from tasks.encoding import same_encoding_value
from tasks.plan import ArrayPlan
from tasks.request import OnGap
from tasks.spec import (
    IRREGULAR,
    DatasetSpec,
    LabelContinuation,
    TimeEncoding,
    VariableSpec,
    infer_step,
    label_grid,
    label_text,
    labels_in,
)

if TYPE_CHECKING:
    from tasks.planners.base import Problems
    from tasks.stored import StoredGroup

UPDATE_SPEC_HINT = (
    "change the spec with it on purpose with a modify that passes update_spec=True "
    "(icefloe modify --update-spec)"
)


class SpecGuard:
    """Checks one write against ``spec``; every check does nothing without a spec."""

    def __init__(self, spec: DatasetSpec | None, stored: StoredGroup, problems: Problems) -> None:
        self.spec = spec
        self.stored = stored
        self.problems = problems

    def check_units(self, name: str, variable: xr.Variable, writes: str) -> None:
        """Values whose units differ from the declared ones (an absent attribute says
        nothing: many sources drop attributes, and the values are not judged by it)."""
        declared = self._declared(name)
        units = variable.attrs.get("units")
        if declared is None or declared.units is None or units is None or _is_time(variable):
            return
        if not same_encoding_value("units", str(units), declared.units):
            self.problems.add(
                f"variable {name!r} has units {units!r} but the group's spec declares "
                f"{declared.units!r}; {writes} keeps the stored units, so convert the values to "
                f"{declared.units!r} first, or {UPDATE_SPEC_HINT}"
            )

    def check_structure(
        self,
        rows: Iterable[ArrayPlan],
        encodings: Mapping[str, Mapping[str, Any]],
        *,
        allowed: bool,
        fix: str,
    ) -> None:
        """The structure each created, replaced or overwritten array will have against the
        spec's entry for it; refused unless ``allowed`` (a modify with update_spec)."""
        if self.spec is None or allowed:
            return
        for row in rows:
            declared = self._declared(row.name)
            if declared is None or row.action not in ("create", "replace", "overwrite"):
                continue
            planned = VariableSpec(
                dims=row.dims,
                dtype=row.dtype,
                units=_planned_units(row, encodings.get(row.name, {}), declared),
                chunks=row.chunks,
            )
            changed = declared.differences(planned)
            if changed:
                self.problems.add(
                    f"variable {row.name!r} would change the structure the group's spec "
                    f"declares ({'; '.join(changed)}); {fix}"
                )
            if row.name == self.spec.append_dim:
                self._check_time_encoding(row, encodings.get(row.name, {}), fix)

    def check_declared_variables(self, names: Iterable[str]) -> None:
        """A first write into a group declared ahead of it writes exactly its variables."""
        if self.spec is None:
            return
        names = set(names)
        missing = sorted(set(self.spec.variables) - names)
        extra = sorted(names - set(self.spec.variables))
        if missing:
            self.problems.add(
                f"the group's spec declares {missing}, which the dataset lacks; include them, "
                "or declare the spec again without them (icefloe spec init --force)"
            )
        if extra:
            self.problems.add(
                f"variables {extra} are not in the group's declared spec; drop them, or "
                "declare the spec again with them (icefloe spec init --force)"
            )

    def check_no_shrink(self, rows: Iterable[ArrayPlan]) -> None:
        """No write but an overwrite of the whole group leaves fewer labels than stored."""
        if self.spec is None:
            return
        dim = self.spec.append_dim
        stored_length = self.stored.sizes.get(dim)
        if stored_length is None:
            return
        for row in rows:
            if dim not in row.dims or row.action not in ("create", "replace"):
                continue
            length = row.shape[row.dims.index(dim)]
            if length < stored_length:
                self.problems.add(
                    f"variable {row.name!r} would shrink {dim!r} from {stored_length} to "
                    f"{length} labels; the append dimension never shrinks (a partial source "
                    "must not retract published data): write the labels you have with a region "
                    "write, or replace the whole group with mode='w' (icefloe create "
                    "--overwrite) if that is what you mean"
                )
                return

    def _check_time_encoding(self, row: ArrayPlan, encoding: Mapping[str, Any], fix: str) -> None:
        assert self.spec is not None
        declared = self.spec.time_encoding
        units, calendar = encoding.get("units"), encoding.get("calendar")
        if declared is None or units is None:
            return  # not a time, or units xarray picks only when it writes lazy times
        planned = TimeEncoding(
            units=str(units),
            calendar=str(calendar or "proleptic_gregorian"),
            dtype=row.dtype,
        )
        changed = declared.differences(planned)
        if changed:
            self.problems.add(
                f"the time encoding of {row.name!r} would change from what the group's spec "
                f"pins ({'; '.join(changed)}); {fix}"
            )

    def _declared(self, name: str) -> VariableSpec | None:
        return None if self.spec is None else self.spec.variables.get(name)


def _planned_units(
    row: ArrayPlan, encoding: Mapping[str, Any], declared: VariableSpec
) -> str | None:
    """The units attribute the array will have. Times carry theirs in the encoding, which
    xarray picks itself for lazy times: unknown there, they count as the declared ones."""
    if "units" in encoding and encoding["units"] is not None:
        return str(encoding["units"])
    if declared.units is not None and " since " in declared.units:
        return declared.units
    units = row.attrs.get("units")
    return None if units is None else str(units)


def _is_time(variable: xr.Variable) -> bool:
    if variable.dtype.kind in "mM":
        return True
    if variable.dtype.kind != "O" or not variable.size or variable.chunks is not None:
        return False
    import cftime

    first = variable.values.flat[0]
    return isinstance(first, cftime.datetime)


# -- labels on the step ---------------------------------------------------------------------


@dataclass(frozen=True)
class OnStep:
    """What an append does with new labels that skip labels of the step (``on_gap``)."""

    keep: int | None = None  # on_gap="stop": how many new labels to keep (None: all)
    labels: pd.Index | None = None  # on_gap="fill": the new labels with the missing ones added
    gaps: tuple[tuple[str, str, int], ...] = ()
    stopped_at: str | None = None


def check_step(
    last: Any,
    fresh: pd.Index,
    step: str,
    on_gap: OnGap,
    dim: str,
    problems: Problems,
) -> OnStep:
    """New labels ``fresh`` after the last stored label ``last`` on ``step``: labels off the
    step are refused; missing ones (holes) are refused, stopped before, or filled."""
    if not len(fresh):
        return OnStep()
    found = LabelContinuation.of(last, fresh, step)
    if len(found.off_step):
        problems.add(
            f"labels {[label_text(x) for x in found.off_step[:3]]} along {dim!r} are not on its "
            f"step {step!r} after the last stored label {label_text(last)} (the next ones are "
            f"{', '.join(label_text(x) for x in found.expected[:2])} …); resample the data to "
            "the step, or declare another step in the group's spec"
        )
        return OnStep()
    if not len(found.missing):
        return OnStep()
    holes = tuple(
        (label_text(first), label_text(end), count) for first, end, count in found.holes()
    )
    if on_gap == "stop":
        keep = int((_before(fresh, found.first_missing)).sum())
        return OnStep(keep=keep, stopped_at=label_text(found.first_missing))
    if on_gap == "fill":
        return OnStep(labels=found.expected, gaps=holes)
    first, end, count = holes[0]
    more = f" and {len(holes) - 1} more run(s)" if len(holes) > 1 else ""
    problems.add(
        f"the labels along {dim!r} leave a gap on its step {step!r}: {first} … {end} "
        f"({labels_count(count)}){more} would be missing after the last stored label "
        f"{label_text(last)}; include the missing labels, or pass on_gap='stop' to append only "
        "the labels before the gap, or on_gap='fill' to write the gap as fill values (recorded "
        "in the commit)"
    )
    return OnStep()


def check_first_labels(
    labels: pd.Index, spec: DatasetSpec | None, on_gap: OnGap, dim: str, problems: Problems
) -> OnStep:
    """The labels of a group's first write: on a declared spec's step from its start, and,
    with on_gap "stop" or "fill", without holes on the declared or inferred step."""
    if not len(labels) or not isinstance(labels, pd.DatetimeIndex | xr.CFTimeIndex | pd.Index):
        return OnStep()
    declared = spec is not None and spec.append_dim == dim and spec.is_regular
    if declared:
        assert spec is not None
        step = spec.step
        try:
            anchor = parse_label(spec.start, labels)
        except ValueError:
            anchor = None
        if anchor is not None:
            grid = label_grid(anchor, labels[0], step) if labels[0] >= anchor else pd.Index([])
            if not len(grid) or not labels_in(pd.Index([labels[0]]), grid[-1:])[0]:
                problems.add(
                    f"the first label {label_text(labels[0])} along {dim!r} is not on the step "
                    f"{step!r} from the spec's start {spec.start}; write labels on the declared "
                    "step, or declare the spec again (icefloe spec init --force)"
                )
                return OnStep()
    elif on_gap == "error":
        return OnStep()
    else:
        step = infer_step(labels)
        if step == IRREGULAR:
            return OnStep()
    return check_step(labels[0], labels[1:], step, on_gap, dim, problems)


def apply_on_step(
    ds: xr.Dataset,
    dim: str,
    kept_before: int,
    outcome: OnStep,
    fill_values: Mapping[str, Any],
    problems: Problems,
) -> xr.Dataset:
    """``ds`` cut before the gap, or with the gap's labels added as fill values.

    ``kept_before``: labels of ``ds`` that precede the new ones (stored labels an append
    repeats, or a first write's first label). ``fill_values``: per variable along ``dim``,
    the value that reads back as missing; a variable without one is refused, since its
    gap could not be told from data.
    """
    if outcome.keep is not None:
        return ds.isel({dim: slice(0, kept_before + outcome.keep)})
    if outcome.labels is None:
        return ds
    along = [str(n) for n, v in ds.variables.items() if dim in v.dims and n != dim]
    without = [n for n in along if n not in fill_values]
    if without:
        problems.add(
            f"variables {without} have no fill value that reads back as missing (integers, "
            "booleans, strings or objects without a _FillValue), so a gap in them could not "
            "be told from data; give them a _FillValue in their encoding, or pass "
            "on_gap='stop' to append only the labels before the gap"
        )
        return ds
    labels = ds.indexes[dim][:kept_before].append(outcome.labels)
    return ds.reindex({dim: labels}, fill_value={n: fill_values[n] for n in along})


def missing_value(variable: xr.Variable, fill_value: Any) -> Any:
    """What ``variable``'s missing labels are filled with: NaN, NaT, or the CF fill value
    ``fill_value`` (None: the variable has none, and a gap cannot be written)."""
    kind = variable.dtype.kind
    if kind in "fc":
        return np.nan
    if kind in "mM":
        return np.array("NaT", dtype=variable.dtype)[()]  # NaT in the variable's own unit
    if kind in "iub" and fill_value is not None:
        return fill_value
    return None


def parse_label(text: str, like: pd.Index) -> Any:
    """A label of the spec (``start``) as a label of ``like``'s kind."""
    if isinstance(like, xr.CFTimeIndex):
        return xr.date_range(
            start=text, periods=1, freq="D", calendar=str(like.calendar), use_cftime=True
        )[0]
    if isinstance(like, pd.DatetimeIndex):
        return pd.Timestamp(text)
    number = float(text)
    return int(number) if number.is_integer() and like.dtype.kind in "iu" else number


def labels_count(n: int) -> str:
    return f"{n} label" if n == 1 else f"{n} labels"


def _before(labels: pd.Index, label: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
    return np.asarray(labels < label, dtype=bool)
