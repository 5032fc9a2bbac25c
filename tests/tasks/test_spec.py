"""The declared dataset spec (tasks/spec.py): inferred from what a write stored, kept with
the group, read back as YAML, compared, and its steps and labels."""

from __future__ import annotations

import datetime as dt
import json

import icechunk
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from tasks.errors import PlanError
from tasks.spec import (
    IRREGULAR,
    SPEC_KEY,
    DatasetSpec,
    LabelContinuation,
    TimeEncoding,
    VariableSpec,
    guess_append_dim,
    infer_step,
    label_grid,
    read_spec,
    write_spec,
)
from tests.cf_datasets import cf_dataset
from tests.tasks.helpers import write


def _stored_attrs(repo: icechunk.Repository, group: str | None) -> dict[str, object]:
    """The group's attributes read with zarr alone, not through icefloe."""
    session = repo.readonly_session(branch="main")
    return dict(zarr.open_group(session.store, path=group or "", mode="r").attrs)


def _hourly(n: int, start: str = "2020-01-01") -> xr.Dataset:
    time = pd.date_range(start, periods=n, freq="h")
    return xr.Dataset(
        {"t2m": (("time", "x"), np.arange(n * 2, dtype="float32").reshape(n, 2), {"units": "K"})},
        coords={"time": time, "x": [10, 20]},
    )


# -- the spec the first write stores ----------------------------------------------------------


def test_a_create_stores_the_spec_of_what_it_wrote_in_the_same_commit(repo) -> None:
    ds = cf_dataset(6)
    write(repo, ds, lambda w: w.for_create_or_overwrite(group="g"))

    raw = _stored_attrs(repo, "g")[SPEC_KEY]
    assert isinstance(raw, str)  # JSON text: a netCDF export of the group keeps working
    spec = DatasetSpec.model_validate(json.loads(raw))
    assert len(list(repo.ancestry(branch="main"))) == 2  # the repository's first, and ours
    # every array, as zarr and its attributes say, independently of icefloe
    session = repo.readonly_session(branch="main")
    zgroup = zarr.open_group(session.store, path="g", mode="r")
    assert set(spec.variables) == {name for name, _ in zgroup.arrays()}
    for name, array in zgroup.arrays():
        declared = spec.variables[name]
        assert declared.dims == tuple(array.metadata.dimension_names or ())  # () for scalars
        assert declared.chunks == tuple(array.chunks)
        assert declared.units == array.attrs.get("units")
    assert spec.variables["tas"].dtype == "float32"
    assert spec.variables["tas_packed"].dtype == "int16"  # stored, after packing
    time = zgroup["time"]
    assert spec.append_dim == "time"
    assert spec.start == "2000-01-01T00:00:00"
    assert spec.step == "D"
    assert spec.time_encoding == TimeEncoding(
        units=time.attrs["units"], calendar=time.attrs["calendar"], dtype=str(time.dtype)
    )


def test_the_spec_of_the_first_write_equals_the_one_read_from_its_arrays(repo) -> None:
    ds = cf_dataset(6).chunk({"time": 2})  # lazy, as a files source opens data
    write(repo, ds, lambda w: w.for_create_or_overwrite(group="g"))
    from tasks.stored import StoredGroup

    stored = StoredGroup(repo.readonly_session(branch="main").store, "g")
    assert DatasetSpec.from_group(stored, "time") == read_spec(stored.store, "g")


def test_from_dataset_is_what_a_create_would_store(repo) -> None:
    ds = cf_dataset(5)
    predicted = DatasetSpec.from_dataset(ds, "time")
    write(repo, ds, lambda w: w.for_create_or_overwrite(group="g"))
    assert read_spec(repo.readonly_session(branch="main").store, "g") == predicted
    # and the dataset read back from the group describes the group, chunks included
    reopened = xr.open_zarr(repo.readonly_session(branch="main").store, group="g")
    assert DatasetSpec.from_dataset(reopened, "time") == predicted


