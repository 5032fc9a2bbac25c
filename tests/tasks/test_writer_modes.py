"""Each row of the contract's semantics table, read back and compared with plain xarray."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from tasks.errors import PlanError
from tests.cf_datasets import cf_dataset, lazy
from tests.conftest import plain_xarray, read_back, tip
from tests.tasks.helpers import write

pytestmark = pytest.mark.usefixtures("scheduler")


def test_create_then_read_back_equals_plain_xarray(repo, tmp_path):
    ds = lazy(cf_dataset(10))
    write(repo, ds, lambda w: w.for_create_or_overwrite(group="g"))
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(ds, tmp_path))


def test_overwrite_replaces_group_and_deletes_absent_variables(repo, tmp_path):
    write(repo, cf_dataset(6), lambda w: w.for_create_or_overwrite(group="g"))
    replacement = lazy(cf_dataset(9).drop_vars(["pr"]))
    plan = write(repo, replacement, lambda w: w.for_create_or_overwrite(group="g", mode="w"))
    assert plan.mode == "overwrite"
    assert [a.name for a in plan.arrays if a.action == "delete"] == ["pr"]
    back = read_back(repo, "g")
    assert "pr" not in back
    xr.testing.assert_identical(back, plain_xarray(replacement, tmp_path))


def test_appends_equal_one_write_of_the_concatenation(repo, tmp_path):
    full = lazy(cf_dataset(12), time_chunk=3)
    write(repo, full.isel(time=slice(0, 5)), lambda w: w.for_create_or_overwrite(group="g"))
    for start, stop in [(5, 7), (7, 12)]:
        write(
            repo,
            full.isel(time=slice(start, stop)),
            lambda w: w.for_append(group="g", append_dim="time"),
        )
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(full, tmp_path))


def test_append_skip_rewrites_nothing_and_rerun_is_a_no_op(repo, tmp_path):
    full = lazy(cf_dataset(10))
    write(repo, full.isel(time=slice(0, 6)), lambda w: w.for_create_or_overwrite(group="g"))
    write(repo, full.isel(time=slice(4, 10)), lambda w: w.for_append(group="g", on_overlap="skip"))
    before = tip(repo)
    plan = write(
        repo, full.isel(time=slice(4, 10)), lambda w: w.for_append(group="g", on_overlap="skip")
    )
    assert plan.changes_nothing
    assert tip(repo) == before
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(full, tmp_path))


def test_append_overwrite_upserts_overlap_and_appends_the_rest(repo, tmp_path):
    full = cf_dataset(10)
    write(repo, full.isel(time=slice(0, 6)), lambda w: w.for_create_or_overwrite(group="g"))
    revised = full.isel(time=slice(4, 10)).copy(deep=True)
    revised["tas"] = revised["tas"] + np.float32(1.0)
    write(repo, lazy(revised), lambda w: w.for_append(group="g", on_overlap="overwrite"))
    expected = xr.concat(
        [full.isel(time=slice(0, 4)), revised],
        dim="time",
        data_vars="minimal",
        coords="minimal",
        compat="override",
    )
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(expected, tmp_path))


def test_modify_adds_and_overwrites_variables_and_merges_attributes(repo, tmp_path):
    ds = cf_dataset(6)
    write(repo, ds, lambda w: w.for_create_or_overwrite(group="g"))
    change = xr.Dataset(
        {"tas": ds.tas + np.float32(2), "wind": ds.tas.rename("wind") * 0 + np.float32(3)},
        attrs={"history": "corrected"},
    )
    change["wind"].attrs = {"units": "m s-1"}
    write(repo, lazy(change), lambda w: w.for_modify(group="g"))
    expected = ds.assign(tas=change.tas, wind=change.wind)
    expected.attrs = {**ds.attrs, "history": "corrected"}
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(expected, tmp_path))


def test_modify_rewrites_a_variable_whose_dtype_changed(repo, tmp_path):
    ds = cf_dataset(6)
    write(repo, ds, lambda w: w.for_create_or_overwrite(group="g"))
    retyped = ds[["pr"]].astype({"pr": "float32"})
    # a declared change of the group's structure (tests/tasks/planners/test_guards.py)
    plan = write(repo, retyped, lambda w: w.for_modify(group="g", update_spec=True))
    assert {a.name: a.action for a in plan.arrays}["pr"] == "replace"
    back = read_back(repo, "g")
    assert back.pr.dtype == np.float32
    xr.testing.assert_identical(back, plain_xarray(ds.assign(pr=retyped.pr), tmp_path))


def test_drop_existing_vars_writes_only_new_variables(repo, tmp_path):
    ds = cf_dataset(6)
    write(repo, ds, lambda w: w.for_create_or_overwrite(group="g"))
    extra = ds.assign(tas=ds.tas + np.float32(100), rh=ds.pr * 0 + 0.5)
    plan = write(repo, extra, lambda w: w.for_modify(group="g").drop_existing_vars())
    assert plan.variables == ["rh"]
    xr.testing.assert_identical(
        read_back(repo, "g"), plain_xarray(ds.assign(rh=extra.rh), tmp_path)
    )


def test_region_auto_writes_into_place(repo, tmp_path):
    ds = cf_dataset(12)
    write(
        repo,
        ds,
        lambda w: w.for_create_or_overwrite(group="g", encoding={"tas": {"chunks": (4, 3, 4)}}),
    )
    patch = ds.isel(time=slice(3, 9))[["tas", "pr"]].drop_vars(["height", "zone"])
    patch = patch + 1
    patch["tas"] = patch.tas.astype("float32")
    write(repo, lazy(patch, time_chunk=2), lambda w: w.for_region(group="g"))
    expected = ds.copy(deep=True)
    expected["tas"][3:9] = patch.tas.values
    expected["pr"][3:9] = patch.pr.values
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(expected, tmp_path))


def test_region_with_explicit_slices_and_auto_mixed(repo, tmp_path):
    ds = cf_dataset(8)
    write(repo, ds, lambda w: w.for_create_or_overwrite(group="g"))
    patch = ds[["tas"]].isel(time=slice(2, 5), lat=slice(1, 3)).drop_vars(
        ["height", "zone"]
    ) + np.float32(7)
    patch = patch.drop_vars("lat")
    write(
        repo,
        lazy(patch, 1),
        lambda w: w.for_region(group="g", region={"time": "auto", "lat": slice(1, 3)}),
    )
    expected = ds.copy(deep=True)
    expected["tas"][2:5, 1:3] = patch.tas.values
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(expected, tmp_path))


def test_region_partly_covering_chunks_keeps_the_rest_of_each_chunk(repo, tmp_path):
    ds = cf_dataset(16)
    write(
        repo,
        ds,
        lambda w: w.for_create_or_overwrite(group="g", encoding={"tas": {"chunks": (5, 3, 4)}}),
    )
    patch = ds[["tas"]].isel(time=slice(3, 13)).drop_vars(["height"]) * np.float32(2)
    # dask blocks of 2 straddle the 5-long zarr chunks: realigned, never raced
    write(repo, lazy(patch, 2), lambda w: w.for_region(group="g"))
    expected = ds.copy(deep=True)
    expected["tas"][3:13] = patch.tas.values
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(expected, tmp_path))


def test_region_never_changes_metadata(repo):
    ds = cf_dataset(6)
    write(repo, ds, lambda w: w.for_create_or_overwrite(group="g"))
    patch = ds[["tas"]].isel(time=slice(0, 2)).drop_vars(["height"])
    patch.attrs = {"title": "changed"}
    # (other units than the spec's are refused: tests/tasks/planners/test_guards.py)
    patch["tas"].attrs = {"long_name": "changed"}
    write(repo, patch, lambda w: w.for_region(group="g"))
    back = read_back(repo, "g")
    assert back.attrs == ds.attrs
    assert back.tas.attrs == ds.tas.attrs


def test_append_fill_missing_leaves_missing_variables_at_fill_value(repo, tmp_path):
    ds = cf_dataset(8)
    write(repo, ds.isel(time=slice(0, 5)), lambda w: w.for_create_or_overwrite(group="g"))
    partial = ds.isel(time=slice(5, 8)).drop_vars(["pr", "tas_packed"])
    write(repo, lazy(partial), lambda w: w.for_append(group="g", fill_missing=True))
    back = read_back(repo, "g")
    assert back.pr.isel(time=slice(5, 8)).isnull().all()
    # packed integers too: zarr's own fill value follows _FillValue, so no add_offset shows
    assert back.tas_packed.isel(time=slice(5, 8)).isnull().all()
    kept = ["pr", "tas_packed"]
    xr.testing.assert_identical(back.drop_vars(kept), plain_xarray(ds.drop_vars(kept), tmp_path))


def test_append_update_attrs_adds_history_and_keeps_the_rest(repo):
    ds = cf_dataset(6)
    write(repo, ds.isel(time=slice(0, 3)), lambda w: w.for_create_or_overwrite(group="g"))
    later = ds.isel(time=slice(3, 6))
    later.attrs = {"title": "ignored on append"}
    write(repo, later, lambda w: w.for_append(group="g", update_attrs={"history": "appended"}))
    assert read_back(repo, "g").attrs == {**ds.attrs, "history": "appended"}


def test_append_to_a_missing_group_creates_it(repo, tmp_path):
    ds = lazy(cf_dataset(5))
    write(repo, ds, lambda w: w.for_append(group="new", append_dim="time"))
    xr.testing.assert_identical(read_back(repo, "new"), plain_xarray(ds, tmp_path))


def test_append_with_a_changed_static_coordinate_is_refused(repo):
    ds = cf_dataset(6)
    write(repo, ds.isel(time=slice(0, 3)), lambda w: w.for_create_or_overwrite(group="g"))
    moved = ds.isel(time=slice(3, 6)).assign_coords(height=10.0)
    before = tip(repo)
    with pytest.raises(PlanError, match="'height'"):
        write(repo, moved, lambda w: w.for_append(group="g"))
    assert tip(repo) == before
