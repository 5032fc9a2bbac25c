"""Known append traps of xarray's own to_zarr, each answered by a correct write or a
PlanError before anything is written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tasks.errors import PlanError
from tests.conftest import plain_xarray, read_back
from tests.tasks.helpers import write


def daily(start: str, periods: int, freq: str = "D") -> xr.Dataset:
    time = pd.date_range(start, periods=periods, freq=freq)
    return xr.Dataset({"v": ("time", np.arange(periods, dtype="float32"))}, coords={"time": time})


def irregular(*stamps: str) -> xr.Dataset:
    """Observations at irregular times: no stored step, so only the units decide."""
    time = pd.DatetimeIndex(stamps)
    return xr.Dataset({"v": ("time", np.arange(len(time), dtype="float32"))}, coords={"time": time})


def test_times_finer_than_integer_stored_units_are_refused_not_truncated(repo):
    # xarray #5969: appending 12-hourly times to int64 "days since" silently truncated them
    first = irregular("2000-01-01", "2000-01-02", "2000-01-04")
    first.time.encoding.update(units="days since 2000-01-01", dtype="int64")
    write(repo, first, lambda w: w.for_create_or_overwrite("g"))
    before = repo.lookup_branch("main")
    finer = irregular("2000-01-05T12:00")
    with pytest.raises(PlanError, match=r"'time'.*days since 2000-01-01.*convert the values"):
        write(repo, finer, lambda w: w.for_append("g"))
    assert repo.lookup_branch("main") == before


def test_times_finer_than_float_stored_units_are_written_exactly(repo, tmp_path):
    first = irregular("2000-01-01", "2000-01-02", "2000-01-04")
    first.time.encoding.update(units="days since 2000-01-01", dtype="float64")
    write(repo, first, lambda w: w.for_create_or_overwrite("g"))
    finer = irregular("2000-01-05T12:00", "2000-01-06T06:00")
    write(repo, finer, lambda w: w.for_append("g"))
    back = read_back(repo, "g")
    np.testing.assert_array_equal(
        back.time.values, np.concatenate([first.time.values, finer.time.values])
    )
    assert back.time.encoding["units"] == "days since 2000-01-01"
    assert back.time.encoding["dtype"] == np.float64


@pytest.mark.parametrize("calendar", ["standard", "noleap"])
def test_time_encoding_of_the_store_survives_appends_without_encoding(repo, tmp_path, calendar):
    # xarray #10639: an appended piece with no (or another) encoding must not change the
    # stored units, calendar or dtype
    time = xr.date_range(
        "1990-01-01", periods=6, freq="D", calendar=calendar, use_cftime=calendar != "standard"
    )
    whole = xr.Dataset({"v": ("time", np.arange(6.0))}, coords={"time": time})
    whole.time.encoding.update(units="hours since 1900-01-01", dtype="int32", calendar=calendar)
    write(repo, whole.isel(time=slice(0, 3)), lambda w: w.for_create_or_overwrite("g"))
    later = whole.isel(time=slice(3, 6)).copy(deep=True)
    later.time.encoding = {"units": "days since 2050-01-01", "dtype": "float32"}
    write(repo, later, lambda w: w.for_append("g"))
    back = read_back(repo, "g")
    xr.testing.assert_identical(back, plain_xarray(whole, tmp_path))
    assert back.time.encoding["units"] == "hours since 1900-01-01"
    assert back.time.encoding["dtype"] == np.int32


def test_netcdf_encoding_keys_from_a_file_are_dropped_as_xarray_does(repo, tmp_path):
    ds = daily("2000-01-01", 4)
    path = tmp_path / "in.nc"
    ds.to_netcdf(path, encoding={"v": {"zlib": True, "complevel": 4, "chunksizes": (2,)}})
    opened = xr.open_dataset(path).load()
    assert {"zlib", "chunksizes", "contiguous"} <= set(opened.v.encoding)
    write(repo, opened.isel(time=slice(0, 2)), lambda w: w.for_create_or_overwrite("g"))
    write(repo, opened.isel(time=slice(2, 4)), lambda w: w.for_append("g"))
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(opened, tmp_path))


def test_netcdf_encoding_keys_passed_explicitly_are_refused_with_the_zarr_spelling(repo):
    ds = daily("2000-01-01", 4)
    with pytest.raises(
        PlanError, match=r"encoding\['v'\] has \['chunksizes', 'zlib'\].*'chunks'.*'compressors'"
    ):
        write(
            repo,
            ds,
            lambda w: w.for_create_or_overwrite(
                "g", encoding={"v": {"zlib": True, "chunksizes": (2,)}}
            ),
        )
    assert len(list(repo.ancestry(branch="main"))) == 1  # nothing was committed
