"""Stored encodings come from metadata alone: a float time in a non-standard calendar
that holds only fill values (just created, or extended and not yet written) must not
stop any phase, planner or reader (issue #11, a HadCM3-style file)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from tasks.coverage import full_coverage
from tasks.stored import StoredGroup
from tasks.writer import to_icechunk
from tests.conftest import plain_xarray, read_back
from tests.tasks.helpers import write

HOURS = "hours since 1970-01-01 00:00:00"


def hadcm3_like(months: int, calendar: str = "360_day") -> xr.Dataset:
    """What xarray makes of a HadCM3 file: float64 hour times and bounds, NaN fill on them."""
    hours = np.arange(months) * 720.0 + 360.0
    raw = xr.Dataset(
        {
            "air_temperature": (
                ("time", "lat"),
                (250 + np.arange(months * 3, dtype="float32")).reshape(months, 3),
            ),
            "time_bnds": (("time", "bnds"), np.stack([hours - 360, hours + 360], axis=1)),
        },
        coords={"time": ("time", hours, {"bounds": "time_bnds", "units": HOURS})},
    )
    raw.time.attrs["calendar"] = calendar
    raw.time_bnds.attrs.update(units=HOURS, calendar=calendar, _FillValue=np.nan)
    raw.time.attrs["_FillValue"] = np.nan
    return xr.decode_cf(raw)


@pytest.mark.parametrize("calendar", ["360_day", "noleap", "julian", "all_leap"])
def test_a_lazy_file_with_float_times_and_nan_fill_is_written_in_every_phase(
    repo, tmp_path, calendar
):
    ds = hadcm3_like(6, calendar)
    # bounds lazy, data in memory: write_eager and verify run while time_bnds is all NaN
    lazy = ds.assign(time_bnds=ds.time_bnds.chunk())
    session = repo.writable_session("main")
    to_icechunk(lazy, session, group="g")
    session.commit("create")
    more = hadcm3_like(9, calendar).isel(time=slice(6, 9))
    write(repo, more.assign(time_bnds=more.time_bnds.chunk()), lambda w: w.for_append("g"))
    xr.testing.assert_identical(
        read_back(repo, "g"), plain_xarray(hadcm3_like(9, calendar), tmp_path)
    )


def test_bounds_left_at_fill_by_an_extension_do_not_stop_planning_or_coverage(repo):
    ds = hadcm3_like(8)
    write(repo, ds.isel(time=slice(0, 4)), lambda w: w.for_create_or_overwrite("g"))
    # labels only: time_bnds and the data grow with nothing but NaN in their new part
    labels = ds.isel(time=slice(4, 8))[["time"]]
    write(repo, labels, lambda w: w.for_append("g", fill_missing=True))
    session = repo.readonly_session("main")
    stored = StoredGroup(session.store, "g")
    assert stored.encodings["time_bnds"]["calendar"] == "360_day"
    assert stored.encodings["time_bnds"]["units"].startswith("hours since 1970-01-01")
    assert len(stored.indexes["time"]) == 8
    assert full_coverage(session, "g").present().tolist() == [True] * 4 + [False] * 4
    # a region write of the missing part plans and lands
    write(repo, ds.isel(time=slice(4, 8)), lambda w: w.for_region("g"))
    np.testing.assert_array_equal(read_back(repo, "g").time_bnds.values, ds.time_bnds.values)


def test_schemas_from_metadata_equal_what_full_decoding_reports():
    ds = xr.Dataset(
        {
            "packed": (
                "t",
                np.arange(4.0),
                {},
                {"dtype": "int16", "scale_factor": 0.5, "_FillValue": -1},
            ),
            "lead": ("t", np.array([1, 2, 3, 4], "timedelta64[h]")),
            "when": ("t", np.array(["2000-01-01", "NaT", "2001-01-01", "2002-01-01"], "M8[s]")),
            "name": ("t", np.array(["a", "bb", "c", "d"])),
            "flag": ("t", np.array([True, False, True, True])),
        },
        coords={"t": xr.date_range("2000-01-01", periods=4, calendar="noleap", use_cftime=True)},
    )
    store = zarr.storage.MemoryStore()
    ds.to_zarr(store, zarr_format=3, consolidated=False)
    full = xr.open_zarr(store, consolidated=False)
    for name, (dtype, encoding) in StoredGroup(store, None).schemas.items():
        assert dtype == full[name].dtype, name
        assert {k: str(v) for k, v in encoding.items()} == {
            k: str(v) for k, v in full[name].encoding.items()
        }, name
