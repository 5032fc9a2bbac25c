"""The spec's guards in plan() (tasks/planners/guards.py): refused writes leave the branch
as it was, allowed ones store exactly what they say, read back with plain xarray/zarr."""

from __future__ import annotations

import icechunk
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tasks.errors import PlanError
from tasks.request import WriteRequest
from tasks.spec import SPEC_KEY, DatasetSpec, read_spec, write_spec
from tests.conftest import read_back, tip
from tests.tasks.helpers import write


def hourly(n: int, start: str = "2020-01-01", units: str = "K") -> xr.Dataset:
    time = pd.date_range(start, periods=n, freq="h")
    values = np.arange(n * 2, dtype="float32").reshape(n, 2) + 270
    return xr.Dataset(
        {
            "t2m": (("time", "x"), values, {"units": units}),
            "count": (("time", "x"), np.arange(n * 2, dtype="int32").reshape(n, 2)),
        },
        coords={"time": time, "x": [10, 20]},
    )


@pytest.fixture
def archive(repo: icechunk.Repository) -> xr.Dataset:
    """Group "g" with the first 6 of 24 hourly labels; returns all 24."""
    ds = hourly(24)
    write(repo, ds.isel(time=slice(0, 6)), lambda w: w.for_create_or_overwrite(group="g"))
    return ds


def refused(repo: icechunk.Repository, ds: xr.Dataset, choose, *says: str) -> PlanError:  # type: ignore[no-untyped-def]
    before = tip(repo)
    with pytest.raises(PlanError) as raised:
        write(repo, ds, choose)
    for text in says:
        assert text in str(raised.value), str(raised.value)
    assert tip(repo) == before
    return raised.value


def spec_of(repo: icechunk.Repository) -> DatasetSpec:
    spec = read_spec(repo.readonly_session(branch="main").store, "g")
    assert spec is not None
    return spec


# -- structure: dtype, units, chunks, time encoding -------------------------------------------


def test_an_append_in_other_units_is_refused(repo, archive) -> None:
    later = archive.isel(time=slice(6, 8)).copy()
    later["t2m"].attrs["units"] = "degC"
    refused(
        repo,
        later,
        lambda w: w.for_append(group="g"),
        "variable 't2m' has units 'degC' but the group's spec declares 'K'",
        "update_spec=True",
    )
    unstated = archive.isel(time=slice(6, 8)).copy()
    unstated["t2m"].attrs = {}  # a source that drops attributes says nothing about units
    write(repo, unstated, lambda w: w.for_append(group="g"))
    assert read_back(repo, "g").sizes["time"] == 8


def test_an_append_whose_dtype_changed_is_refused_pointing_at_update_spec(repo, archive) -> None:
    later = archive.isel(time=slice(6, 8))
    later = later.assign(t2m=later.t2m.astype("float64"))
    refused(
        repo,
        later,
        lambda w: w.for_append(group="g"),
        "'t2m' has dtype float64 but the store holds float32",
        "for_modify(update_spec=True)",
    )


def test_a_region_write_in_other_units_is_refused(repo, archive) -> None:
    patch = archive.isel(time=slice(0, 2)).copy()
    patch["t2m"].attrs["units"] = "degF"
    refused(repo, patch, lambda w: w.for_region(group="g"), "'t2m' has units 'degF'")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda ds: ds.assign(t2m=ds.t2m.astype("float64")), "dtype float32 → float64"),
        (lambda ds: ds.assign(t2m=ds.t2m.assign_attrs(units="degC")), "units 'K' → 'degC'"),
        (
            lambda ds: ds.assign(t2m=ds.t2m.transpose("x", "time")),
            "dims ['time', 'x'] → ['x', 'time']",
        ),
    ],
    ids=["dtype", "units", "dims"],
)
def test_a_modify_that_changes_structure_needs_update_spec(repo, archive, change, says) -> None:
    stored = archive.isel(time=slice(0, 6))
    changed = change(stored[["t2m"]])
    refused(
        repo,
        changed,
        lambda w: w.for_modify(group="g"),
        "variable 't2m' would change the structure the group's spec declares",
        says,
        "update_spec=True",
    )
    before = spec_of(repo)
    write(repo, changed, lambda w: w.for_modify(group="g", update_spec=True))
    after = spec_of(repo)
    # the spec follows in the same commit; nothing else in it changes
    assert [d for d in before.diff(after) if not d.startswith("variable 't2m'")] == []
    assert says.split(" → ")[-1].strip("'[]").split("', '")[0] in str(after.variables["t2m"])
    back = read_back(repo, "g")
    assert back.t2m.dims == changed.t2m.dims
    assert back.t2m.attrs.get("units") == changed.t2m.attrs.get("units")


