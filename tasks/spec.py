"""The declared dataset spec: what a group is, kept with the group, reviewable as YAML.

A group's spec says which dimension grows (``append_dim``), where its labels start and
on which step they continue, every array's dims, dtype, units and chunks, the pinned
time encoding of the labels, and operational bounds (``max_delay``, ``max_nan_fraction``)
that validation reads. It is stored as a group attribute (``icefloe_spec``, a JSON
string), so every writer, branch and snapshot sees the spec of its own data, and it is
committed with the data by the ordinary commit.

The first write that creates a group writes the spec inferred from what it stored; the
planners (tasks/planners/) then refuse writes that would change its structure, leave a
hole on its step, or shrink its append dimension. See docs/spec.md.

``dtype`` is the stored (zarr) dtype: after packing (scale_factor) and time encoding, a
packed temperature is ``int16`` and an hourly time is ``int64``; strings are ``string``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import cftime
import numpy as np
import pandas as pd
import xarray as xr
import yaml
import zarr
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from zarr.abc.store import Store
from zarr.errors import NodeNotFoundError

from tasks.encoding import same_encoding_value
from tasks.errors import PlanError
from tasks.stored import SPEC_KEY, StoredGroup, dtype_label

if TYPE_CHECKING:
    from tasks.stored import StoredArray

__all__ = [
    "IRREGULAR",
    "SPEC_KEY",
    "DatasetSpec",
    "LabelContinuation",
    "TimeEncoding",
    "VariableSpec",
    "guess_append_dim",
    "infer_step",
    "label_grid",
    "read_spec",
    "write_spec",
]

IRREGULAR: Final = "irregular"
"""The step of an axis whose labels follow no fixed step: any label after the last is fine."""


class VariableSpec(BaseModel):
    """One array of the group as stored: its dims, zarr dtype, CF units and zarr chunks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dims: tuple[str, ...]
    dtype: str = Field(description="The stored (zarr) dtype; 'string' for any string dtype.")
    units: str | None = Field(default=None, description="The CF 'units' attribute, if any.")
    chunks: tuple[int, ...]

    @classmethod
    def of_array(cls, array: StoredArray) -> VariableSpec:
        units = array.attrs.get("units")
        return cls(
            dims=array.dims,
            dtype=dtype_label(array.dtype),
            units=None if units is None else str(units),
            chunks=array.chunks,
        )

    def differences(self, other: VariableSpec, *, chunks: bool = True) -> list[str]:
        """What ``other`` changes, as ``field: mine → theirs``; empty when equal."""
        changed = []
        if self.dims != other.dims:
            changed.append(f"dims {list(self.dims)} → {list(other.dims)}")
        if self.dtype != other.dtype:
            changed.append(f"dtype {self.dtype} → {other.dtype}")
        if not same_encoding_value("units", self.units, other.units):
            changed.append(f"units {self.units!r} → {other.units!r}")
        if chunks and self.chunks != other.chunks:
            changed.append(f"chunks {list(self.chunks)} → {list(other.chunks)}")
        return changed


