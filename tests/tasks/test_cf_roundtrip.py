"""Real CF data survives create + appends: calendars, units, packing, fill values, strings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tasks.writer import to_icechunk
from tests.cf_datasets import cf_dataset, lazy
from tests.conftest import plain_xarray, read_back
from tests.tasks.helpers import write

pytestmark = pytest.mark.usefixtures("scheduler")


@pytest.mark.parametrize("calendar", ["standard", "noleap", "360_day"])
def test_calendars_round_trip_through_appends(repo, tmp_path, calendar):
    full = lazy(cf_dataset(10, calendar=calendar, start="2001-02-26"))
    write(repo, full.isel(time=slice(0, 4)), lambda w: w.for_create_or_overwrite(group="g"))
    write(repo, full.isel(time=slice(4, 10)), lambda w: w.for_append(group="g"))
    back = read_back(repo, "g")
    xr.testing.assert_identical(back, plain_xarray(full, tmp_path))
    assert back.time.encoding["calendar"] == (
        calendar if calendar != "standard" else "proleptic_gregorian"
    )


def test_appended_times_are_encoded_in_the_stored_units(repo):
    hourly = cf_dataset(6, freq="h")
    first = hourly.isel(time=slice(0, 3))
    first["time"].encoding.update(units="hours since 1990-01-01")
    write(repo, first, lambda w: w.for_create_or_overwrite(group="g"))
    later = hourly.isel(time=slice(3, 6))
    later["time"].encoding.update(units="days since 2050-01-01", dtype="float64")
    write(repo, later, lambda w: w.for_append(group="g"))
    back = read_back(repo, "g")
    assert back.time.encoding["units"] == "hours since 1990-01-01"
    np.testing.assert_array_equal(back.time.values, hourly.time.values)


def test_packed_masked_and_string_variables_keep_their_encoding(repo, tmp_path):
    ds = cf_dataset(6)
    write(repo, ds.isel(time=slice(0, 2)), lambda w: w.for_create_or_overwrite(group="g"))
    write(repo, lazy(ds.isel(time=slice(2, 6)), 2), lambda w: w.for_append(group="g"))
    back = read_back(repo, "g")
    assert back.tas_packed.encoding["scale_factor"] == 0.01
    assert back.tas_packed.encoding["dtype"] == np.int16
    assert back.pr.isnull().any()
    assert list(back.zone.values) == list(ds.zone.values)
    assert back.height.attrs["units"] == "m"
    assert back.time.attrs["bounds"] == "time_bnds"
    assert back.tas.attrs["grid_mapping"] == "crs"
    xr.testing.assert_identical(back, plain_xarray(ds, tmp_path))


def test_object_string_coordinates_and_timedeltas(repo, tmp_path):
    ds = xr.Dataset(
        {"obs": (("station", "lead"), np.arange(6.0).reshape(3, 2))},
        coords={
            "station": np.array(["KSEA", "KPDX", "KBOI"], dtype=object),
            "lead": pd.to_timedelta([0, 6], unit="h"),
            "name": ("station", np.array(["Seattle", "Portland", "Boise"], dtype=object)),
        },
    )
    write(repo, ds, lambda w: w.for_create_or_overwrite(group="s"))
    xr.testing.assert_identical(read_back(repo, "s"), plain_xarray(ds, tmp_path))


def test_to_icechunk_writes_a_dataarray_like_to_zarr(repo, tmp_path):
    da = lazy(cf_dataset(5)).tas
    session = repo.writable_session("main")
    to_icechunk(da, session, group="one")
    session.commit("dataarray")
    back = xr.open_dataarray(
        repo.readonly_session("main").store, group="one", engine="zarr", consolidated=False
    )
    xr.testing.assert_identical(back.load(), da.load())


def test_to_icechunk_defaults_modes_like_xarray(repo, tmp_path):
    full = cf_dataset(8)
    session = repo.writable_session("main")
    to_icechunk(full.isel(time=slice(0, 5)), session, group="g")
    to_icechunk(full.isel(time=slice(5, 8)), session, group="g", append_dim="time")
    session.commit("two writes, one commit")
    patch = full[["tas"]].isel(time=slice(1, 3)).drop_vars("height") * np.float32(0)
    session = repo.writable_session("main")
    to_icechunk(patch, session, group="g", region="auto")
    session.commit("region")
    expected = full.copy(deep=True)
    expected["tas"][1:3] = 0
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(expected, tmp_path))
