"""Cutting a source to a run's half-open window [start, end) along its append dimension."""

from datetime import datetime

import cftime
import numpy as np
import pandas as pd
import xarray as xr

from tasks.errors import RequestError

# What open() accepts as a window bound: Prefect hands over datetimes (often tz-aware) or
# ISO strings from JSON; backfills over a cftime axis hand over cftime datetimes.
type WindowBound = datetime | np.datetime64 | cftime.datetime | str


def to_timestamp(value: WindowBound, what: str) -> pd.Timestamp:
    """A naive UTC pandas Timestamp, the form a datetime64 time axis compares with."""
    if isinstance(value, cftime.datetime):
        value = datetime(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
        )
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{what} {value!r} is not a date and time: use an ISO 8601 string such as "
            "'2020-01-01T00:00' or a datetime"
        ) from err
    if pd.isna(stamp):
        raise ValueError(f"{what} is NaT: give a date and time such as '2020-01-01T00:00'")
    if stamp.tzinfo is not None:
        # Scheduled runs get tz-aware times; labels are naive UTC by CF convention.
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp


def to_cftime(value: WindowBound, calendar: str, what: str) -> cftime.datetime:
    """A cftime datetime in ``calendar``; strings are parsed in that calendar (2020-02-30
    exists in 360_day)."""
    if isinstance(value, cftime.datetime) and value.calendar == calendar:
        return value
    if isinstance(value, str):
        try:
            return xr.date_range(
                start=value.strip(), periods=1, freq="D", calendar=calendar, use_cftime=True
            )[0]
        except (ValueError, TypeError):
            pass  # fall through to pandas' more lenient parser
    stamp = to_timestamp(value, what)
    try:
        return cftime.datetime(
            stamp.year,
            stamp.month,
            stamp.day,
            stamp.hour,
            stamp.minute,
            stamp.second,
            stamp.microsecond,
            calendar=calendar,
        )
    except ValueError as err:
        raise ValueError(
            f"{what} {value!r} does not exist in the {calendar} calendar: choose a date that does"
        ) from err


def select_window(
    ds: xr.Dataset,
    dim: str,
    start: WindowBound | None,
    end: WindowBound | None,
    what: str,
) -> xr.Dataset:
    """The labels of ``ds`` along ``dim`` in [start, end), as a contiguous slice if possible.

    Windows are half-open so that consecutive windows of a backfill never share a label.
    """
    if start is None and end is None:
        return ds
    if dim not in ds.indexes:
        # never the whole source instead: a scheduled run would append everything again
        raise RequestError(
            f"{what}: cannot cut the window [{start}, {end}) along {dim!r}: the data has no "
            f"{dim!r} coordinate (its dimensions: {sorted(map(str, ds.dims))}); set the run's "
            "append_dim to the dimension that holds the dates"
        )
    index = ds.indexes[dim]
    mask = np.ones(len(index), dtype=bool)
    for bound, keep_at_or_after in ((start, True), (end, False)):
        if bound is None:
            continue
        label: object
        if isinstance(index, pd.DatetimeIndex):
            label = to_timestamp(bound, f"the window {'start' if keep_at_or_after else 'end'}")
        elif isinstance(index, xr.CFTimeIndex):
            label = to_cftime(
                bound,
                str(index.calendar),
                f"the window {'start' if keep_at_or_after else 'end'}",
            )
        else:
            raise ValueError(
                f"{what}: cannot select the window along {dim!r}, whose labels are "
                f"{index.dtype}, not dates: set the run's append_dim to the time dimension"
            )
        mask &= np.asarray(index >= label) if keep_at_or_after else np.asarray(index < label)
    positions = np.flatnonzero(mask)
    if positions.size == 0:
        return ds.isel({dim: slice(0, 0)})
    first, last = int(positions[0]), int(positions[-1])
    if last - first + 1 == positions.size:
        # A slice keeps dask chunks intact; fancy indexing would rechunk.
        return ds.isel({dim: slice(first, last + 1)})
    return ds.isel({dim: positions})