class TimeEncoding(BaseModel):
    """How the append dimension's time labels are stored: CF units, calendar, zarr dtype."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    units: str
    calendar: str
    dtype: str

    @classmethod
    def of_array(cls, array: StoredArray) -> TimeEncoding | None:
        units = array.attrs.get("units")
        if not isinstance(units, str) or " since " not in units:
            return None
        calendar = str(array.attrs.get("calendar", "proleptic_gregorian"))
        return cls(units=units, calendar=calendar, dtype=str(array.dtype))

    def differences(self, other: TimeEncoding) -> list[str]:
        changed = []
        for key in ("units", "calendar", "dtype"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if not same_encoding_value(key, mine, theirs):
                changed.append(f"{key} {mine!r} → {theirs!r}")
        return changed


class DatasetSpec(BaseModel):
    """A group's declared structure and operational bounds (docs/spec.md)."""

    model_config = ConfigDict(extra="forbid")

    append_dim: str = Field(description="The dimension appends extend.")
    start: str = Field(
        description="The first label along append_dim (ISO time or number; '' when empty)."
    )
    step: str = Field(
        description="How labels continue: a pandas frequency ('1h', '1D', 'MS'), a number "
        "for numeric labels, or 'irregular' (any label after the last one)."
    )
    variables: dict[str, VariableSpec]
    time_encoding: TimeEncoding | None = Field(
        default=None, description="The pinned encoding of the append dimension's time labels."
    )
    max_delay: dt.timedelta | None = Field(
        default=None,
        description="Freshness: the newest label may lag the present by at most this much "
        "(read by validation).",
    )
    max_nan_fraction: dict[str, float] = Field(
        default_factory=dict,
        description="Per variable ('*': every other variable), the largest fraction of "
        "missing values in the most recent window (read by validation).",
    )

    @field_validator("step")
    @classmethod
    def _known_step(cls, value: str) -> str:
        value = value.strip()
        if value == IRREGULAR or _numeric_step(value) is not None:
            return value
        if _offset(value) is None:
            raise ValueError(
                f"step {value!r} is not a pandas frequency ('1h', '6h', '1D', 'MS'), a number "
                f"(numeric labels) or {IRREGULAR!r}"
            )
        return value

    @field_validator("max_delay", mode="before")
    @classmethod
    def _pandas_durations(cls, value: Any) -> Any:
        # "6h" and "2 days" read better in YAML than ISO 8601's "PT6H" (also accepted)
        if isinstance(value, str) and not value.startswith(("P", "-P")):
            try:
                return pd.Timedelta(value).to_pytimedelta()
            except ValueError:
                return value
        return value

    @field_validator("max_delay")
    @classmethod
    def _positive_delay(cls, value: dt.timedelta | None) -> dt.timedelta | None:
        if value is not None and value <= dt.timedelta(0):
            raise ValueError(f"max_delay {value} must be positive")
        return value

    @field_validator("max_nan_fraction")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        wrong = {k: v for k, v in value.items() if not 0 <= v <= 1}
        if wrong:
            raise ValueError(f"max_nan_fraction {wrong} must lie between 0 and 1")
        return value

    # -- making one --------------------------------------------------------------------------

    @classmethod
    def from_group(
        cls,
        stored: StoredGroup,
        append_dim: str | None = None,
        labels: pd.Index | None = None,
    ) -> DatasetSpec:
        """The spec of what ``stored`` holds; labels (start, step) from ``labels`` if given,
        else read from the group's coordinate. Operational bounds are left unset."""
        dim = append_dim or guess_append_dim(
            {n: a.dims for n, a in stored.arrays.items()},
            time_coords={
                n for n, a in stored.arrays.items() if a.dims == (n,) and _is_time_units(a.attrs)
            },
        )
        if labels is None:
            labels = stored.indexes.get(dim) if dim in stored.arrays else None
        time_array = stored.arrays.get(dim)
        return cls(
            append_dim=dim,
            start=label_text(labels[0]) if labels is not None and len(labels) else "",
            step=infer_step(labels) if labels is not None else IRREGULAR,
            variables={
                name: VariableSpec.of_array(stored.arrays[name]) for name in sorted(stored.arrays)
            },
            time_encoding=TimeEncoding.of_array(time_array) if time_array is not None else None,
        )

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, append_dim: str | None = None) -> DatasetSpec:
        """The spec a group created from ``ds`` would have (chunks from the dataset's zarr
        encoding where it has one, as when ``ds`` was opened from a store).

        The arrays are created, without values, in an in-memory repository, exactly as a
        create would: the dtypes and time units are xarray's own choices, not a guess.
        """
        import icechunk

        from tasks.writer import XarrayDatasetWriter

        if append_dim is not None and append_dim not in ds.dims:
            raise PlanError(
                f"append_dim {append_dim!r} is not a dimension of the dataset (its dimensions "
                f"are {sorted(map(str, ds.dims))}); pass one of those"
            )
        ds = ds.copy()
        ds.attrs.pop(SPEC_KEY, None)
        encoding = {
            str(name): {"chunks": tuple(int(c) for c in variable.encoding["chunks"])}
            for name, variable in ds.variables.items()
            if variable.encoding.get("chunks") is not None
            and len(variable.encoding["chunks"]) == variable.ndim
            and variable.ndim
        }
        scratch = icechunk.Repository.create(icechunk.in_memory_storage()).writable_session("main")
        writer = XarrayDatasetWriter(ds, store=scratch.store).for_create_or_overwrite(
            encoding=encoding
        )
        writer.write_metadata()
        dim = append_dim or guess_append_dim(
            {str(n): tuple(map(str, v.dims)) for n, v in ds.variables.items()},
            unlimited=ds.encoding.get("unlimited_dims"),
            time_coords={str(n) for n, index in ds.indexes.items() if _is_time_index(index)},
        )
        labels = ds.indexes.get(dim)
        return cls.from_group(StoredGroup(scratch.store, None), dim, labels)

    @classmethod
    def from_yaml(cls, text: str) -> DatasetSpec:
        """A spec from its YAML text; errors name the field at fault."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"the spec is not valid YAML: {err}") from None
        if not isinstance(data, Mapping):
            raise ValueError(
                "the spec must be a YAML mapping with append_dim, start, step and variables"
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as err:
            raise ValueError(f"the spec is not valid: {_validation_text(err)}") from None

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
        return text

    # -- comparing ---------------------------------------------------------------------------

    def diff(
        self, other: DatasetSpec, *, structure_only: bool = False, chunks: bool = True
    ) -> list[str]:
        """How ``other`` differs from this spec, one sentence each (``mine → theirs``);
        empty when equal. ``structure_only`` leaves out start, step and the bounds;
        ``chunks=False`` leaves out chunks (a source's own chunking says nothing)."""
        changes = []
        if self.append_dim != other.append_dim:
            changes.append(f"append_dim {self.append_dim!r} → {other.append_dim!r}")
        if not structure_only:
            if self.start != other.start:
                changes.append(f"start {self.start!r} → {other.start!r}")
            if self.step != other.step:
                changes.append(f"step {self.step!r} → {other.step!r}")
        for name in sorted(set(self.variables) - set(other.variables)):
            changes.append(f"variable {name!r} is missing")
        for name in sorted(set(other.variables) - set(self.variables)):
            changes.append(f"variable {name!r} is new")
        for name in sorted(set(self.variables) & set(other.variables)):
            changed = self.variables[name].differences(other.variables[name], chunks=chunks)
            if changed:
                changes.append(f"variable {name!r}: {', '.join(changed)}")
        mine, theirs = self.time_encoding, other.time_encoding
        if mine is not None and theirs is not None:
            changed = mine.differences(theirs)
            if changed:
                changes.append(f"time encoding of {self.append_dim!r}: {', '.join(changed)}")
        elif (mine is None) != (theirs is None):
            changes.append(f"time encoding of {self.append_dim!r}: {mine} → {theirs}")
        if not structure_only:
            if self.max_delay != other.max_delay:
                changes.append(f"max_delay {self.max_delay} → {other.max_delay}")
            if self.max_nan_fraction != other.max_nan_fraction:
                changes.append(
                    f"max_nan_fraction {self.max_nan_fraction} → {other.max_nan_fraction}"
                )
        return changes

    # -- labels ------------------------------------------------------------------------------

    @property
    def is_regular(self) -> bool:
        return self.step != IRREGULAR

    def nan_fraction_limit(self, name: str) -> float | None:
        """The bound on ``name``'s missing values, its own or the '*' default."""
        return self.max_nan_fraction.get(name, self.max_nan_fraction.get("*"))

    def expected_labels(self, after: Any, count: int) -> pd.Index:
        """The ``count`` labels that follow ``after`` on the step."""
        if not self.is_regular:
            raise ValueError(f"the axis {self.append_dim!r} is irregular: no labels are expected")
        if count <= 0:
            return pd.Index([])
        return next_labels(after, count, self.step)

    def with_bounds_of(self, other: DatasetSpec | None) -> DatasetSpec:
        """This spec with ``other``'s operational bounds (kept across an overwrite)."""
        if other is None:
            return self
        return self.model_copy(
            update={
                "max_delay": other.max_delay,
                "max_nan_fraction": {
                    k: v
                    for k, v in other.max_nan_fraction.items()
                    if k == "*" or k in self.variables
                },
            }
        )

    def to_json(self) -> str:
        return self.model_dump_json()


# -- where the spec is kept -----------------------------------------------------------------


def read_spec(store: Store, group: str | None) -> DatasetSpec | None:
    """The spec stored with ``group``, or None (a group written before specs, or none)."""
    try:
        zgroup = zarr.open_group(store, path=group or "", mode="r")
    except (NodeNotFoundError, FileNotFoundError, zarr.errors.ContainsArrayError):
        return None
    return parse_stored_spec(zgroup.attrs.get(SPEC_KEY), group)


def parse_stored_spec(value: Any, group: str | None) -> DatasetSpec | None:
    if value is None:
        return None
    try:
        return DatasetSpec.model_validate(json.loads(value) if isinstance(value, str) else value)
    except (ValueError, ValidationError) as err:
        raise PlanError(
            f"the group's spec (attribute {SPEC_KEY!r}) cannot be read "
            f"({type(err).__name__}: {str(err).splitlines()[0]}); replace it with "
            "`icefloe spec init --force` (tasks.spec.write_spec)",
            group=group,
        ) from err


def write_spec(store: Store, group: str | None, spec: DatasetSpec) -> None:
    """Keep ``spec`` with ``group`` (created, empty, if it does not exist yet); the caller
    commits the session."""
    zgroup = zarr.open_group(store, path=group or "", mode="a", zarr_format=3)
    zgroup.attrs.update({SPEC_KEY: spec.to_json()})


# -- labels and steps -----------------------------------------------------------------------


def label_text(label: Any) -> str:
    """A label as the spec writes it: ISO 8601 for times, plain for numbers."""
    if isinstance(label, pd.Timestamp | cftime.datetime | dt.datetime):
        return str(label.isoformat())
    if isinstance(label, np.datetime64):
        return str(pd.Timestamp(label).isoformat())
    if isinstance(label, np.generic):
        return str(label.item())
    return str(label)


def infer_step(labels: pd.Index) -> str:
    """The step of ``labels``: a pandas frequency for times (holes allowed, as long as
    more than half the steps are the smallest one and every step is a multiple of it),
    else irregular.

    Numeric labels (depths, levels, longitudes) are irregular here: a few equal steps say
    nothing about the rest, and declaring a numeric step is the spec author's choice.
    """
    if len(labels) < 2 or not _is_time_index(labels):
        return IRREGULAR
    if len(labels) >= 3:
        try:
            found = xr.infer_freq(labels)
        except (ValueError, TypeError):
            found = None
        if found is not None:
            return str(found)
    steps = [pd.Timedelta(b - a) for a, b in itertools.pairwise(labels)]
    smallest = min(steps)
    if smallest <= pd.Timedelta(0):
        return IRREGULAR
    multiples = all(s % smallest == pd.Timedelta(0) for s in steps)
    if not multiples or (steps.count(smallest) * 2 <= len(steps) and len(steps) > 1):
        return IRREGULAR
    return str(pd.tseries.frequencies.to_offset(smallest).freqstr)


def step_of_timedelta(step: Any) -> str:
    """A fixed step (a timedelta between two labels) as a frequency, or a number as text."""
    if isinstance(step, dt.timedelta | np.timedelta64 | pd.Timedelta):
        return str(pd.tseries.frequencies.to_offset(pd.Timedelta(step)).freqstr)
    return str(step)


def next_labels(after: Any, count: int, step: str) -> pd.Index:
    """The ``count`` labels following ``after`` on ``step``."""
    number = _numeric_step(step)
    if number is not None:
        return pd.Index([after + number * k for k in range(1, count + 1)])
    grid = _date_range(after, None, count + 1, step)
    return grid[1:]


def label_grid(first: Any, last: Any, step: str) -> pd.Index:
    """Every label on ``step`` from ``first`` up to ``last`` (both included when on it)."""
    number = _numeric_step(step)
    if number is not None:
        n = math.floor(round((last - first) / number, 9))
        return pd.Index([first + number * k for k in range(n + 1)])
    return _date_range(first, last, None, step)


@dataclass(frozen=True)
class LabelContinuation:
    """How new labels continue an axis after its last stored label, on a step."""

    expected: pd.Index  # every label on the step after the last stored one, up to the last new
    off_step: pd.Index  # new labels that are not on the step
    missing: pd.Index  # labels on the step that the new labels skip (holes)

    @classmethod
    def of(cls, last: Any, fresh: pd.Index, step: str) -> LabelContinuation:
        grid = label_grid(last, fresh[-1], step)
        expected = grid[1:] if len(grid) and _same_label(grid[0], last) else grid
        on_grid = labels_in(fresh, expected)
        return cls(
            expected=expected,
            off_step=fresh[~on_grid],
            missing=expected[~labels_in(expected, fresh)],
        )

    @property
    def first_missing(self) -> Any:
        return self.missing[0] if len(self.missing) else None

    def holes(self) -> list[tuple[Any, Any, int]]:
        """The missing labels as runs: (first, last, count)."""
        runs: list[tuple[Any, Any, int]] = []
        missing = labels_in(self.expected, self.missing)
        start = None
        for i, absent in enumerate([*missing.tolist(), False]):
            if absent and start is None:
                start = i
            elif not absent and start is not None:
                runs.append((self.expected[start], self.expected[i - 1], i - start))
                start = None
        return runs


def guess_append_dim(
    dims_of: Mapping[str, tuple[str, ...]],
    *,
    unlimited: Any = None,
    time_coords: set[str] | None = None,
) -> str:
    """The dimension a group most likely grows along, when no write said so (a create):
    netCDF's single unlimited dimension, else "time", else the one dimension whose
    coordinate holds times, else the first dimension of the first array that has one."""
    all_dims = [d for dims in dims_of.values() for d in dims]
    if unlimited and len(unlimited) == 1 and next(iter(unlimited)) in all_dims:
        return str(next(iter(unlimited)))
    if "time" in all_dims:
        return "time"
    times = set(time_coords or ()) & set(all_dims)
    if len(times) == 1:
        return times.pop()
    return all_dims[0] if all_dims else "time"


def _is_time_units(attrs: Mapping[str, Any]) -> bool:
    units = attrs.get("units")
    return isinstance(units, str) and " since " in units


def _is_time_index(labels: pd.Index) -> bool:
    return isinstance(labels, pd.DatetimeIndex | xr.CFTimeIndex)


def _numeric_step(step: str) -> float | int | None:
    try:
        return int(step)
    except ValueError:
        pass
    try:
        number = float(step)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _offset(step: str) -> Any:
    try:
        return pd.tseries.frequencies.to_offset(step)
    except ValueError:
        pass
    try:
        from xarray.coding.cftime_offsets import to_offset

        return to_offset(step)
    except ValueError:
        return None


def _date_range(first: Any, last: Any, periods: int | None, step: str) -> pd.Index:
    if isinstance(first, cftime.datetime):
        return pd.Index(
            xr.date_range(
                start=first,
                end=last,
                periods=periods,
                freq=step,
                calendar=first.calendar,
                use_cftime=True,
            )
        )
    index: pd.Index = pd.date_range(start=pd.Timestamp(first), end=last, periods=periods, freq=step)
    return index


def _same_label(a: Any, b: Any) -> bool:
    return bool(labels_in(pd.Index([a]), pd.Index([b]))[0])


def labels_in(labels: pd.Index, among: pd.Index) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Which of ``labels`` are in ``among``; float labels within rounding of a step sum."""
    if not len(labels) or not isinstance(labels[0], float | np.floating):
        return np.asarray(labels.isin(among), dtype=bool)
    values = np.asarray(labels, dtype=float)
    others = np.sort(np.asarray(among, dtype=float))
    if not len(others):
        return np.zeros(len(values), dtype=bool)
    # the nearest of the sorted others on either side, never all pairs
    right = np.clip(np.searchsorted(others, values), 0, len(others) - 1)
    left = np.clip(right - 1, 0, len(others) - 1)
    found: np.ndarray[Any, np.dtype[np.bool_]] = np.isclose(values, others[right]) | np.isclose(
        values, others[left]
    )
    return found


def _validation_text(err: ValidationError) -> str:
    parts = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "the spec"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)