def test_modify_chunks_and_time_encoding_are_declared_too(repo, archive) -> None:
    stored = archive.isel(time=slice(0, 6))
    refused(
        repo,
        stored[["t2m"]].astype("float64"),
        lambda w: w.for_modify(group="g", encoding={"t2m": {"chunks": (2, 2)}}),
        "chunks [6, 2] → [2, 2]",
    )
    # every array rewritten longer (a modify may): the labels' pinned encoding must stay
    longer = archive.isel(time=slice(0, 8))
    refused(
        repo,
        longer,
        lambda w: w.for_modify(group="g", encoding={"time": {"units": "minutes since 1970-01-01"}}),
        "the time encoding of 'time' would change",
        "minutes since 1970-01-01",
    )
    write(repo, longer, lambda w: w.for_modify(group="g"))
    assert read_back(repo, "g").sizes["time"] == 8
    assert spec_of(repo).time_encoding.units == "hours since 2020-01-01"  # type: ignore[union-attr]


def test_modify_may_add_variables_which_the_spec_then_lists(repo, archive) -> None:
    stored = archive.isel(time=slice(0, 6))
    extra = stored.assign(rh=stored.t2m * 0 + 0.5)[["rh"]]
    extra["rh"].attrs = {"units": "1"}
    write(repo, extra, lambda w: w.for_modify(group="g"))
    spec = spec_of(repo)
    assert spec.variables["rh"].units == "1"
    assert spec.variables["rh"].dtype == "float32"
    # and from now on the new variable is guarded like the others
    renamed = extra.assign(rh=extra.rh.assign_attrs(units="%"))
    refused(repo, renamed, lambda w: w.for_modify(group="g"), "units '1' → '%'")


def test_a_replaced_variable_keeps_its_declared_chunks(repo) -> None:
    ds = hourly(8)
    write(
        repo,
        ds,
        lambda w: w.for_create_or_overwrite(group="g", encoding={"t2m": {"chunks": (4, 1)}}),
    )
    write(repo, ds[["t2m"]].astype("float64"), lambda w: w.for_modify(group="g", update_spec=True))
    session = repo.readonly_session(branch="main")
    assert xr.open_zarr(session.store, group="g").t2m.encoding["chunks"] == (4, 1)
    assert spec_of(repo).variables["t2m"].chunks == (4, 1)


# -- no shrinking --------------------------------------------------------------------------------


def test_the_append_dimension_never_shrinks_but_an_overwrite_replaces_the_group(
    repo, archive
) -> None:
    stored = archive.isel(time=slice(0, 6))
    partial = stored.isel(time=slice(0, 3))
    refused(
        repo,
        partial,
        lambda w: w.for_modify(group="g", update_spec=True),
        "would shrink 'time' from 6 to 3 labels",
        "mode='w'",
    )
    write(repo, partial, lambda w: w.for_create_or_overwrite(group="g", mode="w"))
    assert read_back(repo, "g").sizes["time"] == 3


# -- labels on the step -------------------------------------------------------------------------


def test_a_hole_is_refused_by_default_naming_the_missing_labels(repo, archive) -> None:
    after_hole = archive.isel(time=[8, 9])
    refused(
        repo,
        after_hole,
        lambda w: w.for_append(group="g"),
        "leave a gap on its step 'h': 2020-01-01T06:00:00 … 2020-01-01T07:00:00 (2 labels)",
        "on_gap='stop'",
        "on_gap='fill'",
    )