def test_an_append_keeps_the_spec_and_an_overwrite_keeps_only_its_bounds(repo) -> None:
    ds = _hourly(8)
    write(repo, ds.isel(time=slice(0, 4)), lambda w: w.for_create_or_overwrite(group="g"))
    store = repo.readonly_session(branch="main").store
    bounded = read_spec(store, "g")
    assert bounded is not None
    bounded = bounded.model_copy(
        update={"max_delay": dt.timedelta(hours=3), "max_nan_fraction": {"t2m": 0.1}}
    )
    session = repo.writable_session("main")
    write_spec(session.store, "g", bounded)
    session.commit("bounds")

    write(repo, ds.isel(time=slice(4, 8)), lambda w: w.for_append(group="g"))
    assert read_spec(repo.readonly_session(branch="main").store, "g") == bounded

    daily = ds.resample(time="D").mean().astype({"t2m": "float64"})
    write(repo, daily, lambda w: w.for_create_or_overwrite(group="g", mode="w"))
    replaced = read_spec(repo.readonly_session(branch="main").store, "g")
    assert replaced is not None
    assert replaced.variables["t2m"].dtype == "float64"
    assert (replaced.max_delay, replaced.max_nan_fraction) == (
        dt.timedelta(hours=3),
        {"t2m": 0.1},
    )


def test_a_source_carrying_another_groups_spec_never_brings_it_along(repo) -> None:
    ds = _hourly(4)
    foreign = DatasetSpec.from_dataset(_hourly(3).rename(t2m="other"), "time")
    ds.attrs[SPEC_KEY] = foreign.to_json()
    write(repo, ds, lambda w: w.for_create_or_overwrite(group="g"))
    spec = read_spec(repo.readonly_session(branch="main").store, "g")
    assert spec is not None
    assert set(spec.variables) == {"t2m", "time", "x"}
    assert xr.open_zarr(repo.readonly_session(branch="main").store, group="g").attrs == {
        SPEC_KEY: spec.to_json()
    }


def test_a_group_written_before_specs_has_none_and_writes_go_on(repo) -> None:
    ds = _hourly(6)
    session = repo.writable_session("main")
    ds.isel(time=slice(0, 3)).to_zarr(session.store, group="g", zarr_format=3, consolidated=False)
    session.commit("plain xarray")
    assert read_spec(repo.readonly_session(branch="main").store, "g") is None
    fixed = ds.isel(time=slice(3, 6)).copy()
    fixed["t2m"].attrs["units"] = "degC"  # no spec: nothing but today's checks
    write(repo, fixed, lambda w: w.for_append(group="g"))
    assert read_spec(repo.readonly_session(branch="main").store, "g") is None


# -- YAML and comparing -----------------------------------------------------------------------


def test_yaml_round_trip_and_readable_durations() -> None:
    spec = DatasetSpec.from_dataset(cf_dataset(3), "time").model_copy(
        update={"max_delay": dt.timedelta(hours=6), "max_nan_fraction": {"*": 0.5}}
    )
    text = spec.to_yaml()
    assert "dims: [time, lat, lon]" in text  # short lists stay on one line
    assert DatasetSpec.from_yaml(text) == spec
    edited = DatasetSpec.from_yaml(text.replace("max_delay: PT6H", "max_delay: 2 days"))
    assert edited.max_delay == dt.timedelta(days=2)
    assert edited.nan_fraction_limit("tas") == 0.5


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("- a list", "must be a YAML mapping"),
        ("append_dim: time\nstart: ''\nstep: hourly\nvariables: {}", "step 'hourly' is not"),
        (
            "append_dim: time\nstart: ''\nstep: 1h\nvariables: {}\nmax_nan_fraction: {a: 2}",
            "max_nan_fraction",
        ),
        ("append_dim: time\nstart: ''\nstep: 1h\nvariables: {}\ncolour: red", "colour"),
        ("append_dim: [time", "not valid YAML"),
    ],
)
def test_a_malformed_yaml_spec_names_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        DatasetSpec.from_yaml(text)


