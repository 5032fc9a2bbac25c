"""Backfill windows as units: written side by side in forks, published in groups, exactly."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tasks.errors import CommitConflictError
from tasks.publish import WindowPublisher
from tasks.request import WriteRequest
from tasks.windows import WindowSpan, positions_of, units_of, write_windows
from tests.cf_datasets import cf_dataset, lazy
from tests.conftest import read_back, tip
from tests.tasks.helpers import chunked_group, write

REGION = WriteRequest(mode="region", group="g", region={"time": "auto"})


def _window_values(ds: xr.Dataset, start: pd.Timestamp, end: pd.Timestamp) -> xr.Dataset:
    """'tas' of the days in [start, end), each day's values set to its day number + 100."""
    part = ds[["tas"]].sel(time=slice(start, end - pd.Timedelta("1ns"))).drop_vars("height")
    days = (part.time.values - ds.time.values[0]) // np.timedelta64(1, "D")
    values = np.broadcast_to(100.0 + days[:, None, None], part.tas.shape).astype("float32")
    return lazy(part.copy(data={"tas": values}), 1)


def _days(start: int, stop: int, step: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    first = pd.Timestamp("2000-01-01")
    day = pd.Timedelta("1D")
    return [(first + k * day, first + min(k + step, stop) * day) for k in range(start, stop, step)]


def _expected_tas(ds: xr.Dataset, filled: range) -> np.ndarray:
    tas = ds.tas.values.astype("float32").copy()
    for day in filled:
        tas[day] = 100.0 + day
    return tas


def test_units_cut_windows_only_where_no_chunk_is_shared() -> None:
    labels = pd.date_range("2000-01-01", periods=60, freq="D")
    spans = positions_of(labels, _days(0, 60, 4))  # windows of 4 days, chunks of 12 and 8
    units = units_of(spans, [12, 8], per_unit=1)

    assert [w for unit in units for w in unit] == spans
    touched = [
        {(size, p // size) for w in unit for p in range(w.lo, w.hi) for size in (12, 8)}
        for unit in units
    ]
    for i, first in enumerate(touched):
        for second in touched[i + 1 :]:
            assert not first & second
    # a window edge is an edge of both chunkings every 24 days
    assert [(u[0].lo, u[-1].hi) for u in units] == [(0, 24), (24, 48), (48, 60)]
    assert positions_of(labels, [(pd.Timestamp("1999-01-01"), pd.Timestamp("1999-02-01"))]) == [
        WindowSpan(pd.Timestamp("1999-01-01"), pd.Timestamp("1999-02-01"), 0, 0)
    ]


def test_units_written_side_by_side_store_what_sequential_writes_store(repo) -> None:
    ds = chunked_group(repo)  # 12 days, 'tas' chunked 4 days
    spans = positions_of(ds.indexes["time"], _days(0, 12, 3))  # 3-day windows: chunks shared
    units = units_of(spans, [4], per_unit=1)
    assert [[(w.lo, w.hi) for w in u] for u in units] == [[(0, 3), (3, 6), (6, 9), (9, 12)]]
    spans = positions_of(ds.indexes["time"], _days(0, 12, 2))  # 2-day windows: cut at 4 and 8
    units = units_of(spans, [4], per_unit=1)
    assert [(u[0].lo, u[-1].hi) for u in units] == [(0, 4), (4, 8), (8, 12)]

    open_window = functools.partial(_window_values, ds)
    publisher = WindowPublisher(repo, "main")
    base, fork = publisher.fork()
    written = [write_windows(fork, open_window, REGION, "time", unit) for unit in units]
    publisher.publish(base, [w.fork for w in written[:2]], "first two units")
    publisher.publish(base, [w.fork for w in written[2:]], "the last one")

    assert (publisher.commits, publisher.rebased) == (2, 0)
    assert [w.windows for w in written] == [((0, 2), (2, 4)), ((4, 6), (6, 8)), ((8, 10), (10, 12))]
    assert written[0].chunks_written == 1  # two windows written as one region write
    np.testing.assert_array_equal(read_back(repo, "g").tas.values, _expected_tas(ds, range(12)))


def test_after_someone_else_commits_forks_of_the_old_base_are_rebased(repo) -> None:
    ds = chunked_group(repo)
    spans = positions_of(ds.indexes["time"], _days(0, 8, 4))
    units = units_of(spans, [4], per_unit=1)
    open_window = functools.partial(_window_values, ds)
    publisher = WindowPublisher(repo, "main")
    base, fork = publisher.fork()
    first, second = (write_windows(fork, open_window, REGION, "time", u) for u in units)
    publisher.publish(base, [first.fork], "days 0-4")

    # another writer fills days 8-12 meanwhile
    write(repo, _window_values(ds, *_days(8, 12, 4)[0]), lambda w: w.for_region(group="g"))
    theirs = tip(repo)
    publisher.publish(base, [second.fork], "days 4-8")

    assert (publisher.commits, publisher.rebased) == (2, 1)
    assert repo.lookup_snapshot(tip(repo)).parent_id == theirs
    np.testing.assert_array_equal(read_back(repo, "g").tas.values, _expected_tas(ds, range(12)))
    # work forked from the new tip merges at the tip again
    new_base, _ = publisher.fork()
    assert new_base == tip(repo)
    assert repo.list_branches() == {"main"}


def test_arrays_resized_meanwhile_refuse_the_group_and_a_new_fork_writes_it(repo) -> None:
    ds = chunked_group(repo)
    spans = positions_of(ds.indexes["time"], _days(0, 4, 4))
    open_window = functools.partial(_window_values, ds)
    publisher = WindowPublisher(repo, "main")
    base, fork = publisher.fork()
    unit = write_windows(fork, open_window, REGION, "time", spans)
    more = cf_dataset(4, start="2000-01-13")
    write(repo, more, lambda w: w.for_append(group="g", append_dim="time"))
    appended = tip(repo)

    with pytest.raises(CommitConflictError) as refused:
        publisher.publish(base, [unit.fork], "days 0-4")
    assert not refused.value.overlapping
    assert tip(repo) == appended

    new_base, new_fork = publisher.fork()
    again = write_windows(new_fork, open_window, REGION, "time", spans)
    publisher.publish(new_base, [again.fork], "days 0-4, again")
    back = read_back(repo, "g").tas.values
    np.testing.assert_array_equal(back[:12], _expected_tas(ds, range(4)))
    assert back.shape[0] == 16