def test_on_gap_stop_appends_up_to_the_first_missing_label(repo, archive) -> None:
    late = archive.isel(time=[6, 7, 9, 10])  # label 8 has not arrived
    plan = write(repo, late, lambda w: w.for_append(group="g", on_gap="stop"))
    assert plan.stopped_at == "2020-01-01T08:00:00"
    back = read_back(repo, "g")
    xr.testing.assert_identical(back, archive.isel(time=slice(0, 8)).compute())
    # the next run, once the label is there, continues without a gap
    write(repo, archive.isel(time=slice(8, 11)), lambda w: w.for_append(group="g", on_gap="stop"))
    xr.testing.assert_identical(read_back(repo, "g"), archive.isel(time=slice(0, 11)).compute())
    # a run that finds nothing after the gap changes nothing
    before = tip(repo)
    plan = write(repo, archive.isel(time=[12]), lambda w: w.for_append(group="g", on_gap="stop"))
    assert plan.changes_nothing
    assert plan.stopped_at == "2020-01-01T11:00:00"
    assert tip(repo) == before


def test_on_gap_fill_writes_the_missing_labels_as_fill_values(repo) -> None:
    ds = hourly(12)
    ds["count"].encoding["_FillValue"] = -1  # integers need a value that reads as missing
    write(repo, ds.isel(time=slice(0, 4)), lambda w: w.for_create_or_overwrite(group="g"))
    late = ds.isel(time=[4, 7, 8, 10]).chunk({"time": 1})  # lazy, chunks across the holes
    plan = write(repo, late, lambda w: w.for_append(group="g", on_gap="fill"))
    assert plan.gaps == (
        ("2020-01-01T05:00:00", "2020-01-01T06:00:00", 2),
        ("2020-01-01T09:00:00", "2020-01-01T09:00:00", 1),
    )
    back = read_back(repo, "g")
    np.testing.assert_array_equal(back.time.values, ds.time.values[:11])
    holes = [5, 6, 9]
    assert back.t2m.isel(time=holes).isnull().all()
    assert back["count"].isel(time=holes).isnull().all()
    written = [i for i in range(11) if i not in holes]
    xr.testing.assert_equal(back.t2m.isel(time=written), ds.t2m.isel(time=written))
    # a backfill-style region write fills the gap later, in place
    write(repo, ds.isel(time=[5, 6]), lambda w: w.for_region(group="g"))
    xr.testing.assert_equal(read_back(repo, "g").t2m.isel(time=[5, 6]), ds.t2m.isel(time=[5, 6]))


def test_on_gap_fill_refuses_variables_whose_gap_could_not_be_told_from_data(repo, archive) -> None:
    refused(
        repo,
        archive.isel(time=[7, 8]),
        lambda w: w.for_append(group="g", on_gap="fill"),
        "variables ['count'] have no fill value that reads back as missing",
        "on_gap='stop'",
    )


def test_labels_off_the_step_are_refused_whatever_on_gap_says(repo, archive) -> None:
    shifted = archive.isel(time=[6, 7]).assign_coords(
        time=archive.time[[6, 7]] + pd.Timedelta("30min")
    )
    refused(
        repo,
        shifted,
        lambda w: w.for_append(group="g", on_gap="fill"),
        "are not on its step 'h'",
    )


def test_a_declared_monthly_step_catches_a_skipped_month(repo) -> None:
    months = pd.date_range("2000-01-01", periods=6, freq="MS")
    ds = xr.Dataset({"v": ("time", np.arange(6.0))}, coords={"time": months})
    write(repo, ds.isel(time=slice(0, 3)), lambda w: w.for_create_or_overwrite(group="g"))
    assert spec_of(repo).step == "MS"  # months differ in length: no fixed step would see it
    refused(repo, ds.isel(time=[4, 5]), lambda w: w.for_append(group="g"), "2000-04-01T00:00:00")
    write(repo, ds.isel(time=[3, 4]), lambda w: w.for_append(group="g"))
    assert read_back(repo, "g").sizes["time"] == 5


