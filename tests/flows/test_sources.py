"""Sources: every kind opened from real files, stores and repositories; the synthetic generator.

No mocks: netCDF files, a Zarr store and an Icechunk repository are written into tmp_path, and
the python source imports a real module by name, as a deployment would.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import TYPE_CHECKING, Any

import cftime
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from pydantic import ValidationError

from flows.sources import (
    FilesSource,
    IcechunkSource,
    PythonSource,
    SourceAdapter,
    SyntheticSource,
    ZarrSource,
    parse_source,
)
from flows.targets import Target, TargetNotFoundError
from tasks.errors import RequestError

if TYPE_CHECKING:
    from pathlib import Path

FUNCTIONS = "tests.flows.source_functions"
# Small and sub-daily, so a few days make several files and chunks quickly.
SMALL = SyntheticSource(freq="6h", ny=4, nx=8, time_chunk=4)
VARIABLES = ["air_temperature", "precipitation_flux", "eastward_wind", "northward_wind"]


def concat_time(*parts: xr.Dataset) -> xr.Dataset:
    # Variables without time (crs, lat, lon) come from the first part, as an append keeps them.
    return xr.concat(
        parts, "time", data_vars="minimal", coords="minimal", compat="override", join="exact"
    )


def assert_same_data(actual: xr.Dataset, expected: xr.Dataset) -> None:
    """Same values, coordinates and attributes after a round trip through a file format."""
    xr.testing.assert_identical(actual.compute(), expected.compute())


# ====================================================================== synthetic generator


def test_synthetic_default_window_is_periods_labels_from_start() -> None:
    ds = SyntheticSource().open()
    assert dict(ds.sizes) == {"time": 24, "lat": 18, "lon": 36}
    assert ds.time.values[0] == np.datetime64("2020-01-01T00:00")
    assert ds.time.values[-1] == np.datetime64("2020-01-01T23:00")
    assert ds.time.dtype == np.dtype("datetime64[ns]")


def test_synthetic_is_cf_described() -> None:
    ds = SMALL.open()
    assert ds.attrs["Conventions"] == "CF-1.11"
    assert ds.attrs["source"] == "icefloe synthetic generator"
    assert ds.attrs["title"]
    assert not any("history" in k or "date" in k for k in ds.attrs)
    assert ds.time.attrs == {"standard_name": "time", "long_name": "time", "axis": "T"}
    assert ds.lat.attrs["units"] == "degrees_north"
    assert ds.lat.attrs["standard_name"] == "latitude"
    assert ds.lat.attrs["axis"] == "Y"
    assert ds.lon.attrs["units"] == "degrees_east"
    assert ds.lon.attrs["axis"] == "X"
    assert ds.lat.dtype == np.float64
    np.testing.assert_allclose(ds.lat.values, [-67.5, -22.5, 22.5, 67.5])
    assert ds.lon.values.min() > 0
    assert ds.lon.values.max() < 360
    assert ds.crs.dtype == np.int32
    assert ds.crs.ndim == 0
    assert ds.crs.attrs["grid_mapping_name"] == "latitude_longitude"
    units = {
        "air_temperature": "K",
        "precipitation_flux": "kg m-2 s-1",
        "eastward_wind": "m s-1",
        "northward_wind": "m s-1",
    }
    assert sorted(map(str, ds.data_vars)) == sorted([*units, "crs"])
    for name, unit in units.items():
        var = ds[name]
        assert var.dims == ("time", "lat", "lon")
        assert var.dtype == np.float32
        assert var.attrs["units"] == unit
        assert var.attrs["standard_name"] == name
        assert var.attrs["grid_mapping"] == "crs"


def test_synthetic_is_lazy_and_chunked() -> None:
    ds = SMALL.open(end="2020-01-03T12")
    for name in VARIABLES:
        assert isinstance(ds[name].data, da.Array)
        assert ds[name].chunks == ((4, 4, 2), (4,), (8,))
    # A 1.4 TB window opens instantly: nothing is computed until asked for.
    began = time.perf_counter()
    huge = SyntheticSource(ny=721, nx=1440, time_chunk=24).open(end="2030-01-01")
    assert huge.nbytes > 1e12
    assert time.perf_counter() - began < 3
    one = huge.air_temperature.isel(time=-1, lat=360, lon=0).compute()
    assert 200 < float(one) < 330


def test_synthetic_values_are_plausible() -> None:
    ds = SyntheticSource(freq="3h", ny=18, nx=36).open(end="2020-01-08").compute()
    assert float(ds.air_temperature.min()) > 200
    assert float(ds.air_temperature.max()) < 330
    assert float(ds.precipitation_flux.min()) >= 0
    assert float(ds.precipitation_flux.max()) > 0
    assert float(abs(ds.eastward_wind).max()) < 60
    assert float(abs(ds.northward_wind).max()) < 60
    # Warmer at the equator than at the poles, and it changes over the day.
    tropics = ds.air_temperature.sel(lat=slice(-10, 10)).mean()
    poles = ds.air_temperature.sel(lat=slice(70, 90)).mean()
    assert float(tropics) > float(poles) + 20
    assert float(ds.air_temperature.std("time").mean()) > 0.5


def test_synthetic_is_deterministic() -> None:
    first = SMALL.open("2020-03-01", "2020-03-04").compute()
    again = SyntheticSource.model_validate_json(SMALL.model_dump_json())
    xr.testing.assert_identical(first, again.open("2020-03-01", "2020-03-04").compute())
    assert first.attrs == again.open("2021-06-01", "2021-06-02").attrs


@pytest.mark.parametrize(
    ("source", "a", "b", "c"),
    [
        # b falls inside a dask chunk, so the two halves are chunked differently from the whole.
        (SyntheticSource(ny=6, nx=12), "2020-01-01", "2020-01-01T07", "2020-01-02T05"),
        (SMALL, "2020-02-27T06", "2020-02-29T18", "2020-03-02"),
        (
            SyntheticSource(calendar="noleap", freq="6h", ny=4, nx=8),
            "2020-02-27",
            "2020-02-28T06",
            "2020-03-02",
        ),
        (
            SyntheticSource(calendar="360_day", freq="6h", ny=4, nx=8),
            "2020-02-29",
            "2020-02-30T12",
            "2020-03-02",
        ),
        (SyntheticSource(freq="MS", ny=3, nx=6), "2020-01-01", "2020-05-01", "2021-01-01"),
    ],
)
def test_synthetic_windows_concatenate_exactly(
    source: SyntheticSource, a: str, b: str, c: str
) -> None:
    left, right, whole = source.open(a, b), source.open(b, c), source.open(a, c)
    assert left.sizes["time"] > 0
    assert right.sizes["time"] > 0
    xr.testing.assert_identical(concat_time(left, right).compute(), whole.compute())


def test_synthetic_time_encoding_does_not_depend_on_the_window() -> None:
    hourly = SyntheticSource(ny=2, nx=2)
    assert hourly.open("2021-05-01", "2021-05-02").time.encoding == {
        "units": "hours since 2020-01-01 00:00:00",
        "calendar": "standard",
    }
    daily = SyntheticSource(freq="1D", start="2020-01-01T06", calendar="noleap", ny=2, nx=2)
    assert daily.open().time.encoding["units"] == "hours since 2020-01-01 00:00:00"
    assert SyntheticSource(freq="MS").open().time.encoding["units"].startswith("days since")


def test_synthetic_chunks_align_with_the_source_start() -> None:
    source = SyntheticSource(time_chunk=24, ny=2, nx=2)
    window = source.open("2020-01-01T05", "2020-01-03")
    assert window.air_temperature.chunks[0] == (19, 24)


def test_synthetic_noleap_calendar() -> None:
    source = SyntheticSource(calendar="noleap", freq="1D", ny=2, nx=4, start="2020-02-27")
    ds = source.open(end="2020-03-02")
    labels = list(ds.indexes["time"])
    assert all(isinstance(label, cftime.DatetimeNoLeap) for label in labels)
    assert [(t.month, t.day) for t in labels] == [(2, 27), (2, 28), (3, 1)]
    assert ds.time.encoding["calendar"] == "noleap"
    assert isinstance(ds.air_temperature.data, da.Array)


def test_synthetic_360_day_calendar() -> None:
    source = SyntheticSource(calendar="360_day", freq="1D", ny=2, nx=4, start="2020-02-28")
    ds = source.open(end="2020-03-02")
    labels = list(ds.indexes["time"])
    assert all(isinstance(label, cftime.Datetime360Day) for label in labels)
    assert [(t.month, t.day) for t in labels] == [(2, 28), (2, 29), (2, 30), (3, 1)]
    assert ds.air_temperature.compute().notnull().all()


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2020-01-02", "2020-01-02"),  # start == end
        ("2020-01-03", "2020-01-02"),  # start > end
        ("2019-06-01", "2019-12-31"),  # before the first label
        ("2020-01-01T00:30", "2020-01-01T01"),  # between two labels
    ],
)
def test_synthetic_empty_window(start: str, end: str) -> None:
    ds = SyntheticSource(ny=3, nx=5).open(start, end)
    assert dict(ds.sizes) == {"time": 0, "lat": 3, "lon": 5}
    assert ds.air_temperature.compute().shape == (0, 3, 5)
    assert ds.attrs["Conventions"] == "CF-1.11"


def test_synthetic_empty_window_in_cftime_calendar() -> None:
    ds = SyntheticSource(calendar="360_day").open("2020-01-02", "2020-01-01")
    assert ds.sizes["time"] == 0


def test_synthetic_window_is_clipped_to_labels_from_start() -> None:
    source = SyntheticSource(ny=2, nx=2)
    ds = source.open("2019-12-31T22", "2020-01-01T02")  # labels before start do not exist
    assert list(ds.time.values) == list(np.array(["2020-01-01T00", "2020-01-01T01"], "M8[ns]"))
    ds = source.open("2020-01-01T00:30")  # no end: `periods` labels from the first one
    assert ds.sizes["time"] == 24
    assert ds.time.values[0] == np.datetime64("2020-01-01T01:00")


def test_synthetic_accepts_datetimes_and_tz_aware_times() -> None:
    source = SyntheticSource(ny=2, nx=2)
    utc_plus_2 = dt.timezone(dt.timedelta(hours=2))
    ds = source.open(dt.datetime(2020, 1, 1, 5, tzinfo=utc_plus_2), np.datetime64("2020-01-01T05"))
    assert list(ds.time.values) == list(np.array(["2020-01-01T03", "2020-01-01T04"], "M8[ns]"))
    noleap = SyntheticSource(calendar="noleap", ny=2, nx=2)
    start = cftime.DatetimeNoLeap(2020, 1, 1, 3)
    assert noleap.open(start, dt.datetime(2020, 1, 1, 5)).sizes["time"] == 2


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"freq": "fortnightly-ish"}, ["SyntheticSource.freq", "'1h'"]),
        ({"freq": "-1h"}, ["SyntheticSource.freq", "positive"]),
        ({"start": "2020-01-15", "freq": "MS"}, ["SyntheticSource.start", "2020-02-01"]),
        ({"start": "not a date"}, ["SyntheticSource.start", "ISO 8601"]),
        ({"start": "2020-02-29", "calendar": "noleap"}, ["noleap", "SyntheticSource.start"]),
        ({"calendar": "julian"}, ["calendar"]),
        ({"ny": 0}, ["ny"]),
        ({"time_chunk": 0}, ["time_chunk"]),
    ],
)
def test_synthetic_invalid_fields(fields: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        SyntheticSource(**fields)
    for word in words:
        assert word in str(info.value)


def test_synthetic_window_bound_that_is_not_a_date() -> None:
    with pytest.raises(ValueError, match="window start"):
        SyntheticSource().open("yesterday-ish")
    with pytest.raises(ValueError, match="does not exist in the noleap calendar"):
        SyntheticSource(calendar="noleap").open(end="2020-02-29T06")


# ================================================================================== files


@pytest.fixture
def daily_files(tmp_path: Path) -> Path:
    """Three daily netCDF files of SMALL: obs_20200101.nc ... obs_20200103.nc."""
    for day in ("01", "02", "03"):
        ds = SMALL.open(f"2020-01-{day}", f"2020-01-{int(day) + 1:02d}")
        ds.to_netcdf(tmp_path / f"obs_202001{day}.nc", engine="netcdf4")
    return tmp_path


def test_files_glob_combines_by_coords(daily_files: Path) -> None:
    source = FilesSource(paths=[str(daily_files / "obs_*.nc")], engine="netcdf4")
    ds = source.open()
    assert ds.sizes["time"] == 12
    assert isinstance(ds.air_temperature.data, da.Array)
    assert_same_data(ds, SMALL.open("2020-01-01", "2020-01-04"))


def test_files_start_placeholder_selects_the_day(daily_files: Path) -> None:
    # One pattern may be given as a plain string, as the UI and CLI do.
    source = FilesSource.model_validate({"paths": str(daily_files / "obs_{start:%Y%m%d}.nc")})
    assert source.resolve_paths("2020-01-02") == [str(daily_files / "obs_20200102.nc")]
    ds = source.open(start=dt.datetime(2020, 1, 2), end="2020-01-03")
    assert_same_data(ds, SMALL.open("2020-01-02", "2020-01-03"))


def test_files_window_is_cut_along_time(daily_files: Path) -> None:
    source = FilesSource(paths=[str(daily_files / "obs_*.nc")], chunks={"time": 2})
    ds = source.open("2020-01-01T12", "2020-01-02T12")
    assert ds.air_temperature.chunks[0] == (2, 2)
    assert_same_data(ds, SMALL.open("2020-01-01T12", "2020-01-02T12"))
    # a window along a dimension the data lacks is an error, never the whole source
    with pytest.raises(RequestError, match="no 'valid_time' coordinate") as info:
        source.open("2020-01-01T12", "2020-01-02T12", append_dim="valid_time")
    assert "set the run's append_dim" in str(info.value)


def test_files_several_patterns_and_nested_concat(daily_files: Path) -> None:
    source = FilesSource(
        paths=[str(daily_files / "obs_20200103.nc"), str(daily_files / "obs_2020010[12].nc")],
        concat_dim="time",
    )
    # Nested combine keeps the listed order: day 3 first, then days 1 and 2.
    ds = source.open()
    assert ds.time.values[0] == np.datetime64("2020-01-03T00")
    assert ds.sizes["time"] == 12


def test_files_missing_names_the_patterns(daily_files: Path) -> None:
    source = FilesSource(
        paths=[
            str(daily_files / "obs_*.nc"),
            str(daily_files / "nope_*.nc"),
            str(daily_files / "absent.nc"),
        ]
    )
    with pytest.raises(FileNotFoundError) as info:
        source.open()
    message = str(info.value)
    assert "nope_*.nc" in message
    assert "absent.nc" in message
    assert "obs_*.nc" not in message
    assert "FilesSource.paths" in message


def test_files_missing_window_file_names_pattern_and_template(daily_files: Path) -> None:
    source = FilesSource(paths=[str(daily_files / "obs_{start:%Y%m%d}.nc")])
    with pytest.raises(FileNotFoundError) as info:
        source.open("2020-01-09", "2020-01-10")
    assert "obs_20200109.nc" in str(info.value)
    assert "{start:%Y%m%d}" in str(info.value)


def test_files_placeholder_without_window(daily_files: Path) -> None:
    source = FilesSource(paths=[str(daily_files / "obs_{start:%Y%m%d}_{end:%Y%m%d}.nc")])
    with pytest.raises(ValueError, match="needs the window start and end") as info:
        source.open()
    assert "remove the placeholder" in str(info.value)
    with pytest.raises(ValueError, match="got no end"):
        source.open(start="2020-01-01")


@pytest.mark.parametrize(
    ("paths", "words"),
    [
        (["data_{day:%d}.nc"], ["'day'", "{start:...}"]),
        (["data_{start.nc"], ["braces"]),
        ([], ["paths"]),
        ([""], ["empty path"]),
    ],
)
def test_files_invalid_paths(paths: list[str], words: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        FilesSource(paths=paths)
    for word in words:
        assert word in str(info.value)


# =================================================================================== zarr


@pytest.fixture
def zarr_store(tmp_path: Path) -> Path:
    path = tmp_path / "weather.zarr"
    # Zarr v2 with consolidated metadata, the most common published layout (v3 is covered
    # by the icechunk tests).
    SMALL.open(end="2020-01-03").to_zarr(path, group="surface", zarr_format=2, consolidated=True)
    return path


def test_zarr_opens_a_group(zarr_store: Path) -> None:
    ds = ZarrSource(url=str(zarr_store), group="surface").open()
    assert isinstance(ds.air_temperature.data, da.Array)
    assert ds.air_temperature.chunks[0] == (4, 4)  # the store's chunks
    assert_same_data(ds, SMALL.open(end="2020-01-03"))


def test_zarr_window_and_chunks(zarr_store: Path) -> None:
    source = ZarrSource(url=str(zarr_store), group="surface", chunks={"time": 8})
    ds = source.open("2020-01-01T18", "2020-01-02T06")
    assert ds.air_temperature.chunks[0] == (2,)
    assert_same_data(ds, SMALL.open("2020-01-01T18", "2020-01-02T06"))


def test_zarr_missing_store_or_group(zarr_store: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ZarrSource\.url") as info:
        ZarrSource(url=str(tmp_path / "missing.zarr")).open()
    assert "missing.zarr" in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"ZarrSource\.group") as info:
        ZarrSource(url=str(zarr_store), group="upper_air").open()
    assert "upper_air" in str(info.value)


def test_zarr_window_along_a_dimension_without_dates(zarr_store: Path) -> None:
    source = ZarrSource(url=str(zarr_store), group="surface")
    assert source.open(append_dim="lat").sizes["lat"] == 4  # no window: nothing to select
    with pytest.raises(ValueError, match="set the run's append_dim") as info:
        source.open("2020-01-01", "2020-01-02", append_dim="lat")
    assert "'lat'" in str(info.value)


def test_zarr_refuses_credentials_and_describes_safely() -> None:
    with pytest.raises(ValidationError, match="'secret'") as info:
        ZarrSource(url="s3://b/x.zarr", storage_options={"key": "AKIA", "secret": "S3CR3T"})
    assert "S3CR3T" not in str(info.value)
    source = ZarrSource(
        url="s3://b/x.zarr",
        group="g",
        storage_options={"endpoint_url": "http://minio:9000", "profile": "prod-profile"},
    )
    assert source.describe() == "zarr s3://b/x.zarr group g (endpoint_url=http://minio:9000)"
    with pytest.raises(ValidationError, match="user information"):
        ZarrSource(url="s3://user:pw@b/x.zarr")


# =============================================================================== icechunk


@pytest.fixture
def icechunk_source_repo(tmp_path: Path) -> tuple[Target, str]:
    """A repository whose branch holds two days in group 'weather', one day at the first
    snapshot (returned)."""
    target = Target(repo=str(tmp_path / "source-repo"))
    repo = target.open_repository(create=True)
    session = repo.writable_session("main")
    SMALL.open(end="2020-01-02").compute().to_zarr(
        session.store, group="weather", consolidated=False, zarr_format=3
    )
    first = session.commit("day one")
    session = repo.writable_session("main")
    SMALL.open("2020-01-02", "2020-01-03").compute().to_zarr(
        session.store, group="weather", append_dim="time", consolidated=False
    )
    session.commit("day two")
    return target, first


def test_icechunk_reads_the_branch_tip(icechunk_source_repo: tuple[Target, str]) -> None:
    target, _ = icechunk_source_repo
    ds = IcechunkSource(target=target, group="weather").open()
    assert isinstance(ds.air_temperature.data, da.Array)
    assert_same_data(ds, SMALL.open(end="2020-01-03"))


def test_icechunk_reads_a_snapshot_and_a_window(icechunk_source_repo: tuple[Target, str]) -> None:
    target, first = icechunk_source_repo
    old = IcechunkSource(target=target, group="weather", snapshot_id=first).open()
    assert_same_data(old, SMALL.open(end="2020-01-02"))
    window = IcechunkSource(target=target, group="weather").open("2020-01-01T12", "2020-01-02T06")
    assert_same_data(window, SMALL.open("2020-01-01T12", "2020-01-02T06"))


def test_icechunk_missing_branch_snapshot_group_repo(
    icechunk_source_repo: tuple[Target, str], tmp_path: Path
) -> None:
    target, _ = icechunk_source_repo
    on_dev = Target(repo=target.repo, branch="dev")
    with pytest.raises(TargetNotFoundError, match="'dev'") as no_branch:
        IcechunkSource(target=on_dev, group="weather").open()
    assert "IcechunkSource.target.branch" in str(no_branch.value)
    assert "main" in str(no_branch.value)
    with pytest.raises(TargetNotFoundError, match=r"IcechunkSource\.snapshot_id"):
        IcechunkSource(target=target, snapshot_id="ABCDEFGHJKMNPQRSTVWX").open()
    with pytest.raises(FileNotFoundError, match=r"IcechunkSource\.group") as no_group:
        IcechunkSource(target=target, group="ocean").open()
    assert "'ocean'" in str(no_group.value)
    with pytest.raises(TargetNotFoundError, match=r"Target\.repo"):
        IcechunkSource(target=Target(repo=str(tmp_path / "no-repo"))).open()


def test_icechunk_describe(tmp_path: Path) -> None:
    source = IcechunkSource(target=Target(repo=str(tmp_path / "r")), group="g", snapshot_id="S1")
    assert source.describe() == f"icechunk {tmp_path / 'r'} (branch main) group g snapshot S1"


# ================================================================================= python


def test_python_calls_the_function_with_kwargs() -> None:
    source = PythonSource(function=f"{FUNCTIONS}:make_dataset", kwargs={"n": 4, "scale": 2.0})
    ds = source.open()
    np.testing.assert_array_equal(ds.x.values, [0.0, 2.0, 4.0, 6.0])
    assert ds.attrs == {"start": "None", "end": "None"}


def test_python_passes_the_window_as_given() -> None:
    source = PythonSource(function=f"{FUNCTIONS}:make_dataset")
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    ds = source.open(start=start, end="2020-01-02")
    assert ds.attrs == {"start": repr(start), "end": repr("2020-01-02")}
    assert source.open(end="2020-01-02").attrs["start"] == "None"


def test_python_without_window_parameters_and_dotted_attribute() -> None:
    assert PythonSource(function=f"{FUNCTIONS}:static_dataset").open().sizes == {"i": 2}
    loader = PythonSource(function=f"{FUNCTIONS}:Loaders.daily", kwargs={"days": 3})
    assert loader.open().sizes == {"day": 3}


def test_python_window_conflicts_with_kwargs() -> None:
    source = PythonSource(function=f"{FUNCTIONS}:make_dataset", kwargs={"start": "2020-01-01"})
    assert source.open().attrs["start"] == repr("2020-01-01")  # ad-hoc run: kwargs win
    with pytest.raises(ValueError, match="remove 'start' from kwargs"):
        source.open(start="2021-01-01")


@pytest.mark.parametrize(
    ("function", "error", "words"),
    [
        ("no_such_package.mod:f", ImportError, ["no_such_package.mod:f", "module path"]),
        (f"{FUNCTIONS}:missing", AttributeError, [f"{FUNCTIONS}:missing", "after ':'"]),
        (f"{FUNCTIONS}:Loaders.hourly", AttributeError, ["'hourly'", "after ':'"]),
        (f"{FUNCTIONS}:not_a_dataset", TypeError, ["not_a_dataset", "list", "xarray.Dataset"]),
        (f"{FUNCTIONS}:NOT_CALLABLE", TypeError, ["NOT_CALLABLE", "callable"]),
    ],
)
def test_python_errors_name_the_function(
    function: str, error: type[Exception], words: list[str]
) -> None:
    with pytest.raises(error) as info:
        PythonSource(function=function).open()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("function", ["module_without_colon", "pkg.mod:", "pkg-x.mod:f", ":f"])
def test_python_function_spec_is_checked(function: str) -> None:
    with pytest.raises(ValidationError, match=r"package\.module:function"):
        PythonSource(function=function)


def test_python_kwargs_must_be_json() -> None:
    with pytest.raises(ValidationError, match=r"kwargs\['when'\]"):
        PythonSource(function="a.b:c", kwargs={"when": dt.datetime(2020, 1, 1)})


def test_python_describe_shows_kwargs_keys_only() -> None:
    source = PythonSource(function="pkg.mod:load", kwargs={"api_key": "VALUE-1", "site": "VALUE-2"})
    assert source.describe() == "python pkg.mod:load (kwargs: api_key, site)"
    assert PythonSource(function="pkg.mod:load").describe() == "python pkg.mod:load"


# ===================================================================== union, JSON, parsing

ALL_KINDS = [
    FilesSource(paths=["a/*.nc", "b_{start:%Y%m%d}.nc"], engine="h5netcdf", chunks={"time": 24}),
    ZarrSource(url="s3://b/x.zarr", group="g", storage_options={"anon": True}),
    IcechunkSource(
        target=Target(repo="s3://b/r", branch="dev", storage_options={"region": "eu"}),
        group="g",
        snapshot_id="ABC",
    ),
    PythonSource(function="pkg.mod:load", kwargs={"n": 3, "opts": {"a": [1, 2]}}),
    SyntheticSource(freq="6h", ny=4, nx=8, calendar="360_day", periods=5, time_chunk=2),
]


@pytest.mark.parametrize("source", ALL_KINDS, ids=lambda s: s.kind)
def test_json_round_trip(source: Any) -> None:
    text = SourceAdapter.dump_json(source)
    back = SourceAdapter.validate_json(text)
    assert type(back) is type(source)
    assert back == source
    assert SourceAdapter.validate_python(json.loads(text)) == source
    assert parse_source(text.decode()) == source


@pytest.mark.parametrize("source", ALL_KINDS, ids=lambda s: s.kind)
def test_describe_is_one_line(source: Any) -> None:
    text = source.describe()
    assert text.startswith(source.kind)
    assert "\n" not in text


def test_every_field_is_described_for_the_ui() -> None:
    schema = SourceAdapter.json_schema()
    # one tab per kind in the form (anyOf: flows/forms.py); each kind's `kind` is a one-value enum
    kinds = [d["properties"]["kind"] for d in schema["$defs"].values() if "kind" in d["properties"]]
    assert [kind["enum"] for kind in kinds] == [
        ["files"],
        ["icechunk"],
        ["python"],
        ["synthetic"],
        ["zarr"],
    ]
    assert len(schema["anyOf"]) == 5
    for name, definition in schema["$defs"].items():
        for field, prop in definition["properties"].items():
            assert prop.get("description"), f"{name}.{field}"


def test_parse_source_forms(tmp_path: Path) -> None:
    assert parse_source("data/*.nc") == FilesSource(paths=["data/*.nc"])
    assert parse_source(' {"kind": "synthetic", "ny": 3} ') == SyntheticSource(ny=3)
    assert parse_source({"kind": "zarr", "url": "x.zarr"}) == ZarrSource(url="x.zarr")
    model = SyntheticSource()
    assert parse_source(model) is model
    with pytest.raises(RequestError, match="JSON source spec"):
        parse_source("  ")
    with pytest.raises(RequestError, match="kind"):
        parse_source({"url": "x.zarr"})
    with pytest.raises(RequestError, match="nx"):
        parse_source('{"kind": "synthetic", "nx": -1}')
    with pytest.raises(RequestError, match="colour"):
        parse_source({"kind": "synthetic", "colour": "red"})
    with pytest.raises(TypeError, match="cannot make a source"):
        parse_source(42)  # type: ignore[arg-type]


def test_files_placeholder_names_a_file_per_period_of_the_window(daily_files: Path) -> None:
    # a scheduled run's window starts at the last stored label (day 1, 23:00) and ends now:
    # every day's file in between is opened, not only the first day's
    source = FilesSource(paths=[str(daily_files / "obs_{start:%Y%m%d}.nc")])
    assert source.resolve_paths("2020-01-01T18", "2020-01-04") == [
        str(daily_files / f"obs_2020010{day}.nc") for day in (1, 2, 3)
    ]
    ds = source.open("2020-01-01T18", "2020-01-04")
    assert_same_data(ds, SMALL.open("2020-01-01T18", "2020-01-04"))
    # a day whose file has not arrived is left out (the late-data policy decides), and a
    # window ending at midnight does not reach into the next day
    (daily_files / "obs_20200102.nc").unlink()
    assert source.resolve_paths("2020-01-01", "2020-01-04") == [
        str(daily_files / "obs_20200101.nc"),
        str(daily_files / "obs_20200103.nc"),
    ]
    assert source.resolve_paths("2020-01-03", "2020-01-04") == [
        str(daily_files / "obs_20200103.nc")
    ]
    # {end} is the end of each file's period
    (daily_files / "obs_20200103.nc").rename(daily_files / "obs_20200103_20200104.nc")
    ranged = FilesSource(paths=[str(daily_files / "obs_{start:%Y%m%d}_{end:%Y%m%d}.nc")])
    assert ranged.resolve_paths("2020-01-01", "2020-01-05") == [
        str(daily_files / "obs_20200103_20200104.nc")
    ]


def test_files_placeholder_over_too_many_periods_asks_for_a_shorter_window(
    daily_files: Path,
) -> None:
    source = FilesSource(paths=[str(daily_files / "obs_{start:%Y%m%d%H%M%S}.nc")])
    with pytest.raises(ValueError, match="spans 2678400 of them") as info:
        source.resolve_paths("2020-01-01", "2020-02-01")
    assert "shorter window" in str(info.value)
