"""Bad requests: a PlanError naming the variable and the fix, raised before anything is written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tasks.errors import PhaseOrderError, PlanError
from tasks.writer import XarrayDatasetWriter
from tests.cf_datasets import cf_dataset, lazy
from tests.conftest import tip
from tests.tasks.helpers import write


@pytest.fixture
def stored(repo):
    """A group 'g' holding the first 6 days, and the full 12-day dataset to draw from."""
    full = cf_dataset(12)
    write(repo, full.isel(time=slice(0, 6)), lambda w: w.for_create_or_overwrite(group="g"))
    return full


def refused(repo, ds, choose, *names: str) -> PlanError:
    """The write raises PlanError whose message names every one of ``names``; tip unchanged."""
    before = tip(repo)
    with pytest.raises(PlanError) as info:
        write(repo, ds, choose)
    for name in names:
        assert name in str(info.value), f"{name!r} not in: {info.value}"
    assert tip(repo) == before
    return info.value


def test_create_w_minus_on_existing_group(repo, stored):
    refused(
        repo, stored, lambda w: w.for_create_or_overwrite(group="g"), "already exists", "mode='w'"
    )


def test_modify_a_group_that_does_not_exist(repo, stored):
    refused(repo, stored, lambda w: w.for_modify(group="nope"), "does not exist", "'nope'")


def test_empty_dataset(repo):
    refused(repo, xr.Dataset(), lambda w: w.for_create_or_overwrite(group="g"), "empty")


def test_unsupported_dtype(repo):
    ds = xr.Dataset({"blob": ("x", np.array([b"ab", b"cd"], dtype="V2"))})
    refused(repo, ds, lambda w: w.for_create_or_overwrite(group="g"), "'blob'", "cast")


def test_append_changed_dtype(repo, stored):
    later = stored.isel(time=slice(6, 8))
    later["tas"] = later.tas.astype("float64")
    refused(repo, later, lambda w: w.for_append(group="g"), "'tas'", "float64", "astype")


def test_append_changed_non_append_coordinate(repo, stored):
    later = stored.isel(time=slice(6, 8)).assign_coords(lat=stored.lat + 1)
    refused(repo, later, lambda w: w.for_append(group="g"), "'lat'", "for_modify")


def test_append_new_variable(repo, stored):
    later = stored.isel(time=slice(6, 8))
    later["wind"] = later.tas * 0
    refused(repo, later, lambda w: w.for_append(group="g"), "'wind'", "for_modify")


def test_append_missing_variable(repo, stored):
    later = stored.isel(time=slice(6, 8)).drop_vars("pr")
    refused(repo, later, lambda w: w.for_append(group="g"), "'pr'", "fill_missing=True")


def test_append_overlapping_labels_with_on_overlap_error(repo, stored):
    refused(
        repo,
        stored.isel(time=slice(4, 8)),
        lambda w: w.for_append(group="g"),
        "already in the store",
        "on_overlap='skip'",
    )


def test_append_labels_not_after_the_stored_ones(repo, stored):
    earlier = stored.isel(time=slice(0, 2)).assign_coords(
        time=pd.date_range("1999-12-01", periods=2)
    )
    refused(repo, earlier, lambda w: w.for_append(group="g"), "not after the last stored label")


def test_append_gap_in_a_regular_axis(repo, stored):
    refused(
        repo, stored.isel(time=slice(8, 10)), lambda w: w.for_append(group="g"), "gap", "'time'"
    )


def test_append_non_monotonic_labels(repo, stored):
    later = stored.isel(time=[7, 6])
    refused(repo, later, lambda w: w.for_append(group="g"), "not increasing", "sortby")


def test_append_duplicated_labels(repo, stored):
    later = stored.isel(time=[6, 6, 7])
    refused(repo, later, lambda w: w.for_append(group="g"), "duplicated", "'time'")


def test_append_dim_missing_from_dataset(repo, stored):
    refused(
        repo,
        stored.isel(time=slice(6, 8)),
        lambda w: w.for_append(group="g", append_dim="step"),
        "'step'",
    )


def test_append_time_units_that_cannot_hold_the_new_labels(repo):
    daily = cf_dataset(1).drop_vars("time_bnds")
    write(repo, daily, lambda w: w.for_create_or_overwrite(group="g"))
    half_day = daily.assign_coords(time=pd.to_datetime(["2000-01-01T12"]))
    refused(
        repo, half_day, lambda w: w.for_append(group="g"), "'time'", "units='days since 2000-01-01'"
    )


def test_append_calendar_mismatch(repo):
    write(repo, cf_dataset(4, calendar="360_day"), lambda w: w.for_create_or_overwrite(group="g"))
    standard = cf_dataset(6).isel(time=slice(4, 6))
    refused(
        repo, standard, lambda w: w.for_append(group="g"), "'time'", "convert_calendar('360_day')"
    )


def test_region_out_of_bounds(repo, stored):
    patch = stored[["tas"]].isel(time=slice(0, 2)).drop_vars(["time", "height"])
    refused(
        repo,
        patch,
        lambda w: w.for_region(group="g", region={"time": slice(5, 7)}),
        "out of bounds",
        "'time'",
    )


def test_region_on_a_dimension_the_dataset_lacks(repo, stored):
    patch = stored[["crs"]]
    refused(repo, patch, lambda w: w.for_region(group="g", region={"time": slice(0, 1)}), "'time'")


def test_region_with_a_data_variable_outside_it(repo, stored):
    patch = stored.isel(time=slice(0, 2))[["tas", "crs"]].drop_vars("height")
    refused(repo, patch, lambda w: w.for_region(group="g"), "'crs'", "does not overlap")


def test_region_labels_not_in_store(repo, stored):
    patch = stored[["tas"]].isel(time=slice(5, 8)).drop_vars("height")
    refused(repo, patch, lambda w: w.for_region(group="g"), "not in the store", "for_append")


def test_region_changed_coordinate_outside_region(repo, stored):
    patch = stored[["tas"]].isel(time=slice(0, 2)).assign_coords(height=5.0)
    refused(repo, patch, lambda w: w.for_region(group="g"), "'height'")


@pytest.mark.parametrize("group", ["../escape", "/abs", "a//b", "a/./b"])
def test_group_paths_that_escape_or_are_absolute(repo, group):
    with pytest.raises(PlanError, match="group path"):
        XarrayDatasetWriter(
            cf_dataset(2), store=repo.writable_session("main").store
        ).for_create_or_overwrite(group=group)


def test_encoding_for_an_unknown_variable(repo):
    refused(
        repo,
        cf_dataset(2),
        lambda w: w.for_create_or_overwrite(group="g", encoding={"nope": {"chunks": (1,)}}),
        "'nope'",
    )


def test_every_problem_is_listed_at_once(repo, stored):
    later = stored.isel(time=slice(6, 8)).drop_vars("pr")
    later["tas"] = later.tas.astype("float64")
    later["wind"] = later.tas
    error = refused(repo, later, lambda w: w.for_append(group="g"), "'tas'", "'wind'", "'pr'")
    assert len(error.problems) == 3


def test_plan_writes_nothing_and_prints_a_table(repo, stored):
    session = repo.writable_session("main")
    writer = XarrayDatasetWriter(
        lazy(stored.isel(time=slice(6, 9))), store=session.store
    ).for_append(group="g")
    plan = writer.plan()
    assert not session.has_uncommitted_changes
    table = str(plan)
    assert "(6, 3, 4) → (9, 3, 4)" in table
    assert "tas" in table
    assert "resize" in table
    assert "lazy" in table
    assert plan.chunks_written > 0
    assert plan.bytes_written == sum(a.bytes_written for a in plan.arrays)


def test_phases_out_of_order(repo):
    session = repo.writable_session("main")
    writer = XarrayDatasetWriter(cf_dataset(2), store=session.store)
    with pytest.raises(PhaseOrderError, match="choose a mode"):
        writer.plan()
    writer = writer.for_create_or_overwrite(group="g")
    with pytest.raises(PhaseOrderError, match="write_eager"):
        writer.write_lazy()
    writer.write_metadata()
    with pytest.raises(PhaseOrderError, match="write_metadata"):
        writer.write_metadata()
    with pytest.raises(PhaseOrderError, match="write_eager"):
        writer.verify()


def test_drop_existing_vars_needs_for_modify(repo):
    writer = XarrayDatasetWriter(cf_dataset(2), store=repo.writable_session("main").store)
    with pytest.raises(PhaseOrderError, match="for_modify"):
        writer.for_append(group="g").drop_existing_vars()


def test_write_lazy_runs_again_after_a_failure_and_lands_once(repo, tmp_path):
    from tests.conftest import plain_xarray, read_back

    ds = lazy(cf_dataset(6), time_chunk=2)
    failures = iter([True])

    def flaky(block):
        if block.size and next(failures, False):
            raise OSError("storage hiccup")
        return block

    flaky_ds = ds.copy()
    flaky_ds["tas"] = ds.tas.copy(data=ds.tas.data.map_blocks(flaky, dtype=ds.tas.dtype))
    session = repo.writable_session("main")
    writer = XarrayDatasetWriter(flaky_ds, store=session.store).for_create_or_overwrite(group="g")
    writer.write_metadata()
    writer.write_eager()
    writer.verify()
    with pytest.raises(OSError, match="hiccup"):
        writer.write_lazy()
    writer.write_lazy()
    session.commit("after one retry")
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(ds, tmp_path))


def test_a_failed_metadata_write_poisons_the_writer(repo):
    session = repo.writable_session("main")
    writer = XarrayDatasetWriter(cf_dataset(2), store=session.store).for_create_or_overwrite(
        group="g", encoding={"tas": {"compressors": "not-a-codec"}}
    )
    with pytest.raises(TypeError, match=r"(?i)codec"):
        writer.write_metadata()
    with pytest.raises(PhaseOrderError, match="discard the session"):
        writer.write_eager()