def test_diff_names_every_difference_and_nothing_else() -> None:
    spec = DatasetSpec.from_dataset(cf_dataset(3), "time")
    assert spec.diff(spec) == []
    changed = spec.model_copy(deep=True)
    changed.variables["tas"] = changed.variables["tas"].model_copy(
        update={"dtype": "float64", "units": "degC"}
    )
    changed.variables["new"] = VariableSpec(dims=("time",), dtype="int8", chunks=(3,))
    del changed.variables["pr"]
    assert changed.time_encoding is not None
    changed.time_encoding = changed.time_encoding.model_copy(update={"calendar": "noleap"})
    changed.step = "6h"
    assert spec.diff(changed) == [
        "step 'D' → '6h'",
        "variable 'pr' is missing",
        "variable 'new' is new",
        "variable 'tas': dtype float32 → float64, units 'K' → 'degC'",
        "time encoding of 'time': calendar 'proleptic_gregorian' → 'noleap'",
    ]
    assert "step" not in " ".join(spec.diff(changed, structure_only=True))


def test_units_spelled_two_ways_for_the_same_time_are_no_difference() -> None:
    a = TimeEncoding(units="hours since 2000-01-01", calendar="standard", dtype="int64")
    b = TimeEncoding(
        units="hours since 2000-01-01 00:00:00", calendar="proleptic_gregorian", dtype="int64"
    )
    assert a.differences(b) == []


def test_a_stored_spec_that_cannot_be_read_is_a_plan_error_naming_the_fix(repo) -> None:
    session = repo.writable_session("main")
    zarr.open_group(session.store, path="g", mode="a").attrs[SPEC_KEY] = '{"append_dim": 1}'
    with pytest.raises(PlanError, match=r"spec init --force"):
        read_spec(session.store, "g")


# -- steps and labels --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "step"),
    [
        (pd.date_range("2020-01-01", periods=5, freq="h"), "h"),
        (pd.date_range("2020-01-01", periods=2, freq="6h"), "6h"),
        (pd.date_range("2020-01-01", periods=4, freq="MS"), "MS"),
        # one hole among regular labels: still hourly
        (
            pd.DatetimeIndex(["2020-01-01T00", "2020-01-01T01", "2020-01-01T02", "2020-01-01T04"]),
            "h",
        ),
        # no step has a majority: observations at irregular times
        (pd.DatetimeIndex(["2000-01-01", "2000-01-02", "2000-01-04"]), IRREGULAR),
        (pd.DatetimeIndex(["2000-01-01"]), IRREGULAR),
        (pd.Index([0.0, 10.0, 20.0]), IRREGULAR),  # numeric: declared, never inferred
        (
            xr.date_range("2000-01-01", periods=4, freq="MS", calendar="360_day", use_cftime=True),
            "MS",
        ),
    ],
)
def test_infer_step(labels: pd.Index, step: str) -> None:
    assert infer_step(labels) == step


def test_label_grid_and_continuation_on_calendars_and_numbers() -> None:
    cal = xr.date_range("2000-01-01", periods=6, freq="MS", calendar="360_day", use_cftime=True)
    assert list(label_grid(cal[0], cal[-1], "MS")) == list(cal)
    found = LabelContinuation.of(cal[1], pd.Index(cal[[3, 5]]), "MS")
    assert list(found.missing) == [cal[2], cal[4]]
    assert found.holes() == [(cal[2], cal[2], 1), (cal[4], cal[4], 1)]
    assert list(label_grid(0.5, 2.0, "0.5")) == [0.5, 1.0, 1.5, 2.0]
    off = LabelContinuation.of(1.0, pd.Index([1.5, 2.25]), "0.5")
    assert list(off.off_step) == [2.25]
    spec = DatasetSpec(append_dim="time", start="2020-01-01", step="6h", variables={})
    assert list(spec.expected_labels(pd.Timestamp("2020-01-01T18"), 2)) == [
        pd.Timestamp("2020-01-02T00"),
        pd.Timestamp("2020-01-02T06"),
    ]


def test_the_append_dimension_is_guessed_when_a_create_does_not_say() -> None:
    assert guess_append_dim({"a": ("time", "x")}) == "time"
    assert guess_append_dim({"a": ("t", "x")}, unlimited={"t"}) == "t"
    assert guess_append_dim({"a": ("x", "valid")}, time_coords={"valid"}) == "valid"
    assert guess_append_dim({"a": ("station", "x")}) == "station"