def test_a_declared_step_holds_from_the_first_label(repo) -> None:
    ds = hourly(6, start="2020-01-01T03")
    write(repo, ds.isel(time=[0]), lambda w: w.for_create_or_overwrite(group="g"))
    spec = spec_of(repo).model_copy(update={"step": "1h"})  # one label: no step of its own
    session = repo.writable_session("main")
    write_spec(session.store, "g", spec)
    session.commit("declare the step")
    refused(repo, ds.isel(time=[2]), lambda w: w.for_append(group="g"), "leave a gap")


def test_a_hole_after_a_single_stored_label_is_found_by_the_new_labels_step(repo) -> None:
    ds = hourly(6)
    ds.time.encoding["units"] = "hours since 2020-01-01"  # one label alone would get days
    write(repo, ds.isel(time=[0]), lambda w: w.for_create_or_overwrite(group="g"))
    assert spec_of(repo).step == "irregular"  # one label has no step of its own
    refused(repo, ds.isel(time=[1, 2, 4]), lambda w: w.for_append(group="g"), "2020-01-01T03:00:00")
    plan = write(repo, ds.isel(time=[1, 2, 4]), lambda w: w.for_append(group="g", on_gap="stop"))
    assert plan.stopped_at == "2020-01-01T03:00:00"


# -- a spec declared before the group's first write ---------------------------------------------


def declared(repo: icechunk.Repository, ds: xr.Dataset, **changes) -> DatasetSpec:  # type: ignore[no-untyped-def]
    spec = DatasetSpec.from_dataset(ds, "time").model_copy(update=changes)
    session = repo.writable_session("main")
    write_spec(session.store, "g", spec)
    session.commit("declare")
    return spec


def test_the_first_write_follows_a_spec_declared_ahead(repo) -> None:
    ds = hourly(8)
    spec = DatasetSpec.from_dataset(ds, "time")
    spec.variables["t2m"] = spec.variables["t2m"].model_copy(update={"chunks": (2, 1)})
    spec = spec.model_copy(update={"start": "2019-12-31T22:00:00"})
    session = repo.writable_session("main")
    write_spec(session.store, "g", spec)
    session.commit("declare")

    write(repo, ds, lambda w: w.for_append(group="g", append_dim="time"))
    session = repo.readonly_session(branch="main")
    assert xr.open_zarr(session.store, group="g").t2m.encoding["chunks"] == (2, 1)
    assert spec_of(repo).diff(spec) == []  # start and step as declared


@pytest.mark.parametrize(
    ("first", "says"),
    [
        (lambda ds: ds.assign(t2m=ds.t2m.astype("float64")), "dtype float32 → float64"),
        (lambda ds: ds.drop_vars("count"), "declares ['count'], which the dataset lacks"),
        (lambda ds: ds.assign(rh=ds.t2m), "variables ['rh'] are not in the group's declared spec"),
        (
            lambda ds: ds.assign_coords(time=ds.time + pd.Timedelta("30min")),
            "is not on the step 'h' from the spec's start",
        ),
    ],
    ids=["dtype", "missing-variable", "extra-variable", "off-step"],
)
def test_a_first_write_that_contradicts_the_declared_spec_is_refused(repo, first, says) -> None:
    ds = hourly(4)
    declared(repo, ds)
    refused(repo, first(ds), lambda w: w.for_create_or_overwrite(group="g"), says)


# -- options ------------------------------------------------------------------------------------


def test_spec_options_belong_to_their_modes_and_the_spec_is_not_an_attribute_to_set(
    repo, archive
) -> None:
    with pytest.raises(PlanError, match="on_gap do"):
        WriteRequest(mode="modify", on_gap="fill")
    with pytest.raises(PlanError, match="update_spec do"):
        WriteRequest(mode="append", append_dim="time", update_spec=True)
    with pytest.raises(PlanError, match="on_gap='later' is not one of error, stop, fill"):
        WriteRequest(mode="append", append_dim="time", on_gap="later")  # type: ignore[arg-type]
    refused(
        repo,
        archive.isel(time=[6]),
        lambda w: w.for_append(group="g", update_attrs={SPEC_KEY: "{}"}),
        f"update_attrs sets {SPEC_KEY!r}",
    )
